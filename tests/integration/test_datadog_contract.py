"""The Datadog sink against a local Datadog API that checks requests as Datadog does.

Covers the exact request on the configured site, limits, every error class, re-delivery
(what is and is not deduplicated), Test connection, secrets in messages, and one run
through a real worker on the real broker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from schemas.models import Alert, Delivery, IntegrationConfig
from sinks.datadog.config import DatadogSettings
from sinks.datadog.sink import (
    MARKDOWN_MAX,
    SEVERITY_BY_RISK,
    TITLE_MAX,
    DatadogSink,
    dedup_marker,
)
from sinks.errors import DeliveryError, PermanentError, RetryableError
from sinks.registry import validate_integration
from tests.fakes.datadog import Answer, FakeDatadog
from tests.harness import (
    TopicSet,
    WorkerProcess,
    consume,
    delivery_of,
    make_alert,
    produce,
    put_configs,
    sink_context,
)

pytestmark = pytest.mark.integration

API_KEY = "5f1e0c9a7b3d4e2f8a6b0c1d2e3f4a5b"
APP_KEY = "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b"
SITE = "datadoghq.eu"
HOST = f"api.{SITE}"


def dd_config(iid: str = "dd-1", tenant: str = "tenant-a", **settings: Any) -> dict[str, Any]:
    return {
        "integration_id": iid,
        "tenant_id": tenant,
        "type": "datadog",
        "name": "Datadog incidents",
        "settings": {
            "webhook_url": f"https://{HOST}/api/v2/incidents",
            "application_key": APP_KEY,
            "api_key": API_KEY,
            **settings,
        },
    }


def integration_of(**settings: Any) -> tuple[IntegrationConfig, DatadogSettings]:
    integration, parsed = validate_integration(dd_config(**settings))
    assert isinstance(parsed, DatadogSettings)
    return integration, parsed


def delivery_for(alert: dict[str, Any], **settings: Any) -> tuple[Delivery, DatadogSettings]:
    integration, parsed = integration_of(**settings)
    return delivery_of(Alert.model_validate(alert), integration), parsed


def assert_clean(error: DeliveryError) -> None:
    for secret in (API_KEY, APP_KEY):
        assert secret not in error.message and secret not in str(error)


def make_sink(fake: FakeDatadog, host: str = HOST) -> DatadogSink:
    return DatadogSink(sink_context(f"{host}={fake.url}"))


@pytest.fixture
def datadog() -> Iterator[FakeDatadog]:
    with FakeDatadog(API_KEY, APP_KEY) as fake:
        yield fake


@pytest.fixture
async def sink(datadog: FakeDatadog) -> AsyncIterator[DatadogSink]:
    s = make_sink(datadog)
    yield s
    await s.aclose()


def cell_of(request: Any) -> str:
    cells = request.json()["data"]["attributes"]["initial_cells"]
    assert len(cells) == 1 and cells[0]["cell_type"] == "markdown"
    return str(cells[0]["content"]["content"])


# -- the request -----------------------------------------------------------------------


async def test_creates_one_incident_with_the_exact_request(
    datadog: FakeDatadog, sink: DatadogSink
) -> None:
    delivery, settings = delivery_for(make_alert(2, alert_id="dd-exact"))  # high risk
    assert await sink.send(delivery, settings) == 201

    marker = dedup_marker(delivery.idempotency_key)
    search, create = datadog.received()
    assert (search.method, search.path) == ("GET", "/api/v2/incidents/search")
    assert search.query["query"] == [marker]
    assert (create.method, create.path) == ("POST", "/api/v2/incidents")
    for request in (search, create):
        assert request.headers["DD-API-KEY"] == API_KEY
        assert request.headers["DD-APPLICATION-KEY"] == APP_KEY
        assert request.meant_for == HOST  # the configured site, not datadoghq.com
    assert create.headers["Content-Type"] == "application/json"

    body = create.json()
    assert body["data"]["type"] == "incidents"
    attributes = body["data"]["attributes"]
    assert set(attributes) == {"title", "customer_impacted", "fields", "initial_cells"}
    assert attributes["title"] == f"[High risk] New script detected #2 [{marker}]"
    assert attributes["customer_impacted"] is False
    assert attributes["fields"] == {"severity": {"type": "dropdown", "value": "SEV-2"}}
    cell = cell_of(create)
    for text in (
        "[Open this alert in the Code Defender console](https://console.example.com/alerts/2)",
        "- **Title:** New script detected #2",
        "- **Risk level:** high",
        "- **Event type:** client\\_side\\_risk",
        "- **Domain:** `shop.example.com`",
        "- **Page URL:** `https://shop.example.com/checkout`",
        "- **Script URL:** `https://cdn.tracker.example/x.js`",
        "- **Detected at:** 2026-11-20T10:00:00+00:00",
        "- **Console:** `https://console.example.com/alerts/2`",
        "A new third-party script started reading payment form fields.",
        "```text\npci_scope: in\nscript_hash: abc123\n```",
        delivery.idempotency_key,
    ):
        assert text in cell, text
    (incident,) = datadog.created()
    assert incident["meant_for"] == HOST


@pytest.mark.parametrize(
    ("n", "severity"), [(0, "SEV-4"), (1, "SEV-3"), (2, "SEV-2"), (3, "SEV-1")]
)
async def test_severity_follows_risk(
    datadog: FakeDatadog, sink: DatadogSink, n: int, severity: str
) -> None:
    delivery, settings = delivery_for(make_alert(n))
    assert await sink.send(delivery, settings) == 201
    fields = datadog.received("POST")[0].json()["data"]["attributes"]["fields"]
    assert fields["severity"] == {"type": "dropdown", "value": severity}
    assert SEVERITY_BY_RISK[delivery.alert.risk_level] == severity


async def test_base_url_config_goes_to_the_configured_sites_incidents_api() -> None:
    with FakeDatadog(API_KEY, APP_KEY) as fake:
        sink = make_sink(fake, "api.us5.datadoghq.com")
        delivery, settings = delivery_for(
            make_alert(1), webhook_url="https://api.us5.datadoghq.com"
        )
        assert settings.webhook_url == "https://api.us5.datadoghq.com/api/v2/incidents"
        assert await sink.send(delivery, settings) == 201
        await sink.aclose()
    assert fake.received("POST")[0].path == "/api/v2/incidents"
    assert fake.received("POST")[0].meant_for == "api.us5.datadoghq.com"


async def test_limits_are_kept_and_markdown_stays_valid(
    datadog: FakeDatadog, sink: DatadogSink
) -> None:
    alert = make_alert(
        3,
        alert_id="dd-big",
        title="Very long title " * 40,
        description="# heading? " + "y" * 60_000,
        details={f"key{i}": "``` " + "z" * 900 for i in range(30)},
    )
    delivery, settings = delivery_for(alert)
    assert await sink.send(delivery, settings) == 201
    request = datadog.received("POST")[0]
    title = request.json()["data"]["attributes"]["title"]
    marker = dedup_marker(delivery.idempotency_key)
    assert len(title) <= TITLE_MAX and title.endswith(f"… [{marker}]")
    cell = cell_of(request)
    assert MARKDOWN_MAX - 200 < len(cell) <= MARKDOWN_MAX
    assert "\\# heading?" in cell  # a line cannot become a heading
    assert "truncated: the console has the full alert" in cell
    fences = [line for line in cell.splitlines() if line.startswith("````")]
    assert fences == ["````text", "````"]  # longer than the ``` in the details, and closed
    assert cell.endswith(f"Idempotency key: {delivery.idempotency_key}_")


async def test_hostile_values_stay_text(datadog: FakeDatadog, sink: DatadogSink) -> None:
    alert = make_alert(
        2,
        title="[click me](https://evil.example) <img src=x> **now**",
        script_url="https://evil.example/`x`.js",
        console_url="https://console.example.com/a)[x](https://evil.example",
        description="1. step\n> quote\n---",
    )
    delivery, settings = delivery_for(alert)
    assert await sink.send(delivery, settings) == 201
    cell = cell_of(datadog.received("POST")[0])
    assert "\\[click me\\](https://evil.example) \\<img src=x\\> \\*\\*now\\*\\*" in cell
    assert "``https://evil.example/`x`.js``" in cell
    assert "[Open this alert" not in cell  # unsafe console URL: shown, never linked
    assert "1\\. step\n\\> quote\n\\---" in cell


# -- the fake is as strict as Datadog (so a passing sink test means something) ----------


@pytest.mark.parametrize(
    "attributes",
    [
        {"customer_impacted": False},  # no title
        {"title": "t"},  # no customer_impacted
        {"title": "t", "customer_impacted": True},  # impact without scope
        {
            "title": "t",
            "customer_impacted": False,
            "fields": {"severity": {"type": "dropdown", "value": "SEV-9"}},
        },
        {"title": "t", "customer_impacted": False, "fields": {"severity": "SEV-1"}},
        {
            "title": "t",
            "customer_impacted": False,
            "initial_cells": [{"cell_type": "text", "content": {"content": "x"}}],
        },
        {
            "title": "t",
            "customer_impacted": False,
            "initial_cells": [{"cell_type": "markdown", "content": "x"}],
        },
        {"title": "t", "customer_impacted": False, "severity": "SEV-1"},  # not an attribute
    ],
)
def test_fake_refuses_what_datadog_refuses(
    datadog: FakeDatadog, attributes: dict[str, Any]
) -> None:
    response = httpx.post(
        f"{datadog.url}/api/v2/incidents",
        json={"data": {"type": "incidents", "attributes": attributes}},
        headers={"DD-API-KEY": API_KEY, "DD-APPLICATION-KEY": APP_KEY},
    )
    assert response.status_code == 400 and response.json()["errors"]


def test_fake_checks_keys_and_type(datadog: FakeDatadog) -> None:
    keys = {"DD-API-KEY": API_KEY, "DD-APPLICATION-KEY": APP_KEY}
    body = {"data": {"type": "incident", "attributes": {"title": "t", "customer_impacted": False}}}
    assert httpx.post(f"{datadog.url}/api/v2/incidents", json=body, headers=keys).status_code == 400
    assert httpx.get(f"{datadog.url}/api/v2/validate_keys", headers=keys).json() == {"status": "ok"}
    no_app = {"DD-API-KEY": API_KEY}
    assert httpx.get(f"{datadog.url}/api/v2/validate_keys", headers=no_app).status_code == 403
    assert httpx.get(f"{datadog.url}/api/v2/validate_keys").status_code == 401
    assert httpx.get(f"{datadog.url}/api/v1/validate", headers=no_app).json() == {"valid": True}


# -- idempotency -----------------------------------------------------------------------


async def test_redelivery_creates_one_incident(datadog: FakeDatadog, sink: DatadogSink) -> None:
    delivery, settings = delivery_for(make_alert(1, alert_id="dd-twice"))
    assert await sink.send(delivery, settings) == 201
    assert await sink.send(delivery, settings) is None  # remembered in this process
    other = make_sink(datadog)  # another worker, or after a restart
    try:
        assert await other.send(delivery, settings) == 200  # found by its title marker
    finally:
        await other.aclose()
    assert len(datadog.created()) == 1


async def test_concurrent_duplicates_create_one_incident(
    datadog: FakeDatadog, sink: DatadogSink
) -> None:
    delivery, settings = delivery_for(make_alert(1, alert_id="dd-race"))
    results = await asyncio.gather(*(sink.send(delivery, settings) for _ in range(4)))
    assert sorted(results, key=str) == [201, None, None, None]
    assert len(datadog.created()) == 1


async def test_a_loose_search_hit_never_suppresses_a_new_alert(
    datadog: FakeDatadog, sink: DatadogSink
) -> None:
    first, settings = delivery_for(make_alert(1, alert_id="dd-a"))
    second, _ = delivery_for(make_alert(1, alert_id="dd-b"))
    assert await sink.send(first, settings) == 201
    marker = dedup_marker(second.idempotency_key)
    # Datadog answers with an incident that does not carry the marker in its title
    datadog.script(
        "/api/v2/incidents/search",
        Answer(
            200,
            {
                "data": {
                    "type": "incidents_search_results",
                    "attributes": {
                        "incidents": [
                            {
                                "data": {
                                    "id": "x",
                                    "type": "incidents",
                                    "attributes": {"title": marker[:-1]},
                                }
                            }
                        ],
                        "total": 1,
                    },
                }
            },
        ),
    )
    assert await sink.send(second, settings) == 201
    assert len(datadog.created()) == 2


async def test_without_incident_read_it_delivers_and_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The documented limit: no search permission, no duplicate protection."""
    with FakeDatadog(API_KEY, APP_KEY, permissions=("incident_write",)) as fake:
        delivery, settings = delivery_for(make_alert(1, alert_id="dd-noread"))
        first, second = make_sink(fake), make_sink(fake)
        with caplog.at_level(logging.WARNING, logger="sinks.datadog.sink"):
            assert await first.send(delivery, settings) == 201
            assert await second.send(delivery, settings) == 201  # a duplicate, as documented
            other, _ = delivery_for(make_alert(1, alert_id="dd-noread-2"))
            assert await first.send(other, settings) == 201
        await first.aclose()
        await second.aclose()
    assert len(fake.created()) == 3
    assert len(fake.received("GET", "/api/v2/incidents/search")) == 2  # then skipped a while
    warnings = [r.getMessage() for r in caplog.records if "without duplicate" in r.getMessage()]
    assert warnings and "incident_read" in warnings[0]
    assert all(API_KEY not in w and APP_KEY not in w for w in warnings)


