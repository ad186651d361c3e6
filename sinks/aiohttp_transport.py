"""An httpx transport that sends requests with aiohttp, under the egress guard.

Why: httpx's own transport (httpcore + h11 + anyio) costs 1-3 ms of CPU per request on
the delivery hosts, aiohttp's C-accelerated client about 0.1 ms (bench/http_clients.py),
and per-alert fan-out is CPU-bound on it. Sinks and tests keep the httpx.AsyncClient
API (and httpx.MockTransport in unit tests); only what sits under the client changes.

What it keeps from the httpcore stack it replaces (sinks.http.build_client):

- the egress guard: `GuardedResolver` is the connector's only resolver, the DNS cache
  is off, so every new connection resolves its host once through the guard and connects
  to the addresses the guard accepted (no second lookup, no DNS rebinding). IP literals
  never reach a resolver in aiohttp, so the transport checks them itself first.
- no redirects, no env proxies or netrc, no cookies of its own (httpx keeps those), no
  automatic retry of a request whose connection dropped (the retry policy decides),
  TLS verified with the given SSLContext (client certificates ride inside it), the
  connection key keeps the host name so a TLS connection verified for one name is never
  reused for another.
- timeouts from the request's httpx timeout extension: connect (per connection attempt,
  TLS handshake included), pool + connect for getting a connection at all (resolving
  included), read (between two reads of the answer). aiohttp has no write timeout, so
  sending the request and waiting for the answer's head is bounded by
  pool + connect + write + read in all.
- failures raised as httpx exceptions (ConnectError, ConnectTimeout, ReadTimeout,
  RemoteProtocolError, ...) chained to the aiohttp/ssl error, so
  `sinks.http.classify_exception` and the sinks' `except httpx.HTTPError` keep working.
  Messages name the host, never the URL (its path or query may hold a secret).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

if TYPE_CHECKING:
    from sinks.http import EgressGuard

__all__ = ["AiohttpTransport", "GuardedResolver"]

_HEADER_LINE_LIMIT = 16 * 1024
"""Longest response status/header line accepted (h11's limit for the whole head is 16 KiB;
aiohttp's default of 8 KiB would refuse answers that httpx took)."""


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


def _os_detail(error: OSError) -> str:
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
        detail = getattr(cert_error, "verify_message", None) or _os_detail_any(cert_error)
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
    if isinstance(exc, TimeoutError):  # the transport's own bound on send + answer head
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
    chain, e.g. the webhook sink looking for a TLS alert, expects real ssl errors, as
    httpcore gave them), otherwise `exc` itself."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return exc.certificate_error
    if isinstance(exc, aiohttp.ClientSSLError):
        return exc.os_error
    return exc


def _os_detail_any(error: BaseException) -> str:
    return _os_detail(error) if isinstance(error, OSError) else str(error) or type(error).__name__


_FAILURES = (aiohttp.ClientError, OSError, TimeoutError, ValueError)


class _ResponseStream(httpx.AsyncByteStream):
    """The answer's body as aiohttp receives it; closing releases the connection to the
    pool (or closes it when the body was not read to the end)."""

    __slots__ = ("_request", "_response")

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except _FAILURES as exc:
            raise _mapped(exc, self._request) from _cause(exc)

    async def aclose(self) -> None:
        self._response.release()


