#!/usr/bin/env python3
"""CPU per webhook request: the project's httpx client against aiohttp's, same receiver.

    python bench/http_clients.py [--requests 6000] [--concurrency 100]

Starts bench/receiver.py (answers at once), then sends the same ~1 KB JSON POST with
each client from one asyncio loop, `--concurrency` requests in flight, and reports
requests/s and the process CPU per request. The httpx client is built by
`sinks.http.build_client` exactly as the webhook sink builds it (egress guard, pooled
connections); aiohttp is a plain `ClientSession` with a connection pool of the same size.
Evidence for BENCHMARKS.md's fan-out recommendation; not part of `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path[:0] = [str(BENCH_DIR), str(REPO_ROOT)]

from tests.harness import free_port  # noqa: E402


def _has_sniffio() -> bool:
    # httpcore imports sniffio on every request; when it is missing the failed import
    # searches sys.path each time (see BENCHMARKS.md).
    import importlib.util

    return importlib.util.find_spec("sniffio") is not None


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def drive(send: Any, total: int, concurrency: int) -> tuple[float, float]:
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            await send()

    cpu0, t0 = cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(total)))
    return time.perf_counter() - t0, cpu_seconds() - cpu0


async def with_httpx(url: str, body: bytes, total: int, conc: int) -> dict[str, Any]:
    from sinks.http import EgressGuard, HostOverrides, build_client

    client = build_client(overrides=HostOverrides(), guard=EgressGuard.parse("127.0.0.1/32"))
    headers = {"Content-Type": "application/json", "Idempotency-Key": "ar-bench"}

    async def send() -> None:
        response = await client.request("POST", url, headers=headers, content=body)
        response.raise_for_status()

    await drive(send, 200, conc)  # warm the pool
    wall, cpu = await drive(send, total, conc)
    await client.aclose()
    return {
        "requests_per_second": round(total / wall),
        "cpu_us_per_request": round(cpu / total * 1e6),
    }


async def with_aiohttp(url: str, body: bytes, total: int, conc: int) -> dict[str, Any]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=conc)
    session = aiohttp.ClientSession(connector=connector)
    headers = {"Content-Type": "application/json", "Idempotency-Key": "ar-bench"}

    async def send() -> None:
        async with session.post(url, data=body, headers=headers) as response:
            response.raise_for_status()
            await response.read()

    await drive(send, 200, conc)
    wall, cpu = await drive(send, total, conc)
    await session.close()
    return {
        "requests_per_second": round(total / wall),
        "cpu_us_per_request": round(cpu / total * 1e6),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/http_clients.py", description=__doc__)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--out", type=Path, help="add the result to this JSON file")
    args = parser.parse_args()
    port = free_port()
    receiver = subprocess.Popen(
        [
            sys.executable,
            str(BENCH_DIR / "receiver.py"),
            "serve",
            "--port",
            str(port),
            "--delay",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        url = f"http://127.0.0.1:{port}/hook/bench"
        body = json.dumps({"alert_id": "x", "details": {}, "pad": "y" * 950}).encode()
        out = {
            "httpx (sinks.http.build_client)": asyncio.run(
                with_httpx(url, body, args.requests, args.concurrency)
            ),
            "aiohttp ClientSession": asyncio.run(
                with_aiohttp(url, body, args.requests, args.concurrency)
            ),
            "requests": args.requests,
            "concurrency": args.concurrency,
            "sniffio_installed": _has_sniffio(),
            "pid": os.getpid(),
        }
        print(json.dumps(out, indent=1))
        if args.out is not None:
            runs = json.loads(args.out.read_text()) if args.out.exists() else []
            runs.append(out)
            args.out.write_text(json.dumps(runs, indent=1))
    finally:
        receiver.terminate()
        receiver.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
