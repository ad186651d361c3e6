#!/usr/bin/env python3
"""CPU per webhook request: the project's HTTP client stack, before and after, and bare aiohttp.

    python bench/http_clients.py [--requests 6000] [--concurrency 100] [--delay 0.02]

Starts bench/receiver.py (answering each request after `--delay` seconds), then sends
the same ~1 KB JSON POST with each client from one asyncio loop, `--concurrency`
requests in flight, and reports requests/s and the process CPU per request:

- `httpx + httpcore (previous transport)`: httpx.AsyncClient on httpx's own
  AsyncHTTPTransport (httpcore/h11/anyio) with the pool size, keep-alive and timeouts
  build_client used before it moved to aiohttp. (Its egress guard acted once per new
  connection only, so leaving it out does not change the per-request cost.)
- `httpx over aiohttp (session 5's client)`: httpx.AsyncClient on an httpx transport
  that sent with aiohttp (what `build_client` returned until session 6), rebuilt here
  in its essentials (no egress guard: it acted once per new connection).
- `sinks.http.build_client`: the client every HTTP sink uses now, exactly as the
  webhook sink builds it: `sinks.http_client.HttpClient` on aiohttp, egress guard
  included.
- `aiohttp ClientSession`: bare aiohttp with a pool of the same size, the floor.

Evidence for BENCHMARKS.md's fan-out numbers; not part of `make bench`.
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


def _old_client(conc: int) -> Any:
    import httpx

    limits = httpx.Limits(
        max_connections=conc, max_keepalive_connections=conc, keepalive_expiry=5.0
    )
    transport = httpx.AsyncHTTPTransport(limits=limits, http1=True, http2=False, retries=0)
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(10.0, connect=5.0, pool=5.0),
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": "alertrelay"},
    )


class _AiohttpUnderHttpx:
    """The essentials of session 5's httpx transport that sent with aiohttp."""

    def __init__(self, conc: int) -> None:
        import aiohttp

        self._conc = conc
        self._session: aiohttp.ClientSession | None = None

    async def handle_async_request(self, request: Any) -> Any:
        import aiohttp
        import httpx
        import yarl

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._conc), auto_decompress=False
            )
        headers = [(k.decode(), v.decode()) for k, v in request.headers.raw]
        async with asyncio.timeout(25):
            response = await self._session.request(
                request.method,
                yarl.URL(str(request.url), encoded=True),
                headers=headers,
                data=request.content or None,
                allow_redirects=False,
            )
        body = await response.read()
        return httpx.Response(response.status, headers=list(response.raw_headers), content=body)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _httpx_over_aiohttp(conc: int) -> Any:
    import httpx

    transport = _AiohttpUnderHttpx(conc)
    return httpx.AsyncClient(
        transport=transport,  # type: ignore[arg-type]
        timeout=httpx.Timeout(10.0, connect=5.0, pool=5.0),
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": "alertrelay"},
    )


def _new_client(conc: int) -> Any:
    from sinks.http import EgressGuard, HostOverrides, build_client

    return build_client(
        overrides=HostOverrides(), guard=EgressGuard.parse("127.0.0.1/32"), max_connections=conc
    )


async def with_httpx(make: Any, url: str, body: bytes, total: int, conc: int) -> dict[str, Any]:
    client = make(conc)
    headers = {"Content-Type": "application/json", "Idempotency-Key": "ar-bench"}

    async def send() -> None:
        response = await client.request("POST", url, headers=headers, content=body)
        if response.status_code >= 300:
            raise RuntimeError(f"answered {response.status_code}")

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
    parser.add_argument(
        "--delay", type=float, default=0.02, help="seconds the receiver waits before answering"
    )
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
            str(args.delay),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        url = f"http://127.0.0.1:{port}/hook/bench"
        body = json.dumps({"alert_id": "x", "details": {}, "pad": "y" * 950}).encode()
        out = {
            "httpx + httpcore (previous transport)": asyncio.run(
                with_httpx(_old_client, url, body, args.requests, args.concurrency)
            ),
            "httpx over aiohttp (session 5's client)": asyncio.run(
                with_httpx(_httpx_over_aiohttp, url, body, args.requests, args.concurrency)
            ),
            "sinks.http.build_client (HttpClient)": asyncio.run(
                with_httpx(_new_client, url, body, args.requests, args.concurrency)
            ),
            "aiohttp ClientSession": asyncio.run(
                with_aiohttp(url, body, args.requests, args.concurrency)
            ),
            "requests": args.requests,
            "concurrency": args.concurrency,
            "receiver_delay_s": args.delay,
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
