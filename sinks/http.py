"""The one HTTP client layer every HTTP sink uses.

Why one module: timeouts, TLS, where requests may go (host overrides for local
stand-ins, the outbound guard against internal addresses) and how answers and
failures become `RetryableError` / `PermanentError` must be the same for every
vendor, and messages must never carry a secret. Retrying is not done here; the
shared retry policy (`sinks.retry`) decides on the classified error.

The client built by `build_client` (sinks.http_client.HttpClient)::

    HttpClient (no redirects, no env proxies/netrc, no cookies; answers as httpx.Response)
      -> host overrides (rewrite vendor host to a local base URL, tests/demos only)
        -> HTTP/1.1 keep-alive pool (sinks.http_connection: llhttp via httptools)
          -> guarded resolver (resolve once, check, connect to the checked IP)
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ipaddress
import json
import math
import os
import re
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlsplit

import httpx
import orjson

from sinks.errors import DeliveryError, PermanentError, RetryableError, exception_chain
from sinks.http_client import HttpClient

__all__ = [
    "EGRESS_ALLOW_ENV",
    "HOST_OVERRIDES_ENV",
    "MAX_RETRY_AFTER",
    "REDACTED",
    "EgressGuard",
    "HostOverrides",
    "HttpClient",
    "IPAddress",
    "IPNetwork",
    "Redactor",
    "Resolver",
    "build_client",
    "classify_exception",
    "classify_response",
    "mtls_ssl_context",
    "redact_url",
    "response_json",
    "send_json",
]

HOST_OVERRIDES_ENV = "ALERTRELAY_HOST_OVERRIDES"
EGRESS_ALLOW_ENV = "ALERTRELAY_EGRESS_ALLOW"
MAX_CONNECTIONS_ENV = "ALERTRELAY_HTTP_MAX_CONNECTIONS"
DEFAULT_MAX_CONNECTIONS = 256
REDACTED = "[REDACTED]"
MAX_RETRY_AFTER = 3600.0
"""A server asking us to wait longer than this is capped: the retry policy decides."""

_BODY_EXCERPT = 300

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""(host, port) -> IP address strings; injectable so tests need no DNS."""


# -- host overrides -------------------------------------------------------------------


_OVERRIDE_HOST = re.compile(r"^(\*\.)?[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?$")


