"""The threaded HTTP server under every HTTP fake in tests/fakes.

Each vendor fake (Slack, PagerDuty, Opsgenie, Jira, Datadog, Splunk HEC, the webhook
receivers) is real HTTP on 127.0.0.1: a `ThreadingHTTPServer` in a daemon thread, started
and stopped by the test (or used as a context manager), recording every request and
giving scripted answers before its own checks. That machinery was written out in each
fake; it lives here once, so a fake only says what its vendor enforces and answers.

- `FakeHTTPServer`: the server, its thread, `start`/`stop`/`with`, `url`, `port`,
  `override` and the `requests` record; a fake implements `_serve(handler)`.
- `ScriptedFake`: for fakes that check each request and record it with its answer
  (Slack, PagerDuty, Opsgenie): `script(*answers)` queues raw answers for the next
  requests; a fake implements `_answer(method, path, headers, body)`.
- `RoutedFake`: for REST API fakes that record each request parsed (`ApiRequest`) and
  route it (Jira, Datadog): `script(path, *answers)`, `received(method, path)`; a fake
  implements `_route(request)`.
- Helpers for hand-written `_serve` methods: `read_body`, `reply`, `json_or_text`,
  `AnswerQueue`, `wait_for_count`.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "AnswerQueue",
    "ApiRequest",
    "ContextManaged",
    "FakeHTTPServer",
    "Received",
    "RoutedFake",
    "ScriptedFake",
    "json_or_text",
    "read_body",
    "reply",
    "wait_for_count",
]

T = TypeVar("T")
R = TypeVar("R")


class _Answer(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def body(self) -> Any: ...

    @property
    def headers(self) -> dict[str, str]: ...


A = TypeVar("A", bound=_Answer)
Q = TypeVar("Q", bound="ApiRequest")


# -- helpers -------------------------------------------------------------------------------


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request body, `Content-Length` bytes of it (none without the header)."""
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


def reply(
    handler: BaseHTTPRequestHandler,
    status: int,
    payload: bytes,
    headers: Iterable[tuple[str, str]] = (),
    *,
    content_type: str | None = None,
) -> None:
    """Send status, Content-Type (when given), `headers` in order, Content-Length, body."""
    handler.send_response(status)
    if content_type is not None:
        handler.send_header("Content-Type", content_type)
    for name, value in headers:
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


def json_or_text(body: dict[str, Any] | str) -> tuple[bytes, str]:
    """A JSON object as application/json, a string as text/plain: payload, content type."""
    if isinstance(body, dict):
        return json.dumps(body).encode(), "application/json"
    return body.encode(), "text/plain"


