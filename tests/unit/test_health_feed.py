"""The health feed: the reporter forwards only the status records that can change an
integration's health, and folding those gives the health that folding every record gave."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import orjson
import pytest

from schemas.models import DeliveryStatus, IntegrationConfig, Outcome
from sinks.base import Batch, BatchRecord
from streams.agents.health import REFRESH, HealthFeed, fold_status
from streams.delivery import StatusValues, batch_status_values
from streams.reporter import KafkaReporter, _spliced

TENANT, IID = "acme", "hook"


def wants(feed: HealthFeed, outcome: str, at: float, circuit: str | None = None) -> bool:
    return feed.wants(TENANT, IID, outcome, circuit, at)


def test_failures_are_always_forwarded() -> None:
    feed = HealthFeed()
    assert all(wants(feed, "retrying", 100.0 + i * 0.001) for i in range(5))
    assert wants(feed, "dead_lettered", 100.01)


def test_successes_are_forwarded_first_then_every_half_refresh() -> None:
    feed = HealthFeed()
    half = REFRESH / 2
    assert wants(feed, "delivered", 100.0)  # the first one this process sees
    assert not wants(feed, "delivered", 100.0)
    assert not wants(feed, "delivered", 100.0 + half - 0.01)
    assert wants(feed, "delivered", 100.0 + half)
    assert not wants(feed, "delivered", 100.0 + half + 1)
    assert wants(feed, "delivered", 100.0 + 2 * half + 0.5)


def test_the_first_success_after_a_failure_is_forwarded() -> None:
    feed = HealthFeed()
    assert wants(feed, "delivered", 100.0)
    assert wants(feed, "retrying", 100.1)
    assert wants(feed, "delivered", 100.2)  # resets consecutive failures
    assert not wants(feed, "delivered", 100.3)


def test_a_changed_circuit_is_forwarded_and_no_circuit_is_no_change() -> None:
    feed = HealthFeed()
    assert wants(feed, "delivered", 100.0, "closed")
    assert not wants(feed, "delivered", 100.1, "closed")
    assert not wants(feed, "delivered", 100.2, None)  # batch records carry no circuit
    assert wants(feed, "delivered", 100.3, "half_open")
    assert wants(feed, "delivered", 100.4, "closed")
    assert not wants(feed, "delivered", 100.5, "closed")


def test_integrations_and_tenants_are_apart() -> None:
    feed = HealthFeed()
    assert feed.wants("a", "x", "delivered", None, 100.0)
    assert feed.wants("a", "y", "delivered", None, 100.0)
    assert feed.wants("b", "x", "delivered", None, 100.0)
    assert not feed.wants("a", "x", "delivered", None, 100.1)


def test_a_clock_that_went_back_forwards_rather_than_stays_silent() -> None:
    feed = HealthFeed()
    assert wants(feed, "delivered", 1000.0)
    assert wants(feed, "delivered", 900.0)
    assert not wants(feed, "delivered", 900.5)


def test_the_memo_is_bounded_and_a_forgotten_integration_is_forwarded_again() -> None:
    feed = HealthFeed(capacity=3)
    for iid in ("a", "b", "c"):
        assert feed.wants(TENANT, iid, "delivered", None, 100.0)
    assert not feed.wants(TENANT, "a", "delivered", None, 100.1)  # a stays oldest forwarded
    assert feed.wants(TENANT, "d", "delivered", None, 100.2)  # drops a
    assert len(feed._last) == 3
    assert feed.wants(TENANT, "a", "delivered", None, 100.3)  # forgotten: forwarded (drops b)
    assert not feed.wants(TENANT, "c", "delivered", None, 100.4)
    assert not feed.wants(TENANT, "d", "delivered", None, 100.5)


def fold(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    entry: dict[str, Any] | None = None
    for record in records:
        entry = fold_status(entry, record) or entry
    return entry


def random_attempts(rng: random.Random, count: int) -> list[dict[str, Any]]:
    """One integration's attempts: bursts of successes, failure runs, circuit moves,
    gaps of various lengths; some records without a circuit (batch records)."""
    at, circuit, out = 1_000.0, "closed", []
    for _ in range(count):
        at += rng.choice([0.0, 0.001, 0.05, 0.4, 1.3, 2.4, 2.6, 4.9, 5.1, 9.0])
        roll = rng.random()
        if roll < 0.75:
            outcome, error, status = "delivered", None, 200
            if circuit != "closed" and rng.random() < 0.5:
                circuit = "closed"
        else:
            outcome = "retrying" if roll < 0.97 else "dead_lettered"
            error, status = f"503 from the hook ({rng.randrange(1000)})", 503
            if rng.random() < 0.2:
                circuit = rng.choice(["open", "half_open", "closed"])
        shown = None if rng.random() < 0.3 else circuit
        out.append(
            {"outcome": outcome, "at": at, "circuit": shown, "error": error, "http_status": status}
        )
    return out


@pytest.mark.parametrize("seed", range(40))
def test_folding_the_forwarded_records_gives_the_same_health(seed: int) -> None:
    rng = random.Random(seed)
    records = random_attempts(rng, rng.randrange(1, 400))
    feed = HealthFeed()
    forwarded = [r for r in records if feed.wants(TENANT, IID, r["outcome"], r["circuit"], r["at"])]
    assert len(forwarded) <= len(records)
    full, thin = fold(records), fold(forwarded)
    assert full is not None and thin is not None
    for field in (
        "consecutive_failures",
        "circuit",
        "last_failure_at",
        "last_error",
        "last_status",
    ):
        assert thin.get(field) == full.get(field), field
    successes = [r["at"] for r in records if r["outcome"] == "delivered"]
    if successes:
        # The full fold lags the last success by < REFRESH, the thinned one by < 1.5 REFRESH.
        assert successes[-1] - full["last_success_at"] < REFRESH
        assert successes[-1] - thin["last_success_at"] < 1.5 * REFRESH
    else:
        assert "last_success_at" not in thin


def test_a_busy_healthy_integration_forwards_a_few_records_not_thousands() -> None:
    feed = HealthFeed()
    forwarded = sum(
        feed.wants(TENANT, IID, "delivered", "closed", 1_000.0 + i * 0.001) for i in range(20_000)
    )  # 20 s at 1 000 deliveries/s
    assert forwarded <= 20 / (REFRESH / 2) + 1


# -- the reporter --------------------------------------------------------------------


class FakeTopic:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, bytes]] = []

    def send_soon(self, *, key: bytes | None, value: bytes, force: bool) -> None:
        assert force
        self.sent.append((key, value))


def status(alert_id: str, outcome: Outcome, at: float, **extra: Any) -> DeliveryStatus:
    return DeliveryStatus(
        alert_id=alert_id,
        tenant_id=TENANT,
        integration_id=IID,
        integration_type="webhook",
        idempotency_key=f"ar-{alert_id}",
        attempt=1,
        outcome=outcome,
        http_status=200 if outcome == Outcome.DELIVERED else 503,
        latency_ms=12.5,
        error=None if outcome == Outcome.DELIVERED else "503 Service Unavailable",
        at=at,
        **extra,
    )


async def test_reporter_writes_every_record_and_forwards_only_changes() -> None:
    status_topic, dlq, health = FakeTopic(), FakeTopic(), FakeTopic()
    reporter = KafkaReporter(status_topic, dlq, health)
    records = [
        status("a1", Outcome.DELIVERED, 100.0, circuit="closed"),
        status("a2", Outcome.DELIVERED, 100.1, circuit="closed"),
        status("a3", Outcome.RETRYING, 100.2, circuit="closed", next_attempt_at=101.0),
        status("a4", Outcome.DELIVERED, 100.3, circuit="closed"),
        status("a5", Outcome.DELIVERED, 100.4, circuit="closed"),
    ]
    for record in records:
        await reporter.status(record)
    assert [v for _k, v in status_topic.sent] == [
        orjson.dumps(r.model_dump(mode="json")) for r in records
    ], "the status topic's records are unchanged, one per attempt"
    assert {k for k, _v in status_topic.sent + health.sent} == {TENANT.encode()}
    assert [orjson.loads(v)["alert_id"] for _k, v in health.sent] == ["a1", "a3", "a4"]
    assert health.sent[1][1] == status_topic.sent[2][1]  # the same bytes, not a variant
    assert dlq.sent == []


async def test_batch_values_are_written_as_the_models_json() -> None:
    status_topic, health = FakeTopic(), FakeTopic()
    reporter = KafkaReporter(status_topic, FakeTopic(), health)
    values: list[StatusValues] = [
        {
            "alert_id": f"b{i}",
            "tenant_id": TENANT,
            "integration_id": "lake",
            "integration_type": "s3",
            "idempotency_key": f"ar-b{i}",
            "attempt": 1,
            "outcome": "delivered",
            "http_status": None,
            "latency_ms": 830.125,
            "error": None,
            "at": 1_732_443_823.123456,
            "next_attempt_at": None,
            "circuit": None,
        }
        for i in range(500)
    ]
    await reporter.batch_statuses(iter(values))
    assert [v for _k, v in status_topic.sent] == [
        DeliveryStatus.model_validate(v).model_dump_json().encode() for v in values
    ]
    assert len(health.sent) == 1  # one success for the whole batch


@pytest.mark.parametrize(
    ("outcome", "http_status", "error"),
    [
        (Outcome.DELIVERED, 200, None),
        (Outcome.RETRYING, 503, 'upstream said "busy" \u2028 \U0001f600'),
        (Outcome.DEAD_LETTERED, None, "\x00alertrelay:alert_id\x00"),  # written one by one
    ],
)
async def test_a_batch_s_records_are_spliced_into_the_models_json(
    outcome: Outcome, http_status: int | None, error: str | None
) -> None:
    """streams/reporter.py writes a batch's records from one JSON text; the bytes and the
    records forwarded to health are those of writing each record on its own."""
    config = IntegrationConfig(integration_id="lake", tenant_id=TENANT, type="s3", name="lake")
    records = [
        BatchRecord(b"{}", alert_id, f"ar-{n}", n, dt.date(2026, 11, 25))
        for n, alert_id in enumerate(["a-1", 'quote"d', "\u00e9\u2028\U0001f600", "x" * 300])
    ]
    batch = Batch(config, 1, "alerts", 0, 0, 3, dt.date(2026, 11, 25), records, 8)
    statuses = batch_status_values(batch, 2, outcome, 0.8301, http_status, error, 1_732_443_823.5)
    spliced, one_by_one = KafkaReporter(*topics()), KafkaReporter(*topics())
    await spliced.batch_statuses(statuses)
    await one_by_one.batch_statuses(iter(list(statuses)))
    expected = [DeliveryStatus.model_validate(v).model_dump_json().encode() for v in statuses]
    for reporter in (spliced, one_by_one):
        status_topic, _, _ = reporter_topics(reporter)
        assert [v for _k, v in status_topic.sent] == expected
    assert reporter_topics(spliced)[2].sent == reporter_topics(one_by_one)[2].sent
    assert (_spliced(statuses.base) is None) == (error is not None and "\x00" in error)


def topics() -> tuple[FakeTopic, FakeTopic, FakeTopic]:
    return FakeTopic(), FakeTopic(), FakeTopic()


def reporter_topics(reporter: KafkaReporter) -> tuple[FakeTopic, FakeTopic, FakeTopic]:
    return reporter._status, reporter._dlq, reporter._health  # type: ignore[return-value]
