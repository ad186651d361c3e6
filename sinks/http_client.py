"""The HTTP client every HTTP sink uses: a keep-alive pool of HTTP/1.1 connections under
the egress guard.

Why its own: per-alert fan-out is CPU-bound on the client. httpx's request path cost
~290 µs of CPU per webhook request even over aiohttp, aiohttp alone ~130 µs, this pool
over sinks.http_connection (llhttp via httptools) ~45 µs (bench/http_clients.py). The
sinks get a fully read `httpx.Response`, so everything that reads answers
(`sinks.http.classify_response`, the vendors' error parsers) and everything that
classifies failures (`sinks.http.classify_exception`, `except httpx.HTTPError`) is the
same as with httpx.

What it guarantees (each pinned in tests/unit/test_http_client.py):

- the egress guard: every new connection resolves its host once through the guard and
  connects to an address the guard accepted (no second lookup, no DNS cache, no DNS
  rebinding); IP literals are checked the same way without a lookup.
- host overrides (tests and demos) are applied before the guard, so the guard checks
  the real target; the request carries `Host` of the target and `X-Forwarded-Host` of
  the vendor host it was meant for.
- no redirects, no proxies (environment or otherwise), no netrc, no cookies (a shared
  client must not carry one tenant's cookies to another), no resend of a request whose
  connection dropped (the retry policy decides); TLS verified with the given SSLContext
  (client certificates ride inside it) against the URL's host name; a pooled connection
  is only reused for the same scheme, host and port.
- timeouts: pool (waiting for a free connection), connect (resolving, TCP and TLS
  together), write (handing the request to the network), read (between two reads of the
  answer).
- requests that could be misread (CR, LF or NUL in a header, a header name that is not
  a token) are refused before anything is sent; answers are read whole, the head up to
  64 KiB and the body up to `MAX_ANSWER_BYTES`; Content-Encoding is decoded by
  httpx.Response.
- failures raised as httpx exceptions (ConnectError, ConnectTimeout, ReadTimeout,
  RemoteProtocolError, ...) chained to the OS or ssl error. Messages name the host and
  port, never the URL (its path or query may hold a secret).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from sinks.http_connection import (
    Answer,
    AnswerInvalid,
    AnswerTooLarge,
    Connection,
    ConnectionBroke,
    ExchangeError,
    ReadTimedOut,
    WriteTimedOut,
)

if TYPE_CHECKING:
    from sinks.http import EgressGuard, HostOverrides

__all__ = ["MAX_ANSWER_BYTES", "USER_AGENT", "HttpClient"]

MAX_ANSWER_BYTES = 8 * 1024 * 1024
"""Largest answer body read; a bigger one fails the request (RemoteProtocolError)."""

USER_AGENT = "alertrelay"

_DEFAULT_HEADERS = (
    ("User-Agent", USER_AGENT),
    ("Accept", "*/*"),
    ("Accept-Encoding", "gzip, deflate"),  # what httpx.Response decodes with the stdlib
)
"""Sent unless the caller sets them."""

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_UNSAFE_VALUE = re.compile(r"[\r\n\x00]")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})

Headers = Mapping[str, str] | Sequence[tuple[str, str]]


# -- what a request needs from its URL, worked out once per URL ------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    url: httpx.URL  # as the caller gave it: what answers name
    key: tuple[str, str, int]  # scheme, host, port after host overrides: the pool key
    host: str  # after overrides: resolved through the guard, TLS server name
    port: int
    where: str  # "host:port" of the URL as given, for messages
    line: str  # " <path and query> HTTP/1.1\r\n"
    host_lines: str  # "Host: <host>\r\n" (+ "X-Forwarded-Host: ..." under an override)
    sets_host: bool  # an override decided the Host header


def _parse_target(
    url: str | httpx.URL, params: Mapping[str, str] | None, overrides: HostOverrides
) -> _Target:
    parsed = httpx.URL(url)
    if params:
        parsed = parsed.copy_merge_params(params)
    if parsed.scheme not in ("http", "https"):
        raise httpx.UnsupportedProtocol(
            f"Request URL has an unsupported protocol '{parsed.scheme}://'."
        )
    if not parsed.host:
        raise httpx.InvalidURL("the URL has no host")
    sent = overrides.rewrite(parsed)
    default_port = 443 if sent.scheme == "https" else 80
    port = sent.port or default_port
    path = sent.raw_path.decode("ascii") or "/"
    host_lines = f"Host: {sent.netloc.decode('ascii')}\r\n"
    if sent is not parsed:
        # Lets a local stand-in see which vendor host (e.g. tenant subdomain) was meant.
        host_lines += f"X-Forwarded-Host: {parsed.netloc.decode('ascii')}\r\n"
    shown_port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return _Target(
        url=parsed,
        key=(sent.scheme, sent.host, port),
        host=sent.host,
        port=port,
        where=f"{parsed.host}:{shown_port}",
        line=f" {path} HTTP/1.1\r\n",
        host_lines=host_lines,
        sets_host=sent is not parsed,
    )


class _Answer(httpx.Response):
    """A fully read answer whose `request` is built only when someone asks for it (the
    redirect message does; a delivery never does, and building it costs ~8 µs)."""

    _method: str
    _url: httpx.URL

    @property  # type: ignore[override]
    def request(self) -> httpx.Request:
        if self._request is None:
            self._request = httpx.Request(self._method, self._url)
        return self._request

    @request.setter
    def request(self, value: httpx.Request) -> None:
        self._request = value


@dataclass(frozen=True, slots=True)
class _Timeouts:
    pool: float | None
    connect: float | None
    write: float
    read: float  # 0: none


def _timeouts(spec: httpx.Timeout | float) -> _Timeouts:
    timeout = spec if isinstance(spec, httpx.Timeout) else httpx.Timeout(spec)
    return _Timeouts(
        pool=timeout.pool,
        connect=timeout.connect,
        write=timeout.write or 0.0,
        read=timeout.read or 0.0,
    )


class HttpClient:
    """HTTP/1.1 keep-alive client for the sinks (see the module docstring).

    The pool belongs to the event loop of the first request. `max_connections` bounds
    the open connections of all hosts together; idle ones close after
    `keepalive_expiry` seconds. `timeout` is the default for each request (read and
    write; connecting and waiting for a pooled connection get at most 5 s each), like
    `httpx.Timeout(timeout, connect=5, pool=5)`.
    """

    _TARGETS_MAX = 4096

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        guard: EgressGuard,
        overrides: HostOverrides,
        timeout: float = 10.0,
        max_connections: int = 100,
        keepalive_expiry: float = 5.0,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._ssl_context = ssl_context
        self._guard = guard
        self._overrides = overrides
        short = min(timeout, 5.0)
        self._timeout_spec = httpx.Timeout(timeout, connect=short, pool=short)
        self._default_timeouts = _timeouts(self._timeout_spec)
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._closed = False
        self._targets: dict[str, _Target] = {}  # URL text -> target, oldest first
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._open: set[Connection] = set()
        self._sweep: asyncio.TimerHandle | None = None

    # -- configuration and state, for tests and callers that build more clients alike --

    @property
    def ssl_context(self) -> ssl.SSLContext:
        return self._ssl_context

    @property
    def timeout(self) -> httpx.Timeout:
        """Each request's timeouts unless it gives its own."""
        return self._timeout_spec

    @property
    def max_connections(self) -> int:
        return self._max_connections

    @property
    def keepalive_expiry(self) -> float:
        return self._keepalive_expiry

    @property
    def open_connections(self) -> int:
        return len(self._open)

    # -- requests --

    async def request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        headers: Headers | None = None,
        content: bytes | str | None = None,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | float | None = None,  # noqa: ASYNC109 (enforced per phase)
    ) -> httpx.Response:
        """Send one request and return its answer, read whole, whatever its status.

        Raises httpx exceptions for failures (see the module docstring), PermanentError
        from the guard, RuntimeError once the client is closed."""
        if self._closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        target = self._target(url, params)
        if json is not None and content is None:
            content = orjson.dumps(json)
            if not _has(headers, "content-type"):
                headers = [*_pairs(headers), ("Content-Type", "application/json")]
        data = content.encode("utf-8") if isinstance(content, str) else content
        request = _serialize(method, target, headers, data)
        limits = self._default_timeouts if timeout is None else _timeouts(timeout)
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._adopt(loop)
        try:
            answer = await self._exchange(target, request, limits, loop)
        except _FAILURES as exc:
            raise _mapped(exc, method, target) from _cause(exc)
        response = _Answer(
            answer.status,
            headers=answer.headers,
            content=answer.body,
            extensions={
                "http_version": f"HTTP/{answer.version}".encode("ascii"),
                "reason_phrase": answer.reason,
            },
        )
        response._method, response._url = method, target.url
        return response

    async def get(self, url: str | httpx.URL, **kwargs: Any) -> httpx.Response:
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str | httpx.URL, **kwargs: Any) -> httpx.Response:
        return await self.request("POST", url, **kwargs)

    async def put(self, url: str | httpx.URL, **kwargs: Any) -> httpx.Response:
        return await self.request("PUT", url, **kwargs)

    async def delete(self, url: str | httpx.URL, **kwargs: Any) -> httpx.Response:
        return await self.request("DELETE", url, **kwargs)

    # -- lifecycle --

    async def aclose(self) -> None:
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for connection in list(self._open):
            connection.close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports' close callbacks run

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the pool --

    async def _exchange(
        self,
        target: _Target,
        request: bytes,
        limits: _Timeouts,
        loop: asyncio.AbstractEventLoop,
    ) -> Answer:
        slots = self._slots
        if slots.locked():
            try:
                async with asyncio.timeout(limits.pool):
                    await slots.acquire()
            except TimeoutError:
                raise _PoolTimeout() from None
        else:
            await slots.acquire()
        try:
            connection = self._reuse(target.key, loop)
            if connection is None:
                connection = await self._connect(target, limits.connect, loop)
            try:
                answer = await connection.exchange(request, limits.read, limits.write)
            except BaseException:
                connection.abort()  # half-sent or half-read: never reused
                raise
            if answer.keep_alive and not connection.closed and not self._closed:
                connection.idle_since = loop.time()
                self._idle.setdefault(target.key, []).append(connection)
                if self._sweep is None:
                    self._sweep = loop.call_later(self._keepalive_expiry, self._expire)
            else:
                connection.close()
            return answer
        finally:
            slots.release()

    def _reuse(
        self, key: tuple[str, str, int], loop: asyncio.AbstractEventLoop
    ) -> Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = loop.time()
        while idle:
            connection = idle.pop()  # the most recent: the least likely to be closed
            if not connection.closed and now - connection.idle_since < self._keepalive_expiry:
                return connection
            connection.close()
        return None

    async def _connect(
        self, target: _Target, within: float | None, loop: asyncio.AbstractEventLoop
    ) -> Connection:
        if len(self._open) >= self._max_connections:
            self._evict_one()
        tls = target.key[0] == "https"
        try:
            async with asyncio.timeout(within):
                try:
                    addresses = await self._guard.resolve(target.host, target.port)
                except OSError as exc:
                    raise _Unresolved(target.host, exc) from exc
                last: OSError | None = None
                for ip in addresses:
                    try:
                        _, connection = await loop.create_connection(
                            self._protocol,
                            str(ip),
                            target.port,
                            ssl=self._ssl_context if tls else None,
                            server_hostname=target.host if tls else None,
                        )
                    except ssl.SSLError:
                        raise  # the same certificate comes from every address
                    except OSError as exc:
                        last = exc
                        continue
                    return connection
                raise last or OSError(f"{target.host} resolved to no address")
        except TimeoutError:
            raise _ConnectTimeout() from None

    def _protocol(self) -> Connection:
        loop = self._loop
        assert loop is not None
        connection = Connection(loop, MAX_ANSWER_BYTES, self._open.discard)
        self._open.add(connection)
        return connection

    def _evict_one(self) -> None:
        """Close the longest-idle connection so a new one stays within the limit."""
        oldest: tuple[float, list[Connection]] | None = None
        for idle in self._idle.values():
            if idle and (oldest is None or idle[0].idle_since < oldest[0]):
                oldest = (idle[0].idle_since, idle)
        if oldest is not None:
            oldest[1].pop(0).close()

    def _expire(self) -> None:
        self._sweep = None
        loop = self._loop
        if loop is None or self._closed:
            return
        now = loop.time()
        remaining = False
        for key, idle in list(self._idle.items()):
            kept = [c for c in idle if not c.closed and now - c.idle_since < self._keepalive_expiry]
            for connection in idle:
                if connection not in kept:
                    connection.close()
            if kept:
                self._idle[key] = kept
                remaining = True
            else:
                del self._idle[key]
        if remaining:
            self._sweep = loop.call_later(self._keepalive_expiry / 2, self._expire)

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start a fresh pool in `loop` (connections of another loop cannot be used)."""
        for connection in list(self._open):
            with contextlib.suppress(RuntimeError):  # its loop is closed already
                connection.abort()
        self._open.clear()
        self._idle.clear()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._slots = asyncio.Semaphore(self._max_connections)
        self._loop = loop

    def _target(self, url: str | httpx.URL, params: Mapping[str, str] | None) -> _Target:
        """Where `url` goes, remembered per URL text: a webhook integration sends every
        alert to the same URL, and parsing and rewriting it costs ~25 µs."""
        if params:
            return _parse_target(url, params, self._overrides)
        key = url if isinstance(url, str) else str(url)
        target = self._targets.get(key)
        if target is None:
            target = _parse_target(url, None, self._overrides)
            if len(self._targets) >= self._TARGETS_MAX:
                del self._targets[next(iter(self._targets))]
            self._targets[key] = target
        return target


# -- the request on the wire -----------------------------------------------------------


def _pairs(headers: Headers | None) -> list[tuple[str, str]]:
    if headers is None:
        return []
    return list(headers.items()) if isinstance(headers, Mapping) else list(headers)


def _has(headers: Headers | None, lowered: str) -> bool:
    return any(name.lower() == lowered for name, _ in _pairs(headers))


def _serialize(method: str, target: _Target, headers: Headers | None, body: bytes | None) -> bytes:
    """Request line, headers and body as sent. A caller's Host replaces ours unless an
    override chose the destination; our defaults fill in what the caller did not set;
    framing (Content-Length) is always ours."""
    if method in ("HEAD", "CONNECT") or not _TOKEN.match(method):
        raise httpx.LocalProtocolError(f"method {method[:20]!r} is not supported")
    given: list[str] = []
    names: set[str] = set()
    for name, value in _pairs(headers):
        lowered = name.lower()
        if not _TOKEN.match(name):
            raise httpx.LocalProtocolError(f"header name {name[:40]!r} is not a token")
        if _UNSAFE_VALUE.search(value):
            raise httpx.LocalProtocolError(f"header {name} has CR, LF or NUL in its value")
        if lowered in _FRAMING or (lowered == "host" and target.sets_host):
            continue
        names.add(lowered)
        given.append(f"{name}: {value}\r\n")
    lines = [method, target.line]
    if "host" not in names:
        lines.append(target.host_lines)
    lines += given
    lines += [f"{n}: {v}\r\n" for n, v in _DEFAULT_HEADERS if n.lower() not in names]
    if body is not None or method in _BODY_METHODS:
        lines.append(f"Content-Length: {len(body or b'')}\r\n")
    lines.append("\r\n")
    head = "".join(lines).encode("utf-8")
    return head + body if body else head


# -- failures as httpx exceptions ------------------------------------------------------


class _PoolTimeout(Exception):
    pass


class _ConnectTimeout(Exception):
    pass


class _Unresolved(Exception):
    def __init__(self, host: str, error: OSError) -> None:
        super().__init__(host)
        self.host = host
        self.error = error


_FAILURES = (ExchangeError, OSError, _PoolTimeout, _ConnectTimeout, _Unresolved)


def _detail(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return re.sub(r"\s*\(_ssl\.c:\d+\)", "", text)


def _mapped(exc: BaseException, method: str, target: _Target) -> Exception:
    """The httpx exception for a failure of a request to `target`."""
    request = httpx.Request(method, target.url)
    where = target.where
    if isinstance(exc, _PoolTimeout):
        return httpx.PoolTimeout("no free connection within the pool timeout", request=request)
    if isinstance(exc, _ConnectTimeout):
        return httpx.ConnectTimeout(f"connecting to {where} timed out", request=request)
    if isinstance(exc, _Unresolved):
        detail = _detail(exc.error)
        return httpx.ConnectError(f"could not resolve {exc.host}: {detail}", request=request)
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = getattr(exc, "verify_message", None) or _detail(exc)
        return httpx.ConnectError(
            f"TLS certificate of {where} failed verification: {detail}", request=request
        )
    if isinstance(exc, ssl.SSLError):
        return httpx.ConnectError(
            f"TLS handshake with {where} failed: {_detail(exc)}", request=request
        )
    if isinstance(exc, OSError):
        return httpx.ConnectError(f"connecting to {where} failed: {_detail(exc)}", request=request)
    if isinstance(exc, ReadTimedOut):
        return httpx.ReadTimeout(f"reading from {where} timed out", request=request)
    if isinstance(exc, WriteTimedOut):
        return httpx.WriteTimeout(f"sending the request to {where} timed out", request=request)
    if isinstance(exc, AnswerTooLarge):
        return httpx.RemoteProtocolError(f"{where} sent too much: {exc}", request=request)
    if isinstance(exc, AnswerInvalid):
        return httpx.RemoteProtocolError(
            f"{where} sent an invalid response: {exc}", request=request
        )
    if isinstance(exc, ConnectionBroke):
        cause = exc.__cause__
        if cause is None:
            return httpx.RemoteProtocolError(
                f"{where} disconnected without sending a complete response", request=request
            )
        return httpx.ReadError(f"connection to {where} failed: {_detail(cause)}", request=request)
    return httpx.TransportError(f"request to {where} failed: {_detail(exc)}", request=request)


def _cause(exc: BaseException) -> BaseException:
    """What the httpx exception is chained to: the OS or ssl error behind a broken
    connection (code reading the chain, e.g. the webhook sink looking for a TLS alert,
    expects the ssl error itself), otherwise `exc`."""
    if isinstance(exc, ConnectionBroke) and exc.__cause__ is not None:
        return exc.__cause__
    if isinstance(exc, _Unresolved):
        return exc.error
    return exc
