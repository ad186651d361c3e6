"""The shared HTTP layer: overrides, the outbound guard, TLS, redaction, classification.

Network behaviour is tested against real servers on 127.0.0.1 (asyncio, trustme for
TLS); pure classification uses httpx.MockTransport.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import os
import socket
import ssl
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

import sinks.http as http_module
from sinks.errors import DeliveryError, PermanentError, RetryableError
from sinks.http import (
    MAX_RETRY_AFTER,
    REDACTED,
    EgressGuard,
    HostOverrides,
    Redactor,
    build_client,
    classify_exception,
    classify_response,
    mtls_ssl_context,
    redact_url,
)

LOOPBACK = EgressGuard([ipaddress.ip_network("127.0.0.1/32")])
NO_OVERRIDES = HostOverrides()
NOBODY = Redactor()


# -- a tiny local HTTP/1.1 server -------------------------------------------------------


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    peer_cert: Any


@dataclass
class LocalServer:
    """Answers every request with `status`/`headers`/`body`, keep-alive, records requests."""

    ssl_context: ssl.SSLContext | None = None
    status: int = 200
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b"ok"
    hang: bool = False
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> LocalServer:
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

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                peer = writer.get_extra_info("peercert")
                self.seen.append(Seen(method, target, headers, body, peer))
                if self.hang:
                    await self._stop.wait()
                    return
                extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers)
                head_out = f"HTTP/1.1 {self.status} X\r\nContent-Length: {len(self.body)}\r\n"
                writer.write((head_out + extra + "\r\n").encode("latin-1") + self.body)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            return
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[LocalServer]:
    async with LocalServer() as srv:
        yield srv


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _static_resolver(
    table: dict[str, list[str]], calls: list[str] | None = None
) -> Callable[[str, int], Any]:
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


# -- host overrides ---------------------------------------------------------------------


def test_override_keeps_path_and_query() -> None:
    overrides = HostOverrides.parse("hooks.slack.com=http://127.0.0.1:8081")
    url = httpx.URL("https://hooks.slack.com/services/T0/B0/XXXX?a=1&b=%20c")
    assert str(overrides.rewrite(url)) == "http://127.0.0.1:8081/services/T0/B0/XXXX?a=1&b=%20c"


def test_override_joins_base_path_and_keeps_encoding() -> None:
    overrides = HostOverrides.parse("api.example.com=http://127.0.0.1:9000/fake/api/")
    url = httpx.URL("https://api.example.com/v2/a%2Fb/events?k=v")
    assert str(overrides.rewrite(url)) == "http://127.0.0.1:9000/fake/api/v2/a%2Fb/events?k=v"
    bare = httpx.URL("https://api.example.com")
    assert str(overrides.rewrite(bare)) == "http://127.0.0.1:9000/fake/api/"


def test_wildcard_matches_subdomains_at_any_depth_but_not_the_bare_domain() -> None:
    overrides = HostOverrides.parse(" *.atlassian.net = http://127.0.0.1:8082/jira ,, ")
    for host in ("acme.atlassian.net", "a.b.atlassian.net", "ACME.Atlassian.NET"):
        url = httpx.URL(f"https://{host}/rest/api/2/issue?x=1")
        assert str(overrides.rewrite(url)) == "http://127.0.0.1:8082/jira/rest/api/2/issue?x=1"
    for host in ("atlassian.net", "evilatlassian.net", "atlassian.net.evil.com"):
        url = httpx.URL(f"https://{host}/x")
        assert overrides.rewrite(url) is url


def test_exact_entry_beats_wildcard_and_longest_wildcard_wins() -> None:
    overrides = HostOverrides.parse(
        "*.example.com=http://127.0.0.1:1,*.eu.example.com=http://127.0.0.1:2,"
        "api.eu.example.com=http://127.0.0.1:3"
    )
    assert overrides.rewrite(httpx.URL("https://x.example.com/")).port == 1
    assert overrides.rewrite(httpx.URL("https://x.eu.example.com/")).port == 2
    assert overrides.rewrite(httpx.URL("https://api.eu.example.com/")).port == 3


def test_rewrites_are_remembered_per_url_and_stay_right() -> None:
    overrides = HostOverrides.parse("*.example.com=http://127.0.0.1:1/base")
    for _ in range(2):  # the second round is answered from what was remembered
        assert str(overrides.rewrite(httpx.URL("https://a.example.com/x?q=1"))) == (
            "http://127.0.0.1:1/base/x?q=1"
        )
        assert str(overrides.rewrite(httpx.URL("https://a.example.com/y"))) == (
            "http://127.0.0.1:1/base/y"
        )
        other = httpx.URL("https://example.org/x")
        assert overrides.rewrite(other) is other


def test_no_override_returns_the_same_url() -> None:
    url = httpx.URL("https://hooks.slack.com/services/x")
    assert HostOverrides().rewrite(url) is url
    assert not HostOverrides.parse("")
    assert HostOverrides.parse("a.example=http://127.0.0.1:1")


@pytest.mark.parametrize(
    "spec",
    [
        "hooks.slack.com",  # no '='
        "hooks.slack.com=ftp://127.0.0.1",
        "hooks.slack.com=127.0.0.1:8081",
        "hooks.slack.com=http://127.0.0.1:8081/?q=1",
        "hooks.slack.com=http://user:pw@127.0.0.1:8081",
        "*=http://127.0.0.1:1",
        "hooks.slack.com/services=http://127.0.0.1:1",
        "a.example=http://127.0.0.1:1,A.example=http://127.0.0.1:2",
    ],
)
def test_malformed_overrides_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="ALERTRELAY_HOST_OVERRIDES"):
        HostOverrides.parse(spec)


def test_overrides_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALERTRELAY_HOST_OVERRIDES", raising=False)
    assert not HostOverrides.from_env()
    monkeypatch.setenv("ALERTRELAY_HOST_OVERRIDES", "hooks.slack.com=http://127.0.0.1:8081")
    overrides = HostOverrides.from_env()
    assert overrides.base_for("hooks.slack.com") == httpx.URL("http://127.0.0.1:8081")


async def test_override_sends_the_request_to_the_local_server(server: LocalServer) -> None:
    overrides = HostOverrides.parse(f"hooks.slack.com=http://127.0.0.1:{server.port}/slack")
    async with build_client(overrides=overrides, guard=LOOPBACK) as client:
        resp = await client.post(
            "https://hooks.slack.com/services/T0/B0/XXXX?x=1", json={"text": "hi"}
        )
    assert resp.status_code == 200
    assert str(resp.request.url) == "https://hooks.slack.com/services/T0/B0/XXXX?x=1"
    [seen] = server.seen
    assert (seen.method, seen.target) == ("POST", "/slack/services/T0/B0/XXXX?x=1")
    assert seen.headers["host"] == f"127.0.0.1:{server.port}"
    assert seen.headers["x-forwarded-host"] == "hooks.slack.com"
    assert seen.body == b'{"text":"hi"}'


async def test_guard_checks_the_overridden_destination(server: LocalServer) -> None:
    overrides = HostOverrides.parse(f"hooks.slack.com=http://127.0.0.1:{server.port}")
    async with build_client(overrides=overrides, guard=EgressGuard()) as client:
        with pytest.raises(PermanentError, match=r"destination 127\.0\.0\.1 is a loopback"):
            await client.post("https://hooks.slack.com/services/T0/B0/XXXX")
    assert server.connections == 0


# -- outbound guard ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.8.9.10", "a loopback address"),
        ("::1", "a loopback address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("10.0.0.5", "a private address"),
        ("172.16.3.4", "a private address"),
        ("192.168.1.1", "a private address"),
        ("::ffff:10.0.0.5", "a private address"),
        ("fd00::1", "a private address"),
        ("64:ff9b::a00:5", "a private address"),  # NAT64 form of 10.0.0.5
        ("2002:a00:5::1", "a private address"),  # 6to4 form of 10.0.0.5
        ("169.254.169.254", "the cloud metadata address"),
        ("::ffff:169.254.169.254", "the cloud metadata address"),
        ("fd00:ec2::254", "the cloud metadata address"),
        ("169.254.10.1", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("224.0.0.1", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("0.0.0.0", "an unspecified address"),
        ("::", "an unspecified address"),
        ("240.0.0.1", "a reserved address"),
        ("255.255.255.255", "a reserved address"),
        ("100.64.0.1", "a shared (carrier-grade NAT) address"),
        ("192.0.2.1", "a private address"),  # documentation range
    ],
)
def test_guard_refuses_non_public_addresses(address: str, reason: str) -> None:
    with pytest.raises(PermanentError) as info:
        EgressGuard().check(address, "internal.example")
    assert info.value.message == (
        f"destination {address} (internal.example) is {reason}; "
        "allow it with ALERTRELAY_EGRESS_ALLOW"
    )
    assert not info.value.retryable


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"],
)
def test_guard_lets_public_addresses_through(address: str) -> None:
    EgressGuard().check(address, "public.example")


def test_allow_list_opens_only_its_networks() -> None:
    guard = EgressGuard([ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")])
    guard.check("10.1.2.3")
    guard.check("::ffff:10.1.2.3")  # the mapped form of an allowed address
    guard.check("::1")
    with pytest.raises(PermanentError, match=r"destination 127\.0\.0\.1 is a loopback address"):
        guard.check("127.0.0.1")
    with pytest.raises(PermanentError):
        guard.check("192.168.0.1")


def test_guard_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALERTRELAY_EGRESS_ALLOW", raising=False)
    assert EgressGuard.from_env().allow == ()
    monkeypatch.setenv("ALERTRELAY_EGRESS_ALLOW", " 127.0.0.1/32, 10.0.0.0/8,,::1 ")
    assert [str(n) for n in EgressGuard.from_env().allow] == [
        "127.0.0.1/32",
        "10.0.0.0/8",
        "::1/128",
    ]
    for bad in ("10.0.0.1/8", "localhost", "10.0.0.0/33"):
        monkeypatch.setenv("ALERTRELAY_EGRESS_ALLOW", bad)
        with pytest.raises(ValueError, match="ALERTRELAY_EGRESS_ALLOW"):
            EgressGuard.from_env()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:{port}/hook/secret-path?token=s3cr3t", "127.0.0.1 is a loopback"),
        ("http://10.0.0.5/internal/secret-path?token=s3cr3t", "10.0.0.5 is a private"),
        ("http://169.254.169.254/latest/meta-data/secret-path", "169.254.169.254 is the cloud"),
        ("http://[::1]:{port}/secret-path", "::1 is a loopback"),
        ("http://[::ffff:127.0.0.1]:{port}/secret-path", "::ffff:127.0.0.1 is a loopback"),
        ("https://localhost:{port}/secret-path?token=s3cr3t", "127.0.0.1 (localhost) is a loop"),
    ],
)
async def test_guard_refuses_before_connecting(server: LocalServer, url: str, shown: str) -> None:
    async with build_client(overrides=NO_OVERRIDES, guard=EgressGuard()) as client:
        with pytest.raises(PermanentError) as info:
            await client.get(url.format(port=server.port))
    message = info.value.message
    assert f"destination {shown}" in message
    assert message.endswith("allow it with ALERTRELAY_EGRESS_ALLOW")
    assert "secret-path" not in message and "s3cr3t" not in message
    assert server.connections == 0
    assert classify_exception(info.value, redact=NOBODY, what="webhook") is info.value


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_allowed_network_reaches_the_local_server(server: LocalServer, host: str) -> None:
    async with build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as client:
        resp = await client.get(f"http://{host}:{server.port}/hello?x=1")
        again = await client.get(f"http://{host}:{server.port}/again")
    assert (resp.status_code, resp.text, again.status_code) == (200, "ok", 200)
    assert [s.target for s in server.seen] == ["/hello?x=1", "/again"]
    assert server.connections == 1  # keep-alive


async def test_guard_resolves_once_and_connects_to_the_checked_address(
    server: LocalServer,
) -> None:
    calls: list[str] = []
    # A hostname DNS does not know: reaching the server proves the connection went to the
    # address the guard checked, not to a second lookup; the private one is skipped.
    resolver = _static_resolver({"internal.example": ["10.0.0.5", "127.0.0.1"]}, calls)
    guard = EgressGuard(LOOPBACK.allow, resolver=resolver)
    async with build_client(overrides=NO_OVERRIDES, guard=guard) as client:
        resp = await client.get(f"http://internal.example:{server.port}/a")
        await client.get(f"http://internal.example:{server.port}/b")
    assert resp.status_code == 200
    assert server.seen[0].headers["host"] == f"internal.example:{server.port}"
    assert calls == ["internal.example"]


async def test_guard_refuses_when_every_resolved_address_is_internal() -> None:
    resolver = _static_resolver({"internal.example": ["10.0.0.5", "192.168.1.9"]})
    guard = EgressGuard(resolver=resolver)
    async with build_client(overrides=NO_OVERRIDES, guard=guard) as client:
        with pytest.raises(PermanentError) as info:
            await client.get("https://internal.example/admin?token=s3cr3t")
    assert info.value.message == (
        "destination 10.0.0.5 (internal.example) is a private address; "
        "allow it with ALERTRELAY_EGRESS_ALLOW"
    )


async def test_unresolvable_host_is_a_retryable_connect_error() -> None:
    guard = EgressGuard(resolver=_static_resolver({}))
    async with build_client(overrides=NO_OVERRIDES, guard=guard) as client:
        with pytest.raises(httpx.ConnectError) as info:
            await client.get("https://nowhere.example/")
    error = classify_exception(info.value, redact=NOBODY, what="webhook")
    assert isinstance(error, RetryableError)
    assert "could not resolve nowhere.example" in error.message


# -- client behaviour -------------------------------------------------------------------


async def test_redirects_are_not_followed(server: LocalServer) -> None:
    server.status = 302
    server.headers = [("Location", "http://169.254.169.254/latest/meta-data/iam?x=1")]
    async with build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as client:
        resp = await client.post(f"http://127.0.0.1:{server.port}/hook", content=b"x")
    assert resp.status_code == 302
    assert len(server.seen) == 1
    with pytest.raises(PermanentError) as info:
        classify_response(resp, redact=NOBODY, what="webhook")
    assert info.value.message == (
        "webhook answered 302: redirect to http://169.254.169.254 not followed"
    )
    assert info.value.status == 302


async def test_relative_redirect_names_the_resolved_host(server: LocalServer) -> None:
    server.status = 307
    server.headers = [("Location", "/elsewhere?token=s3cr3t")]
    async with build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as client:
        resp = await client.get(f"http://127.0.0.1:{server.port}/hook")
    with pytest.raises(PermanentError, match=rf"redirect to http://127.0.0.1:{server.port} not"):
        classify_response(resp, redact=NOBODY, what="webhook")


def test_client_settings() -> None:
    client = build_client(overrides=NO_OVERRIDES, guard=LOOPBACK)
    assert client.timeout == httpx.Timeout(10.0, connect=5.0, pool=5.0)
    short = build_client(timeout=2.0, overrides=NO_OVERRIDES, guard=LOOPBACK)
    assert short.timeout == httpx.Timeout(2.0)
    with pytest.raises(ValueError):
        build_client(timeout=0)
    with pytest.raises(ValueError, match="SSLContext"):
        build_client(verify=ssl.create_default_context(), cert=("c.pem", "k.pem"))


async def test_build_client_reads_the_environment_by_default(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALERTRELAY_HOST_OVERRIDES", f"*.example.com=http://127.0.0.1:{server.port}")
    monkeypatch.delenv("ALERTRELAY_EGRESS_ALLOW", raising=False)
    async with build_client() as client:
        with pytest.raises(PermanentError, match="loopback"):
            await client.get("https://api.example.com/x")
    monkeypatch.setenv("ALERTRELAY_EGRESS_ALLOW", "127.0.0.1/32")
    async with build_client() as client:
        assert (await client.get("https://api.example.com/x")).status_code == 200
    assert server.seen[0].target == "/x"


# -- TLS --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _mtls_server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _client_pem(ca: trustme.CA) -> str:
    cert = ca.issue_cert("client.example.org")
    return cert.private_key_and_cert_chain_pem.bytes().decode()


async def test_mutual_tls_through_the_guard(ca: trustme.CA) -> None:
    context = mtls_ssl_context(_client_pem(ca), ca_pem=ca.cert_pem.bytes().decode())
    async with (
        LocalServer(ssl_context=_mtls_server_context(ca, "localhost")) as srv,
        build_client(verify=context, overrides=NO_OVERRIDES, guard=LOOPBACK) as client,
    ):
        resp = await client.post(f"https://localhost:{srv.port}/hook", json={"a": 1})
    assert resp.status_code == 200
    [seen] = srv.seen
    assert ("DNS", "client.example.org") in seen.peer_cert["subjectAltName"]
    assert seen.headers["host"] == f"localhost:{srv.port}"


async def test_mutual_tls_through_an_override(ca: trustme.CA) -> None:
    context = mtls_ssl_context(_client_pem(ca), ca_pem=ca.cert_pem.bytes().decode())
    async with LocalServer(ssl_context=_mtls_server_context(ca, "localhost")) as srv:
        overrides = HostOverrides.parse(f"hooks.customer.example=https://localhost:{srv.port}")
        async with build_client(verify=context, overrides=overrides, guard=LOOPBACK) as client:
            resp = await client.post("https://hooks.customer.example/in?sig=1", content=b"{}")
    assert resp.status_code == 200
    assert srv.seen[0].target == "/in?sig=1"


async def test_server_refuses_a_client_without_certificate(ca: trustme.CA) -> None:
    context = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    async with (
        LocalServer(ssl_context=_mtls_server_context(ca, "localhost")) as srv,
        build_client(verify=context, overrides=NO_OVERRIDES, guard=LOOPBACK) as client,
    ):
        with pytest.raises(httpx.TransportError):
            await client.get(f"https://localhost:{srv.port}/")
    assert srv.seen == []


async def test_untrusted_server_certificate_is_permanent(ca: trustme.CA) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    async with (
        LocalServer(ssl_context=server_context) as srv,
        build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as client,
    ):
        with pytest.raises(httpx.ConnectError) as info:
            await client.get(f"https://localhost:{srv.port}/")
    error = classify_exception(info.value, redact=NOBODY, what="webhook")
    assert isinstance(error, PermanentError)
    assert error.message.startswith("TLS verification failed for webhook: ")
    assert "certificate" in error.message


async def test_pooled_tls_connection_is_not_shared_between_names(ca: trustme.CA) -> None:
    # Two names on one IP: the certificate only covers a.example. b.example must get its
    # own connection and fail verification, not ride the connection verified for a.
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("a.example").configure_cert(server_context)
    client_context = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    resolver = _static_resolver({"a.example": ["127.0.0.1"], "b.example": ["127.0.0.1"]})
    guard = EgressGuard(LOOPBACK.allow, resolver=resolver)
    async with (
        LocalServer(ssl_context=server_context) as srv,
        build_client(verify=client_context, overrides=NO_OVERRIDES, guard=guard) as c,
    ):
        assert (await c.get(f"https://a.example:{srv.port}/")).status_code == 200
        with pytest.raises(httpx.ConnectError) as info:
            await c.get(f"https://b.example:{srv.port}/")
    error = classify_exception(info.value, redact=NOBODY, what="webhook")
    assert isinstance(error, PermanentError)
    assert "b.example" in error.message  # "Hostname mismatch, ... not valid for 'b.example'"
    assert len(srv.seen) == 1


def test_mtls_context_accepts_key_before_certificate(ca: trustme.CA) -> None:
    cert = ca.issue_cert("client.example.org")
    pem = cert.private_key_pem.bytes().decode() + cert.cert_chain_pems[0].bytes().decode()
    context = mtls_ssl_context(pem)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_mtls_context_with_encrypted_key(ca: trustme.CA) -> None:
    cert = ca.issue_cert("client.example.org")
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    ).decode()
    pem = encrypted + cert.cert_chain_pems[0].bytes().decode()
    mtls_ssl_context(pem, password="pw")
    with pytest.raises(ValueError, match="could not be loaded"):  # never an OpenSSL prompt
        mtls_ssl_context(pem)


def test_mtls_context_errors_never_echo_the_pem(ca: trustme.CA) -> None:
    one, two = ca.issue_cert("one.example"), ca.issue_cert("two.example")
    key = one.private_key_pem.bytes().decode()
    key_line = key.splitlines()[1]
    cases = {
        "no certificate": key,
        "no private key": two.cert_chain_pems[0].bytes().decode(),
        "could not be loaded": key + two.cert_chain_pems[0].bytes().decode(),  # mismatch
        "could not be loaded ": key.replace(key_line, "A" * len(key_line))
        + one.cert_chain_pems[0].bytes().decode(),
    }
    for expected, pem in cases.items():
        with pytest.raises(ValueError, match=expected.strip()) as info:
            mtls_ssl_context(pem)
        assert key_line not in str(info.value)
        assert info.value.__cause__ is None


@pytest.mark.parametrize("memfd", [True, False])
def test_key_never_stays_on_disk(
    ca: trustme.CA, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, memfd: bool
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    if not memfd:
        monkeypatch.delattr(os, "memfd_create", raising=False)
    pem = _client_pem(ca)
    with http_module._pem_file(pem) as path:
        with open(path) as handle:
            assert handle.read() == pem
        if not memfd:
            assert os.path.dirname(path) == str(tmp_path)
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert list(tmp_path.iterdir()) == []
    mtls_ssl_context(pem)
    assert list(tmp_path.iterdir()) == []


# -- redaction --------------------------------------------------------------------------

SLACK_URL = "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX"


def test_redacts_every_occurrence_and_encoded_forms() -> None:
    redact = Redactor(["p@ss w/rd", ""])
    text = "a p@ss w/rd b p%40ss%20w%2Frd c p%40ss+w%2Frd d p%40ss%20w/rd e p%40ss%20w%2frd"
    assert redact(text) == "a [REDACTED] b [REDACTED] c [REDACTED] d [REDACTED] e [REDACTED]"


def test_redacts_url_secrets_down_to_the_host() -> None:
    redact = Redactor([SLACK_URL])
    assert redact(f"POST {SLACK_URL} failed") == "POST https://hooks.slack.com/[REDACTED] failed"
    assert redact(f"POST {SLACK_URL}?x=1") == "POST https://hooks.slack.com/[REDACTED]?[REDACTED]"
    assert redact("path /services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX") == "path /[REDACTED]"
    assert redact("token XXXXXXXXXXXXXXXXXXXXXXXX") == "token [REDACTED]"
    quoted = "url=https%3A%2F%2Fhooks.slack.com%2Fservices%2FT000%2FB000%2FXXXXXXXXXXXXXXXXXXXXXXXX"
    assert redact(quoted) == "url=https://hooks.slack.com/[REDACTED]"
    assert "XXXXXXXX" not in redact(SLACK_URL.replace("/", "\\/"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def.ghi", "Authorization: Bearer [REDACTED]"),
        ("authorization: Basic dXNlcjpwYXNz", "authorization: Basic [REDACTED]"),
        ("Authorization: GenieKey 1234-abcd", "Authorization: GenieKey [REDACTED]"),
        ("Authorization: Splunk 0c3e6a2b-1d4f", "Authorization: Splunk [REDACTED]"),
        ("DD-API-KEY: 0123456789abcdef", "DD-API-KEY: [REDACTED]"),
        ('{"dd-api-key": "0123456789abcdef", "x": 1}', '{"dd-api-key": "[REDACTED]", "x": 1}'),
        ('{"routing_key":"R0123"}', '{"routing_key":"[REDACTED]"}'),
        ("sent Splunk 0c3e6a2b-1d4f-4d1c-9f0e-7a1b2c3d4e5f", "sent Splunk [REDACTED]"),
        ("sent GenieKey 11111111-2222", "sent GenieKey [REDACTED]"),
        ("Bearer tokens need a role", "Bearer tokens need a role"),
        ("Splunk answered 403", "Splunk answered 403"),
        (
            "https://user:pw@example.com/p?token=abc&x=1#frag",
            "https://[REDACTED]@example.com/p?[REDACTED]#frag",
        ),
        ("GET /v1/send?api_key=abc123&x=1", "GET /v1/send?api_key=[REDACTED]&x=1"),
        ("nothing to see", "nothing to see"),
    ],
)
def test_generic_scrubbing(text: str, expected: str) -> None:
    assert Redactor()(text) == expected


def test_short_secrets_are_redacted_and_redaction_is_idempotent() -> None:
    redact = Redactor(["E", "ab"])
    once = redact("Error: abc DEF")
    assert once == "[REDACTED]rror: [REDACTED]c D[REDACTED]F"
    assert redact(once) == once
    assert Redactor(["Authorization"])(f"x {REDACTED}") == f"x {REDACTED}"


def test_longest_secret_wins() -> None:
    assert Redactor(["abc", "abcdef"])("xxabcdefyy abc") == "xx[REDACTED]yy [REDACTED]"


def test_multi_line_secret_lines_are_redacted(ca: trustme.CA) -> None:
    pem = _client_pem(ca)
    line = next(line for line in pem.splitlines() if len(line) > 40)
    assert Redactor([pem])(f"bad key near {line}") == "bad key near [REDACTED]"


def test_repr_shows_no_secret() -> None:
    assert "hunter2" not in repr(Redactor(["hunter2"]))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (SLACK_URL, "https://hooks.slack.com"),
        ("http://user:pw@Example.COM:8080/x?y=1#z", "http://example.com:8080"),
        ("https://[::1]:8443/a", "https://[::1]:8443"),
        ("not a url", REDACTED),
        ("http://[::1/x", REDACTED),
        ("/relative/path", REDACTED),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


# -- classification ---------------------------------------------------------------------


async def _answer(
    status: int, body: str = "", headers: dict[str, str] | None = None
) -> httpx.Response:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text=body, headers=headers)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        return await client.post("https://api.example.com/v1/events", content=b"{}")


@pytest.mark.parametrize("status", [200, 201, 202, 204])
async def test_success_is_none(status: int) -> None:
    classify_response(await _answer(status), redact=NOBODY, what="Datadog")


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422])
async def test_client_errors_are_permanent(status: int) -> None:
    resp = await _answer(status, body='{"error": "bad"}')
    with pytest.raises(PermanentError) as info:
        classify_response(resp, redact=NOBODY, what="Jira")
    assert info.value.message == f'Jira answered {status}: {{"error": "bad"}}'
    assert info.value.status == status and info.value.retry_after is None


async def test_error_body_is_redacted_cut_and_single_line() -> None:
    secret = "tok-" + "9" * 40
    body = "x" * 280 + secret + "\r\nInjected: line" + "y" * 1000
    resp = await _answer(404, body=body)
    with pytest.raises(PermanentError) as info:
        classify_response(resp, redact=Redactor([secret]), what=f"hook {secret}")
    message = info.value.message
    assert message.startswith("hook [REDACTED] answered 404: " + "x" * 280 + "[REDACTED]")
    assert "9999" not in message and "\n" not in message and "\r" not in message
    assert len(message) <= len("hook [REDACTED] answered 404: ") + 300
    empty = await _answer(401)
    with pytest.raises(PermanentError, match=r"^Jira answered 401$"):
        classify_response(empty, redact=NOBODY, what="Jira")


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
async def test_transient_statuses_are_retryable(status: int) -> None:
    with pytest.raises(RetryableError) as info:
        classify_response(await _answer(status, "busy"), redact=NOBODY, what="PagerDuty")
    assert info.value.message == f"PagerDuty answered {status}: busy"
    assert info.value.status == status and info.value.retry_after is None


def _http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


@pytest.mark.parametrize(
    ("status", "headers", "low", "high"),
    [
        (429, {"Retry-After": "30"}, 30, 30),
        (503, {"Retry-After": " 7 "}, 7, 7),
        (429, {"Retry-After": "99999"}, MAX_RETRY_AFTER, MAX_RETRY_AFTER),
        (429, {"Retry-After": "@date+120"}, 110, 121),
        (429, {"Retry-After": "@date-60"}, 0, 0),
        (429, {"X-RateLimit-Reset": "12"}, 12, 12),
        (429, {"X-RateLimit-Reset": "@epoch+60"}, 50, 61),
        (429, {"Retry-After": "soon", "X-RateLimit-Reset": "5"}, 5, 5),
    ],
)
async def test_retry_after(status: int, headers: dict[str, str], low: float, high: float) -> None:
    # Times relative to now are made here, not at collection: the suite may run long.
    for name, value in headers.items():
        if value.startswith("@date"):
            headers[name] = _http_date(float(value.removeprefix("@date")))
        elif value.startswith("@epoch"):
            headers[name] = str(int(time.time() + float(value.removeprefix("@epoch"))))
    with pytest.raises(RetryableError) as info:
        classify_response(await _answer(status, headers=headers), redact=NOBODY, what="x")
    assert info.value.retry_after is not None
    assert low <= info.value.retry_after <= high


async def test_unparseable_retry_after_is_none() -> None:
    with pytest.raises(RetryableError) as info:
        resp = await _answer(429, headers={"Retry-After": "later"})
        classify_response(resp, redact=NOBODY, what="x")
    assert info.value.retry_after is None


async def test_redirect_without_location() -> None:
    with pytest.raises(PermanentError, match="redirect to an unspecified location not followed"):
        classify_response(await _answer(301), redact=NOBODY, what="x")


async def test_unread_streaming_body_is_not_needed() -> None:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(500, stream=httpx.ByteStream(b"boom"))
    )
    async with (
        httpx.AsyncClient(transport=transport) as client,
        client.stream("GET", "https://api.example.com/") as resp,
    ):
        with pytest.raises(RetryableError, match=r"^x answered 500$"):
            classify_response(resp, redact=NOBODY, what="x")


@pytest.mark.parametrize(
    ("exc", "kind", "text"),
    [
        (httpx.ConnectTimeout("t"), RetryableError, "Slack timed out connecting"),
        (httpx.ReadTimeout("t"), RetryableError, "Slack timed out waiting for the response"),
        (httpx.WriteTimeout("t"), RetryableError, "Slack timed out sending the request"),
        (httpx.PoolTimeout("t"), RetryableError, "Slack timed out waiting for a free connection"),
        (TimeoutError(), RetryableError, "Slack timed out"),
        (httpx.ConnectError("[Errno 111] refused"), RetryableError, "could not be reached"),
        (httpx.RemoteProtocolError("Server disconnected"), RetryableError, "broke off"),
        (httpx.ReadError(""), RetryableError, "Slack connection failed: ReadError"),
        (ConnectionResetError("reset"), RetryableError, "Slack connection failed: reset"),
        (httpx.UnsupportedProtocol("ftp"), PermanentError, "cannot be sent"),
        (ValueError("odd"), RetryableError, "Slack failed: ValueError: odd"),
    ],
)
def test_exception_classification(exc: Exception, kind: type[DeliveryError], text: str) -> None:
    error = classify_exception(exc, redact=NOBODY, what="Slack")
    assert type(error) is kind
    assert text in error.message
    assert error.status is None


def test_exception_messages_are_redacted() -> None:
    exc = httpx.ConnectError(f"could not reach {SLACK_URL}")
    error = classify_exception(exc, redact=Redactor([SLACK_URL]), what=f"Slack {SLACK_URL}")
    assert "XXXXXXXX" not in error.message
    assert error.message == (
        "Slack https://hooks.slack.com/[REDACTED] could not be reached: "
        "could not reach https://hooks.slack.com/[REDACTED]"
    )


def test_delivery_errors_pass_through() -> None:
    original = PermanentError("destination refused")
    assert classify_exception(original, redact=NOBODY, what="x") is original


async def test_real_read_timeout_is_retryable() -> None:
    async with (
        LocalServer(hang=True) as srv,
        build_client(timeout=0.3, overrides=NO_OVERRIDES, guard=LOOPBACK) as client,
    ):
        with pytest.raises(httpx.ReadTimeout) as info:
            await client.post(f"http://127.0.0.1:{srv.port}/slow", content=b"x")
    error = classify_exception(info.value, redact=NOBODY, what="webhook")
    assert isinstance(error, RetryableError)
    assert error.message == "webhook timed out waiting for the response"


async def test_real_connection_refused_is_retryable() -> None:
    port = _free_port()
    async with build_client(overrides=NO_OVERRIDES, guard=LOOPBACK) as client:
        with pytest.raises(httpx.ConnectError) as info:
            await client.get(f"http://127.0.0.1:{port}/")
    error = classify_exception(info.value, redact=NOBODY, what="webhook")
    assert isinstance(error, RetryableError)
    assert error.message.startswith("webhook could not be reached")


def test_the_token_of_a_scheme_prefixed_secret_is_redacted_on_its_own() -> None:
    redact = Redactor(["Bearer SECRETHOOKTOKEN42"])
    assert redact("server said: bad token SECRETHOOKTOKEN42") == (
        "server said: bad token [REDACTED]"
    )