# -- errors ----------------------------------------------------------------------------


async def expect(
    kind: type[DeliveryError], sink: DatadogSink, delivery: Delivery, settings: DatadogSettings
) -> DeliveryError:
    with pytest.raises(kind) as info:
        await sink.send(delivery, settings)
    assert_clean(info.value)
    return info.value


async def test_400_shows_datadogs_errors(datadog: FakeDatadog, sink: DatadogSink) -> None:
    datadog.script("/api/v2/incidents", Answer(400, {"errors": ["fields.severity: invalid"]}))
    delivery, settings = delivery_for(make_alert(1))
    error = await expect(PermanentError, sink, delivery, settings)
    assert error.status == 400
    assert "Datadog refused to create the incident (400)" in error.message
    assert "fields.severity: invalid" in error.message


async def test_bad_api_key_is_a_401(datadog: FakeDatadog, sink: DatadogSink) -> None:
    delivery, settings = delivery_for(make_alert(1), api_key="f" * 32)
    error = await expect(PermanentError, sink, delivery, settings)
    assert error.status == 401 and "check the API key" in error.message
    assert "f" * 32 not in error.message and datadog.created() == []


async def test_bad_application_key_is_a_403(datadog: FakeDatadog, sink: DatadogSink) -> None:
    delivery, settings = delivery_for(make_alert(1), application_key="e" * 40)
    error = await expect(PermanentError, sink, delivery, settings)
    assert error.status == 403 and "check the application key" in error.message
    assert "e" * 40 not in error.message


