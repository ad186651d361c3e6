"""The HTTP client `build_client` gives every sink keeps every guarantee of the HTTP layer.

Each test runs a real client against a real server on 127.0.0.1 (a raw asyncio
HTTP/1.1 server, so what travels on the wire is what the test sees) with the loopback
network allowed explicitly, as ALERTRELAY_EGRESS_ALLOW=127.0.0.1/32 would.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sinks.errors import DeliveryError, PermanentError, RetryableError, exception_chain
from sinks.http import (
    EgressGuard,
    HostOverrides,
    Redactor,
    build_client,
    classify_exception,
    classify_response,
)
from sinks.http_client import MAX_ANSWER_BYTES, HttpClient

LOOPBACK = EgressGuard([ipaddress.ip_network("127.0.0.1/32")])
NO_OVERRIDES = HostOverrides()
NOBODY = Redactor()


# -- a raw HTTP/1.1 server ----------------------------------------------------------------


@dataclass
class Received:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    connection: int

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


Reply = Callable[[Received], bytes | None]
"""The raw answer to a request; None: never answer (hang); b"": close at once."""


def ok(body: bytes = b"ok", *extra: str, status: str = "200 OK") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n"
    return (head + "".join(f"{h}\r\n" for h in extra) + "\r\n").encode("latin-1") + body


@dataclass
class RawServer:
    reply: Reply = field(default=lambda request: ok())
    ssl_context: ssl.SSLContext | None = None
    read_requests: bool = True
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    closed: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, ssl=self.ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    async def _body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    return b"".join(chunks)
                chunks.append(chunk[:-2])
        return await reader.readexactly(int(headers.get("content-length", "0")))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        self._writers.append(writer)
        try:
            if not self.read_requests:
                await self._stop.wait()
                return
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                pairs = [tuple(p.strip() for p in ln.split(":", 1)) for ln in lines[1:] if ln]
                headers = [(k, v) for k, v in pairs]
                body = await self._body(reader, {k.lower(): v for k, v in headers})
                request = Received(method, target, headers, body, number)
                self.received.append(request)
                answer = self.reply(request)
                if answer is None:
                    await self._stop.wait()
                    return
                if not answer:  # close without answering
                    return
                writer.write(answer)
                await writer.drain()
                if b"\r\nconnection: close\r\n" in answer.split(b"\r\n\r\n")[0].lower() + b"\r\n":
                    return
        except (ConnectionError, ssl.SSLError):
            return
        finally:
            self.closed += 1
            writer.close()


def _static_resolver(table: dict[str, list[str]], calls: list[str]) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the client ---------------------------------------------------------------------------


def test_build_client_verifies_tls_and_keeps_a_pool() -> None:
    client = build_client(overrides=NO_OVERRIDES, guard=LOOPBACK)
    assert isinstance(client, HttpClient)
    assert client.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert client.ssl_context.check_hostname
    assert client.max_connections == 256 and client.keepalive_expiry == 5.0


def test_the_pool_size_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERTRELAY_HTTP_MAX_CONNECTIONS", "40")
    assert build_client(overrides=NO_OVERRIDES, guard=LOOPBACK).max_connections == 40
    assert (
        build_client(overrides=NO_OVERRIDES, guard=LOOPBACK, max_connections=3).max_connections == 3
    )
    for bad in ("0", "many"):
        monkeypatch.setenv("ALERTRELAY_HTTP_MAX_CONNECTIONS", bad)
        with pytest.raises(ValueError, match="ALERTRELAY_HTTP_MAX_CONNECTIONS"):
            build_client(overrides=NO_OVERRIDES, guard=LOOPBACK)


async def test_no_proxy_from_the_environment_and_no_cookies_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A proxy would bypass the guard; a cookie set by one tenant's endpoint must not
    # travel with another request on the shared client.
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{_free_port()}")
    reply = lambda request: ok(b"ok", "Set-Cookie: session=tenant-a; Path=/")  # noqa: E731
    async with RawServer(reply) as srv, build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as c:
        assert (await c.get(srv.url("/a"))).status_code == 200
        assert (await c.get(srv.url("/b"))).status_code == 200
    assert [r.target for r in srv.received] == ["/a", "/b"]  # straight to the server
    assert all(r.header("cookie") is None for r in srv.received)


# -- round trip ----------------------------------------------------------------------------


async def test_request_and_response_round_trip() -> None:
    def reply(request: Received) -> bytes:
        return ok(
            b'{"ok": true, "n": 1}',
            "Content-Type: application/json",
            "X-Multi: one",
            "X-Multi: two",
            status="201 Created Here",
        )

    async with RawServer(reply) as srv, build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as c:
        resp = await c.post(
            srv.url("/hook/a%2Fb?x=1&y=%20z"),
            headers=[("Idempotency-Key", "ar-1"), ("X-Dup", "a"), ("X-Dup", "b")],
            content=b'{"alert": "\xc3\xa9"}',
        )
    assert (resp.status_code, resp.reason_phrase, resp.http_version) == (
        201,
        "Created Here",
        "HTTP/1.1",
    )
    assert resp.json() == {"ok": True, "n": 1}
    assert resp.headers.get_list("x-multi") == ["one", "two"]
    [seen] = srv.received
    assert (seen.method, seen.target) == ("POST", "/hook/a%2Fb?x=1&y=%20z")
    assert seen.body == b'{"alert": "\xc3\xa9"}'
    # The caller's headers and ours, no Content-Type of our own.
    assert sorted({k for k, _ in seen.headers}) == [
        "Accept",
        "Accept-Encoding",
        "Content-Length",
        "Host",
        "Idempotency-Key",
        "User-Agent",
        "X-Dup",
    ]
    assert seen.header("host") == f"127.0.0.1:{srv.port}"
    assert seen.header("user-agent") == "alertrelay"
    assert seen.header("accept-encoding") == "gzip, deflate"
    assert str(resp.request.url) == srv.url("/hook/a%2Fb?x=1&y=%20z")
    assert [v for k, v in seen.headers if k == "X-Dup"] == ["a", "b"]


async def test_a_caller_s_user_agent_and_content_type_win() -> None:
    async with RawServer() as srv, build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as c:
        await c.post(
            srv.url(),
            headers={"user-agent": "mine/1", "Content-Type": "text/plain"},
            json={"a": 1},
        )
    [seen] = srv.received
    assert [v for k, v in seen.headers if k.lower() == "user-agent"] == ["mine/1"]
    assert [v for k, v in seen.headers if k.lower() == "content-type"] == ["text/plain"]
    assert seen.body == b'{"a":1}'


async def test_compressed_answer_is_decoded_by_httpx() -> None:
    packed = gzip.compress(b'{"text": "hello"}')
    reply = lambda request: ok(packed, "Content-Encoding: gzip")  # noqa: E731
    async with RawServer(reply) as srv, build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as c:
        resp = await c.get(srv.url())
    assert resp.json() == {"text": "hello"}


async def test_a_large_answer_is_read_whole_and_the_connection_reused() -> None:
    big = bytes(range(256)) * 4096  # 1 MiB, many reads
    reply = lambda request: ok(big if request.target == "/big" else b"ok")  # noqa: E731
    async with RawServer(reply) as srv, build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as c:
        assert (await c.get(srv.url("/big"))).content == big
        assert (await c.get(srv.url("/again"))).content == b"ok"
    assert srv.connections == 1


@pytest.mark.parametrize("declared", [True, False])
async def test_an_answer_over_the_limit_fails_and_its_connection_is_dropped(
    declared: bool,
) -> None:
    too_big = b"x" * (MAX_ANSWER_BYTES + 1)
    much_too_big = too_big * 3  # more than arrives before the client stops reading

    def reply(request: Received) -> bytes:
        if request.target == "/next":
            return ok()
        if declared:
            return ok(too_big)
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(much_too_big), much_too_big)
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked

    async with RawServer(reply) as srv, build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as c:
        with pytest.raises(httpx.RemoteProtocolError, match="answer larger than 8 MiB") as info:
            await c.get(srv.url("/huge?token=s3cr3t"))
        assert "s3cr3t" not in str(info.value)
        assert isinstance(classify_exception(info.value, redact=NOBODY, what="x"), RetryableError)
        assert (await c.get(srv.url("/next"))).status_code == 200
    assert srv.connections == 2  # the half-read connection was not reused


# -- egress guard --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        ("127.0.0.1", "destination 127.0.0.1 is a loopback address"),
        ("[::ffff:127.0.0.1]", "destination ::ffff:127.0.0.1 is a loopback address"),
        ("localhost", "destination 127.0.0.1 (localhost) is a loopback address"),
    ],
)
async def test_private_address_is_refused_without_connecting(host: str, shown: str) -> None:
    async with RawServer() as srv, build_client(overrides=NO_OVERRIDES, guard=EgressGuard()) as c:
        with pytest.raises(PermanentError) as info:
            await c.post(srv.url("/hook?token=s3cr3t", host=host), content=b"x")
    assert info.value.message.startswith(shown)
    assert "s3cr3t" not in info.value.message
    assert srv.connections == 0


async def test_an_allowed_ip_literal_is_remembered_and_others_still_checked() -> None:
    async with RawServer() as srv, build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as c:
        for _ in range(2):
            assert (await c.post(srv.url("/a"), content=b"x")).status_code == 200
            for host in ("127.0.0.2", "[::1]"):
                with pytest.raises(PermanentError, match="is a loopback address"):
                    await c.post(srv.url("/b", host=host), content=b"x")
    assert srv.connections == 1


async def test_connection_goes_to_the_checked_address_and_dns_is_never_cached() -> None:
    calls: list[str] = []
    table = {"hook.example": ["10.1.2.3", "127.0.0.1"]}  # unknown to real DNS
    guard = EgressGuard(LOOPBACK.allow, resolver=_static_resolver(table, calls))
    close = lambda request: ok(b"ok", "Connection: close")  # noqa: E731
    async with RawServer(close) as srv, build_client(overrides=NO_OVERRIDES, guard=guard) as c:
        resp = await c.get(srv.url("/a", host="hook.example"))
        assert resp.status_code == 200
        assert srv.received[0].header("host") == f"hook.example:{srv.port}"
        assert calls == ["hook.example"]
        # The name now points inside: the next connection must see it (no DNS cache
        # of ours, no reuse of the earlier answer).
        table["hook.example"] = ["10.1.2.3"]
        with pytest.raises(PermanentError, match=r"10\.1\.2\.3 \(hook\.example\) is a private"):
            await c.get(srv.url("/b", host="hook.example"))
    assert calls == ["hook.example", "hook.example"]
    assert srv.connections == 1


async def test_only_the_addresses_the_guard_permits_are_tried() -> None:
    calls: list[str] = []
    table = {"mixed.example": ["192.168.0.1", "127.0.0.1"]}
    guard = EgressGuard(LOOPBACK.allow, resolver=_static_resolver(table, calls))
    async with RawServer() as srv, build_client(overrides=NO_OVERRIDES, guard=guard) as c:
        assert (await c.get(srv.url("/", host="mixed.example"))).status_code == 200
    assert calls == ["mixed.example"] and srv.connections == 1


async def test_host_overrides_rewrite_before_the_guard() -> None:
    async with RawServer() as srv:
        overrides = HostOverrides.parse(f"api.vendor.example=http://127.0.0.1:{srv.port}/fake")
        async with build_client(overrides=overrides, guard=LOOPBACK) as c:
            resp = await c.post("https://api.vendor.example/v2/enqueue?k=1", json={"a": 1})
    assert resp.status_code == 200
    [seen] = srv.received
    assert (seen.target, seen.body) == ("/fake/v2/enqueue?k=1", b'{"a":1}')
    assert seen.header("x-forwarded-host") == "api.vendor.example"
    assert seen.header("content-type") == "application/json"


# -- redirects, retries --------------------------------------------------------------------


async def test_redirects_are_never_followed() -> None:
    reply = lambda request: ok(b"", "Location: http://127.0.0.1:1/inside", status="307 X")  # noqa: E731
    async with RawServer(reply) as srv, build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as c:
        resp = await c.put(srv.url("/hook"), content=b"x")
    assert resp.status_code == 307 and len(srv.received) == 1
    with pytest.raises(PermanentError, match=r"redirect to http://127\.0\.0\.1:1 not followed"):
        classify_response(resp, redact=NOBODY, what="webhook")


async def test_a_dropped_connection_is_one_attempt_even_for_idempotent_methods() -> None:
    # Clients commonly resend a PUT/GET once when a pooled connection drops (aiohttp
    # does); the one retry policy must stay the only one deciding.
    async with RawServer() as srv, build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as c:
        await c.put(srv.url("/1"), content=b"x")  # a pooled connection now
        srv.reply = lambda request: b""  # read the next request, close without answering
        with pytest.raises(httpx.RemoteProtocolError) as info:
            await c.put(srv.url("/2"), content=b"x")
        await asyncio.sleep(0.05)
    assert [r.target for r in srv.received] == ["/1", "/2"]
    error = classify_exception(info.value, redact=NOBODY, what="webhook")
    assert isinstance(error, RetryableError)
    assert error.message.startswith("webhook broke off the exchange: ")


async def test_a_truncated_answer_is_retryable() -> None:
    truncated = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nabc"
    async with (
        RawServer(lambda request: truncated) as srv,
        build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as c,
    ):
        with pytest.raises(httpx.RemoteProtocolError) as info:
            await c.post(srv.url("/x?token=s3cr3t"), content=b"x")
    assert "s3cr3t" not in str(info.value)
    error = classify_exception(info.value, redact=NOBODY, what="webhook")
    assert isinstance(error, RetryableError)
    assert "broke off the exchange" in error.message


async def test_an_unparseable_answer_is_retryable() -> None:
    async with (
        RawServer(lambda request: b"NOT HTTP AT ALL\r\n\r\n") as srv,
        build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as c,
    ):
        with pytest.raises(httpx.RemoteProtocolError) as info:
            await c.get(srv.url("/x"))
    assert isinstance(classify_exception(info.value, redact=NOBODY, what="x"), RetryableError)


# -- timeouts ------------------------------------------------------------------------------


async def test_read_timeout_is_retryable() -> None:
    async with (
        RawServer(lambda request: None) as srv,
        build_client(timeout=0.3, overrides=NO_OVERRIDES, guard=LOOPBACK) as c,
    ):
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(httpx.ReadTimeout) as info:
            await c.post(srv.url("/slow?token=s3cr3t"), content=b"x")
        assert 0.25 < loop.time() - started < 2.0
    assert "s3cr3t" not in str(info.value)
    error = classify_exception(info.value, redact=NOBODY, what="webhook")
    assert isinstance(error, RetryableError)
    assert error.message == "webhook timed out waiting for the response"


async def test_slow_resolution_is_a_connect_timeout() -> None:
    async def never(host: str, port: int) -> list[str]:
        await asyncio.sleep(30)
        return []

    guard = EgressGuard(LOOPBACK.allow, resolver=never)
    async with build_client(timeout=0.2, overrides=NO_OVERRIDES, guard=guard) as c:
        with pytest.raises(httpx.ConnectTimeout) as info:
            await c.get("http://slow-dns.example/")
    error = classify_exception(info.value, redact=NOBODY, what="webhook")
    assert isinstance(error, RetryableError)
    assert error.message == "webhook timed out connecting"


async def test_a_request_the_server_never_reads_times_out() -> None:
    body = b"x" * (64 * 1024 * 1024)  # far more than the socket buffers hold
    async with (
        RawServer(read_requests=False) as srv,
        build_client(timeout=0.3, overrides=NO_OVERRIDES, guard=LOOPBACK) as c,
    ):
        with pytest.raises(httpx.TimeoutException) as info:
            await c.post(srv.url("/x"), content=body)
    error = classify_exception(info.value, redact=NOBODY, what="webhook")
    assert isinstance(error, RetryableError)
    assert error.message.startswith("webhook timed out")


async def test_waiting_for_a_free_connection_is_bounded() -> None:
    async with (
        RawServer(lambda request: None) as srv,
        build_client(overrides=NO_OVERRIDES, guard=LOOPBACK, max_connections=1) as c,
    ):
        first = asyncio.create_task(c.get(srv.url("/hang"), timeout=httpx.Timeout(5.0)))
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(httpx.PoolTimeout) as info:
            await c.get(srv.url("/queued"), timeout=httpx.Timeout(0.2))
        assert 0.15 < loop.time() - started < 2.0
        first.cancel()
    assert srv.connections == 1 and [r.target for r in srv.received] == ["/hang"]
    error = classify_exception(info.value, redact=NOBODY, what="webhook")
    assert isinstance(error, RetryableError) and error.message.startswith("webhook timed out")


# -- connection failures -------------------------------------------------------------------


async def test_connection_refused_is_retryable() -> None:
    port = _free_port()
    async with build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as c:
        with pytest.raises(httpx.ConnectError) as info:
            await c.post(f"http://127.0.0.1:{port}/hook?token=s3cr3t", content=b"x")
    error = classify_exception(info.value, redact=NOBODY, what="webhook")
    assert isinstance(error, RetryableError)
    assert error.message.startswith(f"webhook could not be reached: connecting to 127.0.0.1:{port}")
    assert "s3cr3t" not in error.message


async def test_unknown_host_is_a_retryable_dns_failure() -> None:
    guard = EgressGuard(resolver=_static_resolver({}, []))
    async with build_client(overrides=NO_OVERRIDES, guard=guard) as c:
        with pytest.raises(httpx.ConnectError) as info:
            await c.get("https://nowhere.example/path?token=s3cr3t")
    error = classify_exception(info.value, redact=NOBODY, what="webhook")
    assert isinstance(error, RetryableError)
    assert error.message == (
        "webhook could not be reached: could not resolve nowhere.example: "
        "[Errno -2] Name or service not known"
    )


async def test_unsupported_scheme_is_permanent() -> None:
    async with build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as c:
        with pytest.raises(httpx.UnsupportedProtocol) as info:
            await c.get("ftp://127.0.0.1/x")
    assert isinstance(classify_exception(info.value, redact=NOBODY, what="x"), PermanentError)


# -- TLS -----------------------------------------------------------------------------------


def _self_signed(name: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@dataclass
class SelfSigned:
    server_context: ssl.SSLContext
    cert_pem: str


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> SelfSigned:
    cert_pem, key_pem = _self_signed("localhost")
    directory = tmp_path_factory.mktemp("tls")
    (directory / "cert.pem").write_bytes(cert_pem)
    (directory / "key.pem").write_bytes(key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return SelfSigned(context, cert_pem.decode())


async def test_self_signed_server_certificate_is_a_permanent_tls_error(
    self_signed: SelfSigned,
) -> None:
    async with (
        RawServer(ssl_context=self_signed.server_context) as srv,
        build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as c,
    ):
        url = srv.url("/hooks/SECRETTOKEN123456?sig=abcdefabcdef", host="localhost")
        with pytest.raises(httpx.ConnectError) as info:
            await c.post(url, content=b"x")
    assert "SECRETTOKEN" not in str(info.value)
    # The chain holds the real ssl error (with its attributes): code that reads it (the
    # webhook sink looks for TLS alerts) needs them.
    links = list(exception_chain(info.value))
    [verify] = [link for link in links if isinstance(link, ssl.SSLError)]
    assert isinstance(verify, ssl.SSLCertVerificationError)
    assert verify.reason == "CERTIFICATE_VERIFY_FAILED"
    error = classify_exception(info.value, redact=Redactor([url]), what=f"webhook {url}")
    assert isinstance(error, PermanentError)
    assert error.message == (
        "TLS verification failed for webhook https://localhost:"
        f"{srv.port}/[REDACTED]: self-signed certificate"
    )
    assert srv.received == []


async def test_trusted_self_signed_certificate_is_accepted(self_signed: SelfSigned) -> None:
    client_context = ssl.create_default_context(cadata=self_signed.cert_pem)
    async with (
        RawServer(ssl_context=self_signed.server_context) as srv,
        build_client(verify=client_context, overrides=NO_OVERRIDES, guard=LOOPBACK) as c,
    ):
        resp = await c.get(srv.url("/tls", host="localhost"))
        again = await c.get(srv.url("/tls2", host="localhost"))
    assert (resp.status_code, again.status_code, srv.connections) == (200, 200, 1)


def _verify_error() -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate"
    )
    error.verify_message = "self-signed certificate"
    error.verify_code = 18
    return error


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (
            lambda: ssl.SSLError(
                1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)"
            ),
            "TLS with webhook failed: [SSL: WRONG_VERSION_NUMBER] wrong version number",
        ),
        (
            lambda: ssl.SSLError(
                1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required"
            ),
            "TLS with webhook failed: [SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] "
            "tlsv13 alert certificate required",
        ),
        (_verify_error, "TLS verification failed for webhook: self-signed certificate"),
        (
            lambda: ssl.SSLCertVerificationError(1, "certificate verify failed"),
            "TLS verification failed for webhook: certificate verify failed",
        ),
    ],
)
def test_bare_tls_errors_are_permanent(make: Callable[[], Exception], expected: str) -> None:
    error = classify_exception(make(), redact=NOBODY, what="webhook")
    assert isinstance(error, PermanentError)
    assert error.message == expected


def test_tls_error_wrapped_by_httpx_is_permanent_and_redacted() -> None:
    secret = "https://hooks.example.com/T0/SECRETSECRETSECRET"
    try:
        try:
            raise ssl.SSLError(1, f"[SSL: BAD_THING] weird for {secret}")
        except ssl.SSLError as inner:
            raise httpx.ConnectError("handshake failed") from inner
    except httpx.ConnectError as exc:
        error = classify_exception(exc, redact=Redactor([secret]), what=f"webhook {secret}")
    assert isinstance(error, PermanentError)
    assert "SECRETSECRET" not in error.message
    assert error.message.startswith("TLS with webhook https://hooks.example.com/[REDACTED] failed")


@pytest.mark.parametrize(
    "make",
    [
        lambda: ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
        lambda: ssl.SSLZeroReturnError(6, "TLS/SSL connection has been closed (EOF)"),
        lambda: httpx.ReadError("lost"),
    ],
)
def test_a_connection_that_broke_off_during_tls_stays_retryable(
    make: Callable[[], Exception],
) -> None:
    exc = make()
    if isinstance(exc, httpx.ReadError):
        exc.__cause__ = ssl.SSLEOFError(8, "EOF occurred in violation of protocol")
    error: DeliveryError = classify_exception(exc, redact=NOBODY, what="webhook")
    assert isinstance(error, RetryableError)


# -- the protocol --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "headers", "why"),
    [
        ("POST", {"X-Evil": "a\r\nX-Injected: 1"}, "CR, LF or NUL"),
        ("POST", {"X-Evil": "a\x00b"}, "CR, LF or NUL"),
        ("POST", {"Bad Name": "x"}, "not a token"),
        ("HEAD", {}, "not supported"),
        ("GET / HTTP/1.1\r\nX", {}, "not supported"),
    ],
)
async def test_a_request_that_could_be_misread_is_refused_before_sending(
    method: str, headers: dict[str, str], why: str
) -> None:
    async with RawServer() as srv, build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as c:
        with pytest.raises(httpx.LocalProtocolError, match=why) as info:
            await c.request(method, srv.url(), headers=headers, content=b"x")
    assert srv.connections == 0
    assert isinstance(classify_exception(info.value, redact=NOBODY, what="x"), PermanentError)


async def test_framing_headers_are_ours() -> None:
    headers = {"Content-Length": "999", "Transfer-Encoding": "chunked", "Connection": "close"}
    async with RawServer() as srv, build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as c:
        await c.post(srv.url(), headers=headers, content=b"abc")
        await c.post(srv.url(), content=b"")
        await c.get(srv.url())
    first, empty, get = srv.received
    assert first.body == b"abc" and first.header("content-length") == "3"
    assert first.header("transfer-encoding") is None and first.header("connection") is None
    assert empty.header("content-length") == "0"
    assert get.header("content-length") is None
    assert srv.connections == 1


async def test_informational_answers_are_skipped() -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
    async with (
        RawServer(lambda request: early + ok(b"done")) as srv,
        build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as c,
    ):
        resp = await c.get(srv.url())
        assert (resp.status_code, resp.content) == (200, b"done")
        assert (await c.get(srv.url())).content == b"done"  # the connection stayed usable
    assert srv.connections == 1


async def test_a_body_delimited_by_the_close_is_read_to_the_end() -> None:
    reply = lambda request: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"  # noqa: E731
    async with RawServer(reply) as srv, build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as c:
        assert (await c.get(srv.url())).content == b"until the end"
        assert (await c.get(srv.url())).content == b"until the end"
    assert srv.connections == 2


async def test_an_endless_answer_head_is_refused() -> None:
    head = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * (80 * 1024) + b"\r\n\r\n"
    async with (
        RawServer(lambda request: head) as srv,
        build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as c,
    ):
        with pytest.raises(httpx.RemoteProtocolError, match="answer head larger than"):
            await c.get(srv.url())


async def test_bytes_nobody_asked_for_retire_the_connection() -> None:
    # e.g. a server's 408 written to an idle keep-alive connection before it closes it
    reply = lambda request: ok() + b"HTTP/1.1 408 Request Timeout\r\n\r\n"  # noqa: E731
    async with RawServer(reply) as srv, build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as c:
        assert (await c.get(srv.url("/1"))).status_code == 200
        await asyncio.sleep(0.05)
        assert (await c.get(srv.url("/2"))).status_code == 200
    assert srv.connections == 2


async def test_a_cancelled_request_s_connection_is_not_reused() -> None:
    reply = lambda request: None if request.target == "/hang" else ok()  # noqa: E731
    async with RawServer(reply) as srv, build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as c:
        hanging = asyncio.create_task(c.get(srv.url("/hang")))
        await asyncio.sleep(0.1)
        hanging.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hanging
        assert (await c.get(srv.url("/next"))).status_code == 200
    assert srv.connections == 2 and c.open_connections == 0


async def test_idle_connections_close_after_the_keep_alive_expiry() -> None:
    async with RawServer() as srv:
        client = HttpClient(
            ssl_context=ssl.create_default_context(),
            guard=LOOPBACK,
            overrides=NO_OVERRIDES,
            keepalive_expiry=0.1,
        )
        async with client:
            await client.get(srv.url("/1"))
            assert client.open_connections == 1
            for _ in range(100):
                if srv.closed == 1:
                    break
                await asyncio.sleep(0.01)
            assert srv.closed == 1 and client.open_connections == 0
            await client.get(srv.url("/2"))
    assert srv.connections == 2


# -- pool ----------------------------------------------------------------------------------


async def test_keep_alive_reuses_one_connection() -> None:
    async with RawServer() as srv, build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as c:
        for i in range(5):
            assert (await c.post(srv.url(f"/{i}"), content=b"x")).status_code == 200
    assert srv.connections == 1
    assert {r.connection for r in srv.received} == {1}
    assert len(srv.received) == 5


async def test_pool_size_bounds_concurrent_connections() -> None:
    async with (
        RawServer() as srv,
        build_client(overrides=NO_OVERRIDES, guard=LOOPBACK, max_connections=3) as c,
    ):
        answers = await asyncio.gather(*(c.get(srv.url(f"/{i}")) for i in range(20)))
        assert all(a.status_code == 200 for a in answers)
        assert srv.connections == 3
        await asyncio.gather(*(c.get(srv.url(f"/again/{i}")) for i in range(20)))
    assert srv.connections == 3  # kept alive and reused
    assert len(srv.received) == 40


async def test_aclose_closes_the_pooled_connections() -> None:
    async with RawServer() as srv:
        client = build_client(overrides=NO_OVERRIDES, guard=LOOPBACK)
        await client.get(srv.url())
        assert client.open_connections == 1
        await client.aclose()
        for _ in range(100):
            if srv.closed == 1:
                break
            await asyncio.sleep(0.01)
        assert srv.closed == 1  # the server saw the pooled connection go
        with pytest.raises(RuntimeError):
            await client.get(srv.url())


def test_a_client_that_never_sent_closes_cleanly() -> None:
    async def run() -> None:
        client = build_client(overrides=NO_OVERRIDES, guard=LOOPBACK)
        await client.aclose()
        assert client.open_connections == 0

    asyncio.run(run())
