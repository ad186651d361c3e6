"""PagerDuty delivery: one Events API v2 `trigger` per alert.

Idempotent at PagerDuty: `dedup_key` is the delivery's idempotency key, so a re-delivery or
replay of the same alert to the same integration updates the open PagerDuty alert instead
of opening another (once the incident is resolved, a new trigger opens a new one, which is
PagerDuty's own rule). The routing key travels in the body, never in a header, and is
redacted from every message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import httpx
import orjson

from schemas.models import Alert, Delivery, IntegrationConfig, RiskLevel
from sinks.base import PerAlertSink, test_delivery
from sinks.errors import DeliveryError, PermanentError, RetryableError
from sinks.http import (
    Redactor,
    build_client,
    classify_response,
    response_json,
    send_json,
)
from sinks.pagerduty.config import PagerDutySettings
from sinks.text import clip_utf16, rfc3339

if TYPE_CHECKING:
    from sinks.registry import SinkContext

__all__ = ["SEVERITY", "PagerDutySink", "build_event", "build_resolve"]

SEVERITY: Final[Mapping[RiskLevel, str]] = {
    RiskLevel.CRITICAL: "critical",
    RiskLevel.HIGH: "error",
    RiskLevel.MEDIUM: "warning",
    RiskLevel.LOW: "info",
}
"""Risk level → PagerDuty `payload.severity` (one of critical, error, warning, info).
PagerDuty services can map severity to urgency, so high risk pages and low risk does not."""

SUMMARY_MAX: Final = 1024
DEDUP_KEY_MAX: Final = 255
EVENT_MAX_BYTES: Final = 512 * 1024
_SHORT_FIELD_MAX: Final = 255  # source, component, group, class: identifiers, kept short
_DETAIL_VALUE_MAX: Final = 1024  # per value, only when the event would exceed 512 KB


def _host(url: str | None) -> str | None:
    if not url:
        return None
    try:
        return urlsplit(url).hostname or None
    except ValueError:
        return None


def _custom_details(alert: Alert) -> dict[str, Any]:
    details: dict[str, Any] = {
        "alert_id": alert.alert_id,
        "tenant_id": alert.tenant_id,
        "event_type": alert.event_type.value,
        "risk_level": alert.risk_level.value,
        "title": alert.title,
        "detected_at": rfc3339(alert),
    }
    for name in ("description", "domain", "page_url", "script_url", "console_url"):
        value = getattr(alert, name)
        if value:
            details[name] = value
    if alert.details:
        details["details"] = dict(alert.details)
    return details


def _size(event: Mapping[str, Any]) -> int:
    return len(orjson.dumps(event))


def _fit(event: dict[str, Any]) -> dict[str, Any]:
    """Keep the event under PagerDuty's 512 KB: long custom details are cut first, then
    the alert's own details are replaced by a note (the console keeps them all)."""
    if _size(event) <= EVENT_MAX_BYTES:
        return event
    custom: dict[str, Any] = event["payload"]["custom_details"]
    for name, value in list(custom.items()):
        if isinstance(value, str):
            custom[name] = clip_utf16(value, 8 * _DETAIL_VALUE_MAX)
    if isinstance(custom.get("details"), dict):
        custom["details"] = {
            clip_utf16(k, 256): clip_utf16(v, _DETAIL_VALUE_MAX)
            for k, v in custom["details"].items()
        }
    if _size(event) > EVENT_MAX_BYTES:
        count = len(custom.get("details") or {})
        custom["details"] = {"note": f"{count} details left out (over 512 KB); see the console"}
    return event


def build_event(delivery: Delivery, settings: PagerDutySettings) -> dict[str, Any]:
    """The `trigger` event for one alert, exactly in the Events API v2 shape."""
    alert = delivery.alert
    summary = f"[{alert.risk_level.value.upper()} risk] {alert.title}"
    if alert.domain:
        summary += f" on {alert.domain}"
    source = alert.domain or _host(alert.page_url) or "alertrelay"
    payload: dict[str, Any] = {
        "summary": clip_utf16(summary, SUMMARY_MAX),
        "source": clip_utf16(source, _SHORT_FIELD_MAX),
        "severity": SEVERITY[alert.risk_level],
        "timestamp": rfc3339(alert),
        "group": clip_utf16(alert.tenant_id, _SHORT_FIELD_MAX),
        "class": alert.event_type.value,
        "custom_details": _custom_details(alert),
    }
    component = _host(alert.script_url) or _host(alert.page_url)
    if component:
        payload["component"] = clip_utf16(component, _SHORT_FIELD_MAX)
    event: dict[str, Any] = {
        "routing_key": settings.api_key.get_secret_value(),
        "event_action": "trigger",
        "dedup_key": delivery.idempotency_key[:DEDUP_KEY_MAX],
        "payload": payload,
        "client": "alertrelay",
    }
    console = alert.console_url
    if console and console.lower().startswith(("https://", "http://")):
        event["links"] = [{"href": console, "text": "Open the alert in the console"}]
        event["client_url"] = console
    return _fit(event)


