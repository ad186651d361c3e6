"""A real SMTP relay on 127.0.0.1 (aiosmtpd) that behaves like a submission server.

What it enforces, as VENDORS.md "Email (SMTP)" and the RFCs say a relay does:
- STARTTLS with a certificate from a private trustme CA (`ca_file` for the client), or
  implicit TLS from the first byte; before STARTTLS every command but EHLO/NOOP/QUIT
  gets 530, and AUTH is neither offered nor accepted (538) before TLS;
- AUTH PLAIN/LOGIN with one fixed user and password; MAIL before AUTH gets 530, wrong
  credentials 535 5.7.8;
- envelope recipients separate from headers, refused one by one (scriptable 550/4xx);
- DATA checked like a strict relay: lines of at most 998 octets, 7-bit unless
  BODY=8BITMIME, From/Date/Message-ID present, no repeated singleton header
  (RFC 5322 3.6), a MIME structure the `email` package parses without defects.

It records every accepted message (envelope, raw bytes, parsed MIME, TLS and the
authenticated user) and every AUTH attempt, and can be scripted to answer the next
MAIL, RCPT or DATA with any reply (451, 421, 554 ...) or to refuse all AUTH.
"""

from __future__ import annotations

import email
import email.policy
import logging
import ssl
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.fakes._server import ContextManaged, wait_for_count
from tests.harness import free_port

__all__ = ["AuthAttempt", "FakeSmtp", "ReceivedMail"]

Stage = Literal["mail", "rcpt", "data"]


