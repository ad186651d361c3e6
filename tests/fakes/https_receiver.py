"""A webhook receiver as a careful one is built: HTTPS with a required client certificate
(mutual TLS), HMAC signature checks, and dedup by Idempotency-Key.

What it enforces (the generic webhook contract of VENDORS.md and sinks/webhook/sink.py):
- TLS (when given a server certificate): the handshake requires a client certificate
  issued by `client_ca` (`ssl.CERT_REQUIRED`); refused handshakes are recorded in
  `handshake_failures`, and the accepted client certificate's subject in each request.
- Methods POST, PUT and PATCH (405 otherwise); a body with Content-Length.
- With `signing_secret`: `X-Alertrelay-Timestamp` within 5 minutes of now and
  `X-Alertrelay-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`, compared in
  constant time; 401 with a JSON error otherwise.
- `Idempotency-Key` required; a key seen before is answered 200 with
  `Idempotent-Replayed: true` and not accepted again (`accepted` has one entry per key).
Answers can be scripted per path (e.g. 503, then 429 with Retry-After).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import socket
import ssl
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import trustme

from tests.fakes._server import AnswerQueue, FakeHTTPServer, reply, wait_for_count

__all__ = ["Answer", "HandshakeFailure", "HttpsReceiver", "Received", "subject_of"]

MAX_SKEW = 300.0


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes = b'{"ok": true}'
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client_subject: dict[str, str] | None
    tls_version: str | None
    status: int
    at: float

    def header(self, name: str) -> str | None:
        lowered = {k.lower(): v for k, v in self.headers.items()}
        return lowered.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class HandshakeFailure:
    reason: str
    at: float


def subject_of(peer: dict[str, Any] | None) -> dict[str, str] | None:
    """`getpeercert()["subject"]` as a flat {attribute: value} mapping."""
    if not peer:
        return None
    return {key: value for rdn in peer.get("subject", ()) for key, value in rdn}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        receiver: HttpsReceiver,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
    ) -> None:
        self.receiver = receiver
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """The TLS handshake happens here, in the connection's own thread, so a client
        that stalls or fails cannot hold up the others."""
        context = self.receiver.ssl_context
        if context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(10)
        tls = context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        try:
            tls.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            self.receiver._handshake_failed(exc)
            _lingering_close(tls)
            return
        try:
            handler: Any = self.RequestHandlerClass
            handler(tls, client_address, self)
        finally:
            with contextlib.suppress(OSError):
                tls.shutdown(socket.SHUT_RDWR)
            tls.close()


class HttpsReceiver(FakeHTTPServer[Received]):
    """HTTPS (mutual TLS) when `server_cert` is given, plain HTTP otherwise."""

    methods = ("POST", "PUT", "PATCH", "GET", "DELETE")

    def __init__(
        self,
        *,
        server_cert: trustme.LeafCert | None = None,
        client_ca: trustme.CA | None = None,
        require_client_cert: bool = True,
        signing_secret: str | None = None,
        max_tls: ssl.TLSVersion | None = None,
    ) -> None:
        super().__init__()
        self.signing_secret = signing_secret
        self.accepted: dict[str, Received] = {}
        self.handshake_failures: list[HandshakeFailure] = []
        self._script: AnswerQueue[Answer] = AnswerQueue()
        self.ssl_context: ssl.SSLContext | None = None
        if server_cert is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_cert.configure_cert(context)
            if client_ca is not None:
                client_ca.configure_trust(context)
            context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
            if max_tls is not None:
                context.maximum_version = max_tls
            self.ssl_context = context

    def _make_server(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]
    ) -> ThreadingHTTPServer:
        return _Server(self, address, handler)

    # -- lifecycle --------------------------------------------------------------------

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    # -- scripting and inspection -----------------------------------------------------

    def script(self, path: str, *answers: Answer) -> None:
        """Answer the next requests to `path` with `answers` (after the checks pass)."""
        self._script.replace(path, answers)

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path.split("?")[0] == path]

    def accepted_for(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.accepted.values() if r.path.split("?")[0] == path]

    def wait_for(self, count: int, path: str | None = None, timeout: float = 30.0) -> None:
        wait_for_count(lambda: self.received(path), count, timeout, f"requests to {path or '*'}")

    # -- the checks -------------------------------------------------------------------

    def _handshake_failed(self, exc: BaseException) -> None:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        with self._lock:
            self.handshake_failures.append(HandshakeFailure(str(reason), time.time()))

    def _verify(self, method: str, headers: dict[str, str], body: bytes) -> Answer | None:
        """The refusal a careful receiver answers, or None when the request is good."""
        if method not in ("POST", "PUT", "PATCH"):
            return _error(405, f"method {method} not allowed")
        if not headers.get("idempotency-key"):
            return _error(400, "Idempotency-Key header is required")
        if self.signing_secret is None:
            return None
        stamp = headers.get("x-alertrelay-timestamp", "")
        signature = headers.get("x-alertrelay-signature", "")
        if not stamp or not signature:
            return _error(401, "missing X-Alertrelay-Timestamp or X-Alertrelay-Signature")
        if not stamp.isdigit() or abs(time.time() - int(stamp)) > MAX_SKEW:
            return _error(401, "timestamp missing or more than 5 minutes off")
        mac = hmac.new(
            self.signing_secret.encode(), stamp.encode() + b"." + body, hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(signature, f"sha256={mac}"):
            return _error(401, "signature does not match")
        return None

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = handler.headers.get("Content-Length")
        body = handler.rfile.read(int(length)) if length and length.isdigit() else b""
        headers = dict(handler.headers.items())
        lowered = {k.lower(): v for k, v in headers.items()}
        path = handler.path.split("?")[0]
        connection = handler.connection
        subject = tls_version = None
        if isinstance(connection, ssl.SSLSocket):
            subject = subject_of(connection.getpeercert())
            tls_version = connection.version()
        answer = self._verify(handler.command, lowered, body)
        replayed = False
        if answer is None:
            answer = self._script.next(path)
        key = lowered.get("idempotency-key", "")
        if answer is None:
            with self._lock:
                replayed = key in self.accepted
            answer = Answer(200, b'{"ok": true, "replayed": true}') if replayed else Answer()
        record = Received(
            handler.command,
            handler.path,
            headers,
            body,
            subject,
            tls_version,
            answer.status,
            time.time(),
        )
        with self._lock:
            self.requests.append(record)
            if 200 <= answer.status < 300 and not replayed:
                self.accepted[key] = record
        sent = list(answer.headers.items())
        if replayed:
            sent.append(("Idempotent-Replayed", "true"))
        sent.append(("Content-Type", "application/json"))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
            reply(handler, answer.status, answer.body, sent)


def _lingering_close(sock: ssl.SSLSocket) -> None:
    """Close the way web servers do (Apache's lingering close): stop sending, then read
    what the client already sent before closing. Closing with unread data makes the
    kernel send a reset, which can destroy the TLS alert (e.g. "certificate required")
    before the client reads it; real servers linger so that the client sees why."""
    try:
        with contextlib.suppress(OSError):
            sock.settimeout(1.0)
            socket.socket.shutdown(sock, socket.SHUT_WR)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and socket.socket.recv(sock, 65536):
                pass
    finally:
        sock.close()


def _error(status: int, message: str) -> Answer:
    return Answer(status, json.dumps({"error": message}).encode())
