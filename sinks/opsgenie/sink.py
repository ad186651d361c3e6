"""Opsgenie delivery: one Alert API `create` per alert, routed to the configured team.

Idempotent at Opsgenie: `alias` is the delivery's idempotency key, and an open alert with
the same alias only counts up, so re-deliveries and replays never open a second alert.
Opsgenie creates alerts asynchronously: 202 means "accepted", which is what `send` can
know; `check` also asks for the outcome once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import httpx
import orjson

from schemas.models import Alert, Delivery, EventType, IntegrationConfig, RiskLevel
from sinks.base import PerAlertSink, test_delivery
from sinks.errors import DeliveryError, PermanentError, RetryableError
from sinks.http import (
    MAX_RETRY_AFTER,
    Redactor,
    build_client,
    classify_response,
    response_json,
    send_json,
)
from sinks.opsgenie.config import OpsgenieSettings
from sinks.text import clip_utf16, rfc3339, utf16_len

if TYPE_CHECKING:
    from sinks.registry import SinkContext

__all__ = ["PRIORITY", "OpsgenieSink", "build_alert", "connection_test_alias"]

PRIORITY: Final[Mapping[RiskLevel, str]] = {
    RiskLevel.CRITICAL: "P1",
    RiskLevel.HIGH: "P2",
    RiskLevel.MEDIUM: "P3",
    RiskLevel.LOW: "P4",
}
"""Risk level → Opsgenie priority. P5 (informational) is left for the connection test, so
a real alert never ranks below it."""

TEST_PRIORITY: Final = "P5"
MESSAGE_MAX: Final = 130
ALIAS_MAX: Final = 512
DESCRIPTION_MAX: Final = 15_000
TAGS_MAX: Final = 20
TAG_MAX: Final = 50
ENTITY_MAX: Final = 512
SOURCE_MAX: Final = 100
DETAILS_TOTAL_MAX: Final = 8000
"""Opsgenie documents 8000 characters for all custom properties together."""
_DETAIL_VALUE_MAX: Final = 1000
SOURCE: Final = "alertrelay"

_EVENT_LABELS: Final[Mapping[EventType, str]] = {
    EventType.CLIENT_SIDE_RISK: "Client-side risk",
    EventType.PCI_SCOPE_CHANGE: "PCI scope change",
}


def _description(alert: Alert) -> str:
    lines = [
        alert.title,
        "",
        f"Risk: {alert.risk_level.value.upper()}",
        f"Event: {_EVENT_LABELS[alert.event_type]}",
    ]
    labelled = (
        ("Domain", alert.domain),
        ("Page", alert.page_url),
        ("Script", alert.script_url),
        ("Detected", rfc3339(alert)),
        ("Console", alert.console_url),
    )
    lines += [f"{label}: {value}" for label, value in labelled if value]
    if alert.description:
        lines += ["", alert.description]
    if alert.details:
        lines += ["", "Details:"] + [f"{k}: {v}" for k, v in alert.details.items()]
    return clip_utf16("\n".join(lines), DESCRIPTION_MAX)


def _details(alert: Alert) -> dict[str, str]:
    """Custom properties (a string map): the alert's own details, then ours, which win a
    name clash; values cut to 1000 and the whole kept within Opsgenie's 8000."""
    ours = {
        "alert_id": alert.alert_id,
        "tenant_id": alert.tenant_id,
        "event_type": alert.event_type.value,
        "risk_level": alert.risk_level.value,
        "detected_at": rfc3339(alert),
        "domain": alert.domain,
        "page_url": alert.page_url,
        "script_url": alert.script_url,
        "console_url": alert.console_url,
    }
    merged = {k: v for k, v in ours.items() if v}
    for key, value in (alert.details or {}).items():
        merged.setdefault(key, value)
    out: dict[str, str] = {}
    used = 0
    for key, value in merged.items():
        key, value = clip_utf16(key, 100), clip_utf16(value, _DETAIL_VALUE_MAX)
        size = utf16_len(key) + utf16_len(value)
        if used + size > DETAILS_TOTAL_MAX - 100:
            out["alertrelay_note"] = f"{len(merged) - len(out)} more details in the console"
            break
        out[key] = value
        used += size
    return out