async def _request_body(stream: httpx.AsyncByteStream) -> AsyncIterator[bytes]:
    async for chunk in stream:
        yield chunk


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx transport over one aiohttp ClientSession (HTTP/1.1, keep-alive pool).

    The session is opened on the first request, inside the running event loop, and
    closed by `aclose` (httpx.AsyncClient.aclose). `max_connections` bounds the pool
    (all hosts together; all may stay idle up to `keepalive_expiry` seconds).
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        guard: EgressGuard,
        max_connections: int = 100,
        keepalive_expiry: float = 5.0,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._ssl_context = ssl_context
        self._guard = guard
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeouts: dict[tuple[float | None, ...], tuple[aiohttp.ClientTimeout, float | None]]
        self._timeouts = {}
        self._literals_allowed: set[str] = set()

    @property
    def ssl_context(self) -> ssl.SSLContext:
        return self._ssl_context

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
            auto_decompress=False,  # httpx decodes Content-Encoding itself
            cookie_jar=aiohttp.DummyCookieJar(),  # httpx.AsyncClient keeps the cookies
            raise_for_status=False,
            timeout=aiohttp.ClientTimeout(total=None),
            max_line_size=_HEADER_LINE_LIMIT,
            max_field_size=_HEADER_LINE_LIMIT,
        )
        # aiohttp resends an idempotent request once when a pooled connection drops;
        # httpx never did, and one attempt must stay one request (the retry policy and
        # the status records count attempts). No public switch in aiohttp 3.x.
        session._retry_connection = False
        self._session, self._loop = session, loop
        return session

    def _timeout(
        self, spec: Mapping[str, float | None]
    ) -> tuple[aiohttp.ClientTimeout, float | None]:
        key = (spec.get("connect"), spec.get("read"), spec.get("write"), spec.get("pool"))
        cached = self._timeouts.get(key)
        if cached is not None:
            return cached
        connect, read, _write, pool = key
        acquire = None if connect is None or pool is None else connect + pool
        overall = None if None in key else sum(v for v in key if v is not None)
        cached = (
            aiohttp.ClientTimeout(
                total=None, connect=acquire, sock_connect=connect, sock_read=read
            ),
            overall,
        )
        if len(self._timeouts) < 64:
            self._timeouts[key] = cached
        return cached

    def _check_literal(self, host: str) -> None:
        """aiohttp connects to an IP literal without asking the resolver: check it here.

        A literal the guard let through is remembered (the guard's allow list does not
        change), so a destination by IP is not parsed and checked again on every request.
        """
        if not host or host in self._literals_allowed or not (host[-1].isdigit() or ":" in host):
            return
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return
        self._guard.check(ip, host)
        if len(self._literals_allowed) >= 1024:
            self._literals_allowed.clear()
        self._literals_allowed.add(host)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(
                f"Request URL has an unsupported protocol '{url.scheme}://'.", request=request
            )
        self._check_literal(url.host)
        loop = asyncio.get_running_loop()
        session = self._session
        if session is None or self._loop is not loop:
            session = self._open(loop)
        timeout, overall = self._timeout(request.extensions.get("timeout") or {})

        encoding = request.headers.encoding  # names keep their case, as httpcore sent them
        headers = [(k.decode(encoding), v.decode(encoding)) for k, v in request.headers.raw]
        data: bytes | AsyncIterator[bytes] | None
        stream = request.stream
        try:
            data = request.content or None
        except httpx.RequestNotRead:
            if isinstance(stream, httpx.ByteStream):  # e.g. rewritten by the host overrides
                data = b"".join([chunk async for chunk in stream]) or None
            else:
                assert isinstance(stream, httpx.AsyncByteStream)
                data = _request_body(stream)
                headers = [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]
        skip = None
        if "content-type" not in request.headers:
            skip = ("Content-Type",)  # aiohttp would add application/octet-stream

        try:
            async with asyncio.timeout(overall):
                response = await session.request(
                    request.method,
                    yarl.URL(str(url), encoded=True),
                    headers=headers,
                    data=data,
                    allow_redirects=False,
                    timeout=timeout,
                    skip_auto_headers=skip,
                )
        except _FAILURES as exc:
            raise _mapped(exc, request) from _cause(exc)

        version = response.version
        extensions: dict[str, Any] = {
            "http_version": b"HTTP/1.1"
            if version is None
            else f"HTTP/{version.major}.{version.minor}".encode()
        }
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode("ascii", "replace")
        return httpx.Response(
            response.status,
            headers=list(response.raw_headers),
            stream=_ResponseStream(response, request),
            extensions=extensions,
        )

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
