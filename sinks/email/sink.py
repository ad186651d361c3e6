"""Email delivery: one multipart message per alert, through the operator's SMTP relay.

Why it looks like this:

- The relay is the operator's, not the tenant's: `ALERTRELAY_SMTP_*` is read once into
  `SmtpRelay`. A relay that is missing or misconfigured does not stop the worker (other
  integrations keep delivering); every email delivery fails permanently with the reason,
  so the alerts wait in the DLQ for a redrive once it is fixed.
- One SMTP transaction per alert carries every configured address (one RCPT TO each,
  all listed in `To:`). Relays may refuse some recipients: the sink remembers, per
  idempotency key, who already has the message and who was refused for good, so a retry
  of temporarily refused addresses (4xx) never sends a second copy to the others, and
  re-delivering a delivered alert sends nothing. The memory is in-process and bounded;
  after a restart the deterministic `Message-ID` lets mail clients spot the duplicate.
- Classification follows SMTP reply classes: 4xx is temporary (RetryableError), 5xx is
  permanent; connection trouble and timeouts are retryable; a certificate that fails
  verification, refused credentials, or a relay without the TLS we need are permanent.
  The relay password is redacted from every message (it is also returned by
  `secrets()`, so the shared runner hides it in status and DLQ records).
- Every header built from alert text is reduced to one line (CR, LF and other controls
  become spaces): header injection is impossible by construction, and the `email`
  package's own check is a second line of defence. The HTML part escapes everything.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.policy
import email.utils
import html
import logging
import os
import re
import socket
import ssl
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import TYPE_CHECKING, Literal

import aiosmtplib
import httpx

from schemas.models import Delivery, EventType, IntegrationConfig, RiskLevel
from sinks.base import PerAlertSink, test_delivery
from sinks.email.config import EmailSettings, ascii_address
from sinks.errors import DeliveryError, PermanentError, RetryableError, exception_chain
from sinks.http import Redactor

if TYPE_CHECKING:
    from sinks.registry import SinkContext

__all__ = [
    "MAX_SESSIONS",
    "NO_RELAY",
    "RISK_STYLE",
    "SMTP_ENV_PREFIX",
    "EmailSink",
    "RiskStyle",
    "SmtpRelay",
    "build_message",
]

log = logging.getLogger(__name__)

SMTP_ENV_PREFIX = "ALERTRELAY_SMTP_"
NO_RELAY = "no SMTP relay configured (set ALERTRELAY_SMTP_HOST)"
DEFAULT_FROM_NAME = "alertrelay"
MAX_SESSIONS = 10
"""SMTP conversations open at once per worker: relays cap connections per client
(Postfix: 50 by default) and answer 421 past it; a burst of alerts for many
integrations must queue here rather than trip that limit."""
SUBJECT_TITLE_MAX = 180
"""Characters of the alert title kept in the subject (clients show ~60-100 anyway)."""

_POLICY = email.policy.SMTP  # CRLF line ends, 78-column folding, raises on CR/LF in headers
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_HOST = re.compile(r"[A-Za-z0-9._-]{1,253}|[0-9A-Fa-f:.]{2,45}")
_FROM_ADDR = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9.-]{1,253}")
_EHLO_NAME = re.compile(r"[A-Za-z0-9.-]{1,253}")
_UNSAFE_IN_HEADER = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")
_SAFE_LINK = re.compile(r"https?://[^\s\"'<>\\`]+", re.IGNORECASE)
_MAX_NAMED = 10  # addresses named in one error message


# -- the relay -------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpRelay:
    """The operator's SMTP relay, from `ALERTRELAY_SMTP_*` (tests build one directly).

    `tls`: "implicit" (TLS from the first byte, port 465), "starttls" (upgrade before
    anything else, required: a relay that does not offer it is an error, never a silent
    downgrade) or "none" (a trusted local relay; never with credentials). `problem` says
    why the environment is unusable; every delivery then fails permanently with it.
    """

    host: str | None = None
    port: int = 587
    tls: Literal["implicit", "starttls", "none"] = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sender: str | None = None
    from_header: str | None = None
    ca_file: str | None = None
    timeout: float = 30.0
    problem: str | None = None

    @property
    def label(self) -> str:
        return f"SMTP relay {self.host}:{self.port}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SmtpRelay:
        """Parse the environment; never raises and never echoes the password."""
        env = os.environ if environ is None else environ
        problems: list[str] = []

        def get(name: str) -> str | None:
            return env.get(SMTP_ENV_PREFIX + name, "").strip() or None

        host = get("HOST")
        if host is not None and not _HOST.fullmatch(host):
            problems.append(f"{SMTP_ENV_PREFIX}HOST must be a host name or an IP address")

        starttls: bool | None = None
        raw_starttls = get("STARTTLS")
        if raw_starttls is not None:
            if raw_starttls.lower() in _TRUE:
                starttls = True
            elif raw_starttls.lower() in _FALSE:
                starttls = False
            else:
                problems.append(f"{SMTP_ENV_PREFIX}STARTTLS must be true or false")

        raw_port = get("PORT")
        port = 25 if starttls is False else 587
        if raw_port is not None:
            if raw_port.isdigit() and 1 <= int(raw_port) <= 65535:
                port = int(raw_port)
            else:
                problems.append(f"{SMTP_ENV_PREFIX}PORT must be a port number (1-65535)")
        tls: Literal["implicit", "starttls", "none"]
        if port == 465:
            tls = "implicit"
        elif starttls is False:
            tls = "none"
        else:
            tls = "starttls"

        username = get("USERNAME")
        password = env.get(SMTP_ENV_PREFIX + "PASSWORD") or None
        if password is not None and username is None:
            problems.append(
                f"{SMTP_ENV_PREFIX}PASSWORD is set but {SMTP_ENV_PREFIX}USERNAME is not"
            )
        if username is not None and password is None:
            problems.append(
                f"{SMTP_ENV_PREFIX}USERNAME is set but {SMTP_ENV_PREFIX}PASSWORD is not"
            )
        if username is not None and tls == "none":
            problems.append(
                "refusing to send SMTP credentials without TLS: use port 465 or "
                f"{SMTP_ENV_PREFIX}STARTTLS=true"
            )

        sender = from_header = None
        raw_from = get("FROM")
        if raw_from is None and username is not None and _FROM_ADDR.fullmatch(username):
            raw_from = username
        if raw_from is None:
            problems.append(f"no sender address: set {SMTP_ENV_PREFIX}FROM")
        else:
            name, address = email.utils.parseaddr(raw_from)
            if not _FROM_ADDR.fullmatch(address) or ".." in address:
                problems.append(
                    f"{SMTP_ENV_PREFIX}FROM must be an address such as "
                    "'Security alerts <alerts@example.com>'"
                )
            else:
                sender = address
                display = _one_line(name, 100) or DEFAULT_FROM_NAME
                from_header = email.utils.formataddr((display, address))

        ca_file = get("CA_FILE")
        if ca_file is not None and not os.path.isfile(ca_file):
            problems.append(f"{SMTP_ENV_PREFIX}CA_FILE {ca_file!r} is not a readable file")

        return cls(
            host=host,
            port=port,
            tls=tls,
            username=username,
            password=password,
            sender=sender,
            from_header=from_header,
            ca_file=ca_file,
            problem="; ".join(problems) or None,
        )


def _tls_context(relay: SmtpRelay) -> ssl.SSLContext:
    """Verifying client context: the CA file alone when given (a private relay, tests),
    otherwise the trust the HTTP sinks use (SSL_CERT_FILE / certifi)."""
    if relay.ca_file is not None:
        return ssl.create_default_context(cafile=relay.ca_file)
    return httpx.create_ssl_context(verify=True, trust_env=True)


# -- the message -----------------------------------------------------------------------


@dataclass(frozen=True)
class RiskStyle:
    tag: str
    importance: Literal["low", "normal", "high"]
    x_priority: str
    colour: str


RISK_STYLE: dict[RiskLevel, RiskStyle] = {
    RiskLevel.LOW: RiskStyle("LOW", "low", "5 (Lowest)", "#2e7d32"),
    RiskLevel.MEDIUM: RiskStyle("MEDIUM", "normal", "3 (Normal)", "#f9a825"),
    RiskLevel.HIGH: RiskStyle("HIGH", "high", "2 (High)", "#ef6c00"),
    RiskLevel.CRITICAL: RiskStyle("CRITICAL", "high", "1 (Highest)", "#c62828"),
}
"""Risk level -> subject tag, `Importance` (RFC 2156), `X-Priority` and the banner colour.