class HostOverrides:
    """Send requests for vendor hosts to local base URLs (tests and demos).

    `host=base_url,...`; `*.example.com` matches any subdomain at any depth
    (`a.example.com`, `a.b.example.com`) but NOT the bare `example.com`: list it
    separately. An exact entry beats a wildcard; the longest wildcard wins. Path and
    query are kept and appended to the base URL's own path. Only the destination
    changes: configured URLs are still validated strictly elsewhere.
    """

    __slots__ = ("_exact", "_rewritten", "_wildcards")

    _REWRITTEN_MAX = 4096

    def __init__(self, mapping: dict[str, str] | None = None) -> None:
        self._exact: dict[str, httpx.URL] = {}
        self._wildcards: list[tuple[str, httpx.URL]] = []
        # URL text -> its rewritten URL (None: not overridden); oldest first.
        self._rewritten: dict[str, httpx.URL | None] = {}
        for host, base in (mapping or {}).items():
            self._add(host, base)

    def _add(self, host: str, base: str) -> None:
        self._rewritten.clear()
        key = host.strip().lower().rstrip(".")
        if not _OVERRIDE_HOST.match(key):
            raise ValueError(f"{HOST_OVERRIDES_ENV}: {host!r} is not a host name or *.domain")
        try:
            url = httpx.URL(base.strip())
        except httpx.InvalidURL as exc:
            raise ValueError(f"{HOST_OVERRIDES_ENV}: base URL for {key!r} is invalid") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"{HOST_OVERRIDES_ENV}: base URL for {key!r} must be http(s)://host")
        if url.userinfo or url.query or url.fragment:
            raise ValueError(
                f"{HOST_OVERRIDES_ENV}: base URL for {key!r} must not have credentials, "
                "a query or a fragment"
            )
        if key in self._exact or any(k == key for k, _ in self._wildcards):
            raise ValueError(f"{HOST_OVERRIDES_ENV}: {key!r} is listed twice")
        if key.startswith("*."):
            self._wildcards.append((key[1:], url))  # ".example.com"
            self._wildcards.sort(key=lambda item: len(item[0]), reverse=True)
        else:
            self._exact[key] = url

    @classmethod
    def parse(cls, spec: str) -> HostOverrides:
        """Parse `host=base_url,...`; blank entries are ignored, anything else malformed
        raises ValueError (a typo must fail at start, not send alerts to a vendor)."""
        overrides = cls()
        for entry in spec.split(","):
            if not entry.strip():
                continue
            host, sep, base = entry.partition("=")
            if not sep:
                raise ValueError(f"{HOST_OVERRIDES_ENV}: entry {entry.strip()!r} is not host=url")
            overrides._add(host, base)
        return overrides

    @classmethod
    def from_env(cls) -> HostOverrides:
        """The overrides in `ALERTRELAY_HOST_OVERRIDES` (none when unset)."""
        return cls.parse(os.environ.get(HOST_OVERRIDES_ENV, ""))

    def __bool__(self) -> bool:
        return bool(self._exact or self._wildcards)

    def __repr__(self) -> str:
        entries = [f"{h}={u}" for h, u in self._exact.items()]
        entries += [f"*{h}={u}" for h, u in self._wildcards]
        return f"HostOverrides({', '.join(entries)})"

    def base_for(self, host: str) -> httpx.URL | None:
        """The base URL that replaces `host`, or None when it is not overridden."""
        key = host.lower().rstrip(".")
        exact = self._exact.get(key)
        if exact is not None:
            return exact
        for suffix, base in self._wildcards:
            if key.endswith(suffix) and len(key) > len(suffix):
                return base
        return None

    def rewrite(self, url: httpx.URL) -> httpx.URL:
        """`url` sent to its override base (path prefix joined, path and query kept);
        `url` itself when its host is not overridden.

        Remembered per URL: building the new URL costs ~15 us, and a webhook integration
        sends every alert to the same URL (httpx.URL is immutable, so sharing is safe)."""
        text = str(url)
        if text in self._rewritten:
            target = self._rewritten[text]
            return url if target is None else target
        base = self.base_for(url.raw_host.decode("ascii"))
        if base is not None:
            prefix = base.raw_path.rstrip(b"/")
            target = base.copy_with(raw_path=prefix + (url.raw_path or b"/"))
        else:
            target = None
        if len(self._rewritten) >= self._REWRITTEN_MAX:
            del self._rewritten[next(iter(self._rewritten))]
        self._rewritten[text] = target
        return url if target is None else target


# -- outbound guard --------------------------------------------------------------------

_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form stands for (mapped, NAT64, 6to4), if any."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def _refusal_reason(ip: IPAddress) -> str | None:
    """Why `ip` is not a public destination, or None when it is."""
    embedded = _embedded_ipv4(ip)
    if isinstance(ip, ipaddress.IPv6Address) and embedded is not None:
        inner = _refusal_reason(embedded)
        if inner is not None or ip.sixtofour is None:
            return inner  # mapped / NAT64: only a wrapper around the IPv4 destination
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip in _METADATA:
        return "the cloud metadata address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a public address"
    return None


