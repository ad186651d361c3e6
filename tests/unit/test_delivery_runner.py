"""DeliveryRunner and BatchRunner: every delivery ends delivered or dead-lettered.

Fake sinks raise what real sinks raise; a recording reporter collects the status and
DLQ records the agents would produce.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import pytest
from pydantic import BaseModel, ConfigDict, SecretStr

from schemas.models import (
    Alert,
    DeadLetter,
    Delivery,
    DeliveryStatus,
    IntegrationConfig,
    Outcome,
    idempotency_key,
)
from sinks.base import Batch, BatchingSink, BatchRecord, PerAlertSink
from sinks.errors import PermanentError, RetryableError
from sinks.retry import RetryPolicy
from sinks.secretbox import SecretBox, generate_key_spec
from sinks.webhook.config import WebhookSettings
from streams.delivery import (
    BatchReporter,
    BatchRunner,
    DeliveryRunner,
    StatusValues,
    _status,
    dead_letter_for,
)

URL_SECRET = "T0001-B0002-xoxb-very-secret-path"
WEBHOOK_URL = f"https://hooks.example.com/services/{URL_SECRET}"
HEADER_SECRET = "hdr-secret-4f9a8b7c6d5e"
BUCKET_SECRET = "bucket-credential-0123456789abcdef"

BOX = SecretBox.parse(generate_key_spec())
POLICY = RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.005, jitter=0.1)


class Recorder:
    """A Reporter that keeps every record it is given."""

    def __init__(self) -> None:
        self.statuses: list[DeliveryStatus] = []
        self.dead_letters: list[DeadLetter] = []

    async def status(self, record: DeliveryStatus) -> None:
        self.statuses.append(record)

    async def dead_letter(self, record: DeadLetter) -> None:
        self.dead_letters.append(record)

    def outcomes(self) -> list[str]:
        return [s.outcome.value for s in self.statuses]


def make_delivery(
    alert_id: str = "alert-1",
    offset: int = 0,
    *,
    integration_id: str = "int-1",
    integration_type: str = "webhook",
    settings: dict[str, Any] | None = None,
    config_version: int = 1,
) -> Delivery:
    if settings is None:
        settings = {
            "webhook_url": WEBHOOK_URL,
            "headers": [{"name": "X-Api-Key", "value": HEADER_SECRET}],
        }
    alert = Alert(
        alert_id=alert_id,
        tenant_id="tenant-a",
        event_type="client_side_risk",
        risk_level="critical",
        title="Skimmer on checkout",
        detected_at=dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC),
    )
    integration = IntegrationConfig(
        integration_id=integration_id,
        tenant_id="tenant-a",
        type=integration_type,
        name="test",
        version=config_version,
        settings=settings,
    )
    return Delivery(
        alert=alert,
        integration=integration,
        config_version=config_version,
        idempotency_key=idempotency_key(alert_id, integration_id),
        source_topic="alerts",
        source_partition=0,
        source_offset=offset,
        routed_at=time.time(),
        produced_at=time.time(),
    )


Step = Callable[[], int | None]  # returns a status or raises


def ok(status: int = 200) -> Step:
    return lambda: status


def fail(exc_factory: Callable[[], BaseException]) -> Step:
    def step() -> int | None:
        raise exc_factory()

    return step


class FakeWebhook(PerAlertSink[WebhookSettings]):
    """Answers each call with the next scripted step (then with `default`)."""

    type_name = "webhook"
    settings_model = WebhookSettings

    def __init__(self, *steps: Step, default: Step | None = None, delay: float = 0.0) -> None:
        self.steps = list(steps)
        self.default = default or ok()
        self.delay = delay
        self.calls: list[tuple[str, float]] = []
        self.in_flight: dict[str, int] = defaultdict(int)
        self.max_in_flight: dict[str, int] = defaultdict(int)
        self.blocked: dict[str, asyncio.Event] = {}

    async def send(self, delivery: Delivery, settings: WebhookSettings) -> int | None:
        key = delivery.integration.integration_id
        self.calls.append((delivery.alert.alert_id, time.monotonic()))
        self.in_flight[key] += 1
        self.max_in_flight[key] = max(self.max_in_flight[key], self.in_flight[key])
        try:
            if key in self.blocked:
                await self.blocked[key].wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            step = self.steps.pop(0) if self.steps else self.default
            return step()
        finally:
            self.in_flight[key] -= 1

    async def check(self, integration: IntegrationConfig, settings: WebhookSettings) -> str:
        return "ok"


def assert_secret_free(*texts: str | None) -> None:
    for text in texts:
        assert text is not None
        for secret in (URL_SECRET, WEBHOOK_URL, HEADER_SECRET, BUCKET_SECRET):
            assert secret not in text


# -- per-alert -------------------------------------------------------------------------


async def test_retryable_then_success_is_delivered() -> None:
    sink = FakeWebhook(*[fail(lambda: RetryableError("busy", status=503))] * 3, ok(200))
    reporter = Recorder()
    outcome = await DeliveryRunner(sink, POLICY, reporter, BOX).deliver(make_delivery())
    assert outcome == Outcome.DELIVERED
    assert len(sink.calls) == 4
    assert reporter.outcomes() == ["retrying"] * 3 + ["delivered"]
    assert [s.attempt for s in reporter.statuses] == [1, 2, 3, 4]
    assert [s.http_status for s in reporter.statuses] == [503, 503, 503, 200]
    assert reporter.statuses[-1].error is None
    assert all(s.error for s in reporter.statuses[:3])
    assert reporter.dead_letters == []
    key = idempotency_key("alert-1", "int-1")
    assert {s.idempotency_key for s in reporter.statuses} == {key}


async def test_permanent_error_is_dead_lettered_after_one_attempt() -> None:
    sink = FakeWebhook(fail(lambda: PermanentError("rejected: missing field title", status=400)))
    reporter = Recorder()
    delivery = make_delivery()
    outcome = await DeliveryRunner(sink, POLICY, reporter, BOX).deliver(delivery)
    assert outcome == Outcome.DEAD_LETTERED
    assert len(sink.calls) == 1
    assert reporter.outcomes() == ["dead_lettered"]
    assert reporter.statuses[0].http_status == 400
    (dead,) = reporter.dead_letters
    assert dead.stage == "deliver"
    assert "rejected: missing field title" in dead.reason
    assert dead.attempts == 1
    assert dead.alert == delivery.alert
    assert (dead.tenant_id, dead.integration_id, dead.integration_type) == (
        "tenant-a",
        "int-1",
        "webhook",
    )
    assert (dead.source_topic, dead.source_partition, dead.source_offset) == ("alerts", 0, 0)
    assert dead.idempotency_key == delivery.idempotency_key
    as_json = dead.model_dump_json()
    assert "webhook_url" not in as_json
    assert "settings" not in as_json
    assert_secret_free(as_json)


async def test_unexpected_exception_is_retried_then_dead_lettered() -> None:
    sink = FakeWebhook(default=fail(lambda: RuntimeError("boom")))
    reporter = Recorder()
    outcome = await DeliveryRunner(sink, POLICY, reporter, BOX).deliver(make_delivery())
    assert outcome == Outcome.DEAD_LETTERED
    assert len(sink.calls) == POLICY.max_attempts
    assert reporter.outcomes() == ["retrying"] * (POLICY.max_attempts - 1) + ["dead_lettered"]
    (dead,) = reporter.dead_letters
    assert "boom" in dead.reason
    assert dead.attempts == POLICY.max_attempts


async def test_retry_after_is_waited() -> None:
    sink = FakeWebhook(fail(lambda: RetryableError("slow down", status=429, retry_after=0.3)))
    reporter = Recorder()
    outcome = await DeliveryRunner(sink, POLICY, reporter, BOX).deliver(make_delivery())
    assert outcome == Outcome.DELIVERED
    (_, first), (_, second) = sink.calls
    assert second - first >= 0.3


@pytest.mark.parametrize(
    "make_error",
    [
        lambda: RetryableError(f"POST {WEBHOOK_URL} failed (X-Api-Key: {HEADER_SECRET})"),
        lambda: PermanentError(f"{WEBHOOK_URL} answered 404: no hook {URL_SECRET}", status=404),
        lambda: RuntimeError(f"connection to {WEBHOOK_URL} reset; key={HEADER_SECRET}"),
    ],
)
async def test_secrets_in_error_messages_are_redacted(
    make_error: Callable[[], BaseException],
) -> None:
    sink = FakeWebhook(default=fail(make_error))
    reporter = Recorder()
    await DeliveryRunner(sink, POLICY, reporter, BOX).deliver(make_delivery())
    assert reporter.statuses
    assert_secret_free(*(s.error for s in reporter.statuses))
    (dead,) = reporter.dead_letters
    assert_secret_free(dead.reason, dead.model_dump_json())
    assert "hooks.example.com" in dead.reason  # the host is still shown


async def test_concurrency_is_limited_per_integration() -> None:
    sink = FakeWebhook(delay=0.01)
    runner = DeliveryRunner(sink, POLICY, Recorder(), BOX, per_integration_concurrency=2)
    outcomes = await runner.deliver_many([make_delivery(f"a{i}", i) for i in range(20)])
    assert outcomes == [Outcome.DELIVERED] * 20
    assert sink.max_in_flight["int-1"] == 2


async def test_integrations_proceed_independently() -> None:
    sink = FakeWebhook(delay=0.005)
    sink.blocked["stuck"] = asyncio.Event()
    runner = DeliveryRunner(sink, POLICY, Recorder(), BOX, per_integration_concurrency=2)
    stuck = asyncio.create_task(
        runner.deliver_many([make_delivery(f"s{i}", i, integration_id="stuck") for i in range(5)])
    )
    free = [make_delivery(f"f{i}", i, integration_id="free") for i in range(10)]
    outcomes = await asyncio.wait_for(runner.deliver_many(free), timeout=5)
    assert outcomes == [Outcome.DELIVERED] * 10
    assert not stuck.done()
    assert sink.in_flight["stuck"] == 2  # the rest wait for a slot of their own integration
    assert sink.max_in_flight["free"] == 2
    sink.blocked["stuck"].set()
    assert await asyncio.wait_for(stuck, timeout=5) == [Outcome.DELIVERED] * 5
    assert sink.max_in_flight["stuck"] == 2


async def test_waiting_for_a_retry_does_not_hold_a_slot() -> None:
    sink = FakeWebhook(fail(lambda: RetryableError("slow down", retry_after=0.3)))
    runner = DeliveryRunner(sink, POLICY, Recorder(), BOX, per_integration_concurrency=1)
    started = time.monotonic()
    await runner.deliver_many([make_delivery("a", 0), make_delivery("b", 1)])
    (first, _), (second, t_second), (third, _) = sink.calls
    assert (first, second, third) == ("a", "b", "a")
    assert t_second - started < 0.25  # b went while a was waiting to retry


async def test_invalid_settings_are_dead_lettered_without_attempts() -> None:
    sink = FakeWebhook()
    reporter = Recorder()
    delivery = make_delivery(settings={"webhook_url": f"ftp://x/{URL_SECRET}", "method": "DELETE"})
    outcome = await DeliveryRunner(sink, POLICY, reporter, BOX).deliver(delivery)
    assert outcome == Outcome.DEAD_LETTERED
    assert sink.calls == []
    assert reporter.statuses == []
    (dead,) = reporter.dead_letters
    assert dead.attempts == 0
    assert dead.stage == "deliver"
    assert "webhook_url" in dead.reason
    assert "method" in dead.reason
    assert_secret_free(dead.reason, dead.model_dump_json())


# -- batching ------------------------------------------------------------------------


class BucketSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bucket: str
    credential: SecretStr


class FakeBucket(BatchingSink[BucketSettings]):
    type_name = "bucket"
    settings_model = BucketSettings

    def __init__(self, *steps: Step, default: Step | None = None) -> None:
        self.steps = list(steps)
        self.default = default or ok()
        self.writes: list[list[int]] = []

    async def write(self, batch: Batch, settings: BucketSettings) -> int | None:
        self.writes.append([d.source_offset for d in batch.records])
        step = self.steps.pop(0) if self.steps else self.default
        return step()

    async def check(self, integration: IntegrationConfig, settings: BucketSettings) -> str:
        return "ok"


def make_batch(count: int = 3, settings: dict[str, Any] | None = None) -> Batch:
    if settings is None:
        settings = {"bucket": "archive", "credential": BUCKET_SECRET}
    records = [
        make_delivery(f"alert-{i}", i, integration_type="bucket", settings=settings)
        for i in range(count)
    ]
    return Batch(
        integration=records[0].integration,
        config_version=records[0].config_version,
        topic="alerts",
        partition=0,
        first_offset=0,
        last_offset=count - 1,
        day=dt.date(2024, 5, 1),
        records=[BatchRecord.of(r) for r in records],
        size_bytes=100 * count,
    )


async def test_batch_retried_then_written() -> None:
    sink = FakeBucket(*[fail(lambda: RetryableError("throttled", status=503))] * 2, ok(200))
    reporter = Recorder()
    outcome = await BatchRunner(sink, POLICY, reporter, BOX).write(make_batch(3))
    assert outcome == Outcome.DELIVERED
    assert sink.writes == [[0, 1, 2]] * 3
    # one status per record per attempt
    assert reporter.outcomes() == ["retrying"] * 6 + ["delivered"] * 3
    assert {s.alert_id for s in reporter.statuses[-3:]} == {"alert-0", "alert-1", "alert-2"}
    assert reporter.dead_letters == []


async def test_batch_permanent_error_dead_letters_every_record() -> None:
    sink = FakeBucket(fail(lambda: PermanentError(f"denied with {BUCKET_SECRET}", status=403)))
    reporter = Recorder()
    outcome = await BatchRunner(sink, POLICY, reporter, BOX).write(make_batch(3))
    assert outcome == Outcome.DEAD_LETTERED
    assert len(sink.writes) == 1
    assert sorted(d.alert_id or "" for d in reporter.dead_letters) == [
        "alert-0",
        "alert-1",
        "alert-2",
    ]
    for dead in reporter.dead_letters:
        assert dead.attempts == 1
        assert dead.stage == "deliver"
        assert "denied" in dead.reason
        assert_secret_free(dead.reason, dead.model_dump_json())
    assert_secret_free(*(s.error for s in reporter.statuses))


async def test_batch_unexpected_exception_is_never_lost() -> None:
    sink = FakeBucket(default=fail(lambda: OSError("disk full")))
    reporter = Recorder()
    outcome = await BatchRunner(sink, POLICY, reporter, BOX).write(make_batch(2))
    assert outcome == Outcome.DEAD_LETTERED
    assert len(sink.writes) == POLICY.max_attempts
    assert len(reporter.dead_letters) == 2
    assert all(d.attempts == POLICY.max_attempts for d in reporter.dead_letters)


async def test_batch_status_and_dead_letters_are_those_of_the_full_deliveries() -> None:
    """Slim records report exactly what the per-delivery records said (but `at`)."""
    settings = {"bucket": "archive", "credential": BUCKET_SECRET}
    deliveries = [
        make_delivery(f"alert-{i}", i, integration_type="bucket", settings=settings)
        for i in range(3)
    ]
    sink = FakeBucket(fail(lambda: RetryableError("throttled", status=503)), ok(200))
    reporter = Recorder()
    assert await BatchRunner(sink, POLICY, reporter, BOX).write(make_batch(3)) == (
        Outcome.DELIVERED
    )
    volatile = {"at", "latency_ms"}
    got = [s.model_dump(exclude=volatile) for s in reporter.statuses]
    expected = [
        _status(d, 1, Outcome.RETRYING, 0.0, 503, "throttled").model_dump(exclude=volatile)
        for d in deliveries
    ] + [
        _status(d, 2, Outcome.DELIVERED, 0.0, 200).model_dump(exclude=volatile) for d in deliveries
    ]
    assert got == expected

    sink = FakeBucket(fail(lambda: PermanentError("denied", status=403)))
    reporter = Recorder()
    await BatchRunner(sink, POLICY, reporter, BOX).write(make_batch(3))
    got = [d.model_dump(mode="json", exclude={"at"}) for d in reporter.dead_letters]
    expected = [
        dead_letter_for(d, reporter.dead_letters[0].reason, 1).model_dump(
            mode="json", exclude={"at"}
        )
        for d in deliveries
    ]
    assert got == expected
    assert reporter.dead_letters[0].alert == deliveries[0].alert


class ValuesRecorder(Recorder):
    """A BatchReporter, as the Kafka one is: a batch's status records come as values."""

    def __init__(self) -> None:
        super().__init__()
        self.values: list[StatusValues] = []

    async def batch_statuses(self, records: Iterable[StatusValues]) -> None:
        self.values.extend(records)


