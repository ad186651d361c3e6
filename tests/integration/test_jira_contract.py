"""The Jira sink against a local Jira Cloud that checks requests as Jira does.

Covers the exact request, limits, every error class, idempotent re-delivery, Test
connection, secrets in messages, and one run through a real worker on the real broker.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from schemas.models import Alert, Delivery, IntegrationConfig, idempotency_key
from sinks.base import BatchLimits
from sinks.errors import DeliveryError, PermanentError, RetryableError
from sinks.http import EgressGuard, HostOverrides
from sinks.jira.config import JiraSettings
from sinks.jira.sink import (
    DESCRIPTION_MAX,
    PRIORITY_BY_RISK,
    SUMMARY_MAX,
    JiraSink,
    idempotency_label,
)
from sinks.registry import SinkContext, validate_integration
from tests.fakes.jira import Answer, FakeJira, Project
from tests.harness import (
    TopicSet,
    WorkerProcess,
    consume,
    delivery_of,
    make_alert,
    produce,
    put_configs,
    sink_context,
    utf16_units,
)

pytestmark = pytest.mark.integration

EMAIL = "reporter@example.com"
TOKEN = "ATATT3xFfGF0-contract-secret-token-0123456789"
CREDENTIAL = base64.b64encode(f"{EMAIL}:{TOKEN}".encode()).decode()
SITE = "acme.atlassian.net"


def jira_config(iid: str = "jira-1", tenant: str = "tenant-a", **settings: Any) -> dict[str, Any]:
    return {
        "integration_id": iid,
        "tenant_id": tenant,
        "type": "jira",
        "name": "SOC Jira",
        "settings": {
            "webhook_url": f"https://{SITE}/rest/api/2/issue/",
            "project_id": "10000",
            "api_token": TOKEN,
            "reporter_email": EMAIL,
            **settings,
        },
    }


def delivery_for(alert: dict[str, Any], **settings: Any) -> tuple[Delivery, JiraSettings]:
    integration, parsed = integration_of(**settings)
    return delivery_of(Alert.model_validate(alert), integration), parsed


def integration_of(**settings: Any) -> tuple[IntegrationConfig, JiraSettings]:
    integration, parsed = validate_integration(jira_config(**settings))
    assert isinstance(parsed, JiraSettings)
    return integration, parsed


def assert_clean(error: DeliveryError) -> None:
    assert TOKEN not in error.message and CREDENTIAL not in error.message
    assert TOKEN not in str(error) and CREDENTIAL not in str(error)


@pytest.fixture
def jira() -> Iterator[FakeJira]:
    with FakeJira(EMAIL, TOKEN) as fake:
        yield fake


def make_sink(fake: FakeJira) -> JiraSink:
    return JiraSink(sink_context(f"*.atlassian.net={fake.url}"))


@pytest.fixture
async def sink(jira: FakeJira) -> AsyncIterator[JiraSink]:
    s = make_sink(jira)
    yield s
    await s.aclose()


# -- the request -----------------------------------------------------------------------


async def test_creates_one_issue_with_the_exact_request(jira: FakeJira, sink: JiraSink) -> None:
    alert = make_alert(2, alert_id="a-exact")  # high risk, client_side_risk
    delivery, settings = delivery_for(alert)
    assert await sink.send(delivery, settings) == 201

    label = idempotency_label(delivery.idempotency_key)
    assert label == "alertrelay-" + delivery.idempotency_key and " " not in label
    search, create = jira.received()
    assert (search.method, search.path) == ("GET", "/rest/api/2/search/jql")
    assert search.query["jql"] == [f'project = 10000 AND labels = "{label}"']
    assert (create.method, create.path) == ("POST", "/rest/api/2/issue")
    for request in (search, create):
        assert request.headers["Authorization"] == f"Basic {CREDENTIAL}"
        assert request.headers["X-Forwarded-Host"] == SITE  # the configured site
    assert create.headers["Content-Type"] == "application/json"

    fields = create.json()["fields"]
    assert set(fields) == {"project", "summary", "issuetype", "description", "labels"}
    assert fields["project"] == {"id": "10000"}
    assert fields["summary"] == "[High risk] New script detected #2"
    assert fields["issuetype"] == {"name": "Task"}
    assert fields["labels"] == [label, "alertrelay", "risk-high", "client_side_risk"]
    description = fields["description"]
    assert "[Open this alert in the console|https://console.example.com/alerts/2]" in description
    for text in (
        "Title:       New script detected #2",
        "Risk level:  high",
        "Event type:  client_side_risk",
        "Domain:      shop.example.com",
        "Page URL:    https://shop.example.com/checkout",
        "Script URL:  https://cdn.tracker.example/x.js",
        "Detected at: 2026-11-20T10:00:00+00:00",
        "Console:     https://console.example.com/alerts/2",
        "Alert ID:    a-exact",
        "A new third-party script started reading payment form fields.",
        "  pci_scope: in",
        "  script_hash: abc123",
        f"Deduplication label: {label}",
    ):
        assert text in description, text
    assert description.count("{noformat}") == 2

    (issue,) = jira.created()
    assert issue.key == "SEC-1"


@pytest.mark.parametrize(("n", "risk"), [(0, "low"), (1, "medium"), (2, "high"), (3, "critical")])
async def test_priority_follows_risk_when_enabled(
    jira: FakeJira, sink: JiraSink, n: int, risk: str
) -> None:
    delivery, settings = delivery_for(make_alert(n), priority_from_risk=True, issue_type="Bug")
    assert await sink.send(delivery, settings) == 201
    fields = jira.received("POST")[0].json()["fields"]
    expected = {"low": "Low", "medium": "Medium", "high": "High", "critical": "Highest"}[risk]
    assert fields["priority"] == {"name": expected} == {"name": PRIORITY_BY_RISK[risk]}
    assert fields["issuetype"] == {"name": "Bug"}


async def test_numeric_issue_type_is_sent_as_id(jira: FakeJira, sink: JiraSink) -> None:
    delivery, settings = delivery_for(make_alert(1), issue_type="10002")  # the fake's "Bug"
    assert await sink.send(delivery, settings) == 201
    assert jira.received("POST")[0].json()["fields"]["issuetype"] == {"id": "10002"}


async def test_limits_are_kept_and_markup_stays_valid(jira: FakeJira, sink: JiraSink) -> None:
    title = "Script 😈 " * 60 + "\nsecond line"
    huge = "x" * 60_000
    details = {f"k{i}": "v" * 500 for i in range(40)}
    alert = make_alert(3, alert_id="a-big", title=title, description=huge, details=details)
    delivery, settings = delivery_for(alert)
    assert await sink.send(delivery, settings) == 201  # the fake enforces Jira's limits

    fields = jira.received("POST")[0].json()["fields"]
    assert utf16_units(fields["summary"]) <= SUMMARY_MAX and fields["summary"].endswith("…")
    assert "\n" not in fields["summary"]
    description = fields["description"]
    assert DESCRIPTION_MAX - 100 < utf16_units(description) <= DESCRIPTION_MAX
    assert "[truncated: the console has the full alert]" in description
    assert description.count("{noformat}") == 2
    assert description.endswith(idempotency_label(delivery.idempotency_key))


async def test_hostile_values_cannot_inject_markup(jira: FakeJira, sink: JiraSink) -> None:
    alert = make_alert(
        2,
        title="Evil {noformat} [click|https://evil.example] *bold*",
        script_url="https://evil.example/x.js?{noformat}",
        console_url="https://console.example.com/a]|[x",
    )
    delivery, settings = delivery_for(alert)
    assert await sink.send(delivery, settings) == 201
    description = jira.received("POST")[0].json()["fields"]["description"]
    assert description.count("{noformat}") == 2  # the values' ones were neutralised
    assert "[Open this alert in the console|" not in description  # unsafe URL: no link
    head, block, tail = description.split("{noformat}")
    assert "evil.example" not in head + tail and "[click|https://evil.example]" in block


# -- the fake is as strict as Jira (so a passing sink test means something) -------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"summary": "x" * 256}, "summary"),
        ({"summary": "😈" * 128}, "summary"),  # 256 UTF-16 units
        ({"summary": "two\nlines"}, "summary"),
        ({"labels": ["has space"]}, "labels"),
        ({"issuetype": {"name": "Epic"}}, "issuetype"),
        ({"priority": {"name": "Urgent"}}, "priority"),
        ({"description": "d" * 32_768}, "description"),
        ({"assignee": {"id": "1"}}, "assignee"),
    ],
)
def test_fake_refuses_what_jira_refuses(jira: FakeJira, change: dict[str, Any], field: str) -> None:
    fields = {
        "project": {"id": "10000"},
        "summary": "ok",
        "issuetype": {"name": "Task"},
        "labels": ["alertrelay-x"],
        **change,
    }
    response = httpx.post(
        f"{jira.url}/rest/api/2/issue",
        json={"fields": fields},
        headers={"Authorization": f"Basic {CREDENTIAL}"},
    )
    assert response.status_code == 400 and field in response.json()["errors"]


def test_fake_auth_removed_search_and_v3(jira: FakeJira) -> None:
    auth = {"Authorization": f"Basic {CREDENTIAL}"}
    assert httpx.get(f"{jira.url}/rest/api/2/myself").status_code == 401
    wrong = base64.b64encode(f"{EMAIL}:nope".encode()).decode()
    assert (
        httpx.get(
            f"{jira.url}/rest/api/2/myself", headers={"Authorization": f"Basic {wrong}"}
        ).status_code
        == 401
    )
    old = httpx.get(f"{jira.url}/rest/api/2/search", params={"jql": "x"}, headers=auth)
    assert old.status_code == 410 and "CHANGE-2046" in old.json()["errorMessages"][0]
    assert httpx.post(f"{jira.url}/rest/api/3/issue", json={}, headers=auth).status_code == 404
    assert (
        httpx.post(f"{jira.url}/rest/api/2/issue", content=b"{}", headers=auth).status_code == 415
    )


# -- idempotency -----------------------------------------------------------------------


async def test_redelivery_creates_one_issue(jira: FakeJira, sink: JiraSink) -> None:
    delivery, settings = delivery_for(make_alert(1, alert_id="a-twice"))
    assert await sink.send(delivery, settings) == 201
    assert await sink.send(delivery, settings) is None  # remembered: no request at all
    other = make_sink(jira)  # another worker, or this one after a restart
    try:
        assert await other.send(delivery, settings) == 200  # found by its label
        replay = delivery.model_copy(update={"attempt": 0, "source_offset": 99})
        assert await other.send(replay, settings) is None
    finally:
        await other.aclose()
    assert len(jira.created()) == 1
    assert len(jira.received("POST")) == 1


async def test_concurrent_duplicates_create_one_issue(jira: FakeJira, sink: JiraSink) -> None:
    delivery, settings = delivery_for(make_alert(1, alert_id="a-race"))
    results = await asyncio.gather(*(sink.send(delivery, settings) for _ in range(4)))
    assert sorted(results, key=str) == [201, None, None, None]
    assert len(jira.created()) == 1


async def test_process_memory_covers_jira_search_lag(jira: FakeJira, sink: JiraSink) -> None:
    jira.search_lag = 60.0  # Jira has not indexed the new issue yet
    delivery, settings = delivery_for(make_alert(1, alert_id="a-lag"))
    assert await sink.send(delivery, settings) == 201
    assert await sink.send(delivery, settings) is None
    assert len(jira.created()) == 1


async def test_other_alerts_and_integrations_get_their_own_issue(
    jira: FakeJira, sink: JiraSink
) -> None:
    first, settings = delivery_for(make_alert(1, alert_id="a-1"))
    second, _ = delivery_for(make_alert(1, alert_id="a-2"))
    third = first.model_copy(
        update={"idempotency_key": idempotency_key("a-1", "another-integration")}
    )
    for d in (first, second, third):
        assert await sink.send(d, settings) == 201
    assert len(jira.created()) == 3


# -- errors ----------------------------------------------------------------------------


async def expect_permanent(sink: JiraSink, delivery: Delivery, settings: JiraSettings) -> str:
    with pytest.raises(PermanentError) as info:
        await sink.send(delivery, settings)
    assert_clean(info.value)
    return info.value.message


async def test_missing_labels_field_names_the_spec_prerequisite() -> None:
    project = Project(screen=("summary", "issuetype", "project", "description", "reporter"))
    with FakeJira(EMAIL, TOKEN, projects=[project]) as fake:
        sink = make_sink(fake)
        delivery, settings = delivery_for(make_alert(1))
        message = await expect_permanent(sink, delivery, settings)
        await sink.aclose()
    assert "Labels field must exist in the project (spec prerequisite)" in message
    assert "10000" in message and fake.created() == []


async def test_unknown_issue_type(jira: FakeJira, sink: JiraSink) -> None:
    delivery, settings = delivery_for(make_alert(1), issue_type="Epic")
    message = await expect_permanent(sink, delivery, settings)
    assert "issue type Epic does not exist in project 10000" in message


async def test_priority_field_missing_from_the_screen() -> None:
    project = Project(screen=("summary", "issuetype", "project", "description", "labels"))
    with FakeJira(EMAIL, TOKEN, projects=[project]) as fake:
        sink = make_sink(fake)
        delivery, settings = delivery_for(make_alert(3), priority_from_risk=True)
        message = await expect_permanent(sink, delivery, settings)
        await sink.aclose()
    assert "Priority field is not on the create screen of project 10000" in message
    assert "priority_from_risk" in message


async def test_priority_name_not_in_the_scheme() -> None:
    with FakeJira(EMAIL, TOKEN, priorities=("P1", "P2", "P3")) as fake:
        sink = make_sink(fake)
        delivery, settings = delivery_for(make_alert(3), priority_from_risk=True)
        message = await expect_permanent(sink, delivery, settings)
        await sink.aclose()
    assert "priority scheme" in message


async def test_required_custom_field_is_explained() -> None:
    with FakeJira(EMAIL, TOKEN, projects=[Project(required_custom=("customfield_10010",))]) as fk:
        sink = make_sink(fk)
        delivery, settings = delivery_for(make_alert(1))
        message = await expect_permanent(sink, delivery, settings)
        await sink.aclose()
    assert "customfield_10010" in message and "make it optional" in message


async def test_bad_token_is_a_401_with_advice(jira: FakeJira, sink: JiraSink) -> None:
    delivery, settings = delivery_for(make_alert(1), api_token="ATATT3xWrongToken-9876543210")
    with pytest.raises(PermanentError) as info:
        await sink.send(delivery, settings)
    assert info.value.status == 401
    assert "check the API token and reporter email" in info.value.message
    assert "scoped tokens are not supported" in info.value.message
    assert "ATATT3xWrongToken-9876543210" not in info.value.message
    assert jira.received("POST") == []


async def test_forbidden_project_is_a_403() -> None:
    with FakeJira(EMAIL, TOKEN, projects=[Project(can_create=False)]) as fake:
        sink = make_sink(fake)
        delivery, settings = delivery_for(make_alert(1))
        with pytest.raises(PermanentError) as info:
            await sink.send(delivery, settings)
        await sink.aclose()
    assert info.value.status == 403
    assert "lacks permission in project 10000" in info.value.message
    assert_clean(info.value)


async def test_captcha_403_is_explained(jira: FakeJira, sink: JiraSink) -> None:
    jira.script(
        "/rest/api/2/search/jql",
        Answer(403, None, {"X-Seraph-LoginReason": "AUTHENTICATION_DENIED"}),
    )
    delivery, settings = delivery_for(make_alert(1))
    assert "CAPTCHA" in await expect_permanent(sink, delivery, settings)


async def test_unknown_project(jira: FakeJira, sink: JiraSink) -> None:
    delivery, settings = delivery_for(make_alert(1), project_id="99999")
    message = await expect_permanent(sink, delivery, settings)
    assert "project 99999 does not exist" in message


async def test_404_names_the_project_and_site(jira: FakeJira, sink: JiraSink) -> None:
    jira.script("/rest/api/2/issue", Answer(404, {"errorMessages": ["Not found"], "errors": {}}))
    delivery, settings = delivery_for(make_alert(1))
    message = await expect_permanent(sink, delivery, settings)
    assert "404" in message and "project 10000" in message and SITE in message


@pytest.mark.parametrize(
    ("answer", "wait"),
    [
        (Answer(429, {"errorMessages": ["Rate limit exceeded."]}, {"Retry-After": "7"}), 7.0),
        (Answer(429, None, {"X-RateLimit-Reset": "12"}), 12.0),
        (Answer(503, {"errorMessages": ["busy"]}, {"Retry-After": "3"}), 3.0),
        (Answer(500, {"errorMessages": ["Internal server error"]}), None),
        (Answer(502, None), None),
    ],
)
async def test_rate_limits_and_outages_are_retryable(
    jira: FakeJira, sink: JiraSink, answer: Answer, wait: float | None
) -> None:
    jira.script("/rest/api/2/issue", answer)
    delivery, settings = delivery_for(make_alert(1))
    with pytest.raises(RetryableError) as info:
        await sink.send(delivery, settings)
    assert info.value.status == answer.status
    assert info.value.retry_after == wait
    assert_clean(info.value)
    # the retry the shared policy makes later: searches again, then creates once
    assert await sink.send(delivery, settings) == 201
    assert len(jira.created()) == 1


async def test_search_rate_limit_is_retryable(jira: FakeJira, sink: JiraSink) -> None:
    jira.script("/rest/api/2/search/jql", Answer(429, None, {"Retry-After": "30"}))
    delivery, settings = delivery_for(make_alert(1))
    with pytest.raises(RetryableError) as info:
        await sink.send(delivery, settings)
    assert info.value.retry_after == 30.0 and jira.received("POST") == []


async def test_unreachable_jira_is_retryable(sink: JiraSink) -> None:
    with FakeJira(EMAIL, TOKEN) as fake:
        url = fake.url
    dead = JiraSink(sink_context(f"*.atlassian.net={url}"))
    delivery, settings = delivery_for(make_alert(1))
    with pytest.raises(RetryableError) as info:
        await dead.send(delivery, settings)
    await dead.aclose()
    assert_clean(info.value)


async def test_egress_guard_applies(jira: FakeJira) -> None:
    guarded = JiraSink(
        SinkContext(
            HostOverrides.parse(f"*.atlassian.net={jira.url}"), EgressGuard(), BatchLimits()
        )
    )
    delivery, settings = delivery_for(make_alert(1))
    with pytest.raises(DeliveryError):
        await guarded.send(delivery, settings)
    await guarded.aclose()
    assert jira.received() == []


# -- Test connection -------------------------------------------------------------------


async def test_check_succeeds_without_creating(jira: FakeJira, sink: JiraSink) -> None:
    integration, settings = integration_of(issue_type="Bug", priority_from_risk=True)
    detail = await sink.check(integration, settings)
    assert "Security Bot" in detail and "Bug" in detail and "Priority" in detail
    assert jira.created() == [] and jira.received("POST") == []
    paths = [r.path for r in jira.received()]
    assert paths[0] == "/rest/api/2/myself"
    assert "/rest/api/2/issue/createmeta/10000/issuetypes" in paths
    assert "/rest/api/2/issue/createmeta/10000/issuetypes/10002" in paths


@pytest.mark.parametrize(
    ("fake_kwargs", "settings", "expected"),
    [
        ({}, {"api_token": "ATATT3xWrongToken-1111111111"}, "check the API token"),
        ({}, {"issue_type": "Epic"}, "issue type Epic does not exist in project 10000"),
        ({}, {"project_id": "424242"}, "project 424242 does not exist"),
        (
            {"projects": [Project(screen=("summary", "issuetype", "project", "description"))]},
            {},
            "Labels field must exist in the project (spec prerequisite)",
        ),
        (
            {"projects": [Project(screen=("summary", "issuetype", "project", "labels"))]},
            {"priority_from_risk": True},
            "Priority field is not on the create screen",
        ),
        ({"priorities": ("P1", "P2")}, {"priority_from_risk": True}, "priority scheme"),
        ({"projects": [Project(required_custom=("customfield_1",))]}, {}, "Custom customfield_1"),
        ({"projects": [Project(can_create=False)]}, {}, "lacks permission"),
    ],
)
async def test_check_failures_are_actionable(
    fake_kwargs: dict[str, Any], settings: dict[str, Any], expected: str
) -> None:
    with FakeJira(EMAIL, TOKEN, **fake_kwargs) as fake:
        sink = make_sink(fake)
        integration, parsed = integration_of(**settings)
        with pytest.raises(PermanentError) as info:
            await sink.check(integration, parsed)
        await sink.aclose()
    assert expected in info.value.message
    assert_clean(info.value)
    assert "ATATT3xWrongToken-1111111111" not in info.value.message
    assert fake.created() == []


# -- end to end on the real broker ------------------------------------------------------


def test_worker_delivers_to_jira_once_per_alert(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    topics = TopicSet()
    with FakeJira(EMAIL, TOKEN) as fake:
        env = {"ALERTRELAY_HOST_OVERRIDES": f"*.atlassian.net={fake.url}"}
        with WorkerProcess(kafka_bootstrap, topics, tmp_path_factory.mktemp("jira"), env) as w:
            tenant = "t-jira"
            config = jira_config("jira-e2e", tenant, priority_from_risk=True)
            put_configs(kafka_bootstrap, topics, w, config)
            alerts = [make_alert(i, tenant, alert_id=f"jira-e2e-{i}") for i in range(3)]
            produce(kafka_bootstrap, topics.alerts, [(tenant, a) for a in alerts])
            issues = fake.wait_for_issues(3)
            # the same alert again (a replay): this worker remembers it, creates nothing
            produce(kafka_bootstrap, topics.alerts, [(tenant, alerts[0])])
            statuses = consume(
                kafka_bootstrap,
                topics.status,
                min_count=2,
                until=lambda rs: sum(r["alert_id"] == "jira-e2e-0" for r in rs) >= 2,
            )
            time.sleep(0.5)
            log = w.log_tail(400)
    assert len(fake.created()) == 3
    mine = [r for r in statuses if r["alert_id"] == "jira-e2e-0"]
    assert [r["outcome"] for r in mine] == ["delivered", "delivered"]
    assert [r["http_status"] for r in mine] == [201, None]  # the replay created nothing
    summaries = sorted(i.fields["summary"] for i in issues)
    assert summaries == [
        "[High risk] New script detected #2",
        "[Low risk] New script detected #0",
        "[Medium risk] New script detected #1",
    ]
    assert {i.fields["priority"]["name"] for i in issues} == {"Low", "Medium", "High"}
    for request in fake.received():
        assert request.headers["Authorization"] == f"Basic {CREDENTIAL}"
        assert request.headers["X-Forwarded-Host"] == SITE
    assert TOKEN not in log and CREDENTIAL not in log