async def test_missing_incident_write_is_a_403_naming_it() -> None:
    with FakeDatadog(API_KEY, APP_KEY, permissions=("incident_read",)) as fake:
        sink = make_sink(fake)
        delivery, settings = delivery_for(make_alert(1))
        error = await expect(PermanentError, sink, delivery, settings)
        await sink.aclose()
    assert error.status == 403 and "incident_write" in error.message


async def test_404_points_at_the_site(datadog: FakeDatadog, sink: DatadogSink) -> None:
    datadog.script("/api/v2/incidents", Answer(404, {"errors": ["Not found"]}))
    delivery, settings = delivery_for(make_alert(1))
    error = await expect(PermanentError, sink, delivery, settings)
    assert "no Incidents API at api.datadoghq.eu" in error.message


@pytest.mark.parametrize(
    ("answer", "wait"),
    [
        (
            Answer(
                429,
                {"errors": ["Rate limit exceeded"]},
                {
                    "X-RateLimit-Limit": "20",
                    "X-RateLimit-Period": "60",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": "12",
                },
            ),
            12.0,
        ),
        (Answer(429, {"errors": ["Rate limit exceeded"]}, {"Retry-After": "5"}), 5.0),
        (Answer(503, {"errors": ["Service unavailable"]}), None),
        (Answer(500, None), None),
    ],
)
async def test_rate_limits_and_outages_are_retryable(
    datadog: FakeDatadog, sink: DatadogSink, answer: Answer, wait: float | None
) -> None:
    datadog.script("/api/v2/incidents", answer)
    delivery, settings = delivery_for(make_alert(1))
    error = await expect(RetryableError, sink, delivery, settings)
    assert error.status == answer.status and error.retry_after == wait
    assert await sink.send(delivery, settings) == 201  # the later retry
    assert len(datadog.created()) == 1