Email has no severity field; these are what mail clients sort and flag on. Low risk is
marked low importance so a busy inbox can filter it; high and critical are both "high"
importance (the only level above normal) and differ in X-Priority and the subject tag.
"""

_EVENT_LABEL = {
    EventType.CLIENT_SIDE_RISK: "Client-side risk",
    EventType.PCI_SCOPE_CHANGE: "PCI scope change",
}


def _one_line(text: str, limit: int) -> str:
    """Header-safe text: controls and line breaks become spaces, runs collapse, bounded."""
    text = " ".join(_UNSAFE_IN_HEADER.sub(" ", text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _message_id(idempotency_key: str, sender: str) -> str:
    """The same for every delivery of one alert to one integration (RFC 5322 msg-id)."""
    left = re.sub(r"[^A-Za-z0-9.-]", "-", idempotency_key).strip(".") or "alert"
    domain = sender.rpartition("@")[2] or "alertrelay.invalid"
    return f"<{left}@{domain}>"


def _summary_rows(delivery: Delivery) -> list[tuple[str, str]]:
    alert = delivery.alert
    rows = [
        ("Risk level", alert.risk_level.value.capitalize()),
        ("Event type", _EVENT_LABEL.get(alert.event_type, alert.event_type.value)),
        ("Detected at", alert.detected_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")),
    ]
    for label, value in (
        ("Domain", alert.domain),
        ("Page URL", alert.page_url),
        ("Script URL", alert.script_url),
    ):
        if value:
            rows.append((label, value))
    rows.append(("Alert ID", alert.alert_id))
    return rows


def _console_link(delivery: Delivery) -> str | None:
    url = delivery.alert.console_url
    return url if url and _SAFE_LINK.fullmatch(url) else None


def _plain_text(delivery: Delivery) -> str:
    alert = delivery.alert
    style = RISK_STYLE[alert.risk_level]
    lines = [f"[{style.tag}] {_one_line(alert.title, len(alert.title))}", ""]
    if alert.description:
        lines += [alert.description, ""]
    lines += [f"{label}: {value}" for label, value in _summary_rows(delivery)]
    if alert.details:
        lines += ["", "Details:"]
        lines += [f"  {key}: {value}" for key, value in alert.details.items()]
    link = _console_link(delivery)
    if link:
        lines += ["", f"Open this alert in the console: {link}"]
    elif alert.console_url:
        lines += ["", f"Console: {alert.console_url}"]
    lines += [
        "",
        "-- ",
        f"Sent by alertrelay for the email integration {delivery.integration.name!r}.",
    ]
    return "\n".join(lines) + "\n"


def _html_rows(rows: Iterable[tuple[str, str]]) -> str:
    cell = "padding:4px 12px 4px 0;vertical-align:top;"
    return "".join(
        f'<tr><th style="{cell}text-align:left;white-space:nowrap">{html.escape(label)}</th>'
        f'<td style="{cell}word-break:break-all">{html.escape(value)}</td></tr>'
        for label, value in rows
    )


def _html(delivery: Delivery) -> str:
    """Every piece of alert text goes through html.escape; only http(s) console URLs
    become links (page and script URLs stay text: the script may be the threat)."""
    alert = delivery.alert
    style = RISK_STYLE[alert.risk_level]
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"><title>',
        esc(_one_line(alert.title, SUBJECT_TITLE_MAX)),
        '</title></head><body style="font-family:Arial,Helvetica,sans-serif;color:#222">',
        f'<p style="margin:0 0 8px"><span style="background:{style.colour};color:#fff;'
        f'padding:2px 8px;border-radius:3px;font-weight:bold">{esc(style.tag)}</span> ',
        f"{esc(_EVENT_LABEL.get(alert.event_type, alert.event_type.value))}</p>",
        f'<h2 style="margin:0 0 12px">{esc(_one_line(alert.title, len(alert.title)))}</h2>',
    ]
    if alert.description:
        parts.append(
            f'<p style="white-space:pre-wrap;margin:0 0 12px">{esc(alert.description)}</p>'
        )
    parts.append(
        f'<table style="border-collapse:collapse">{_html_rows(_summary_rows(delivery))}</table>'
    )
    if alert.details:
        parts.append('<h3 style="margin:16px 0 4px">Details</h3>')
        parts.append(
            f'<table style="border-collapse:collapse">{_html_rows(alert.details.items())}</table>'
        )
    link = _console_link(delivery)
    if link:
        parts.append(
            f'<p style="margin:16px 0"><a href="{esc(link, quote=True)}" '
            'style="background:#1565c0;color:#fff;padding:8px 14px;border-radius:3px;'
            'text-decoration:none">Open this alert in the console</a></p>'
        )
    elif alert.console_url:
        parts.append(f"<p>Console: {esc(alert.console_url)}</p>")
    parts.append(
        '<p style="color:#777;font-size:12px;margin-top:24px">Sent by alertrelay for the '
        f"email integration &ldquo;{esc(delivery.integration.name)}&rdquo;.</p>"
    )
    parts.append("</body></html>")
    return "".join(parts) + "\n"


def build_message(
    delivery: Delivery,
    recipients: Iterable[str],
    relay: SmtpRelay,
    *,
    now: dt.datetime | None = None,
) -> EmailMessage:
    """The multipart/alternative message (plain text, then HTML) for one alert.

    `recipients` fill the `To:` header (all configured addresses, also on a retry that
    goes to only some of them). Header values built from alert text are one line.
    """
    if relay.sender is None or relay.from_header is None:
        raise PermanentError(f"no sender address: set {SMTP_ENV_PREFIX}FROM")
    alert = delivery.alert
    style = RISK_STYLE[alert.risk_level]
    message = EmailMessage(policy=_POLICY)
    message["Subject"] = f"[{style.tag}] {_one_line(alert.title, SUBJECT_TITLE_MAX)}"
    message["From"] = relay.from_header
    message["To"] = ", ".join(ascii_address(address) for address in recipients)
    message["Date"] = email.utils.format_datetime(now or dt.datetime.now(dt.UTC))
    message["Message-ID"] = _message_id(delivery.idempotency_key, relay.sender)
    message["X-Alertrelay-Alert-Id"] = _one_line(alert.alert_id, 512)
    message["X-Alertrelay-Idempotency-Key"] = _one_line(delivery.idempotency_key, 128)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation auto-replies
    message["Importance"] = style.importance
    message["X-Priority"] = style.x_priority
    message.set_content(_plain_text(delivery), subtype="plain", cte="quoted-printable")
    message.add_alternative(_html(delivery), subtype="html", cte="quoted-printable")
    return message


# -- delivery --------------------------------------------------------------------------


@dataclass
class _Reach:
    """Who has the message of one idempotency key (lower-cased addresses)."""

    accepted: set[str] = field(default_factory=set)
    refused: dict[str, str] = field(default_factory=dict)  # permanently, with the reply


class _ReachMemory:
    """Bounded LRU of `_Reach` per idempotency key (in-process, best effort)."""

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._items: OrderedDict[str, _Reach] = OrderedDict()

    def get(self, key: str) -> _Reach:
        reach = self._items.pop(key, None) or _Reach()
        self._items[key] = reach
        while len(self._items) > self._limit:
            self._items.popitem(last=False)
        return reach


def _reply(response: aiosmtplib.SMTPResponse | aiosmtplib.SMTPResponseException) -> str:
    return f"{response.code} {_one_line(response.message, 200)}".strip()


def _named(items: Mapping[str, str]) -> str:
    shown = [f"{address} ({reply})" for address, reply in list(items.items())[:_MAX_NAMED]]
    more = len(items) - _MAX_NAMED
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _tls_verification(exc: BaseException) -> str | None:
    for link in exception_chain(exc):
        if isinstance(link, ssl.SSLCertVerificationError):
            return str(link.verify_message or link.reason or "certificate verify failed")
        if "CERTIFICATE_VERIFY_FAILED" in str(link):
            return "certificate verify failed"
    return None


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    return next((link for link in exception_chain(exc) if isinstance(link, ssl.SSLError)), None)


_STAGE_TEXT = {
    "connect": "connecting",
    "ehlo": "EHLO",
    "starttls": "STARTTLS",
    "auth": "AUTH",
    "send": "sending the message",
    "quit": "QUIT",
}


@dataclass
class _Exchange:
    """What one SMTP conversation achieved: refused recipients (as configured) -> reply."""

    refused: dict[str, aiosmtplib.SMTPResponse]
    tls: str
    authenticated: bool


class EmailSink(PerAlertSink[EmailSettings]):
    type_name = "email"
    settings_model = EmailSettings

    def __init__(
        self,
        ctx: SinkContext,
        *,
        relay: SmtpRelay | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        """`relay` and `tls_context` default to the environment; tests inject them.

        The egress guard does not apply: the relay is set by the operator, and private
        addresses (a local Postfix, an internal relay) are the normal case.
        """
        self._ctx = ctx
        self._relay = relay if relay is not None else SmtpRelay.from_env()
        self._redact = Redactor([self._relay.password] if self._relay.password else [])
        self._tls: ssl.SSLContext | None = tls_context
        self._problem = self._relay.problem
        if self._tls is None and self._relay.host is not None and self._problem is None:
            try:
                self._tls = _tls_context(self._relay)
            except (OSError, ValueError) as exc:
                self._problem = f"{SMTP_ENV_PREFIX}CA_FILE could not be loaded ({exc})"
        self._memory = _ReachMemory()
        self._sessions = asyncio.Semaphore(MAX_SESSIONS)
        self._ehlo_name: str | None = None
        if self._relay.host is None:
            log.warning("email integrations cannot deliver: %s", NO_RELAY)
        elif self._problem is not None:
            log.warning("email integrations cannot deliver: %s", self._redact(self._problem))

    @property
    def relay(self) -> SmtpRelay:
        return self._relay

    def secrets(self, settings: EmailSettings) -> list[str]:
        """The relay password too, so the shared runner redacts it from everything."""
        found = super().secrets(settings)
        return [*found, self._relay.password] if self._relay.password else found

    def _usable_relay(self) -> SmtpRelay:
        if self._relay.host is None:
            raise PermanentError(NO_RELAY)
        if self._problem is not None:
            raise PermanentError(f"SMTP relay misconfigured: {self._redact(self._problem)}")
        return self._relay

    async def _local_name(self) -> str:
        """EHLO name: the FQDN, looked up once off the event loop."""
        if self._ehlo_name is None:
            name = await asyncio.to_thread(socket.getfqdn)
            self._ehlo_name = name if _EHLO_NAME.fullmatch(name) else "localhost"
        return self._ehlo_name

    async def _exchange(
        self, relay: SmtpRelay, recipients: list[str], message: EmailMessage
    ) -> _Exchange:
        """Connect, EHLO, STARTTLS, AUTH, one MAIL/RCPT.../DATA transaction, QUIT.

        Raises a classified DeliveryError for anything but recipient refusals, which
        are returned (all of them refused comes back as every address refused).
        """
        envelope = {ascii_address(address): address for address in recipients}
        data = message.as_bytes(policy=_POLICY)
        assert relay.host is not None and relay.sender is not None
        smtp = aiosmtplib.SMTP(
            hostname=relay.host,
            port=relay.port,
            use_tls=relay.tls == "implicit",
            start_tls=False,  # done explicitly below, so a missing STARTTLS is an error
            tls_context=self._tls,
            timeout=relay.timeout,
            local_hostname=await self._local_name(),
        )
        stage = "connect"
        await self._sessions.acquire()
        try:
            await smtp.connect()
            stage = "ehlo"
            await smtp.ehlo()
            if relay.tls == "starttls":
                stage = "starttls"
                await smtp.starttls()
                await smtp.ehlo()
            if relay.username is not None:
                stage = "auth"
                await smtp.login(relay.username, relay.password or "")
            stage = "send"
            try:
                refused, _ = await smtp.sendmail(relay.sender, list(envelope), data)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                refused = {
                    err.recipient: aiosmtplib.SMTPResponse(err.code, err.message)
                    for err in exc.recipients
                }
            stage = "quit"
        except Exception as exc:
            raise self._classify(exc, stage, relay) from None
        finally:
            await self._close(smtp, stage == "quit")
            self._sessions.release()
        return _Exchange(
            refused={envelope.get(addr, addr): reply for addr, reply in refused.items()},
            tls=relay.tls,
            authenticated=relay.username is not None,
        )

    @staticmethod
    async def _close(smtp: aiosmtplib.SMTP, polite: bool) -> None:
        if polite and smtp.is_connected:
            try:
                await smtp.quit(timeout=5)
                return
            except Exception:  # the message is already accepted; QUIT is a courtesy
                pass
        smtp.close()

    def _classify(self, exc: Exception, stage: str, relay: SmtpRelay) -> DeliveryError:
        """One place that turns what aiosmtplib raised into retryable or permanent."""
        if isinstance(exc, DeliveryError):
            return exc
        who = relay.label
        during = _STAGE_TEXT.get(stage, stage)
        red = self._redact
        detail = _one_line(red(str(exc)), 200) or type(exc).__name__

        verification = _tls_verification(exc)
        if verification is not None:
            return PermanentError(
                f"TLS verification failed for {who}: {_one_line(red(verification), 200)}"
                f" (set {SMTP_ENV_PREFIX}CA_FILE to trust a private CA)"
            )
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            reply = red(_reply(exc))
            if 400 <= exc.code < 500:
                return RetryableError(f"{who} could not check the credentials now ({reply})")
            return PermanentError(
                f"SMTP relay refused the credentials ({reply}): check "
                f"{SMTP_ENV_PREFIX}USERNAME and {SMTP_ENV_PREFIX}PASSWORD"
            )
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            reply = red(_reply(exc))
            if isinstance(exc, aiosmtplib.SMTPSenderRefused):
                what = f"{who} refused the sender {relay.sender} ({reply})"
                hint = f": check {SMTP_ENV_PREFIX}FROM"
            elif isinstance(exc, aiosmtplib.SMTPDataError):
                what, hint = f"{who} refused the message ({reply})", ""
            elif exc.code == 530 and stage != "auth":
                what = f"{who} answered {reply} while {during}"
                hint = " (the relay wants TLS or AUTH: check the ALERTRELAY_SMTP_* settings)"
            else:
                what, hint = f"{who} answered {reply} while {during}", ""
            if 500 <= exc.code < 600:
                return PermanentError(what + hint)
            return RetryableError(what)  # 4xx is temporary by definition; odd codes too
        if isinstance(exc, TimeoutError):  # includes aiosmtplib's timeout errors
            return RetryableError(f"{who} timed out while {during}")
        if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
            return RetryableError(f"{who} closed the connection while {during}: {detail}")
        ssl_error = _ssl_error(exc)
        if ssl_error is not None:
            return PermanentError(
                f"TLS with {who} failed while {during} ({_one_line(red(str(ssl_error)), 200)}):"
                f" check {SMTP_ENV_PREFIX}PORT (465 = implicit TLS) and "
                f"{SMTP_ENV_PREFIX}STARTTLS"
            )
        if isinstance(exc, aiosmtplib.SMTPConnectError | ConnectionError):
            return RetryableError(f"{who} could not be reached: {detail}")
        if stage == "starttls" and isinstance(exc, aiosmtplib.SMTPException):
            return PermanentError(
                f"{who} does not offer STARTTLS ({detail}); use port 465 for implicit TLS, "
                f"or {SMTP_ENV_PREFIX}STARTTLS=false only for a trusted local relay"
            )
        if isinstance(exc, aiosmtplib.SMTPException):
            return PermanentError(f"{who}: {detail} (while {during})")
        if isinstance(exc, OSError):
            return RetryableError(f"{who} connection failed while {during}: {detail}")
        if isinstance(exc, ValueError):
            return PermanentError(f"{who}: cannot send: {detail}")
        return RetryableError(f"{who} failed while {during}: {type(exc).__name__}: {detail}")

    async def send(self, delivery: Delivery, settings: EmailSettings) -> int | None:
        """Send to every configured address not yet reached; None (SMTP has no HTTP status).

        Returns normally when everyone accepted, or when the only refusals are permanent
        and someone got the message (a warning names the refused addresses). Raises
        RetryableError while some address is refused temporarily (the retry goes to
        those only) and PermanentError when every address was refused for good.
        """
        relay = self._usable_relay()
        reach = self._memory.get(delivery.idempotency_key)
        pending = [
            address
            for address in settings.emails
            if address.lower() not in reach.accepted and address.lower() not in reach.refused
        ]
        if not pending:
            if reach.accepted:
                return None  # every address already has this alert
            raise PermanentError(f"{relay.label} refused every recipient: {_named(reach.refused)}")

        message = build_message(delivery, settings.emails, relay)
        result = await self._exchange(relay, pending, message)
        temporary: dict[str, str] = {}
        for address in pending:
            reply = result.refused.get(address)
            if reply is None:
                reach.accepted.add(address.lower())
            elif 400 <= reply.code < 500:
                temporary[address] = self._redact(_reply(reply))
            else:
                reach.refused[address.lower()] = self._redact(_reply(reply))

        if temporary:
            reached = len(reach.accepted)
            done = (
                f"; delivered to {reached} other recipient(s), the retry goes only to "
                "the refused ones"
                if reached
                else ""
            )
            also = f"; refused for good: {_named(reach.refused)}" if reach.refused else ""
            raise RetryableError(
                f"{relay.label} temporarily refused {_named(temporary)}{done}{also}"
            )
        if not reach.accepted:
            raise PermanentError(f"{relay.label} refused every recipient: {_named(reach.refused)}")
        if reach.refused:
            log.warning(
                "email alert %s (integration %s/%s) delivered to %d of %d recipients; "
                "%s refused: %s",
                _one_line(delivery.alert.alert_id, 200),
                delivery.integration.tenant_id,
                delivery.integration.integration_id,
                len(reach.accepted),
                len(settings.emails),
                relay.label,
                _named(reach.refused),
            )
        return None

    async def check(self, integration: IntegrationConfig, settings: EmailSettings) -> str:
        """Test connection (VENDORS.md): connect, EHLO, STARTTLS, AUTH, then a clearly
        labelled test message to the whole list. Any refused address fails the test."""
        relay = self._usable_relay()
        delivery = test_delivery(integration)
        message = build_message(delivery, settings.emails, relay)
        result = await self._exchange(relay, list(settings.emails), message)
        if result.refused:
            replies = {a: self._redact(_reply(r)) for a, r in result.refused.items()}
            accepted = len(settings.emails) - len(replies)
            text = (
                f"{relay.label} refused {_named(replies)}; the test email went to "
                f"{accepted} of {len(settings.emails)} recipients"
            )
            if all(400 <= r.code < 500 for r in result.refused.values()):
                raise RetryableError(text)
            raise PermanentError(text)
        security = {"implicit": "implicit TLS", "starttls": "STARTTLS", "none": "no TLS"}
        auth = f", authenticated as {relay.username}" if result.authenticated else ""
        return (
            f"test email accepted by {relay.label} for {len(settings.emails)} recipient(s) "
            f"({security[result.tls]}{auth})"
        )
