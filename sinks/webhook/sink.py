"""HTTP webhook delivery: the alert as JSON (or the body pattern), the configured method
and headers, optionally signed, over plain HTTP(S) or mutual TLS.

Body: the alert's JSON (`Content-Type: application/json`) unless a body pattern is set
(sinks.webhook.template: sandboxed, at most 1 s and 1 MiB); a rendered body that parses
as JSON is sent as `application/json`, anything else as `text/plain; charset=utf-8`. A
Content-Type among the configured headers wins over both.

Headers, in order (a later name replaces an earlier one, case-insensitively):
`Content-Type`, `User-Agent`, `Idempotency-Key` (one per alert and integration, the same
on every retry and replay: the receiver's dedup key), `X-Alertrelay-Event-Type`,
`X-Alertrelay-Integration`, then the configured headers (the last of a repeated name
wins), then, when `signing_secret` is set, the signature.

Signature (when `signing_secret` is set), computed for every attempt:

    X-Alertrelay-Timestamp: <t>           # Unix time in whole seconds, decimal
    X-Alertrelay-Signature: sha256=<hex>  # lowercase hex of
        HMAC-SHA256(key = signing secret as UTF-8,
                    message = <t> as ASCII + "." + the exact body bytes)

A receiver recomputes the HMAC over the raw body it received (before any JSON parsing),
compares in constant time, and rejects timestamps more than 5 minutes from its clock:
that bounds replays. Retries are signed afresh (new timestamp), so deduplicate on
`Idempotency-Key`, not on the signature.

TLS: protocol `tls` presents the configured client certificate (mutual TLS) and verifies
the server against the default trust store (certifi, or `SSL_CERT_FILE` / `SSL_CERT_DIR`
when set); `tcp` is plain HTTP(S) without a client certificate. Redirects are never
followed and the outbound guard applies to every connection (sinks.http).
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import orjson

from schemas.models import Delivery, IntegrationConfig
from sinks.base import PerAlertSink, test_delivery
from sinks.errors import DeliveryError, PermanentError, exception_chain
from sinks.http import (
    HttpClient,
    Redactor,
    build_client,
    classify_exception,
    classify_response,
    mtls_ssl_context,
    redact_url,
)
from sinks.webhook.config import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookSettings
from sinks.webhook.template import BodyTemplateError, compile_template, template_variables

if TYPE_CHECKING:
    from sinks.registry import SinkContext

__all__ = ["WebhookSink", "build_request", "sign"]

USER_AGENT = "alertrelay/0.1 (+https://github.com/alertrelay/alertrelay)"
JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"

_CERTIFICATE_ALERTS = (
    "ALERT_CERTIFICATE_REQUIRED",
    "ALERT_HANDSHAKE_FAILURE",
    "ALERT_BAD_CERTIFICATE",
    "ALERT_UNKNOWN_CA",
    "ALERT_CERTIFICATE_UNKNOWN",
    "ALERT_CERTIFICATE_EXPIRED",
    "ALERT_CERTIFICATE_REVOKED",
    "ALERT_UNSUPPORTED_CERTIFICATE",
    "ALERT_ACCESS_DENIED",
)
"""TLS alerts by which a server refuses our (missing or presented) client certificate."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `X-Alertrelay-Signature` value: `sha256=` + hex HMAC-SHA256 of `<t>.<body>`."""
    message = str(timestamp).encode("ascii") + b"." + body
    return "sha256=" + hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def _render(delivery: Delivery, source: str) -> str:
    """The body pattern for this delivery, blocking (for callers outside the event loop)."""
    return compile_template(source).render(_variables(delivery))


def _variables(delivery: Delivery) -> dict[str, object]:
    return template_variables(
        delivery.alert,
        integration_id=delivery.integration.integration_id,
        integration_name=delivery.integration.name,
        idempotency_key=delivery.idempotency_key,
    )


def _is_json(body: bytes) -> bool:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return True


def build_request(
    delivery: Delivery,
    settings: WebhookSettings,
    *,
    rendered: str | None = None,
    timestamp: int | None = None,
) -> tuple[str, str, dict[str, str], bytes]:
    """Method, URL, headers and body; user headers come last so they win (the spec).

    `rendered` is the body pattern's output when the caller already rendered it (the
    sink does, off the event loop); otherwise a pattern is rendered here, blocking.
    `timestamp` (Unix seconds) is what the signature covers; now when not given.
    Raises BodyTemplateError when the pattern cannot be rendered for this alert.
    """
    if settings.body_pattern is None:
        body = orjson.dumps(delivery.alert.wire())
        content_type = JSON_TYPE
    else:
        if rendered is None:
            rendered = _render(delivery, settings.body_pattern)
        body = rendered.encode("utf-8")
        content_type = JSON_TYPE if _is_json(body) else TEXT_TYPE
    headers = {
        "Content-Type": content_type,
        "User-Agent": USER_AGENT,
        "Idempotency-Key": delivery.idempotency_key,
        "X-Alertrelay-Event-Type": delivery.alert.event_type.value,
        "X-Alertrelay-Integration": delivery.integration.integration_id,
    }
    extra = [(h.name, h.value.get_secret_value()) for h in settings.headers]
    if settings.signing_secret is not None:
        when = int(time.time()) if timestamp is None else timestamp
        secret = settings.signing_secret.get_secret_value()
        extra += [(TIMESTAMP_HEADER, str(when)), (SIGNATURE_HEADER, sign(secret, when, body))]
    lowered = {name.lower(): name for name in headers}
    for name, value in extra:
        existing = lowered.pop(name.lower(), None)
        if existing is not None:
            del headers[existing]
        headers[name] = value
        lowered[name.lower()] = name
    return settings.method, settings.webhook_url.get_secret_value(), headers, body