async def test_search_rate_limit_is_retryable_not_a_blind_create(
    datadog: FakeDatadog, sink: DatadogSink
) -> None:
    datadog.script("/api/v2/incidents/search", Answer(429, None, {"X-RateLimit-Reset": "9"}))
    delivery, settings = delivery_for(make_alert(1))
    error = await expect(RetryableError, sink, delivery, settings)
    assert error.retry_after == 9.0 and datadog.received("POST") == []


async def test_unreachable_datadog_is_retryable() -> None:
    with FakeDatadog(API_KEY, APP_KEY) as fake:
        url = fake.url
    sink = DatadogSink(sink_context(f"{HOST}={url}"))
    delivery, settings = delivery_for(make_alert(1))
    await expect(RetryableError, sink, delivery, settings)
    await sink.aclose()


# -- Test connection -------------------------------------------------------------------


async def test_check_validates_both_keys_and_reports_dedup(
    datadog: FakeDatadog, sink: DatadogSink
) -> None:
    integration, settings = integration_of()
    detail = await sink.check(integration, settings)
    assert "keys valid on datadoghq.eu" in detail and "duplicate protection on" in detail
    assert datadog.received()[0].path == "/api/v2/validate_keys"
    assert datadog.created() == []


async def test_check_without_incident_read_says_dedup_is_off() -> None:
    with FakeDatadog(API_KEY, APP_KEY, permissions=("incident_write",)) as fake:
        sink = make_sink(fake)
        integration, settings = integration_of()
        detail = await sink.check(integration, settings)
        await sink.aclose()
    assert "duplicate protection OFF" in detail and "incident_read" in detail
    assert API_KEY not in detail and APP_KEY not in detail


