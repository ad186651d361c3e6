"""HTTP webhook delivery: the alert as JSON, the configured method and headers."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import httpx
import orjson

from schemas.models import Delivery, IntegrationConfig
from sinks.base import PerAlertSink, test_delivery
from sinks.errors import PermanentError
from sinks.http import (
    Redactor,
    build_client,
    classify_exception,
    classify_response,
    mtls_ssl_context,
    redact_url,
)
from sinks.webhook.config import WebhookSettings

if TYPE_CHECKING:
    from sinks.registry import SinkContext

__all__ = ["WebhookSink", "build_request"]

USER_AGENT = "alertrelay/0.1 (+https://github.com/alertrelay/alertrelay)"


def build_request(
    delivery: Delivery, settings: WebhookSettings
) -> tuple[str, str, dict[str, str], bytes]:
    """Method, URL, headers and body; user headers come last so they win (the spec)."""
    body = orjson.dumps(delivery.alert.wire())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Idempotency-Key": delivery.idempotency_key,
        "X-Alertrelay-Event-Type": delivery.alert.event_type.value,
        "X-Alertrelay-Integration": delivery.integration.integration_id,
    }
    lowered = {name.lower(): name for name in headers}
    for header in settings.headers:
        existing = lowered.pop(header.name.lower(), None)
        if existing is not None:
            del headers[existing]
        headers[header.name] = header.value.get_secret_value()
        lowered[header.name.lower()] = header.name
    return settings.method, settings.webhook_url.get_secret_value(), headers, body


class WebhookSink(PerAlertSink[WebhookSettings]):
    type_name = "webhook"
    settings_model = WebhookSettings

    def __init__(self, ctx: SinkContext) -> None:
        self._ctx = ctx
        self._client = build_client(overrides=ctx.overrides, guard=ctx.guard)
        self._tls_clients: dict[str, httpx.AsyncClient] = {}

    def _client_for(self, settings: WebhookSettings) -> httpx.AsyncClient:
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

    async def send(self, delivery: Delivery, settings: WebhookSettings) -> int | None:
        method, url, headers, body = build_request(delivery, settings)
        redact = Redactor(self.secrets(settings))
        what = f"webhook {redact_url(url)}"
        try:
            client = self._client_for(settings)
        except ValueError as exc:  # an unusable certificate will not get better
            raise PermanentError(f"client certificate: {redact(str(exc))}") from None
        try:
            response = await client.request(method, url, headers=headers, content=body)
        except httpx.HTTPError as exc:
            raise classify_exception(exc, redact=redact, what=what) from None
        classify_response(response, redact=redact, what=what)
        return response.status_code

    async def check(self, integration: IntegrationConfig, settings: WebhookSettings) -> str:
        status = await self.send(test_delivery(integration), settings)
        return f"test alert accepted with HTTP {status}"

    async def aclose(self) -> None:
        await self._client.aclose()
        for client in self._tls_clients.values():
            await client.aclose()
