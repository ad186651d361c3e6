"""The PagerDuty sink against a local Events API v2 (tests/fakes/pagerduty.py) and, once,
the whole pipeline on a real broker.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.models import Delivery, IntegrationConfig
from sinks.errors import DeliveryError, PermanentError, RetryableError
from sinks.pagerduty.config import ENQUEUE_URL, PagerDutySettings
from sinks.pagerduty.sink import SEVERITY, PagerDutySink, build_event
from tests.fakes.pagerduty import Answer, FakePagerDuty
from tests.harness import (
    TopicSet,
    WorkerProcess,
    delivery_of,
    free_port,
    make_alert,
    produce,
    put_configs,
    sink_context,
)
from tests.harness import sample_alert as alert

pytestmark = pytest.mark.integration

_ids = itertools.count(1)


# -- helpers ---------------------------------------------------------------------------


def delivery(routing_key: str, url: str = ENQUEUE_URL, **alert_fields: Any) -> Delivery:
    a = alert(**alert_fields)
    integration = IntegrationConfig(
        integration_id="pd-1",
        tenant_id=a.tenant_id,
        type="pagerduty",
        name="On-call",
        version=1,
        settings={"webhook_url": url, "api_key": routing_key},
    )
    return delivery_of(a, integration, offset=next(_ids))


def settings_of(d: Delivery) -> PagerDutySettings:
    return PagerDutySettings.model_validate(d.integration.settings)


def assert_clean(error: DeliveryError, routing_key: str) -> None:
    assert routing_key not in error.message and routing_key not in str(error)


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[FakePagerDuty]:
    with FakePagerDuty() as server:
        yield server


@pytest.fixture
def key(fake: FakePagerDuty) -> str:
    return fake.add_routing_key()


@pytest.fixture
async def sink(fake: FakePagerDuty) -> AsyncIterator[PagerDutySink]:
    s = PagerDutySink(sink_context(fake.override))
    yield s
    await s.aclose()


# -- success: the exact request ------------------------------------------------------


async def test_triggers_one_event_with_everything_the_alert_has(
    sink: PagerDutySink, fake: FakePagerDuty, key: str
) -> None:
    d = delivery(key)
    assert await sink.send(d, settings_of(d)) == 202

    request = fake.requests[-1]
    assert (request.method, request.path) == ("POST", "/v2/enqueue")
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-forwarded-host"] == "events.pagerduty.com"
    assert "authorization" not in request.headers  # the routing key is in the body
    assert request.answer == {
        "status": "success",
        "message": "Event processed",
        "dedup_key": d.idempotency_key,
    }
    event = request.json()
    assert event == {
        "routing_key": key,
        "event_action": "trigger",
        "dedup_key": d.idempotency_key,
        "payload": {
            "summary": "[HIGH risk] New script reads the payment form on shop.example.com",
            "source": "shop.example.com",
            "severity": "error",
            "timestamp": "2024-05-01T12:00:01Z",
            "component": "cdn.tracker.example",
            "group": "tenant-a",
            "class": "client_side_risk",
            "custom_details": {
                "alert_id": "alert-1",
                "tenant_id": "tenant-a",
                "event_type": "client_side_risk",
                "risk_level": "high",
                "title": "New script reads the payment form",
                "detected_at": "2024-05-01T12:00:01Z",
                "description": "cdn.tracker.example/x.js started reading card fields.",
                "domain": "shop.example.com",
                "page_url": "https://shop.example.com/checkout",
                "script_url": "https://cdn.tracker.example/x.js",
                "console_url": "https://console.example.com/alerts/1",
                "details": {"pci_scope": "in", "script_hash": "abc123"},
            },
        },
        "client": "alertrelay",
        "links": [
            {
                "href": "https://console.example.com/alerts/1",
                "text": "Open the alert in the console",
            }
        ],
        "client_url": "https://console.example.com/alerts/1",
    }
    (incident,) = fake.incidents_for(key)
    assert incident.status == "triggered" and incident.dedup_key == d.idempotency_key


@pytest.mark.parametrize("risk", ["critical", "high", "medium", "low"])
async def test_severity_follows_the_risk_table(
    sink: PagerDutySink, fake: FakePagerDuty, key: str, risk: str
) -> None:
    d = delivery(key, risk_level=risk)
    await sink.send(d, settings_of(d))
    assert fake.requests[-1].json()["payload"]["severity"] == SEVERITY[d.alert.risk_level]
    assert (
        SEVERITY[d.alert.risk_level]
        == {
            "critical": "critical",
            "high": "error",
            "medium": "warning",
            "low": "info",
        }[risk]
    )


async def test_minimal_alert_still_has_source_and_no_empty_fields(
    sink: PagerDutySink, fake: FakePagerDuty, key: str
) -> None:
    d = delivery(
        key,
        domain=None,
        script_url=None,
        description=None,
        console_url=None,
        details=None,
        event_type="pci_scope_change",
        detected_at="2024-05-01T14:00:01+02:00",
    )
    await sink.send(d, settings_of(d))
    event = fake.requests[-1].json()
    payload = event["payload"]
    assert payload["source"] == "shop.example.com"  # the page's host
    assert payload["component"] == "shop.example.com"
    assert payload["class"] == "pci_scope_change"
    assert payload["timestamp"] == "2024-05-01T14:00:01+02:00"
    assert "links" not in event and "client_url" not in event
    assert set(payload["custom_details"]) == {
        "alert_id",
        "tenant_id",
        "event_type",
        "risk_level",
        "title",
        "detected_at",
        "page_url",
    }

    bare = delivery(key, alert_id="bare", domain=None, page_url=None, script_url=None)
    await sink.send(bare, settings_of(bare))
    payload = fake.requests[-1].json()["payload"]
    assert payload["source"] == "alertrelay" and "component" not in payload


async def test_limits_hold_for_a_huge_alert(
    sink: PagerDutySink, fake: FakePagerDuty, key: str
) -> None:
    d = delivery(
        key,
        title="T" * 60_000,
        description="D" * 60_000,
        details={f"k{i}": "v" * 4000 for i in range(300)},  # 1.2 MB of details
    )
    assert await sink.send(d, settings_of(d)) == 202  # the fake enforces 512 KB and 1024
    request = fake.requests[-1]
    assert len(request.body) <= 512 * 1024
    payload = request.json()["payload"]
    assert len(payload["summary"]) == 1024 and payload["summary"].endswith("…")
    details = payload["custom_details"]["details"]
    assert len(details) == 300 and all(len(v) <= 1024 for v in details.values())

    enormous = delivery(
        key, alert_id="enormous", details={f"k{i}": "v" * 2000 for i in range(5000)}
    )
    assert await sink.send(enormous, settings_of(enormous)) == 202
    request = fake.requests[-1]
    assert len(request.body) <= 512 * 1024
    assert "5000 details left out" in request.json()["payload"]["custom_details"]["details"]["note"]


def test_summary_counts_utf16_units() -> None:
    d = delivery("a" * 32, title="\U0001f6a8" * 1000)
    summary = build_event(d, settings_of(d))["payload"]["summary"]
    assert len(summary.encode("utf-16-le")) // 2 <= 1024


# -- errors ----------------------------------------------------------------------------


async def test_unknown_routing_key_is_permanent_with_pagerdutys_errors(
    sink: PagerDutySink, fake: FakePagerDuty
) -> None:
    unknown = "Zz" * 16
    d = delivery(unknown)
    with pytest.raises(PermanentError) as info:
        await sink.send(d, settings_of(d))
    error = info.value
    assert error.status == 400
    assert "PagerDuty rejected the event (HTTP 400, Event object is invalid)" in error.message
    assert "Invalid routing key" in error.message
    assert "Integration Key of an Events API v2 integration" in error.message
    assert_clean(error, unknown)


async def test_other_400s_list_every_error_and_are_not_retried(
    sink: PagerDutySink, fake: FakePagerDuty, key: str
) -> None:
    fake.script(
        Answer(
            400,
            {
                "status": "invalid event",
                "message": "Event object is invalid",
                "errors": ["'payload.summary' is missing or blank", f"routing_key={key} seen"],
            },
        )
    )
    d = delivery(key)
    with pytest.raises(PermanentError) as info:
        await sink.send(d, settings_of(d))
    assert "'payload.summary' is missing or blank" in info.value.message
    assert_clean(info.value, key)


async def test_429_is_retryable_with_retry_after(
    sink: PagerDutySink, fake: FakePagerDuty, key: str
) -> None:
    fake.script(Answer(429, "", {"Retry-After": "30"}))
    d = delivery(key)
    with pytest.raises(RetryableError) as info:
        await sink.send(d, settings_of(d))
    assert info.value.status == 429 and info.value.retry_after == 30
    assert "throttling" in info.value.message
    assert_clean(info.value, key)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_errors_are_retryable(
    sink: PagerDutySink, fake: FakePagerDuty, key: str, status: int
) -> None:
    fake.script(Answer(status, f"server error for {key}"))
    d = delivery(key)
    with pytest.raises(RetryableError) as info:
        await sink.send(d, settings_of(d))
    assert info.value.status == status
    assert_clean(info.value, key)


async def test_connection_refused_is_retryable(key: str) -> None:
    s = PagerDutySink(sink_context(f"events.pagerduty.com=http://127.0.0.1:{free_port()}"))
    try:
        d = delivery(key)
        with pytest.raises(RetryableError) as info:
            await s.send(d, settings_of(d))
        assert "could not be reached" in info.value.message
        assert_clean(info.value, key)
    finally:
        await s.aclose()


# -- dedup -----------------------------------------------------------------------------


async def test_same_delivery_twice_is_one_incident(
    sink: PagerDutySink, fake: FakePagerDuty, key: str
) -> None:
    d = delivery(key)
    await sink.send(d, settings_of(d))
    await sink.send(d, settings_of(d))
    (incident,) = fake.incidents_for(key)
    assert len(incident.events) == 2 and incident.status == "triggered"
    other = delivery(key, alert_id="alert-2")
    await sink.send(other, settings_of(other))
    assert len(fake.incidents_for(key)) == 2


async def test_eu_region_url_goes_to_the_eu_host(fake: FakePagerDuty, key: str) -> None:
    s = PagerDutySink(sink_context(f"events.eu.pagerduty.com={fake.base_url}"))
    try:
        d = delivery(key, url="https://events.eu.pagerduty.com/v2/enque")
        assert settings_of(d).webhook_url == "https://events.eu.pagerduty.com/v2/enqueue"
        assert await s.send(d, settings_of(d)) == 202
        assert fake.requests[-1].headers["x-forwarded-host"] == "events.eu.pagerduty.com"
    finally:
        await s.aclose()


# -- Test connection -------------------------------------------------------------------


async def test_check_triggers_then_resolves_with_one_dedup_key(
    sink: PagerDutySink, fake: FakePagerDuty, key: str
) -> None:
    d = delivery(key)
    detail = await sink.check(d.integration, settings_of(d))
    trigger, resolve = (r.json() for r in fake.requests[-2:])
    assert trigger["event_action"] == "trigger" and resolve["event_action"] == "resolve"
    assert trigger["dedup_key"] == resolve["dedup_key"]
    assert resolve == {
        "routing_key": key,
        "event_action": "resolve",
        "dedup_key": trigger["dedup_key"],
    }
    assert trigger["payload"]["summary"].startswith("[LOW risk] [TEST] alertrelay connection test")
    assert trigger["payload"]["severity"] == "info"
    (incident,) = fake.incidents_for(key)
    assert incident.status == "resolved"
    assert trigger["dedup_key"] in detail and "resolved" in detail


async def test_check_fails_on_a_bad_routing_key(sink: PagerDutySink, fake: FakePagerDuty) -> None:
    unknown = "Qq" * 16
    d = delivery(unknown)
    with pytest.raises(PermanentError) as info:
        await sink.check(d.integration, settings_of(d))
    assert "Invalid routing key" in info.value.message
    assert_clean(info.value, unknown)


async def test_check_says_what_to_do_when_the_resolve_fails(
    sink: PagerDutySink, fake: FakePagerDuty, key: str
) -> None:
    accepted = {"status": "success", "message": "Event processed", "dedup_key": "x"}
    fake.script(Answer(202, accepted), Answer(503, "unavailable"))
    d = delivery(key)
    with pytest.raises(RetryableError) as info:
        await sink.check(d.integration, settings_of(d))
    assert "resolving it failed" in info.value.message
    assert "resolve it by hand" in info.value.message
    assert_clean(info.value, key)


# -- end to end on a real broker -----------------------------------------------------


def test_worker_delivers_alerts_to_pagerduty_end_to_end(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = TopicSet()
    with FakePagerDuty() as pd:
        key = pd.add_routing_key()
        env = {"ALERTRELAY_HOST_OVERRIDES": pd.override}
        with WorkerProcess(kafka_bootstrap, topics, tmp_path, env) as worker:
            tenant = "t-pd-e2e"
            config = {
                "integration_id": "pd-e2e",
                "tenant_id": tenant,
                "type": "pagerduty",
                "name": "On-call",
                "event_types": ["client_side_risk"],
                # the spec's own (misspelt) URL form, as a user would paste it
                "settings": {
                    "webhook_url": "https://events.pagerduty.com/v2/enque",
                    "api_key": key,
                },
            }
            put_configs(kafka_bootstrap, topics, worker, config)
            alerts = [make_alert(i, tenant, alert_id=f"pd-e2e-{i}") for i in range(6)]
            # the same alert twice (a producer retry): still one incident
            produce(kafka_bootstrap, topics.alerts, [(tenant, a) for a in [*alerts, alerts[0]]])
            wanted = [a for a in alerts if a["event_type"] == "client_side_risk"]  # 3
            pd.wait_for(key, len(wanted), timeout=45)
            deadline = time.monotonic() + 20
            while sum(len(i.events) for i in pd.incidents_for(key)) < len(wanted) + 1:
                assert time.monotonic() < deadline, "the duplicate never arrived"
                time.sleep(0.1)
            time.sleep(0.5)
            log = worker.log_tail(400)
        incidents = pd.incidents_for(key)
        assert len(incidents) == len(wanted)
        by_id = {i.payload["custom_details"]["alert_id"]: i for i in incidents}
        assert set(by_id) == {a["alert_id"] for a in wanted}
        assert len(by_id["pd-e2e-0"].events) == 2  # deduplicated by dedup_key
        for a in wanted:
            payload = by_id[a["alert_id"]].payload
            assert payload["severity"] == SEVERITY[alert(risk_level=a["risk_level"]).risk_level]
            assert payload["summary"].endswith(f"{a['title']} on shop.example.com")
        assert all(r.path == "/v2/enqueue" for r in pd.requests)
        assert key not in log
        assert json.dumps([r.answer for r in pd.requests]).count("success") == len(pd.requests)