@pytest.mark.parametrize(
    ("settings", "status", "expected"),
    [
        ({"api_key": "a" * 32}, 401, "check the API key"),
        ({"application_key": "b" * 40}, 403, "check the application key"),
    ],
)
async def test_check_failures(
    datadog: FakeDatadog, sink: DatadogSink, settings: dict[str, Any], status: int, expected: str
) -> None:
    integration, parsed = integration_of(**settings)
    with pytest.raises(PermanentError) as info:
        await sink.check(integration, parsed)
    assert info.value.status == status and expected in info.value.message
    for secret in (*settings.values(), API_KEY, APP_KEY):
        assert secret not in info.value.message


# -- end to end on the real broker ------------------------------------------------------


def test_worker_delivers_to_datadog_once_per_alert(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    topics = TopicSet()
    with FakeDatadog(API_KEY, APP_KEY) as fake:
        env = {"ALERTRELAY_HOST_OVERRIDES": f"{HOST}={fake.url}"}
        with WorkerProcess(kafka_bootstrap, topics, tmp_path_factory.mktemp("dd"), env) as w:
            tenant = "t-datadog"
            put_configs(kafka_bootstrap, topics, w, dd_config("dd-e2e", tenant))
            alerts = [make_alert(i, tenant, alert_id=f"dd-e2e-{i}") for i in range(4)]
            produce(kafka_bootstrap, topics.alerts, [(tenant, a) for a in alerts])
            incidents = fake.wait_for_incidents(4)
            produce(kafka_bootstrap, topics.alerts, [(tenant, alerts[1])])  # a replay
            statuses = consume(
                kafka_bootstrap,
                topics.status,
                min_count=2,
                until=lambda rs: sum(r["alert_id"] == "dd-e2e-1" for r in rs) >= 2,
            )
            time.sleep(0.5)
            log = w.log_tail(400)
    assert len(fake.created()) == 4
    mine = [r for r in statuses if r["alert_id"] == "dd-e2e-1"]
    assert [r["outcome"] for r in mine] == ["delivered", "delivered"]
    assert [r["http_status"] for r in mine] == [201, None]  # the replay created nothing
    severities = sorted(i["attributes"]["severity"] for i in incidents)
    assert severities == ["SEV-1", "SEV-2", "SEV-3", "SEV-4"]
    assert {i["meant_for"] for i in incidents} == {HOST}
    assert API_KEY not in log and APP_KEY not in log
