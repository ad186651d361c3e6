"""The HTTP client every HTTP sink uses: aiohttp's keep-alive pool under the egress guard.

Why not httpx.AsyncClient: per-alert fan-out is CPU-bound on the client. httpx's
request path (building the Request, auth/redirect/hook layers, the streamed Response
read back through async generators) cost ~175 µs of CPU per request on top of aiohttp's
~145 µs (bench/http_clients.py); this client calls aiohttp directly and hands the
sinks a fully read `httpx.Response`, so everything that reads answers
(`sinks.http.classify_response`, the vendors' error parsers) and everything that
classifies failures (`sinks.http.classify_exception`, `except httpx.HTTPError`) stays.

What it guarantees (each pinned in tests/unit/test_http_client.py):

- the egress guard: `GuardedResolver` is the connector's only resolver, the DNS cache
  is off, so every new connection resolves its host once through the guard and connects
  to the addresses the guard accepted (no second lookup, no DNS rebinding). IP literals
  never reach a resolver in aiohttp, so the client checks them itself first.
- host overrides (tests and demos) are applied before the guard, so the guard checks
  the real target; the request carries `Host` of the target and `X-Forwarded-Host` of
  the vendor host it was meant for.
- no redirects, no env proxies or netrc, no cookies (a shared client must not carry one
  tenant's cookies to another), no automatic resend of a request whose connection
  dropped (the retry policy decides), TLS verified with the given SSLContext (client
  certificates ride inside it); the connection key keeps the host name, so a TLS
  connection verified for one name is never reused for another.
- timeouts: connect (per connection attempt, TLS handshake included), pool + connect for
  getting a connection at all (resolving included), read (between two reads of the
  answer), and the whole exchange within pool + connect + write + read (aiohttp has no
  write timeout of its own).
- answers are read whole, at most `MAX_ANSWER_BYTES` (a destination cannot make a worker
  hold gigabytes); Content-Encoding is decoded by httpx.Response as before.
- failures raised as httpx exceptions (ConnectError, ConnectTimeout, ReadTimeout,
  RemoteProtocolError, ...) chained to the aiohttp/ssl error. Messages name the host,
  never the URL (its path or query may hold a secret).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
import orjson
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

if TYPE_CHECKING:
    from sinks.http import EgressGuard, HostOverrides

__all__ = ["MAX_ANSWER_BYTES", "GuardedResolver", "HttpClient"]

MAX_ANSWER_BYTES = 8 * 1024 * 1024
"""Largest answer body read; a bigger one fails the request (RemoteProtocolError)."""

USER_AGENT = "alertrelay"

_HEADER_LINE_LIMIT = 16 * 1024
"""Longest response status/header line accepted (h11's limit for the whole head is 16 KiB;
aiohttp's default of 8 KiB would refuse answers that httpx took)."""

_DEFAULT_HEADERS = (
    ("User-Agent", USER_AGENT),
    ("Accept", "*/*"),
    ("Accept-Encoding", "gzip, deflate"),  # what httpx.Response decodes with the stdlib
)
"""Sent unless the caller sets them."""

Headers = Mapping[str, str] | Sequence[tuple[str, str]]


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that resolves through the egress guard: only the addresses the
    guard accepts are returned; a refusal (PermanentError) propagates as it is."""

    def __init__(self, guard: EgressGuard) -> None:
        self._guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await self._guard.resolve(host, port)
        return [
            {
                "hostname": host,
                "host": str(ip),
                "port": port,
                "family": socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                "proto": socket.IPPROTO_TCP,
                "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            }
            for ip in addresses
        ]

    async def close(self) -> None:
        return None


# -- failures as httpx exceptions ---------------------------------------------------------


def _origin(url: httpx.URL) -> str:
    return f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}"


def _describe(exc: BaseException, url: httpx.URL) -> str:
    """`exc` as text with the request URL cut down to its origin (aiohttp puts whole URLs
    into some messages)."""
    text = str(exc) or type(exc).__name__
    full = str(url)
    if full in text:
        text = text.replace(full, _origin(url))
    return text


def _os_detail(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _mapped(exc: BaseException, request: httpx.Request) -> Exception:
    """The httpx exception for an aiohttp/OS failure of `request`."""
    url = request.url
    where = f"{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(f"connecting to {where} timed out", request=request)
    if isinstance(exc, aiohttp.ServerTimeoutError):  # SocketTimeoutError: sock_read
        return httpx.ReadTimeout(f"reading from {where} timed out", request=request)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        detail = _os_detail(exc.os_error)
        return httpx.ConnectError(f"could not resolve {url.host}: {detail}", request=request)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert_error = exc.certificate_error
        detail = getattr(cert_error, "verify_message", None) or _os_detail(cert_error)
        return httpx.ConnectError(
            f"TLS certificate of {where} failed verification: {detail}", request=request
        )
    if isinstance(exc, aiohttp.ClientSSLError):
        return httpx.ConnectError(
            f"TLS handshake with {where} failed: {_os_detail(exc.os_error)}", request=request
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(
            f"connecting to {where} failed: {_os_detail(exc.os_error)}", request=request
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(
            f"{where} disconnected without sending a complete response", request=request
        )
    if isinstance(exc, aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(
            f"{where} sent an incomplete or malformed body: {_describe(exc, url)}",
            request=request,
        )
    if isinstance(exc, aiohttp.ClientResponseError):  # the answer's head did not parse
        return httpx.RemoteProtocolError(
            f"{where} sent an invalid response: {exc.message}", request=request
        )
    if isinstance(exc, aiohttp.NonHttpUrlClientError):
        return httpx.UnsupportedProtocol(f"{_describe(exc, url)}", request=request)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.InvalidURL(f"invalid URL for {where}: {exc.description or 'unusable'}")
    if isinstance(exc, TimeoutError):  # the bound on the whole exchange
        return httpx.WriteTimeout(
            f"sending the request to {where} or waiting for its answer timed out",
            request=request,
        )
    if isinstance(exc, aiohttp.ClientConnectionError | OSError):
        detail = _describe(exc, url)
        error_type = httpx.WriteError if "write" in detail.lower() else httpx.ReadError
        return error_type(f"connection to {where} failed: {detail}", request=request)
    if isinstance(exc, ValueError):  # e.g. a header value aiohttp will not send
        return httpx.LocalProtocolError(f"request to {where} cannot be sent: {_describe(exc, url)}")
    return httpx.TransportError(
        f"request to {where} failed: {type(exc).__name__}: {_describe(exc, url)}",
        request=request,
    )


def _cause(exc: BaseException) -> BaseException:
    """What the httpx exception is chained to: for aiohttp's TLS errors the ssl error
    they wrap (they subclass ssl.SSLError without its attributes, and code reading the
    chain, e.g. the webhook sink looking for a TLS alert, expects real ssl errors),
    otherwise `exc` itself."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return exc.certificate_error
    if isinstance(exc, aiohttp.ClientSSLError):
        return exc.os_error
    return exc


_FAILURES = (aiohttp.ClientError, OSError, TimeoutError, ValueError)


# -- what a request needs from its URL, worked out once per URL ------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    url: httpx.URL  # as the caller gave it: what answers and messages name
    send_to: yarl.URL  # after host overrides
    literal: str | None  # the host to check, when it is an IP literal (aiohttp skips the resolver)
    headers: tuple[tuple[str, str], ...]  # Host / X-Forwarded-Host of an override


def _literal(host: str) -> str | None:
    if not host or not (host[-1].isdigit() or ":" in host):
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host


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


class HttpClient:
    """HTTP/1.1 keep-alive client over one aiohttp ClientSession, for the sinks.

    The session is opened on the first request, inside the running event loop, and
    closed by `aclose`. `max_connections` bounds the pool (all hosts together; all may
    stay idle up to `keepalive_expiry` seconds). `timeout` is the default for each
    request (read and write; connecting and waiting for a pooled connection get at most
    5 s each), like `httpx.Timeout(timeout, connect=5, pool=5)`.
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
        self._timeouts: dict[tuple[float | None, ...], aiohttp.ClientTimeout] = {}
        self._timeout_spec = httpx.Timeout(timeout, connect=short, pool=short)
        self._default_timeout = _aiohttp_timeout(self._timeout_spec)
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._targets: dict[str, _Target] = {}  # URL text -> target, oldest first
        self._literals_allowed: set[str] = set()

    # -- configuration, for tests and callers that build more clients alike --

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
    def session(self) -> aiohttp.ClientSession | None:
        """The open aiohttp session, if a request opened one."""
        return self._session

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
        timeout: httpx.Timeout | float | None = None,  # noqa: ASYNC109 (aiohttp enforces it, per phase)
    ) -> httpx.Response:
        """Send one request and return its answer, read whole, whatever its status.

        Raises httpx exceptions for failures (see the module docstring), PermanentError
        from the guard, RuntimeError once the client is closed."""
        if self._closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        target = self._target(url, params)
        if target.literal is not None and target.literal not in self._literals_allowed:
            self._check_literal(target.literal)
        session = self._session
        loop = asyncio.get_running_loop()
        if session is None or self._loop is not loop:
            session = self._open(loop)

        sent: list[tuple[str, str]] = list(target.headers)
        given = headers.items() if isinstance(headers, Mapping) else (headers or ())
        names = {"host"} if sent else set()
        for name, value in given:
            lowered = name.lower()
            if lowered == "host" and sent:
                continue  # an override's target decides where the request goes
            names.add(lowered)
            sent.append((name, value))
        if json is not None and content is None:
            content = orjson.dumps(json)
            if "content-type" not in names:
                sent.append(("Content-Type", "application/json"))
                names.add("content-type")
        sent.extend((name, value) for name, value in _DEFAULT_HEADERS if name.lower() not in names)
        data = content.encode("utf-8") if isinstance(content, str) else content
        skip = None if "content-type" in names else ("Content-Type",)  # no octet-stream of its own

        aio_timeout = self._default_timeout if timeout is None else self._timeout(timeout)
        try:
            response = await session.request(
                method,
                target.send_to,
                headers=sent,
                data=data,
                allow_redirects=False,
                timeout=aio_timeout,
                skip_auto_headers=skip,
            )
            try:
                body = await _read_whole(response)
            except BaseException:
                response.close()  # an unread rest must not go back to the pool
                raise
        except _FAILURES as exc:
            request = httpx.Request(method, target.url)
            raise _mapped(exc, request) from _cause(exc)
        response.release()
        version = response.version
        answer = _Answer(
            response.status,
            headers=response.raw_headers,
            content=body,
            extensions={
                "http_version": b"HTTP/1.1"
                if version is None
                else f"HTTP/{version.major}.{version.minor}".encode(),
                "reason_phrase": (response.reason or "").encode("ascii", "replace"),
            },
        )
        answer._method, answer._url = method, target.url
        return answer

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
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- internals --

    def _open(self, loop: asyncio.AbstractEventLoop) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            keepalive_timeout=self._keepalive_expiry,
            force_close=False,
            use_dns_cache=False,  # every new connection is resolved and checked again
            resolver=GuardedResolver(self._guard),
            ssl=self._ssl_context,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,  # no env proxies, no netrc
            auto_decompress=False,  # httpx.Response decodes Content-Encoding
            cookie_jar=aiohttp.DummyCookieJar(),  # no cookies between requests
            raise_for_status=False,
            timeout=aiohttp.ClientTimeout(total=None),
            max_line_size=_HEADER_LINE_LIMIT,
            max_field_size=_HEADER_LINE_LIMIT,
        )
        # aiohttp resends an idempotent request once when a pooled connection drops;
        # one attempt must stay one request (the retry policy and the status records
        # count attempts). No public switch in aiohttp 3.x.
        session._retry_connection = False
        self._session, self._loop = session, loop
        return session

    def _timeout(self, spec: httpx.Timeout | float) -> aiohttp.ClientTimeout:
        timeout = spec if isinstance(spec, httpx.Timeout) else httpx.Timeout(spec)
        key = (timeout.connect, timeout.read, timeout.write, timeout.pool)
        cached = self._timeouts.get(key)
        if cached is None:
            cached = _aiohttp_timeout(timeout)
            if len(self._timeouts) < 64:
                self._timeouts[key] = cached
        return cached

    def _target(self, url: str | httpx.URL, params: Mapping[str, str] | None) -> _Target:
        """Where `url` goes, remembered per URL text: a webhook integration sends every
        alert to the same URL, and parsing and rewriting it costs ~25 µs."""
        key = url if isinstance(url, str) else str(url)
        if not params:
            cached = self._targets.get(key)
            if cached is not None:
                return cached
        parsed = httpx.URL(url)
        if params:
            parsed = parsed.copy_merge_params(params)
        if parsed.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(
                f"Request URL has an unsupported protocol '{parsed.scheme}://'."
            )
        rewritten = self._overrides.rewrite(parsed)
        extra: tuple[tuple[str, str], ...] = ()
        if rewritten is not parsed:
            extra = (
                ("Host", rewritten.netloc.decode("ascii")),
                # Lets a local stand-in see which vendor host (e.g. tenant subdomain) was meant.
                ("X-Forwarded-Host", parsed.netloc.decode("ascii")),
            )
        target = _Target(
            url=parsed,
            send_to=yarl.URL(str(rewritten), encoded=True),
            literal=_literal(rewritten.host),
            headers=extra,
        )
        if not params:
            if len(self._targets) >= self._TARGETS_MAX:
                del self._targets[next(iter(self._targets))]
            self._targets[key] = target
        return target

    def _check_literal(self, host: str) -> None:
        """aiohttp connects to an IP literal without asking the resolver: check it here.

        A literal the guard let through is remembered (the guard's allow list does not
        change), so a destination by IP is not checked again on every request."""
        self._guard.check(ipaddress.ip_address(host), host)
        if len(self._literals_allowed) >= 1024:
            self._literals_allowed.clear()
        self._literals_allowed.add(host)


def _aiohttp_timeout(timeout: httpx.Timeout) -> aiohttp.ClientTimeout:
    """httpx's four timeouts as aiohttp's: connect per attempt, pool + connect to get a
    connection at all, read between reads, and all four together for the exchange."""
    connect, read, write, pool = timeout.connect, timeout.read, timeout.write, timeout.pool
    acquire = None if connect is None or pool is None else connect + pool
    parts = (connect, read, write, pool)
    total = None if None in parts else sum(p for p in parts if p is not None)
    return aiohttp.ClientTimeout(total=total, connect=acquire, sock_connect=connect, sock_read=read)


async def _read_whole(response: aiohttp.ClientResponse) -> bytes:
    """The answer's body, refusing more than MAX_ANSWER_BYTES."""
    length = response.content_length
    if length is not None and length > MAX_ANSWER_BYTES:
        raise _AnswerTooLarge()
    chunks: list[bytes] = []
    size = 0
    stream = response.content
    while chunk := await stream.readany():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise _AnswerTooLarge()
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _AnswerTooLarge(aiohttp.ClientPayloadError):
    def __str__(self) -> str:
        return f"answer larger than {MAX_ANSWER_BYTES // (1024 * 1024)} MiB"
