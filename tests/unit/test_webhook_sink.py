"""The webhook sink: the request it builds, and its answers against a real local receiver."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from schemas.models import Alert, Delivery, IntegrationConfig, idempotency_key
from sinks.base import BatchLimits
from sinks.errors import PermanentError, RetryableError
from sinks.http import EgressGuard, HostOverrides
from sinks.registry import SinkContext
from sinks.webhook.config import WebhookSettings
from sinks.webhook.sink import WebhookSink, build_request
from tests.fakes.webhook_receiver import Answer, WebhookReceiver

SECRET_TOKEN = "very-secret-hook-token"


def make_alert(alert_id: str = "alert-1") -> Alert:
    return Alert(
        alert_id=alert_id,
        tenant_id="tenant-a",
        event_type="pci_scope_change",
        risk_level="medium",
        title="Page entered PCI scope",
        detected_at=dt.datetime(2024, 5, 1, 12, 0, 1, tzinfo=dt.UTC),
        page_url="https://shop.example.com/pay",
        details={"reason": "payment form"},
    )


def make_integration(settings: dict[str, Any]) -> IntegrationConfig:
    return IntegrationConfig(
        integration_id="wh-1",
        tenant_id="tenant-a",
        type="webhook",
        name="SOC",
        version=2,
        settings=settings,
    )


def make_delivery(settings: dict[str, Any], alert_id: str = "alert-1") -> Delivery:
    alert = make_alert(alert_id)
    return Delivery(
        alert=alert,
        integration=make_integration(settings),
        config_version=2,
        idempotency_key=idempotency_key(alert.alert_id, "wh-1"),
        source_topic="alerts",
        source_partition=1,
        source_offset=10,
        routed_at=time.time(),
    )


def settings_for(url: str, **extra: Any) -> dict[str, Any]:
    return {"webhook_url": url, **extra}


# -- build_request -------------------------------------------------------------------


def test_build_request_basics() -> None:
    raw = settings_for("https://hooks.example.com/x", method="put")
    delivery = make_delivery(raw)
    method, url, headers, body = build_request(delivery, WebhookSettings.model_validate(raw))
    assert method == "PUT"
    assert url == "https://hooks.example.com/x"
    assert headers["Idempotency-Key"] == idempotency_key("alert-1", "wh-1")
    assert headers["Content-Type"] == "application/json"
    assert orjson.loads(body) == delivery.alert.wire()
    assert orjson.loads(body) == json.loads(orjson.dumps(make_alert().wire()))


def test_build_request_default_method_is_post() -> None:
    raw = settings_for("https://hooks.example.com/x")
    method, *_ = build_request(make_delivery(raw), WebhookSettings.model_validate(raw))
    assert method == "POST"


def test_user_headers_win_and_last_wins_by_name() -> None:
    raw = settings_for(
        "https://hooks.example.com/x",
        headers=[
            {"name": "content-type", "value": "application/vnd.soc+json"},
            {"name": "X-Token", "value": "first"},
            {"name": "IDEMPOTENCY-KEY", "value": "mine"},
            {"name": "x-token", "value": "last"},
        ],
    )
    _, _, headers, _ = build_request(make_delivery(raw), WebhookSettings.model_validate(raw))
    lowered: dict[str, list[str]] = {}
    for name, value in headers.items():
        lowered.setdefault(name.lower(), []).append(value)
    assert lowered["content-type"] == ["application/vnd.soc+json"]
    assert lowered["idempotency-key"] == ["mine"]
    assert lowered["x-token"] == ["last"]


# -- against the real receiver -------------------------------------------------------


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    """One server for the module; each test uses a path of its own."""
    with WebhookReceiver() as server:
        yield server


@pytest.fixture
def path() -> str:
    return f"/hooks/{uuid.uuid4().hex[:8]}/{SECRET_TOKEN}"


@pytest.fixture
async def sink() -> AsyncIterator[WebhookSink]:
    webhook = WebhookSink(
        SinkContext(HostOverrides(), EgressGuard.parse("127.0.0.1/32"), BatchLimits())
    )
    try:
        yield webhook
    finally:
        await webhook.aclose()


async def _send(sink: WebhookSink, raw: dict[str, Any]) -> int | None:
    delivery = make_delivery(raw)
    return await sink.send(delivery, sink.parse_settings(delivery.integration.settings))


async def test_send_200(sink: WebhookSink, receiver: WebhookReceiver, path: str) -> None:
    raw = settings_for(receiver.url + path, headers=[{"name": "X-Team", "value": "soc"}])
    assert await _send(sink, raw) == 200
    (request,) = receiver.received(path)
    assert request.method == "POST"
    assert request.json() == make_alert().wire()
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert headers["idempotency-key"] == idempotency_key("alert-1", "wh-1")
    assert headers["content-type"] == "application/json"
    assert headers["x-team"] == "soc"


async def test_send_uses_configured_method(
    sink: WebhookSink, receiver: WebhookReceiver, path: str
) -> None:
    assert await _send(sink, settings_for(receiver.url + path, method="PATCH")) == 200
    assert receiver.received(path)[0].method == "PATCH"


async def test_503_is_retryable(sink: WebhookSink, receiver: WebhookReceiver, path: str) -> None:
    receiver.script(path, Answer(503, b"maintenance"))
    with pytest.raises(RetryableError) as info:
        await _send(sink, settings_for(receiver.url + path))
    assert info.value.status == 503
    # the next request (script exhausted) succeeds: nothing sticky
    assert await _send(sink, settings_for(receiver.url + path)) == 200


async def test_429_retry_after(sink: WebhookSink, receiver: WebhookReceiver, path: str) -> None:
    receiver.script(path, Answer(429, b"slow down", headers={"Retry-After": "7"}))
    with pytest.raises(RetryableError) as info:
        await _send(sink, settings_for(receiver.url + path))
    assert info.value.status == 429
    assert info.value.retry_after == 7


async def test_400_is_permanent_without_the_url(
    sink: WebhookSink, receiver: WebhookReceiver, path: str
) -> None:
    echo = f"no such hook {path}".encode()  # a server echoing the secret path
    receiver.script(path, Answer(400, echo))
    with pytest.raises(PermanentError) as info:
        await _send(sink, settings_for(receiver.url + path))
    error = info.value
    assert error.status == 400
    assert "400" in error.message
    for text in (error.message, str(error)):
        assert SECRET_TOKEN not in text
        assert path not in text


async def test_egress_guard_refuses_loopback_when_not_allowed(
    receiver: WebhookReceiver, path: str
) -> None:
    guarded = WebhookSink(SinkContext(HostOverrides(), EgressGuard.parse(""), BatchLimits()))
    try:
        with pytest.raises(PermanentError) as info:
            await _send(guarded, settings_for(receiver.url + path))
    finally:
        await guarded.aclose()
    assert "127.0.0.1" in info.value.message
    assert SECRET_TOKEN not in info.value.message
    assert receiver.received(path) == []


async def test_check_sends_a_labelled_test_alert(
    sink: WebhookSink, receiver: WebhookReceiver, path: str
) -> None:
    raw = settings_for(receiver.url + path)
    integration = make_integration(raw)
    detail = await sink.check(integration, sink.parse_settings(integration.settings))
    assert "200" in detail
    (request,) = receiver.received(path)
    body = request.json()
    assert body["title"].startswith("[TEST]")
    assert body["tenant_id"] == "tenant-a"
    assert Alert.model_validate(body)  # a valid alert of the contract


def test_unusable_client_certificate_is_refused_with_the_settings() -> None:
    raw = settings_for(
        "https://127.0.0.1:9/x", protocol="tls", client_certificate="not a certificate"
    )
    with pytest.raises(ValidationError) as err:
        WebhookSettings.model_validate(raw)
    assert "client_certificate" in str(err.value)