def wait_for_count(get: Callable[[], list[T]], count: int, timeout: float, what: str) -> list[T]:
    """Poll `get()` until it has `count` items; AssertionError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = get()
        if len(got) >= count:
            return got
        time.sleep(0.05)
    raise AssertionError(f"expected {count} {what}, got {len(get())}")


class AnswerQueue(Generic[T]):
    """Scripted answers, given out before a fake's own handling: one queue for every
    request (`path=None`) or one per path."""

    def __init__(self) -> None:
        self._queues: dict[str | None, deque[T]] = {}
        self._lock = threading.Lock()

    def extend(self, answers: Iterable[T], path: str | None = None) -> None:
        """Queue `answers` after those already queued."""
        with self._lock:
            self._queues.setdefault(path, deque()).extend(answers)

    def replace(self, path: str | None, answers: Iterable[T]) -> None:
        """Queue `answers` instead of those still queued."""
        with self._lock:
            self._queues[path] = deque(answers)

    def next(self, path: str | None = None) -> T | None:
        """The next scripted answer, or None when none is queued."""
        with self._lock:
            queue = self._queues.get(path)
            return queue.popleft() if queue else None


# -- what the fakes record ------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """A request with the status and answer body it got (headers lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    answer: Any
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class ApiRequest:
    """A request as a REST fake routes it: the path without the query, the query parsed."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)

    @classmethod
    def read(cls, handler: BaseHTTPRequestHandler) -> Self:
        body = read_body(handler)
        parts = urlsplit(handler.path)
        return cls(
            handler.command,
            parts.path,
            parse_qs(parts.query),
            dict(handler.headers.items()),
            body,
            time.time(),
        )


# -- the servers ----------------------------------------------------------------------------


class ContextManaged:
    """`with fake:` starts it and stops it again."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FakeHTTPServer(ContextManaged, Generic[R]):
    """A `ThreadingHTTPServer` on `host:port` (a free port by default) in a daemon thread.

    Subclasses implement `_serve(handler)` for every method in `methods`; other methods get
    the standard library's 501. `hosts` are the vendor hosts `override` redirects here.
    """

    methods: ClassVar[tuple[str, ...]] = ("GET", "POST", "PUT")
    poll_interval: ClassVar[float] = 0.5
    hosts: ClassVar[tuple[str, ...]] = ()

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.requests: list[R] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                fake._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        for method in self.methods:
            setattr(Handler, f"do_{method}", Handler._handle)
        self._server = self._make_server((host, port), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": self.poll_interval},
            daemon=True,
        )

    def _make_server(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]
    ) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(address, handler)
        server.daemon_threads = True
        return server

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    def _record(self, request: R) -> None:
        with self._lock:
            self.requests.append(request)

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def base_url(self) -> str:
        return self.url

    @property
    def override(self) -> str:
        """The `ALERTRELAY_HOST_OVERRIDES` entries that send the vendor's traffic here."""
        return ",".join(f"{host}={self.url}" for host in self.hosts)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class ScriptedFake(FakeHTTPServer[Received], Generic[A]):
    """A vendor fake that checks each request and records it with its answer.

    `script(*answers)` queues raw answers for the next requests, before any checking;
    otherwise `_answer(method, path, headers, body)` (headers lower-cased) decides. Answer
    bodies go out through `_encode` (JSON objects as JSON, strings as text by default).
    """

    def __init__(self) -> None:
        super().__init__()
        self._script: AnswerQueue[A] = AnswerQueue()

    def script(self, *answers: A) -> None:
        self._script.extend(answers)

    def _answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> A:
        raise NotImplementedError

    def _encode(self, body: Any) -> tuple[bytes, str]:
        return json_or_text(body)

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        body = read_body(handler)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        answer = self._script.next()
        if answer is None:
            answer = self._answer(handler.command, handler.path, headers, body)
        self._record(
            Received(
                handler.command,
                handler.path,
                headers,
                body,
                answer.status,
                answer.body,
                time.time(),
            )
        )
        payload, kind = self._encode(answer.body)
        reply(handler, answer.status, payload, answer.headers.items(), content_type=kind)


class RoutedFake(FakeHTTPServer[Q], Generic[Q, A]):
    """A REST API fake: records each request parsed (`request_type`), then answers what
    `script(path, …)` queued for its path or else what `_route(request)` says. Answer
    bodies are JSON (None: an empty body)."""

    request_type: type[Q]
    poll_interval = 0.05

    def __init__(self) -> None:
        super().__init__()
        self._script: AnswerQueue[A] = AnswerQueue()

    def script(self, path: str, *answers: A) -> None:
        """Answer the next requests to `path` with `answers` before the normal handling."""
        self._script.replace(path, answers)

    def received(self, method: str | None = None, path: str | None = None) -> list[Q]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and (path is None or r.path == path)
            ]

    def _route(self, request: Q) -> A:
        raise NotImplementedError

    def _content_type(self, payload: bytes) -> str | None:
        return "application/json"

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        request = self.request_type.read(handler)
        self._record(request)
        answer = self._script.next(request.path)
        if answer is None:
            answer = self._route(request)
        payload = b"" if answer.body is None else json.dumps(answer.body).encode()
        reply(
            handler,
            answer.status,
            payload,
            answer.headers.items(),
            content_type=self._content_type(payload),
        )