def build_alert(
    delivery: Delivery,
    settings: OpsgenieSettings,
    *,
    alias: str | None = None,
    priority: str | None = None,
    extra_tags: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The create-alert body for one alert, every field within Opsgenie's limits."""
    alert = delivery.alert
    message = f"[{alert.risk_level.value.upper()}] {' '.join(alert.title.split())}"  # one line
    tags = ["alertrelay", alert.event_type.value, f"risk:{alert.risk_level.value}", *extra_tags]
    body: dict[str, Any] = {
        "message": clip_utf16(message, MESSAGE_MAX),
        "alias": (alias or delivery.idempotency_key)[:ALIAS_MAX],
        "description": _description(alert),
        "responders": [{"type": "team", "id": settings.team_id}],
        "tags": [clip_utf16(t, TAG_MAX) for t in tags][:TAGS_MAX],
        "details": _details(alert),
        "source": clip_utf16(SOURCE, SOURCE_MAX),
        "priority": priority or PRIORITY[alert.risk_level],
    }
    if alert.domain:
        body["entity"] = clip_utf16(alert.domain, ENTITY_MAX)
    return body


def connection_test_alias(integration: IntegrationConfig) -> str:
    """One fixed alias per integration for Test connection: repeated tests count up one
    open test alert instead of opening a new one each time."""
    digest = hashlib.sha256(integration.key.encode()).hexdigest()[:16]
    return f"alertrelay-connection-test-{digest}"


def _error_body(response: httpx.Response) -> tuple[str, str, dict[str, str]]:
    """(message, requestId, per-field errors) from Opsgenie's error JSON."""
    body = response_json(response)
    if not isinstance(body, dict):
        return "", "", {}
    message = body.get("message")
    request_id = body.get("requestId")
    errors = body.get("errors")
    return (
        message if isinstance(message, str) else "",
        request_id if isinstance(request_id, str) else "",
        {str(k): str(v) for k, v in errors.items()} if isinstance(errors, dict) else {},
    )


_ADVICE: Final[Mapping[int, str]] = {
    400: "Opsgenie will not accept this alert as it is, so it is not retried",
    401: (
        "check the API key: it must be the key of an Opsgenie API integration, enabled, and "
        "from the same region as the webhook URL (api.eu.opsgenie.com for EU accounts)"
    ),
    402: "the Opsgenie plan does not allow this request: check the subscription",
    403: (
        "the API integration lacks 'Create and Update Access' or is restricted: "
        "edit the integration in Opsgenie"
    ),
    404: "check the webhook URL (https://api.opsgenie.com/v2/alerts) and the team ID",
    409: "Opsgenie reported a conflict with the existing alert",
    422: "Opsgenie could not process the alert's fields",
}


class OpsgenieSink(PerAlertSink[OpsgenieSettings]):
    """Creates one Opsgenie alert per alert; Opsgenie deduplicates by `alias`."""

    type_name = "opsgenie"
    settings_model = OpsgenieSettings

    def __init__(self, ctx: SinkContext) -> None:
        self._client = build_client(overrides=ctx.overrides, guard=ctx.guard)

    @staticmethod
    def _headers(settings: OpsgenieSettings) -> dict[str, str]:
        return {
            "Authorization": f"GenieKey {settings.api_key.get_secret_value()}",
            "Content-Type": "application/json",
        }

    async def send(self, delivery: Delivery, settings: OpsgenieSettings) -> int | None:
        status, _ = await self._create(build_alert(delivery, settings), settings)
        return status

    async def _create(
        self, body: dict[str, Any], settings: OpsgenieSettings
    ) -> tuple[int, dict[str, Any]]:
        redact = self.redactor(settings)
        what = "Opsgenie Alert API"
        response = await send_json(
            self._client,
            "POST",
            settings.webhook_url,
            headers=self._headers(settings),
            redact=redact,
            what=what,
            body=body,
        )
        try:
            classify_response(response, redact=redact, what=what)
        except DeliveryError as generic:
            raise self._vendor_error(response, generic, redact) from None
        answer = response_json(response)
        return response.status_code, answer if isinstance(answer, dict) else {}

    @staticmethod
    def _vendor_error(
        response: httpx.Response, generic: DeliveryError, redact: Redactor
    ) -> DeliveryError:
        status = response.status_code
        message, request_id, fields = _error_body(response)
        said = message or "no message"
        if fields:
            said += " — " + "; ".join(f"{k}: {v}" for k, v in fields.items())
        ref = f" (requestId {request_id})" if request_id else ""
        if status == 429:
            retry_after = generic.retry_after
            period = response.headers.get("x-ratelimit-period-in-sec", "")
            if retry_after is None and period.strip().isdigit():
                retry_after = min(float(period), MAX_RETRY_AFTER)
            return RetryableError(
                redact(f"Opsgenie is rate limiting this API key (HTTP 429: {said}){ref}")[:1000],
                status=429,
                retry_after=retry_after,
            )
        advice = _ADVICE.get(status)
        if advice is None:
            return generic
        text = f"Opsgenie says {status} ({said}): {advice}{ref}"
        return PermanentError(redact(text)[:1500], status=status)

    async def check(self, integration: IntegrationConfig, settings: OpsgenieSettings) -> str:
        """Creates a clearly labelled P5 test alert for the team, with a fixed alias.

        Why this and not a read-only call: the only calls VENDORS.md vouches for are
        create-alert and its request status. A read call would need a read permission the
        integration may not have, and would prove neither the create permission nor the
        team ID; creating is the honest test. The fixed alias makes repeated tests count
        up one open alert instead of adding alerts. Opsgenie creates asynchronously, so the
        request status is asked once (no waiting): a processing failure such as an unknown
        team fails the check; "not processed yet" does not.
        """
        probe = test_delivery(integration)
        alias = connection_test_alias(integration)
        body = build_alert(
            probe, settings, alias=alias, priority=TEST_PRIORITY, extra_tags=("test",)
        )
        status, answer = await self._create(body, settings)
        request_id = answer.get("requestId")
        accepted = f"Opsgenie accepted the test alert (HTTP {status}, alias {alias})"
        if not isinstance(request_id, str) or not request_id:
            return accepted
        outcome = await self._request_status(request_id, settings)
        if outcome is None:
            return f"{accepted}; Opsgenie has not processed it yet (requestId {request_id})"
        ok, detail = outcome
        if not ok:
            raise PermanentError(
                f"Opsgenie accepted the test alert but could not create it: {detail} "
                f"(requestId {request_id}); check the team ID"
            )
        return f"{accepted}: {detail}; close the test alert in Opsgenie once seen"

    async def _request_status(
        self, request_id: str, settings: OpsgenieSettings
    ) -> tuple[bool, str] | None:
        """(succeeded, Opsgenie's status text), or None when it is not known yet."""
        redact = self.redactor(settings)
        url = f"{settings.webhook_url}/requests/{quote(request_id, safe='')}"
        try:
            response = await self._client.get(url, headers=self._headers(settings))
            body = orjson.loads(response.content)
        except (httpx.HTTPError, orjson.JSONDecodeError):
            return None
        if response.status_code != 200 or not isinstance(body, dict):
            return None
        data = body.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("isSuccess"), bool):
            return None
        detail = data.get("status")
        return data["isSuccess"], redact(str(detail or "no status given"))[:500]

    async def aclose(self) -> None:
        await self._client.aclose()
