"""Circuit breaker states, and the worker's one-attempt mode that parks retries on delay
topics instead of waiting in the partition."""

from __future__ import annotations

import time

from schemas.models import Alert, Delivery, IntegrationConfig, Outcome, idempotency_key
from sinks.base import PerAlertSink
from sinks.errors import PermanentError, RetryableError
from sinks.retry import RetryPolicy, tier_for
from sinks.secretbox import SecretBox, generate_key_spec
from sinks.webhook.config import WebhookSettings
from streams.breaker import Breakers
from streams.delivery import DeliveryRunner
from streams.metrics import REGISTRY
from tests.fakes.reporter import Recorder

BOX = SecretBox.parse(generate_key_spec())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_threshold_and_one_probe_decides() -> None:
    clock = Clock()
    b = Breakers(threshold=3, cooldown=30, clock=clock)
    for _ in range(2):
        assert b.admit("k") is None and b.failure("k", retryable=True) == "closed"
    assert b.admit("k") is None and b.failure("k", retryable=True) == "open"
    assert b.admit("k") == 30
    clock.now += 29
    assert b.admit("k") == 1
    clock.now += 1
    assert b.admit("k") is None  # the probe
    assert b.admit("k") is not None  # others wait for its answer
    assert b.failure("k", retryable=True) == "open"
    clock.now += 30
    assert b.admit("k") is None
    assert b.success("k") == "closed" and b.admit("k") is None


def test_permanent_errors_do_not_trip_the_breaker() -> None:
    b = Breakers(threshold=2)
    for _ in range(5):
        b.failure("k", retryable=False)
    assert b.admit("k") is None


def test_tiers() -> None:
    assert [tier_for(d, (1, 5, 30)) for d in (0.1, 1, 1.5, 5, 29, 31, 9999)] == [
        1,
        1,
        5,
        5,
        30,
        30,
        30,
    ]


class Flaky(PerAlertSink[WebhookSettings]):
    type_name = "webhook"
    settings_model = WebhookSettings

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        self.calls = 0

    async def send(self, delivery: Delivery, settings: WebhookSettings) -> int | None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return 200

    async def check(self, integration: IntegrationConfig, settings: WebhookSettings) -> str:
        return "ok"


def delivery(attempt: int = 0) -> Delivery:
    alert = Alert.model_validate(
        {
            "alert_id": "a1",
            "tenant_id": "t",
            "event_type": "client_side_risk",
            "risk_level": "high",
            "title": "x",
            "detected_at": "2026-01-01T00:00:00Z",
        }
    )
    integration = IntegrationConfig(
        integration_id="i",
        tenant_id="t",
        type="webhook",
        name="n",
        settings={"webhook_url": "https://example.com/h"},
    )
    return Delivery(
        alert=alert,
        integration=integration,
        config_version=1,
        idempotency_key=idempotency_key("a1", "i"),
        source_topic="alerts",
        source_partition=0,
        source_offset=7,
        routed_at=time.time(),
        attempt=attempt,
    )


async def test_a_retryable_failure_is_parked_not_waited_for() -> None:
    parked: list[tuple[Delivery, float]] = []

    async def park(d: Delivery, delay: float) -> None:
        parked.append((d, delay))

    sink = Flaky([RetryableError("busy", status=503, retry_after=5)])
    reporter = Recorder()
    runner = DeliveryRunner(sink, RetryPolicy(base_delay=0.01), reporter, BOX, park=park)
    started = time.monotonic()
    assert await runner.deliver(delivery()) == Outcome.RETRYING
    assert time.monotonic() - started < 1  # nothing waited in place
    ((again, delay),) = parked
    assert delay >= 5 and again.attempt == 1 and again.not_before is not None
    assert again.not_before >= time.time() + 4
    assert reporter.statuses[-1].outcome == "retrying"
    assert reporter.statuses[-1].next_attempt_at == again.not_before

    assert await runner.deliver(again) == Outcome.DELIVERED
    assert reporter.statuses[-1].attempt == 2 and sink.calls == 2