def _certificate_refusal(exc: BaseException) -> str | None:
    """The TLS alert with which the server refused our client certificate, if that is
    what happened (e.g. `tlsv13 alert certificate required`)."""
    for link in exception_chain(exc):
        text = str(link)
        if isinstance(link, ssl.SSLError) and link.reason:
            text = f"{link.reason} {text}"
        for alert in _CERTIFICATE_ALERTS:
            if alert in text:
                return alert.removeprefix("ALERT_").replace("_", " ").lower()
    return None


@dataclass(frozen=True, slots=True)
class _Target:
    """What a delivery needs from its settings besides the alert, worked out once per
    settings object (the runner parses settings once per integration and version)."""

    settings: WebhookSettings  # pins the id the entry is found by
    redact: Redactor
    what: str  # "webhook <scheme://host>": how messages name the destination
    client: HttpClient | None
    client_error: str | None  # why there is no client (an unusable certificate), redacted


class WebhookSink(PerAlertSink[WebhookSettings]):
    type_name = "webhook"
    settings_model = WebhookSettings

    def __init__(self, ctx: SinkContext) -> None:
        self._ctx = ctx
        self._client = build_client(overrides=ctx.overrides, guard=ctx.guard)
        self._tls_clients: dict[str, HttpClient] = {}
        self._targets: dict[int, _Target] = {}

    def _client_for(self, settings: WebhookSettings) -> HttpClient:
        """One client per client certificate (its pool only ever presents that one)."""
        if settings.protocol != "tls" or settings.client_certificate is None:
            return self._client
        pem = settings.client_certificate.get_secret_value()
        fingerprint = hashlib.sha256(pem.encode()).hexdigest()
        client = self._tls_clients.get(fingerprint)
        if client is None:
            client = build_client(
                verify=mtls_ssl_context(pem), overrides=self._ctx.overrides, guard=self._ctx.guard
            )
            self._tls_clients[fingerprint] = client
        return client

    def _target(self, settings: WebhookSettings) -> _Target:
        """The per-settings part of a request, not worked out again for every alert."""
        target = self._targets.get(id(settings))
        if target is not None and target.settings is settings:
            return target
        redact = self.redactor(settings)
        what = f"webhook {redact_url(settings.webhook_url.get_secret_value())}"
        client: HttpClient | None = None
        error = None
        try:
            client = self._client_for(settings)
        except ValueError as exc:  # an unusable certificate will not get better
            error = f"client certificate: {redact(str(exc))}"
        if len(self._targets) > 10_000:
            self._targets.clear()
        target = self._targets[id(settings)] = _Target(settings, redact, what, client, error)
        return target

    async def send(self, delivery: Delivery, settings: WebhookSettings) -> int | None:
        target = self._target(settings)
        redact, what = target.redact, target.what
        rendered = None
        if settings.body_pattern is not None:
            try:
                template = compile_template(settings.body_pattern)
                rendered = await template.render_async(_variables(delivery))
            except BodyTemplateError as exc:  # the same alert renders the same way again
                raise PermanentError(redact(f"body pattern: {exc}")) from None
        method, url, headers, body = build_request(
            delivery, settings, rendered=rendered, timestamp=int(time.time())
        )
        for value in headers.values():  # validated at save time; never send a split header
            if "\r" in value or "\n" in value or "\x00" in value:
                raise PermanentError(f"{what}: a header value contains CR, LF or NUL")
        client = target.client
        if client is None:
            raise PermanentError(target.client_error or "no HTTP client")
        try:
            response = await client.request(method, url, headers=headers, content=body)
        except (httpx.HTTPError, OSError) as exc:
            # OSError: anyio re-raises a TLS alert received after the handshake (TLS 1.3:
            # "certificate required") as a bare ssl.SSLError that httpx does not wrap.
            raise self._classify(exc, settings, redact, what) from None
        classify_response(response, redact=redact, what=what)
        return response.status_code

    @staticmethod
    def _classify(
        exc: Exception, settings: WebhookSettings, redact: Redactor, what: str
    ) -> DeliveryError:
        """A server refusing the client certificate (or its absence) is configuration:
        the same handshake would be refused again, so it is permanent."""
        refusal = _certificate_refusal(exc)
        if refusal is None:
            return classify_exception(exc, redact=redact, what=what)
        if settings.protocol != "tls":
            hint = "the server requires a client certificate: set protocol tls and provide one"
        else:
            hint = (
                "the server rejected the client certificate: check that it trusts the "
                "certificate's issuer and that the certificate is still valid"
            )
        if refusal == "handshake failure":  # TLS 1.2 says no more than this
            hint = f"{hint} (or it supports no TLS version and cipher that we offer)"
        return PermanentError(redact(f"{what} refused the TLS handshake ({refusal}): {hint}"))

    async def check(self, integration: IntegrationConfig, settings: WebhookSettings) -> str:
        status = await self.send(test_delivery(integration), settings)
        return f"test alert accepted with HTTP {status}"

    async def aclose(self) -> None:
        await self._client.aclose()
        for client in self._tls_clients.values():
            await client.aclose()
