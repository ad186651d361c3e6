#!/usr/bin/env python3
"""A fast webhook destination for the benchmark, and a load generator to measure one.

    python bench/receiver.py serve --port P [--delay 0.02]
    python bench/receiver.py load --url http://127.0.0.1:P/load --connections 100 --seconds 5

`serve` is a raw asyncio HTTP/1.1 server with keep-alive: every request is answered
`200 ok` after `--delay` seconds (a timer, not a task or a thread per request), and its
receive time (time.time(), taken when the whole request has arrived) is recorded with
the alert id and the `details.bench_produced_at` stamp of the JSON body. One event loop
answers several thousand requests per second on one core, where the thread-per-
connection receiver of tests/fakes tops out far lower (see `load` and BENCHMARKS.md).

Control paths (answered at once, not recorded):
    GET  /_bench/stats   {"count", "unique", "first", "last", "connections", "bad"}
    POST /_bench/reset   forget everything recorded
    POST /_bench/dump    body = a file path: write the records there as JSON
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from typing import Any

try:
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover - the project depends on orjson
    _loads = json.loads

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
OK_CLOSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
    b"Connection: close\r\n\r\nok"
)


class State:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.records: list[tuple[float, str, str | None, str | None]] = []
        self.ids: set[str | None] = set()
        self.connections = 0
        self.bad = 0

    def reset(self) -> None:
        self.records = []
        self.ids = set()
        self.connections = 0
        self.bad = 0


def _json_response(obj: Any, close: bool = False) -> bytes:
    body = json.dumps(obj).encode()
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
    )
    return head.encode() + body


class Hook(asyncio.Protocol):
    def __init__(self, state: State, loop: asyncio.AbstractEventLoop) -> None:
        self.state = state
        self.loop = loop
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.state.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            lower = head.lower()
            length = 0
            i = lower.find(b"\r\ncontent-length:")
            if i >= 0:
                j = lower.find(b"\r\n", i + 2)
                length = int(lower[i + 17 : j if j >= 0 else len(lower)].strip())
            elif b"\r\ntransfer-encoding:" in lower:
                self.state.bad += 1  # not expected from httpx with a bytes body
                self._write(OK_CLOSE, close=True)
                return
            total = end + 4 + length
            if len(self.buf) < total:
                return
            body = bytes(self.buf[end + 4 : total])
            del self.buf[:total]
            close = b"\r\nconnection: close" in lower
            self._handle(head, body, close)

    def _handle(self, head: bytes, body: bytes, close: bool) -> None:
        now = time.time()
        line = head.split(b"\r\n", 1)[0].split(b" ")
        method = line[0]
        path = line[1].decode("latin-1") if len(line) > 1 else "/"
        if path.startswith("/_bench/"):
            self._write(self._control(method, path, body), close)
            return
        alert_id = produced = None
        if body:
            try:
                doc = _loads(body)
                alert_id = doc.get("alert_id")
                produced = (doc.get("details") or {}).get("bench_produced_at")
            except Exception:
                self.state.bad += 1
        self.state.records.append((now, path, alert_id, produced))
        self.state.ids.add(alert_id)
        reply = OK_CLOSE if close else OK
        if self.state.delay > 0:
            self.loop.call_later(self.state.delay, self._write, reply, close)
        else:
            self._write(reply, close)

    def _control(self, method: bytes, path: str, body: bytes) -> bytes:
        st = self.state
        if path.startswith("/_bench/stats"):
            recs = st.records
            return _json_response(
                {
                    "count": len(recs),
                    "unique": len(st.ids),
                    "first": recs[0][0] if recs else None,
                    "last": recs[-1][0] if recs else None,
                    "connections": st.connections,
                    "bad": st.bad,
                }
            )
        if path.startswith("/_bench/reset"):
            st.reset()
            return _json_response({"ok": True})
        if path.startswith("/_bench/dump"):
            target = body.decode()
            with open(target, "w") as fh:
                json.dump({"records": st.records, "connections": st.connections, "bad": st.bad}, fh)
            return _json_response({"ok": True, "count": len(st.records)})
        return _json_response({"error": "unknown control path"})

    def _write(self, data: bytes, close: bool = False) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if close:
            transport.close()


async def serve(host: str, port: int, delay: float) -> None:
    loop = asyncio.get_running_loop()
    state = State(delay)
    server = await loop.create_server(lambda: Hook(state, loop), host, port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening http://{host}:{port} delay={delay}", flush=True)
    async with server:
        await stop.wait()


# -- load generator ------------------------------------------------------------------


async def _client(
    host: str, port: int, path: str, body: bytes, until: float, out: list[int]
) -> None:
    """One keep-alive connection sending a request after each answer until `until`."""
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    done = 0
    writer = None

    async def one_connection() -> None:
        nonlocal done, writer
        reader, writer = await asyncio.open_connection(host, port)
        while time.monotonic() < until:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lower = head.lower()
            i = lower.find(b"content-length:")
            length = int(lower[i + 15 : lower.find(b"\r\n", i)].strip()) if i >= 0 else 0
            if length:
                await reader.readexactly(length)
            done += 1
            if b"connection: close" in lower:
                writer.close()
                return

    try:
        while time.monotonic() < until:
            remaining = until - time.monotonic()
            # A server that stops answering (or a full accept backlog) must not hang us.
            await asyncio.wait_for(one_connection(), timeout=remaining + 2.0)
    except (ConnectionError, OSError, asyncio.IncompleteReadError, TimeoutError):
        pass
    finally:
        out.append(done)
        if writer is not None:
            writer.close()


async def load(url: str, connections: int, seconds: float) -> dict[str, Any]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    body = json.dumps({"alert_id": "load", "details": {}, "pad": "x" * 900}).encode()
    out: list[int] = []
    started = time.monotonic()
    until = started + seconds
    await asyncio.gather(
        *(
            _client(
                parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/", body, until, out
            )
            for _ in range(connections)
        ),
        return_exceptions=True,
    )
    took = time.monotonic() - started
    total = sum(out)
    return {
        "requests": total,
        "seconds": round(took, 3),
        "requests_per_second": round(total / took, 1),
        "connections": connections,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/receiver.py")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--delay", type=float, default=0.02)
    lo = sub.add_parser("load")
    lo.add_argument("--url", required=True)
    lo.add_argument("--connections", type=int, default=100)
    lo.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        asyncio.run(serve(args.host, args.port, args.delay))
        return 0
    result = asyncio.run(load(args.url, args.connections, args.seconds))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
