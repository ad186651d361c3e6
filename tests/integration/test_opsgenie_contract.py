"""The Opsgenie sink against a local Alert API (tests/fakes/opsgenie.py) and, once, the
whole pipeline on a real broker.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.models import Delivery, IntegrationConfig
from sinks.errors import DeliveryError, PermanentError, RetryableError
from sinks.opsgenie.config import ALERTS_URL, EU_ALERTS_URL, OpsgenieSettings
from sinks.opsgenie.sink import PRIORITY, OpsgenieSink, build_alert, connection_test_alias
from tests.fakes.opsgenie import Answer, FakeOpsgenie
from tests.harness import (
    TopicSet,
    WorkerProcess,
    delivery_of,
    free_port,
    make_alert,
    produce,
    put_configs,
    sink_context,
    utf16_units,
)
from tests.harness import sample_alert as alert

pytestmark = pytest.mark.integration

_ids = itertools.count(1)


# -- helpers ---------------------------------------------------------------------------


def delivery(key: str, team: str, url: str = ALERTS_URL, **alert_fields: Any) -> Delivery:
    a = alert(**alert_fields)
    integration = IntegrationConfig(
        integration_id=f"og-{next(_ids)}",
        tenant_id=a.tenant_id,
        type="opsgenie",
        name="Opsgenie SOC",
        version=1,
        settings={"webhook_url": url, "team_id": team, "api_key": key},
    )
    return delivery_of(a, integration, offset=next(_ids))


def settings_of(d: Delivery) -> OpsgenieSettings:
    return OpsgenieSettings.model_validate(d.integration.settings)


def assert_clean(error: DeliveryError, key: str) -> None:
    assert key not in error.message and key not in str(error)


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpsgenie]:
    with FakeOpsgenie() as server:
        yield server


@pytest.fixture
def key(fake: FakeOpsgenie) -> str:
    return fake.add_key()


@pytest.fixture
def team(fake: FakeOpsgenie) -> str:
    return fake.add_team()


@pytest.fixture
async def sink(fake: FakeOpsgenie) -> AsyncIterator[OpsgenieSink]:
    s = OpsgenieSink(sink_context(fake.override))
    yield s
    await s.aclose()


# -- success: the exact request ------------------------------------------------------


async def test_creates_one_alert_with_everything_the_alert_has(
    sink: OpsgenieSink, fake: FakeOpsgenie, key: str, team: str
) -> None:
    d = delivery(key, team)
    assert await sink.send(d, settings_of(d)) == 202

    request = fake.requests[-1]
    assert (request.method, request.path) == ("POST", "/v2/alerts")
    assert request.headers["authorization"] == f"GenieKey {key}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-forwarded-host"] == "api.opsgenie.com"
    assert request.answer["result"] == "Request will be processed"
    body = request.json()
    assert body == {
        "message": "[HIGH] New script reads the payment form",
        "alias": d.idempotency_key,
        "description": (
            "New script reads the payment form\n"
            "\n"
            "Risk: HIGH\n"
            "Event: Client-side risk\n"
            "Domain: shop.example.com\n"
            "Page: https://shop.example.com/checkout\n"
            "Script: https://cdn.tracker.example/x.js\n"
            "Detected: 2024-05-01T12:00:01Z\n"
            "Console: https://console.example.com/alerts/1\n"
            "\n"
            "cdn.tracker.example/x.js started reading card fields.\n"
            "\n"
            "Details:\n"
            "pci_scope: in\n"
            "script_hash: abc123"
        ),
        "responders": [{"type": "team", "id": team}],
        "tags": ["alertrelay", "client_side_risk", "risk:high"],
        "details": {
            "alert_id": "alert-1",
            "tenant_id": "tenant-a",
            "event_type": "client_side_risk",
            "risk_level": "high",
            "detected_at": "2024-05-01T12:00:01Z",
            "domain": "shop.example.com",
            "page_url": "https://shop.example.com/checkout",
            "script_url": "https://cdn.tracker.example/x.js",
            "console_url": "https://console.example.com/alerts/1",
            "pci_scope": "in",
            "script_hash": "abc123",
        },
        "source": "alertrelay",
        "priority": "P2",
        "entity": "shop.example.com",
    }
    created = fake.alert_by_alias(d.idempotency_key)
    assert created is not None and created.count == 1


@pytest.mark.parametrize(
    ("risk", "priority"), [("critical", "P1"), ("high", "P2"), ("medium", "P3"), ("low", "P4")]
)
async def test_priority_follows_the_risk_table(
    sink: OpsgenieSink, fake: FakeOpsgenie, key: str, team: str, risk: str, priority: str
) -> None:
    d = delivery(key, team, risk_level=risk)
    await sink.send(d, settings_of(d))
    body = fake.requests[-1].json()
    assert body["priority"] == priority == PRIORITY[d.alert.risk_level]
    assert f"risk:{risk}" in body["tags"]


async def test_limits_hold_for_a_huge_alert(
    sink: OpsgenieSink, fake: FakeOpsgenie, key: str, team: str
) -> None:
    emoji = "\U0001f6a8"
    d = delivery(
        key,
        team,
        title=("T" + emoji) * 20_000,
        description="D" * 60_000,
        domain="d" * 1024,
        details={f"key{i}": "v" * 3000 for i in range(100)},
    )
    assert await sink.send(d, settings_of(d)) == 202  # the fake enforces every limit
    body = fake.requests[-1].json()
    assert utf16_units(body["message"]) <= 130 and body["message"].endswith("…")
    assert utf16_units(body["description"]) <= 15_000 and body["description"].endswith("…")
    assert len(body["entity"]) <= 512
    assert sum(utf16_units(k) + utf16_units(v) for k, v in body["details"].items()) <= 8000
    assert "more details in the console" in body["details"]["alertrelay_note"]
    assert body["details"]["alert_id"] == "alert-1"  # ours come first and survive
    assert len(body["tags"]) <= 20 and all(len(t) <= 50 for t in body["tags"])
    assert fake.alert_by_alias(d.idempotency_key) is not None


def test_message_is_one_line() -> None:
    d = delivery(
        "eb243592-faa2-4ba2-a551-1afdf565c889",
        "4513b7ea-3b91-438f-b7e4-e3e54af9147c",
        title="Line one\n\tline two  ",
    )
    assert build_alert(d, settings_of(d))["message"] == "[HIGH] Line one line two"


def test_optional_fields_missing() -> None:
    d = delivery(
        "eb243592-faa2-4ba2-a551-1afdf565c889",
        "4513b7ea-3b91-438f-b7e4-e3e54af9147c",
        domain=None,
        description=None,
        page_url=None,
        script_url=None,
        console_url=None,
        details=None,
    )
    body = build_alert(d, settings_of(d))
    assert "entity" not in body
    assert set(body["details"]) == {
        "alert_id",
        "tenant_id",
        "event_type",
        "risk_level",
        "detected_at",
    }
    assert body["description"].count("\n") == 4  # title, blank, risk, event, detected


# -- errors ----------------------------------------------------------------------------


async def test_unknown_key_is_a_permanent_401_with_advice(
    sink: OpsgenieSink, fake: FakeOpsgenie, team: str
) -> None:
    unknown = "00000000-1111-2222-3333-444444444444"
    d = delivery(unknown, team)
    with pytest.raises(PermanentError) as info:
        await sink.send(d, settings_of(d))
    error = info.value
    assert error.status == 401
    assert error.message.startswith("Opsgenie says 401 (Could not authenticate): check the API key")
    assert "api.eu.opsgenie.com" in error.message and "requestId" in error.message
    assert_clean(error, unknown)


async def test_key_without_create_access_is_a_permanent_403(
    sink: OpsgenieSink, fake: FakeOpsgenie, team: str
) -> None:
    read_only = fake.add_key(can_create=False)
    d = delivery(read_only, team)
    with pytest.raises(PermanentError) as info:
        await sink.send(d, settings_of(d))
    assert info.value.status == 403
    assert "'Create and Update Access'" in info.value.message
    assert_clean(info.value, read_only)


async def test_422_lists_each_field_error(
    sink: OpsgenieSink, fake: FakeOpsgenie, key: str, team: str
) -> None:
    fake.script(
        Answer(
            422,
            {
                "message": "Request body is not processable. Please check the errors.",
                "errors": {"message": "Message can not be empty.", "priority": "Bad priority"},
                "took": 0.01,
                "requestId": "req-422",
            },
        )
    )
    d = delivery(key, team)
    with pytest.raises(PermanentError) as info:
        await sink.send(d, settings_of(d))
    message = info.value.message
    assert info.value.status == 422
    assert "message: Message can not be empty." in message and "priority: Bad priority" in message
    assert "(requestId req-422)" in message


@pytest.mark.parametrize(
    ("status", "says"),
    [
        (400, "not retried"),
        (402, "plan does not allow"),
        (404, "check the webhook URL"),
        (409, "conflict"),
    ],
)
async def test_other_documented_errors_are_permanent(
    sink: OpsgenieSink, fake: FakeOpsgenie, key: str, team: str, status: int, says: str
) -> None:
    fake.script(
        Answer(status, {"message": f"error {status} key {key}", "took": 0.0, "requestId": "r"})
    )
    d = delivery(key, team)
    with pytest.raises(PermanentError) as info:
        await sink.send(d, settings_of(d))
    assert info.value.status == status
    assert info.value.message.startswith(f"Opsgenie says {status} (error {status} key")
    assert says in info.value.message
    assert_clean(info.value, key)


async def test_429_is_retryable_with_retry_after(
    sink: OpsgenieSink, fake: FakeOpsgenie, key: str, team: str
) -> None:
    limited = {"message": "Rate limit exceeded", "took": 0.0, "requestId": "r429"}
    fake.script(
        Answer(429, limited, {"Retry-After": "12"}),
        Answer(429, limited, {"X-RateLimit-State": "THROTTLED", "X-RateLimit-Period-In-Sec": "60"}),
    )
    d = delivery(key, team)
    for expected in (12, 60):
        with pytest.raises(RetryableError) as info:
            await sink.send(d, settings_of(d))
        assert info.value.status == 429 and info.value.retry_after == expected
        assert "rate limiting" in info.value.message
        assert_clean(info.value, key)


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_retryable(
    sink: OpsgenieSink, fake: FakeOpsgenie, key: str, team: str, status: int
) -> None:
    fake.script(Answer(status, f"oops GenieKey {key}"))
    d = delivery(key, team)
    with pytest.raises(RetryableError) as info:
        await sink.send(d, settings_of(d))
    assert info.value.status == status
    assert_clean(info.value, key)


async def test_connection_refused_is_retryable(key: str, team: str) -> None:
    s = OpsgenieSink(sink_context(f"api.opsgenie.com=http://127.0.0.1:{free_port()}"))
    try:
        d = delivery(key, team)
        with pytest.raises(RetryableError) as info:
            await s.send(d, settings_of(d))
        assert "could not be reached" in info.value.message
        assert_clean(info.value, key)
    finally:
        await s.aclose()


# -- dedup and region ------------------------------------------------------------------


async def test_same_delivery_twice_is_one_alert_counted_twice(
    sink: OpsgenieSink, fake: FakeOpsgenie, key: str, team: str
) -> None:
    d = delivery(key, team)
    before = len(fake.alerts)
    await sink.send(d, settings_of(d))
    await sink.send(d, settings_of(d))
    assert len(fake.alerts) == before + 1
    created = fake.alert_by_alias(d.idempotency_key)
    assert created is not None and created.count == 2


async def test_eu_url_goes_to_the_eu_host(
    sink: OpsgenieSink, fake: FakeOpsgenie, key: str, team: str
) -> None:
    d = delivery(key, team, url="https://api.eu.opsgenie.com/v2/alerts/")
    assert settings_of(d).webhook_url == EU_ALERTS_URL
    assert await sink.send(d, settings_of(d)) == 202
    assert fake.requests[-1].headers["x-forwarded-host"] == "api.eu.opsgenie.com"


# -- Test connection -------------------------------------------------------------------


async def test_check_creates_one_labelled_test_alert_and_reads_the_outcome(
    sink: OpsgenieSink, fake: FakeOpsgenie, key: str, team: str
) -> None:
    d = delivery(key, team)
    alias = connection_test_alias(d.integration)
    detail = await sink.check(d.integration, settings_of(d))
    assert "Created alert" in detail and alias in detail and "close the test alert" in detail
    create, status = fake.requests[-2:]
    body = create.json()
    assert body["alias"] == alias and body["priority"] == "P5"
    assert body["message"].startswith("[LOW] [TEST] alertrelay connection test")
    assert "test" in body["tags"]
    assert body["responders"] == [{"type": "team", "id": team}]
    assert status.method == "GET"
    assert status.path == f"/v2/alerts/requests/{create.answer['requestId']}"
    assert status.headers["authorization"] == f"GenieKey {key}"

    await sink.check(d.integration, settings_of(d))  # again: counts up, no second alert
    created = fake.alert_by_alias(alias)
    assert created is not None and created.count == 2
    assert sum(1 for a in fake.alerts if a.alias == alias) == 1


async def test_check_fails_when_the_team_does_not_exist(
    sink: OpsgenieSink, fake: FakeOpsgenie, key: str
) -> None:
    d = delivery(key, "99999999-8888-7777-6666-555555555555")
    with pytest.raises(PermanentError) as info:
        await sink.check(d.integration, settings_of(d))
    assert "could not create it" in info.value.message
    assert "does not exist" in info.value.message and "check the team ID" in info.value.message
    assert_clean(info.value, key)


async def test_check_does_not_wait_for_slow_processing(
    sink: OpsgenieSink, fake: FakeOpsgenie, key: str, team: str
) -> None:
    fake.hold_processing()
    try:
        d = delivery(key, team)
        detail = await sink.check(d.integration, settings_of(d))
        assert "has not processed it yet" in detail
    finally:
        fake.hold_processing(False)


async def test_check_fails_on_a_bad_key(sink: OpsgenieSink, fake: FakeOpsgenie, team: str) -> None:
    unknown = "abcdefab-1111-2222-3333-444444444444"
    d = delivery(unknown, team)
    with pytest.raises(PermanentError) as info:
        await sink.check(d.integration, settings_of(d))
    assert info.value.status == 401
    assert_clean(info.value, unknown)


# -- end to end on a real broker -----------------------------------------------------


def test_worker_delivers_alerts_to_opsgenie_end_to_end(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = TopicSet()
    with FakeOpsgenie() as og:
        key, team = og.add_key(), og.add_team()
        env = {"ALERTRELAY_HOST_OVERRIDES": og.override}
        with WorkerProcess(kafka_bootstrap, topics, tmp_path, env) as worker:
            tenant = "t-og-e2e"
            config = {
                "integration_id": "og-e2e",
                "tenant_id": tenant,
                "type": "opsgenie",
                "name": "Opsgenie SOC",
                "min_risk_level": "high",
                "settings": {"webhook_url": ALERTS_URL, "team_id": team, "api_key": key},
            }
            put_configs(kafka_bootstrap, topics, worker, config)
            alerts = [make_alert(i, tenant, alert_id=f"og-e2e-{i}") for i in range(8)]
            produce(kafka_bootstrap, topics.alerts, [(tenant, a) for a in [*alerts, alerts[3]]])
            wanted = [a for a in alerts if a["risk_level"] in ("high", "critical")]  # 4
            og.wait_for(len(wanted), timeout=45)
            deadline = time.monotonic() + 20
            while sum(a.count for a in og.alerts) < len(wanted) + 1:
                assert time.monotonic() < deadline, "the duplicate never arrived"
                time.sleep(0.1)
            time.sleep(0.5)
            log = worker.log_tail(400)
        assert len(og.alerts) == len(wanted)
        by_id = {a.body["details"]["alert_id"]: a for a in og.alerts}
        assert set(by_id) == {a["alert_id"] for a in wanted}
        assert by_id["og-e2e-3"].count == 2  # the duplicate only counted up
        for a in wanted:
            body = by_id[a["alert_id"]].body
            assert body["priority"] == {"high": "P2", "critical": "P1"}[a["risk_level"]]
            assert body["responders"] == [{"type": "team", "id": team}]
            assert body["message"] == f"[{a['risk_level'].upper()}] {a['title']}"
        assert all(r.headers["authorization"] == f"GenieKey {key}" for r in og.requests)
        assert key not in log