def build_resolve(dedup_key: str, settings: PagerDutySettings) -> dict[str, Any]:
    return {
        "routing_key": settings.api_key.get_secret_value(),
        "event_action": "resolve",
        "dedup_key": dedup_key[:DEDUP_KEY_MAX],
    }


def _errors_of(response: httpx.Response) -> tuple[str, list[str]]:
    """PagerDuty's (message, errors) from a 400 body; empty when it is not JSON."""
    body = response_json(response)
    if not isinstance(body, dict):
        return "", []
    message = body.get("message")
    errors = body.get("errors")
    return (
        message if isinstance(message, str) else "",
        [str(e) for e in errors] if isinstance(errors, list) else [],
    )


class PagerDutySink(PerAlertSink[PagerDutySettings]):
    """Triggers one PagerDuty alert per alert; PagerDuty deduplicates by `dedup_key`."""

    type_name = "pagerduty"
    settings_model = PagerDutySettings

    def __init__(self, ctx: SinkContext) -> None:
        self._client = build_client(overrides=ctx.overrides, guard=ctx.guard)

    async def send(self, delivery: Delivery, settings: PagerDutySettings) -> int | None:
        return await self._enqueue(build_event(delivery, settings), settings)

    async def _enqueue(self, event: dict[str, Any], settings: PagerDutySettings) -> int:
        redact = self.redactor(settings)
        what = "PagerDuty Events API"
        response = await send_json(
            self._client,
            "POST",
            settings.webhook_url,
            headers={},
            redact=redact,
            what=what,
            body=event,
        )
        try:
            classify_response(response, redact=redact, what=what)
        except DeliveryError as generic:
            raise self._vendor_error(response, generic, redact) from None
        return response.status_code

    @staticmethod
    def _vendor_error(
        response: httpx.Response, generic: DeliveryError, redact: Redactor
    ) -> DeliveryError:
        status = response.status_code
        if status == 400:
            message, errors = _errors_of(response)
            listed = "; ".join(errors) or "no details given"
            hint = (
                "check the API key: it must be the Integration Key of an Events API v2 "
                "integration on the PagerDuty service"
                if any("routing" in e.lower() for e in errors)
                else "PagerDuty will not accept this event as it is, so it is not retried"
            )
            text = f"PagerDuty rejected the event (HTTP 400, {message or 'invalid event'}): "
            return PermanentError(redact(f"{text}{listed}; {hint}")[:1000], status=400)
        if status == 429:
            return RetryableError(
                "PagerDuty is throttling this routing key (HTTP 429; about 120 events/min "
                "per routing key are allowed); retrying later",
                status=429,
                retry_after=generic.retry_after,
            )
        if status == 404:
            return PermanentError(
                "PagerDuty answered 404: check the webhook URL "
                "(https://events.pagerduty.com/v2/enqueue)",
                status=404,
            )
        return generic

    async def check(self, integration: IntegrationConfig, settings: PagerDutySettings) -> str:
        """Triggers a clearly labelled test alert and resolves it with the same dedup key:
        the Events API has no validation endpoint (VENDORS.md). The test alert has
        severity info; depending on the service's urgency rules it may still notify."""
        probe = test_delivery(integration)
        await self._enqueue(build_event(probe, settings), settings)
        try:
            await self._enqueue(build_resolve(probe.idempotency_key, settings), settings)
        except DeliveryError as exc:
            raise type(exc)(
                f"the test alert was triggered but resolving it failed ({exc.message}); "
                f"resolve it by hand in PagerDuty (dedup key {probe.idempotency_key})",
                status=exc.status,
                retry_after=exc.retry_after,
            ) from None
        return (
            f"PagerDuty accepted a test trigger and resolved it (dedup key {probe.idempotency_key})"
        )

    async def aclose(self) -> None:
        await self._client.aclose()