async def test_budget_spent_goes_to_the_dlq_and_open_circuit_skips_the_call() -> None:
    async def park(d: Delivery, delay: float) -> None:
        pass

    sink = Flaky([RetryableError("down", status=503) for _ in range(10)])
    reporter = Recorder()
    runner = DeliveryRunner(
        sink,
        RetryPolicy(max_attempts=3, base_delay=0.01),
        reporter,
        BOX,
        park=park,
        breakers=Breakers(threshold=2, cooldown=60),
    )
    assert await runner.deliver(delivery(0)) == Outcome.RETRYING
    assert await runner.deliver(delivery(0)) == Outcome.RETRYING  # opens the circuit
    assert reporter.statuses[-1].circuit == "open"
    assert await runner.deliver(delivery(0)) == Outcome.RETRYING
    assert sink.calls == 2  # the open circuit did not call the destination
    assert await runner.deliver(delivery(2)) == Outcome.DEAD_LETTERED
    assert reporter.dead[-1].attempts == 3


async def test_permanent_error_is_dead_lettered_at_once_in_park_mode() -> None:
    async def park(d: Delivery, delay: float) -> None:
        raise AssertionError("a permanent error must not be parked")

    runner = DeliveryRunner(
        Flaky([PermanentError("bad", status=400)]), RetryPolicy(), Recorder(), BOX, park=park
    )
    assert await runner.deliver(delivery()) == Outcome.DEAD_LETTERED


async def test_the_open_circuits_gauge_follows_opening_and_closing() -> None:
    """The gauge is recounted only when a circuit opens or closes, and still right."""

    async def park(d: Delivery, delay: float) -> None:
        pass

    def gauge() -> float | None:
        return REGISTRY.get_sample_value("alertrelay_circuits_open", {"type": "gauge-test"})

    def one() -> Delivery:  # a type of its own: the gauge is per type and process-wide
        d = delivery()
        return d.model_copy(
            update={"integration": d.integration.model_copy(update={"type": "gauge-test"})}
        )

    clock = Clock()
    sink = Flaky([RetryableError("down", status=503) for _ in range(2)])
    runner = DeliveryRunner(
        sink,
        RetryPolicy(max_attempts=10, base_delay=0.01),
        Recorder(),
        BOX,
        park=park,
        breakers=Breakers(threshold=2, cooldown=30, clock=clock),
    )
    assert await runner.deliver(one()) == Outcome.RETRYING
    assert gauge() == 0
    assert await runner.deliver(one()) == Outcome.RETRYING  # opens the circuit
    assert gauge() == 1
    assert await runner.deliver(one()) == Outcome.RETRYING  # still open: no call
    assert gauge() == 1 and sink.calls == 2
    clock.now += 31
    assert await runner.deliver(one()) == Outcome.DELIVERED  # the probe closes it
    assert gauge() == 0


async def test_parking_waits_for_the_producer_to_take_the_record() -> None:
    """A parked delivery is done only once the producer has taken it: when its buffer is
    full, the delivery (and with it its lane's in-flight limit) waits."""
    import asyncio
    from types import SimpleNamespace

    from streams.agents.retry import make_parker

    class Topic:
        def __init__(self) -> None:
            self.sent: list[bytes] = []
            self.room = asyncio.Event()

        async def send(self, *, key: bytes, value: bytes) -> None:
            await self.room.wait()
            self.sent.append(key)

    topic = Topic()
    park = make_parker(SimpleNamespace(retry={1: topic, 5: Topic()}), (1, 5))  # type: ignore[arg-type]
    parking = asyncio.create_task(park(delivery(), 1.0))
    await asyncio.sleep(0.01)
    assert not parking.done() and topic.sent == []
    topic.room.set()
    await asyncio.wait_for(parking, 1)
    assert topic.sent == [b"t/i"]