async def test_a_batch_reporter_gets_values_that_are_the_models_records() -> None:
    """The plain values of a batch's status records are, field for field and in JSON
    byte for byte, the `DeliveryStatus` records any other Reporter gets."""
    plain, bulk = Recorder(), ValuesRecorder()
    assert isinstance(bulk, BatchReporter) and not isinstance(plain, BatchReporter)
    for reporter in (plain, bulk):
        sink = FakeBucket(fail(lambda: RetryableError("throttled", status=503)), ok(200))
        assert await BatchRunner(sink, POLICY, reporter, BOX).write(make_batch(3)) == (
            Outcome.DELIVERED
        )
    assert bulk.statuses == [] and len(bulk.values) == len(plain.statuses) == 6
    volatile = {"at", "latency_ms"}
    for values, model in zip(bulk.values, plain.statuses, strict=True):
        assert list(values) == list(DeliveryStatus.model_fields)  # the schema's field order
        as_model = DeliveryStatus.model_validate(values)
        assert as_model.model_dump(exclude=volatile) == model.model_dump(exclude=volatile)
        assert orjson.dumps(values) == as_model.model_dump_json().encode()
    assert len({v["at"] for v in bulk.values[:3]}) == 1  # one attempt, one time


async def test_batch_invalid_settings_dead_letters_without_attempts() -> None:
    sink = FakeBucket()
    reporter = Recorder()
    batch = make_batch(2, settings={"credential": BUCKET_SECRET})  # bucket missing
    outcome = await BatchRunner(sink, POLICY, reporter, BOX).write(batch)
    assert outcome == Outcome.DEAD_LETTERED
    assert sink.writes == []
    assert len(reporter.dead_letters) == 2
    for dead in reporter.dead_letters:
        assert dead.attempts == 0
        assert "bucket" in dead.reason
        assert_secret_free(dead.reason, dead.model_dump_json())