class _NoLoginDataNoise(logging.Filter):
    """aiosmtpd itself sets the deprecated Session.login_data and warns about it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


logging.getLogger("mail.log").addFilter(_NoLoginDataNoise())

_SINGLETONS = (
    "date",
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "message-id",
    "in-reply-to",
    "references",
    "subject",
)


@dataclass(frozen=True)
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    mail_options: list[str]
    raw: bytes
    message: EmailMessage
    tls: bool
    auth_user: str | None
    at: float


@dataclass(frozen=True)
class AuthAttempt:
    mechanism: str
    username: str
    success: bool
    tls: bool


def _refusal_for(address: str) -> str:
    return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"


class _Handler:
    def __init__(self, fake: FakeSmtp) -> None:
        self.fake = fake

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if not session.authenticated:  # implicit-TLS mode enforces AUTH here (see below)
            return "530 5.7.0 Authentication required"
        scripted = self.fake._next_scripted("mail")
        if scripted is not None:
            return scripted
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        with self.fake._lock:
            self.fake.transactions += 1
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        scripted = self.fake._next_scripted("rcpt")
        if scripted is not None:
            return scripted
        refusal = self.fake._refusals.get(address.lower())
        if refusal is not None:
            return refusal
        if len(envelope.rcpt_tos) >= self.fake.max_recipients:
            return "452 4.5.3 Error: too many recipients"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        scripted = self.fake._next_scripted("data")
        if scripted is not None:
            return scripted
        raw = envelope.original_content or b""
        problem = _check_message(raw, envelope.mail_options)
        if problem is not None:
            return problem
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        auth = session.auth_data
        mail = ReceivedMail(
            mail_from=envelope.mail_from or "",
            rcpt_tos=list(envelope.rcpt_tos),
            mail_options=list(envelope.mail_options),
            raw=raw,
            message=message,
            tls=self.fake.implicit_tls or session.ssl is not None,
            auth_user=auth.login.decode() if isinstance(auth, LoginPassword) else None,
            at=time.time(),
        )
        with self.fake._lock:
            self.fake.messages.append(mail)
            number = len(self.fake.messages)
        return f"250 2.0.0 Ok: queued as FAKE{number:05d}"


def _check_message(raw: bytes, mail_options: list[str]) -> str | None:
    """The reply a strict relay gives to a malformed message, or None when it is fine."""
    for line in raw.split(b"\r\n"):
        if len(line) > 998:
            return "554 5.6.0 Message line longer than 998 octets (RFC 5322 2.1.1)"
    eight_bit = any(option.upper() == "BODY=8BITMIME" for option in mail_options)
    if not eight_bit and any(byte > 127 for byte in raw):
        return "554 5.6.1 8-bit data without BODY=8BITMIME"
    message = email.message_from_bytes(raw, policy=email.policy.default)
    names = [name.lower() for name in message]
    for required in ("from", "date", "message-id"):
        if required not in names:
            return f"550 5.7.1 Message is not RFC 5322 compliant: missing {required} header"
    for name in _SINGLETONS:
        if names.count(name) > 1:
            return f"550 5.7.1 Message is not RFC 5322 compliant: multiple {name} headers"
    for part in message.walk():
        if part.defects:
            return f"554 5.6.0 Malformed MIME message: {type(part.defects[0]).__name__}"
    return None


class FakeSmtp(ContextManaged):
    """The relay; use as a context manager or start()/stop()."""

    USERNAME = "relay-user"
    PASSWORD = "relay-pass-S3cr3t-9f2c"
    SENDER = "alerts@alertrelay.example.com"

    def __init__(
        self,
        *,
        implicit_tls: bool = False,
        username: str = USERNAME,
        password: str = PASSWORD,
        max_recipients: int = 100,
    ) -> None:
        self.implicit_tls = implicit_tls
        self.username = username
        self.password = password
        self.max_recipients = max_recipients
        self.host = "127.0.0.1"
        self.port = free_port()
        self.messages: list[ReceivedMail] = []
        self.auth_attempts: list[AuthAttempt] = []
        self.transactions = 0
        self.reject_auth = False
        self._refusals: dict[str, str] = {}
        self._script: dict[Stage, deque[str]] = {"mail": deque(), "rcpt": deque(), "data": deque()}
        self._lock = threading.Lock()
        self.ca = trustme.CA()
        server_cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self._server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_cert.configure_cert(self._server_context)
        self._dir = tempfile.TemporaryDirectory(prefix="fake-smtp-")
        self.ca_file = Path(self._dir.name) / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        # aiosmtpd only counts STARTTLS as TLS: with implicit TLS its own AUTH-needs-TLS
        # check would refuse AUTH, so there MAIL checks for AUTH instead (handle_MAIL).
        tls_kwargs: dict[str, Any] = (
            {"ssl_context": self._server_context, "auth_require_tls": False}
            if implicit_tls
            else {
                "tls_context": self._server_context,
                "require_starttls": True,
                "auth_require_tls": True,
                "auth_required": True,
            }
        )
        self._controller = Controller(
            _Handler(self),
            hostname=self.host,
            port=self.port,
            server_hostname="smtp.fake.example",
            authenticator=self._authenticate,
            **tls_kwargs,
        )

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> FakeSmtp:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()
        self._dir.cleanup()

    # -- scripting --------------------------------------------------------------------

    def refuse(self, address: str, reply: str | None = None) -> None:
        """Answer RCPT TO for `address` with `reply` (default: 550 user unknown)."""
        self._refusals[address.lower()] = reply or _refusal_for(address)

    def fail_next(self, stage: Stage, reply: str, times: int = 1) -> None:
        """Answer the next `times` MAIL / RCPT / DATA commands with `reply`."""
        with self._lock:
            self._script[stage].extend([reply] * times)

    def reset(self) -> None:
        with self._lock:
            self.messages.clear()
            self.auth_attempts.clear()
            self.transactions = 0
            self.reject_auth = False
            self._refusals.clear()
            for queue in self._script.values():
                queue.clear()

    def _next_scripted(self, stage: Stage) -> str | None:
        with self._lock:
            queue = self._script[stage]
            return queue.popleft() if queue else None

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        ok = (
            not self.reject_auth
            and isinstance(auth_data, LoginPassword)
            and auth_data.login == self.username.encode()
            and auth_data.password == self.password.encode()
        )
        username = auth_data.login.decode() if isinstance(auth_data, LoginPassword) else ""
        with self._lock:
            self.auth_attempts.append(
                AuthAttempt(mechanism, username, ok, self.implicit_tls or session.ssl is not None)
            )
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    # -- reading ----------------------------------------------------------------------

    def received(self) -> list[ReceivedMail]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[ReceivedMail]:
        return wait_for_count(self.received, count, timeout, "messages")

    def env(self, **overrides: str) -> dict[str, str]:
        """ALERTRELAY_SMTP_* pointing at this relay (STARTTLS mode; implicit TLS is only
        chosen by port 465, so implicit-mode tests build the relay settings directly)."""
        env = {
            "ALERTRELAY_SMTP_HOST": self.host,
            "ALERTRELAY_SMTP_PORT": str(self.port),
            "ALERTRELAY_SMTP_USERNAME": self.username,
            "ALERTRELAY_SMTP_PASSWORD": self.password,
            "ALERTRELAY_SMTP_STARTTLS": "true",
            "ALERTRELAY_SMTP_FROM": f"Security alerts <{self.SENDER}>",
            "ALERTRELAY_SMTP_CA_FILE": str(self.ca_file),
        }
        env.update({f"ALERTRELAY_SMTP_{k.upper()}": v for k, v in overrides.items()})
        return env