async def _system_resolve(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


class EgressGuard:
    """Refuses destinations that are not public addresses unless explicitly allowed.

    Why: integration URLs come from tenants, so without this a webhook could reach the
    cloud metadata service or internal services (SSRF). The check runs on the resolved
    addresses at connect time, and the connection goes to the address that was checked,
    so DNS rebinding between check and connect is impossible.
    """

    __slots__ = ("_resolver", "allow")

    def __init__(self, allow: Sequence[IPNetwork] = (), *, resolver: Resolver | None = None):
        self.allow: tuple[IPNetwork, ...] = tuple(allow)
        self._resolver: Resolver = resolver or _system_resolve

    @classmethod
    def parse(cls, spec: str, *, resolver: Resolver | None = None) -> EgressGuard:
        """A guard allowing the comma-separated CIDRs in `spec` (host bits must be zero)."""
        networks: list[IPNetwork] = []
        for entry in spec.split(","):
            if not entry.strip():
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip()))
            except ValueError as exc:
                raise ValueError(f"{EGRESS_ALLOW_ENV}: {exc}") from None
        return cls(networks, resolver=resolver)

    @classmethod
    def from_env(cls) -> EgressGuard:
        """The guard with the networks in `ALERTRELAY_EGRESS_ALLOW` (none when unset)."""
        return cls.parse(os.environ.get(EGRESS_ALLOW_ENV, ""))

    def __repr__(self) -> str:
        return f"EgressGuard(allow=[{', '.join(str(n) for n in self.allow)}])"

    def _allowed(self, ip: IPAddress) -> bool:
        embedded = _embedded_ipv4(ip)
        return any(ip in net or (embedded is not None and embedded in net) for net in self.allow)

    def refusal(self, ip: IPAddress, host: str | None = None) -> PermanentError | None:
        """The error refusing `ip` (reached as `host`), or None when it may be reached."""
        if self._allowed(ip):
            return None
        reason = _refusal_reason(ip)
        if reason is None:
            return None
        shown = str(ip)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            shown = f"::ffff:{ip.ipv4_mapped}"  # Python < 3.13 prints ::ffff:7f00:1
        where = f"{shown} ({host})" if host and host not in (shown, str(ip)) else shown
        return PermanentError(f"destination {where} is {reason}; allow it with {EGRESS_ALLOW_ENV}")

    def check(self, ip: IPAddress | str, host: str | None = None) -> None:
        """Raise PermanentError when `ip` may not be reached."""
        error = self.refusal(ipaddress.ip_address(ip) if isinstance(ip, str) else ip, host)
        if error is not None:
            raise error

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Resolve `host` once and return the addresses that may be reached, in resolver
        order; PermanentError when none may. Resolver errors (OSError) propagate."""
        try:
            candidates: Sequence[str] = [str(ipaddress.ip_address(host))]
        except ValueError:
            candidates = await self._resolver(host, port)
        permitted: list[IPAddress] = []
        first_refusal: PermanentError | None = None
        for text in dict.fromkeys(candidates):
            ip = ipaddress.ip_address(text)
            error = self.refusal(ip, host)
            if error is None:
                permitted.append(ip)
            elif first_refusal is None:
                first_refusal = error
        if permitted:
            return permitted
        if first_refusal is not None:
            raise first_refusal
        raise OSError(f"{host} resolved to no address")


# -- client factory --------------------------------------------------------------------


def _ssl_context(verify: bool | ssl.SSLContext, cert: tuple[str, str] | None) -> ssl.SSLContext:
    if isinstance(verify, ssl.SSLContext):
        if cert is not None:
            raise ValueError("pass the client certificate inside the SSLContext, not as cert=")
        return verify
    # SSL_CERT_FILE / SSL_CERT_DIR are honoured, otherwise certifi's bundle.
    context = httpx.create_ssl_context(verify=verify, trust_env=True)
    if cert is not None:
        context.load_cert_chain(cert[0], cert[1], password=_no_password_prompt)
    return context


def build_client(
    *,
    timeout: float = 10.0,
    verify: bool | ssl.SSLContext = True,
    cert: tuple[str, str] | None = None,
    overrides: HostOverrides | None = None,
    guard: EgressGuard | None = None,
    max_connections: int | None = None,
) -> HttpClient:
    """The client every HTTP sink uses (sinks.http_client.HttpClient).

    Redirects are not followed (a redirect could lead past the guard's intent and
    would resend credentials); env proxies and netrc are ignored (a proxy would bypass
    the guard). `overrides`/`guard` of None mean "from the environment", so a sink
    cannot forget the guard; pass `HostOverrides()` for none. `timeout` bounds each
    read and write; connecting and waiting for a pooled connection get at most 5 s
    each. Every pooled connection may stay idle (no reconnect churn under load) for 5 s.
    `max_connections` of None: `ALERTRELAY_HTTP_MAX_CONNECTIONS` (default 256) per client.
    """
    return HttpClient(
        ssl_context=_ssl_context(verify, cert),
        guard=EgressGuard.from_env() if guard is None else guard,
        overrides=HostOverrides.from_env() if overrides is None else overrides,
        timeout=timeout,
        max_connections=_max_connections() if max_connections is None else max_connections,
        keepalive_expiry=5.0,
    )


def _max_connections() -> int:
    """Open connections one client may hold (all hosts together). Each answer of a
    per-alert destination takes a connection for its whole round trip, so this caps a
    sink type's requests in flight: at 20 ms per answer, 100 connections carry at most
    ~3 300 deliveries/s (bench/analysis.md)."""
    text = os.environ.get(MAX_CONNECTIONS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_CONNECTIONS
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{MAX_CONNECTIONS_ENV}: {text!r} is not a whole number") from None
    if value < 1:
        raise ValueError(f"{MAX_CONNECTIONS_ENV} must be at least 1")
    return value


def _no_password_prompt() -> str:
    """Without a password callback OpenSSL would prompt on the terminal for an
    encrypted key and hang the service; an empty password fails instead."""
    return ""


@contextlib.contextmanager
def _pem_file(pem: str) -> Iterator[str]:
    """A path holding `pem` for OpenSSL, which only loads keys from files.

    Linux: an anonymous memory file (memfd), so the key never touches a disk. Elsewhere:
    a 0600 temporary file, removed as soon as the caller is done with it.
    """
    data = pem.encode("utf-8")
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("alertrelay-client-cert", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="alertrelay-", suffix=".pem")  # created 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def mtls_ssl_context(
    pem: str, *, password: str | None = None, ca_pem: str | None = None
) -> ssl.SSLContext:
    """A verifying client SSLContext presenting the certificate (+ chain) and private key
    in `pem`, for mutual TLS. `ca_pem` replaces the default trust (certifi or
    SSL_CERT_FILE) with the given CA certificates. Raises ValueError with a message that
    never contains the PEM."""
    if "CERTIFICATE-----" not in pem:
        raise ValueError("client certificate PEM contains no certificate")
    if "PRIVATE KEY-----" not in pem:
        raise ValueError("client certificate PEM contains no private key")
    if ca_pem is not None:
        context = ssl.create_default_context(cadata=ca_pem)
    else:
        context = httpx.create_ssl_context(verify=True, trust_env=True)
    try:
        with _pem_file(pem) as path:
            context.load_cert_chain(
                path, password=password if password is not None else _no_password_prompt
            )
    except ssl.SSLError as exc:
        reason = exc.reason or type(exc).__name__
        raise ValueError(f"client certificate PEM could not be loaded ({reason})") from None
    return context


# -- redaction -------------------------------------------------------------------------

_URL_ORIGIN = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s]+")
_HEX_ESCAPE = re.compile(r"%[0-9A-F]{2}")
_SCHEMES = r"bearer|basic|token|geniekey|splunk|digest|apikey|dsn"
_HEADER_VALUE = re.compile(
    r"(?i)(?P<name>\b(?:proxy-)?authorization|\bdd-api-key|\bdd-application-key"
    r"|\bx-api-key|\bapi[-_]?key|\bapplication[-_]key|\bx-auth-token|\brouting[-_]key"
    r"|\bintegration[-_]key|\bapi[-_]?token|\baccess[-_]?token|\bpassword|\bsecret)"
    r"(?P<sep>[\"']?\s*[:=]\s*[\"']?)"
    rf"(?P<scheme>(?>(?:{_SCHEMES})\s+)?)"
    r"(?!\[REDACTED\])(?P<value>[^\s\"',;&}\]]+)"
)
_SCHEME_TOKEN = re.compile(
    rf"(?i)\b(?P<scheme>{_SCHEMES})\s+"
    r"(?=[A-Za-z0-9._~+/=-]*\d)[A-Za-z0-9._~+/=-]{8,}"
)
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@?#]+@")
_QUERY = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s?#\"'<>]*)\?[^\s#\"'<>]+")
_QUERY_PARAM = re.compile(
    r"(?i)([?&](?:token|access_token|api[-_]?key|key|sig|signature|password|secret|code"
    r"|dd-api-key)=)(?!\[REDACTED\])[^&\s#\"']+"
)


def redact_url(url: str) -> str:
    """Scheme, host and explicit port of `url`, nothing else: what may be shown about a
    configured URL (webhook URLs carry their secret in the path or query)."""
    try:
        parts = urlsplit(url.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return REDACTED
    if not parts.scheme or not host:
        return REDACTED
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme.lower()}://{host}" + (f":{port}" if port is not None else "")


def _secret_variants(secret: str) -> Iterator[tuple[str, str]]:
    """(text to find, its replacement) for one secret and the forms it travels in."""
    origin = _URL_ORIGIN.match(secret)
    shown = f"{redact_url(secret)}/{REDACTED}" if origin else REDACTED
    forms = [secret, quote(secret, safe=""), quote(secret), quote_plus(secret)]
    forms += [json.dumps(secret)[1:-1], secret.replace("/", "\\/")]
    forms += [_HEX_ESCAPE.sub(lambda m: m.group(0).lower(), form) for form in forms]
    for form in forms:
        yield form, shown
    if origin:
        tail = secret[origin.end() :]
        if len(tail) > 1:
            yield tail, tail[0] + REDACTED if tail[0] in "/?#" else REDACTED
            if len(tail.lstrip("/")) >= 4:
                yield tail.lstrip("/"), REDACTED
        parts = urlsplit(secret)
        userinfo, _, _ = parts.netloc.rpartition("@")
        for piece in (userinfo, parts.password or ""):
            if piece:
                yield piece, REDACTED
        last_segment = parts.path.rstrip("/").rpartition("/")[2]
        if len(last_segment) >= 8:
            yield last_segment, REDACTED
        for _, value in parse_qsl(parts.query):
            if len(value) >= 8:
                yield value, REDACTED
    if " " in secret.strip():  # "Bearer <token>", "Basic <b64>": the token on its own too
        for word in secret.split():
            if len(word) >= 8:
                yield word, REDACTED
    if "\n" in secret:  # PEM keys, JSON documents: each substantial line on its own
        for line in secret.splitlines():
            if len(line.strip()) >= 16:
                yield line.strip(), REDACTED


class Redactor:
    """Removes secrets from text that may reach logs, status records or the DLQ.

    Every non-empty secret is replaced (also URL-quoted and JSON-escaped forms; a secret
    URL keeps only scheme and host), then generic scrubbing removes credentials in
    Authorization-style headers and URL userinfo/query strings. Idempotent, so already
    redacted text can pass again. Short secrets are redacted too, whatever it costs in
    readability.
    """

    __slots__ = ("_pattern", "_replacements")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        replacements: dict[str, str] = {}
        for secret in secrets:
            if secret:
                for text, shown in _secret_variants(secret):
                    if text:
                        replacements.setdefault(text, shown)
        self._replacements = replacements
        self._pattern: re.Pattern[str] | None = None
        if replacements:
            replacements.setdefault(REDACTED, REDACTED)  # keep earlier masks intact
            ordered = sorted(replacements, key=len, reverse=True)  # longest first
            self._pattern = re.compile("|".join(re.escape(text) for text in ordered))

    def __repr__(self) -> str:
        return f"Redactor(<{len(self._replacements)} patterns>)"

    def __call__(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(lambda m: self._replacements[m.group(0)], text)
        text = _HEADER_VALUE.sub(rf"\g<name>\g<sep>\g<scheme>{REDACTED}", text)
        text = _SCHEME_TOKEN.sub(rf"\g<scheme> {REDACTED}", text)
        text = _USERINFO.sub(rf"\1{REDACTED}@", text)
        text = _QUERY.sub(rf"\1?{REDACTED}", text)
        return _QUERY_PARAM.sub(rf"\1{REDACTED}", text)


# -- classification --------------------------------------------------------------------


def _clean(text: str, limit: int) -> str:
    """One line (no CR/LF to forge log lines), at most `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _seconds_until(value: float, now: float) -> float:
    return min(MAX_RETRY_AFTER, max(0.0, value - now))


def _parse_retry_after(value: str, now: float) -> float | None:
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return _seconds_until(when.timestamp(), now)
    if not math.isfinite(seconds):
        return None
    return _seconds_until(seconds, 0.0)


def _parse_rate_limit_reset(value: str, now: float) -> float | None:
    """Delta seconds per Datadog and the IETF draft; some APIs send an epoch instead."""
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    if number > 1e12:  # epoch milliseconds
        return _seconds_until(number / 1000, now)
    if number > 1e9:  # epoch seconds
        return _seconds_until(number, now)
    return _seconds_until(number, 0.0)


def _retry_after(headers: httpx.Headers) -> float | None:
    now = datetime.now(UTC).timestamp()
    if "retry-after" in headers:
        parsed = _parse_retry_after(headers["retry-after"], now)
        if parsed is not None:
            return parsed
    for name in ("x-ratelimit-reset", "ratelimit-reset"):
        if name in headers:
            parsed = _parse_rate_limit_reset(headers[name], now)
            if parsed is not None:
                return parsed
    return None


def _body_excerpt(resp: httpx.Response, redact: Redactor) -> str:
    try:
        text = resp.text
    except httpx.ResponseNotRead:
        return ""
    # Redact before cutting, so a secret straddling the cut cannot leak its first half.
    return _clean(redact(text[:65536]), _BODY_EXCERPT)


def classify_response(resp: httpx.Response, *, redact: Redactor, what: str) -> None:
    """None for 2xx; RetryableError for 408/425/429/5xx (with `retry_after` from
    Retry-After or X-RateLimit-Reset); PermanentError for everything else, including
    3xx because redirects are never followed."""
    status = resp.status_code
    if 200 <= status < 300:
        return None
    who = _clean(redact(what), 200)
    if 300 <= status < 400:
        location = resp.headers.get("location")
        if location:
            with contextlib.suppress(RuntimeError, httpx.InvalidURL):
                location = str(resp.request.url.join(location))
            target = redact(redact_url(location))
        else:
            target = "an unspecified location"
        raise PermanentError(
            f"{who} answered {status}: redirect to {target} not followed", status=status
        )
    body = _body_excerpt(resp, redact)
    message = f"{who} answered {status}" + (f": {body}" if body else "")
    if status in (408, 425, 429) or 500 <= status < 600:
        raise RetryableError(message, status=status, retry_after=_retry_after(resp.headers))
    raise PermanentError(message, status=status)


_TLS_TRANSPORT_BREAKS = (
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
    ssl.SSLSyscallError,
    ssl.SSLWantReadError,
    ssl.SSLWantWriteError,
)
"""ssl errors that only say the connection broke off (EOF, reset during TLS): as
retryable as any other dropped connection."""


def _ssl_text(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return re.sub(r"\s*\(_ssl\.c:\d+\)", "", text)


def _tls_failure(exc: BaseException) -> tuple[bool, str] | None:
    """(is a certificate verification failure, detail) when `exc` is a TLS failure that
    the same attempt would meet again, else None."""
    links = list(exception_chain(exc))
    for link in links:
        if isinstance(link, ssl.SSLCertVerificationError):
            detail = getattr(link, "verify_message", None) or getattr(link, "reason", None)
            if detail:
                return True, str(detail)
    if any(
        isinstance(link, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(link)
        for link in links
    ):
        return True, "certificate verify failed"
    for link in links:
        if isinstance(link, _TLS_TRANSPORT_BREAKS):
            return None
        if isinstance(link, ssl.SSLError):
            return False, _ssl_text(link)
    return None


_TIMEOUT_PHASE: dict[type[BaseException], str] = {
    httpx.ConnectTimeout: "connecting",
    httpx.ReadTimeout: "waiting for the response",
    httpx.WriteTimeout: "sending the request",
    httpx.PoolTimeout: "waiting for a free connection",
}


def classify_exception(exc: Exception, *, redact: Redactor, what: str) -> DeliveryError:
    """The DeliveryError for a failed exchange. Network trouble is retryable; a TLS
    failure (a certificate that fails verification, a handshake the server refuses,
    whether an ssl error or an httpx error chained to one) or a request that cannot even
    be formed is permanent: the same attempt would fail the same way. A connection that
    merely broke off during TLS (EOF) stays retryable. An existing DeliveryError (e.g.
    the guard's refusal) is returned as is."""
    if isinstance(exc, DeliveryError):
        return exc
    who = _clean(redact(what), 200)
    detail = _clean(redact(str(exc)), 200) or type(exc).__name__
    tls = _tls_failure(exc)
    if tls is not None:
        verification, tls_detail = tls
        shown = _clean(redact(tls_detail), 200)
        if verification:
            return PermanentError(f"TLS verification failed for {who}: {shown}")
        return PermanentError(f"TLS with {who} failed: {shown}")
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        phase = next((p for t, p in _TIMEOUT_PHASE.items() if isinstance(exc, t)), "")
        return RetryableError(f"{who} timed out" + (f" {phase}" if phase else ""))
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL | httpx.LocalProtocolError):
        return PermanentError(f"request to {who} cannot be sent: {detail}")
    if isinstance(exc, httpx.ConnectError | ConnectionRefusedError):
        return RetryableError(f"{who} could not be reached: {detail}")
    if isinstance(exc, httpx.RemoteProtocolError):
        return RetryableError(f"{who} broke off the exchange: {detail}")
    if isinstance(exc, httpx.TransportError | OSError):
        return RetryableError(f"{who} connection failed: {detail}")
    return RetryableError(f"{who} failed: {type(exc).__name__}: {detail}")


# -- JSON APIs --------------------------------------------------------------------------


def response_json(resp: httpx.Response) -> Any:
    """The answer's body parsed as JSON, or None when it is not JSON."""
    try:
        return orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return None


async def send_json(
    client: HttpClient,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    redact: Redactor,
    what: str,
    params: dict[str, str] | None = None,
    body: Any = None,
) -> httpx.Response:
    """One request to a JSON API, `body` (when given) sent as application/json; a failed
    exchange raises its classified DeliveryError (naming `what`), an answer is returned
    whatever its status."""
    sent = dict(headers)
    content = None
    if body is not None:
        sent["Content-Type"] = "application/json"
        content = orjson.dumps(body)
    try:
        return await client.request(method, url, headers=sent, params=params, content=content)
    except httpx.HTTPError as exc:
        raise classify_exception(exc, redact=redact, what=what) from None
