"""Per-alert deliveries (streams/agents/sinks.py) and the delivery lane that feeds them
(streams/delivery_lane.py), on revocation of partitions (issue #6, duplicates at
rebalance) and under the in-flight limit.

Deliveries of a dropped partition that have not started their request are cancelled and
never sent; a request already on the wire finishes and reports, but is not `done` (the
lane does not commit past it: its new owner reads it again); the backlog and the
per-integration limit come back; nothing is reported for a cancelled delivery; other
partitions go on unaffected.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import TopicPartition
from faust.types import TP

from schemas.models import Alert, Delivery, IntegrationConfig, idempotency_key
from sinks.base import PerAlertSink
from sinks.errors import RetryableError
from sinks.retry import RetryPolicy
from sinks.secretbox import SecretBox, generate_key_spec
from sinks.webhook.config import WebhookSettings
from streams.agents.router import RouteRules
from streams.agents.sinks import PerAlertDeliveries
from streams.breaker import Breakers
from streams.delivery import DeliveryRunner, Flight
from streams.delivery_lane import DeliveryLane
from streams.settings import Settings
from tests.fakes.kafka_message import FakeConsumer, Msg
from tests.fakes.reporter import Recorder

BOX = SecretBox.parse(generate_key_spec())
SETTINGS = Settings()
TOPIC = SETTINGS.delivery_topic("webhook")


# ─── fakes ────────────────────────────────────────────────────────────────────────────


class Gated(PerAlertSink[WebhookSettings]):
    """Every request waits until its alert is let through (or `auto`); `fail` makes the
    next requests of those alerts answer 503."""

    type_name = "webhook"
    settings_model = WebhookSettings

    def __init__(self, auto: bool = False) -> None:
        self.started: list[str] = []
        self.finished: list[str] = []
        self.auto = auto
        self.fail: set[str] = set()
        self._open: dict[str, asyncio.Event] = {}

    def gate(self, alert_id: str) -> asyncio.Event:
        return self._open.setdefault(alert_id, asyncio.Event())

    def release(self, *alert_ids: str) -> None:
        for alert_id in alert_ids:
            self.gate(alert_id).set()

    async def send(self, delivery: Delivery, settings: WebhookSettings) -> int | None:
        alert_id = delivery.alert.alert_id
        self.started.append(alert_id)
        if not self.auto:
            await self.gate(alert_id).wait()
        self.finished.append(alert_id)
        if alert_id in self.fail:
            raise RetryableError("busy", status=503)
        return 200

    async def check(self, integration: Any, settings: WebhookSettings) -> str:
        return "ok"


def record(alert_id: str, integration_id: str) -> bytes:
    alert = Alert.model_validate(
        {
            "alert_id": alert_id,
            "tenant_id": "t",
            "event_type": "client_side_risk",
            "risk_level": "high",
            "title": "x",
            "detected_at": "2026-01-01T00:00:00Z",
        }
    )
    integration = IntegrationConfig(
        integration_id=integration_id,
        tenant_id="t",
        type="webhook",
        name="n",
        settings={"webhook_url": "https://example.com/h"},
    )
    delivery = Delivery(
        alert=alert,
        integration=integration,
        config_version=1,
        idempotency_key=idempotency_key(alert_id, integration_id),
        source_topic="alerts",
        source_partition=0,
        source_offset=0,
        routed_at=time.time(),
    )
    return delivery.model_dump_json().encode()


class Harness:
    """Records handed to `PerAlertDeliveries` as a delivery lane hands them over; `done`
    is what the lane's acks would be told."""

    def __init__(self, sink: Gated, parking: bool = True, **settings: Any) -> None:
        self.reporter = Recorder()
        self.acked: list[tuple[int, int]] = []
        self.parked: list[Delivery] = []
        self.sink = sink
        self.settings = Settings(**{"per_integration_concurrency": 1, **settings})

        async def park(delivery: Delivery, delay: float) -> None:
            self.parked.append(delivery)

        self.deliveries = PerAlertDeliveries(
            sink, self.settings, self.reporter, BOX, park if parking else None
        )
        self.offsets: dict[int, int] = {}

    def feed(self, *records: tuple[int, str, str]) -> None:
        for partition, alert_id, integration_id in records:
            offset = self.offsets.get(partition, 0)
            self.offsets[partition] = offset + 1
            self.submit(
                record(alert_id, integration_id),
                (TOPIC, partition, offset),
                lambda p=partition, o=offset: self.acked.append((p, o)),
            )

    def submit(self, value: bytes, where: tuple[str, int, int], done: Callable[[], None]) -> None:
        """Hand a record over as a lane does once it is late: over its integration's
        backlog, it is parked at once."""
        delivery, reason = self.deliveries.read(value)
        self.deliveries.offer(delivery, reason, value, where, done, late=True)

    def revoke(self, *partitions: int) -> None:
        self.deliveries.drop({(TOPIC, p) for p in partitions})

    def statuses(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for s in self.reporter.statuses:
            out.setdefault(s.alert_id, []).append(s.outcome.value)
        return out

    def idle(self) -> None:
        """Every job, backlog count and per-integration turn is back."""
        deliveries = self.deliveries
        assert deliveries._jobs == {} and deliveries.in_flight == 0
        assert not deliveries._backlog
        for gate in deliveries.runner._gates.values():
            assert gate._value == self.settings.per_integration_concurrency
            assert not gate._waiters


async def settle(until: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not until():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


# ─── the deliveries ───────────────────────────────────────────────────────────────────


async def test_queued_deliveries_of_a_revoked_partition_are_never_sent() -> None:
    """Partition 0: a0 on the wire, a1 and a2 waiting for the integration's turn.
    Partition 1 (another integration): b0 on the wire, b1 waiting. Dropping partition 0
    cancels a1 and a2; a0 finishes, reports and is done (a lane committing at revocation
    waits for it); partition 1 goes on."""
    sink = Gated()
    h = Harness(sink)
    h.feed((0, "a0", "ia"), (0, "a1", "ia"), (1, "b0", "ib"), (0, "a2", "ia"), (1, "b1", "ib"))
    await settle(lambda: sink.started == ["a0", "b0"])
    assert h.deliveries._backlog == {"t/ia": 3, "t/ib": 2}

    h.revoke(0)
    await asyncio.sleep(0.01)
    assert h.deliveries.in_flight == 3  # a0 on the wire; b0 on the wire, b1 waiting
    assert h.deliveries._backlog == {"t/ia": 1, "t/ib": 2}

    sink.release("a0", "b0", "b1")
    await settle(lambda: not h.deliveries._jobs)
    assert sink.started == ["a0", "b0", "b1"]  # a1 and a2 never sent
    assert h.statuses() == {"a0": ["delivered"], "b0": ["delivered"], "b1": ["delivered"]}
    assert h.reporter.dead == [] and h.parked == []
    assert sorted(h.acked) == [(0, 0), (1, 0), (1, 1)]  # a1, a2: read again by the new owner
    h.idle()


async def test_a_partition_read_again_is_delivered_and_done() -> None:
    """A rebalance drops every partition, and may give one straight back: the lane then
    reads it again from the last commit; what was cancelled is sent once, what was on the
    wire twice (the one duplicate left)."""
    sink = Gated()
    h = Harness(sink)
    h.feed((0, "a0", "ia"), (0, "a1", "ia"), (0, "a2", "ia"))
    await settle(lambda: sink.started == ["a0"])
    h.deliveries.drop()
    h.offsets[0] = 0  # nothing of partition 0 was committed
    h.feed((0, "a0", "ia"), (0, "a1", "ia"), (0, "a2", "ia"))
    await asyncio.sleep(0.01)
    sink.release("a0", "a1", "a2")
    await settle(lambda: len(h.acked) == 4)
    assert sink.started == ["a0", "a0", "a1", "a2"]
    # The first a0 is done too; a lane ignores it (its acks moved to a new epoch when it
    # read the partition again: streams/lane.py LaneAcks).
    assert sorted(h.acked) == [(0, 0), (0, 0), (0, 1), (0, 2)]
    h.idle()


async def test_other_partitions_keep_flowing_after_a_revocation() -> None:
    sink = Gated(auto=True)
    h = Harness(sink)
    h.feed((1, "b0", "ib"), (1, "b1", "ib"))
    await settle(lambda: len(h.acked) == 2)
    h.revoke(0)  # a partition this worker had nothing of
    h.deliveries.drop({("alertrelay-deliver-slack", 1)})  # another type's topic
    h.feed((1, "b2", "ib"))
    await settle(lambda: len(h.acked) == 3)
    assert h.acked == [(1, 0), (1, 1), (1, 2)]
    h.idle()


async def test_a_delivery_cancelled_before_its_task_first_ran_gives_everything_back() -> None:
    """The lane hands a whole read over before any of its tasks runs: a revocation right
    then cancels them before their bodies run; the done callback still returns the
    backlog count."""
    sink = Gated(auto=True)
    h = Harness(sink)
    h.feed((0, "a0", "ia"), (0, "a1", "ia"), (1, "b0", "ib"))
    assert h.deliveries.in_flight == 3
    assert all(job.flight.waiting for job in h.deliveries._jobs.values())
    h.revoke(0)
    await settle(lambda: not h.deliveries._jobs)
    assert sink.started == ["b0"]
    assert h.statuses() == {"b0": ["delivered"]}
    assert h.acked == [(1, 0)]
    h.idle()


async def test_deliveries_over_the_backlog_are_parked() -> None:
    """a1 goes over its integration's backlog and is parked: done once parked. A
    revocation while a0 is on the wire: a0 ends and is done, the parked copy stays."""
    sink = Gated()
    h = Harness(sink, per_integration_backlog=1)
    h.feed((0, "a0", "ia"), (0, "a1", "ia"))
    await settle(lambda: sink.started == ["a0"] and len(h.parked) == 1)
    assert [d.alert.alert_id for d in h.parked] == ["a1"]
    assert h.parked[0].not_before is not None
    assert h.acked == [(0, 1)]
    h.revoke(0)
    sink.release("a0")
    await settle(lambda: not h.deliveries._jobs)
    assert h.acked == [(0, 1), (0, 0)]
    h.idle()


async def test_an_unreadable_record_is_dead_lettered_and_done() -> None:
    sink = Gated(auto=True)
    h = Harness(sink)
    h.submit(b"{not json", (TOPIC, 2, 7), lambda: h.acked.append((2, 7)))
    await settle(lambda: h.acked == [(2, 7)])
    [letter] = h.reporter.dead
    assert letter.stage == "deliver" and letter.integration_type == "webhook"
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (TOPIC, 2, 7)
    assert letter.reason.startswith("unreadable delivery record: invalid JSON")
    assert sink.started == []
    h.idle()


async def test_a_delivery_waiting_for_an_in_process_retry_is_cancelled() -> None:
    """Without parking (tools, tests), a retryable failure waits in place: that wait is
    cancelled on revocation. The failed attempt was reported; nothing more is."""
    sink = Gated(auto=True)
    sink.fail = {"a0"}
    h = Harness(sink, parking=False, retry=RetryPolicy(max_attempts=5, base_delay=30))
    h.feed((0, "a0", "ia"))
    await settle(lambda: h.statuses() == {"a0": ["retrying"]})
    await asyncio.sleep(0.01)
    h.revoke(0)
    await settle(lambda: not h.deliveries._jobs)
    assert sink.started == ["a0"]
    assert h.statuses() == {"a0": ["retrying"]}
    assert h.reporter.dead == [] and h.acked == []
    h.idle()


async def test_room_for_a_read_waits_for_deliveries_to_end() -> None:
    sink = Gated()
    h = Harness(sink, max_in_flight=4)
    h.feed((0, "a0", "i0"), (0, "a1", "i1"), (0, "a2", "i2"))
    waiting = asyncio.create_task(h.deliveries.wait_for_room(2))  # needs in-flight < 2
    await asyncio.sleep(0.02)
    assert not waiting.done()
    sink.release("a0")
    await asyncio.sleep(0.02)
    assert not waiting.done()  # two still in flight
    sink.release("a1")
    await asyncio.wait_for(waiting, 1)
    sink.release("a2")
    await settle(lambda: not h.deliveries._jobs)
    h.idle()


# ─── the lane ─────────────────────────────────────────────────────────────────────────


def lane(sink: Gated, **settings: Any) -> tuple[DeliveryLane, Harness]:
    h = Harness(sink, **settings)
    rules = RouteRules(4, SETTINGS.alerts_by_tenant_topic, SETTINGS.replay_topic)
    delivery_lane = DeliveryLane(h.settings, {}, rules, h.deliveries, h.reporter, ())  # type: ignore[arg-type]
    return delivery_lane, h


async def test_the_lane_reads_its_type_s_topic_on_the_config_partitions() -> None:
    delivery_lane, _ = lane(Gated(auto=True))
    assert delivery_lane.topics == {TOPIC}
    assert delivery_lane.group == f"{SETTINGS.app_id}-delivery"
    delivery_lane.on_assigned([TP(SETTINGS.configs_by_tenant_topic, 1), TP("other", 2)])
    assert delivery_lane._wanted == {(TOPIC, 1)}


async def test_the_lane_commits_only_up_to_the_first_delivery_not_done() -> None:
    sink = Gated()
    delivery_lane, h = lane(sink)
    delivery_lane.acks.reset({(TOPIC, 0): 10})
    delivery_lane._take([Msg(10 + i, record(f"a{i}", f"i{i}"), 0, TOPIC) for i in range(3)])
    await delivery_lane._after_read()
    await settle(lambda: len(sink.started) == 3)
    sink.release("a1", "a2")
    await settle(lambda: h.deliveries.in_flight == 1)
    assert delivery_lane.acks.position((TOPIC, 0)) == 10  # a0 is still on the wire
    sink.release("a0")
    await settle(lambda: h.deliveries.in_flight == 0)
    assert delivery_lane.acks.position((TOPIC, 0)) == 13


async def test_records_of_a_revoked_partition_are_not_delivered_and_not_committed() -> None:
    sink = Gated()
    delivery_lane, h = lane(sink)
    delivery_lane.on_assigned([TP(SETTINGS.configs_by_tenant_topic, 0)])
    delivery_lane._assigned, delivery_lane._wanted = frozenset({(TOPIC, 0)}), None
    delivery_lane.acks.reset({(TOPIC, 0): 0})
    delivery_lane._take([Msg(i, record(f"a{i}", "ia"), 0, TOPIC) for i in range(2)])
    await delivery_lane._after_read()
    await settle(lambda: sink.started == ["a0"])
    delivery_lane.on_revoked([TP(SETTINGS.configs_by_tenant_topic, 0)])
    sink.release("a0")
    await settle(lambda: not h.deliveries._jobs)
    assert sink.started == ["a0"]  # a1 was waiting: cancelled
    delivery_lane.acks.reset({})  # the lane applies the new (empty) assignment
    delivery_lane._take([Msg(2, record("a2", "ia"), 0, TOPIC)])  # read before it stopped
    await delivery_lane._after_read()
    await asyncio.sleep(0.01)
    assert sink.started == ["a0"] and h.acked == []
    h.idle()


async def test_at_revocation_the_lane_lets_deliveries_on_the_wire_end_and_commits_them() -> None:
    """What a0 delivered after the revocation is committed (streams/pipeline.py awaits
    `commit_revoked` inside faust's rebalance): the new owner starts at a1, not a0."""
    sink = Gated()
    delivery_lane, h = lane(sink)
    delivery_lane._consumer = consumer = FakeConsumer()
    delivery_lane._assigned = frozenset({(TOPIC, 0)})
    delivery_lane.acks.reset({(TOPIC, 0): 0})
    delivery_lane._take([Msg(i, record(f"a{i}", "ia"), 0, TOPIC) for i in range(2)])
    await delivery_lane._after_read()
    await settle(lambda: sink.started == ["a0"])
    delivery_lane.on_revoked([TP(SETTINGS.configs_by_tenant_topic, 0)])
    asyncio.get_running_loop().call_later(0.05, sink.release, "a0")
    await delivery_lane.commit_revoked()
    assert [(tp.partition, tp.offset) for tp in consumer.commits[-1]] == [(0, 1)]
    assert sink.started == ["a0"]  # a1 was waiting: cancelled, read again by the new owner
    h.idle()


async def test_a_busy_integration_holds_the_lane_until_one_of_its_deliveries_ends() -> None:
    """Backlog 2: a2 waits (and b0 behind it, in offset order) instead of being parked;
    when a0 ends, a2 and b0 start and the lane reads on."""
    sink = Gated()
    delivery_lane, h = lane(sink, per_integration_backlog=2)
    delivery_lane.acks.reset({(TOPIC, 0): 0})
    names = [("a0", "ia"), ("a1", "ia"), ("a2", "ia"), ("b0", "ib")]
    delivery_lane._take([Msg(i, record(a, n), 0, TOPIC) for i, (a, n) in enumerate(names)])
    await delivery_lane._after_read()
    await settle(lambda: sink.started == ["a0"])  # a1 waits for ia's turn (concurrency 1)
    reading = asyncio.create_task(delivery_lane._before_next_read())
    await asyncio.sleep(0.05)
    assert not reading.done() and len(delivery_lane._waiting) == 2
    sink.release("a0", "a1", "a2", "b0")
    await asyncio.wait_for(reading, 1)
    await settle(lambda: not h.deliveries._jobs)
    assert sorted(sink.started) == ["a0", "a1", "a2", "b0"] and h.parked == []
    assert delivery_lane.acks.position((TOPIC, 0)) == 4


async def test_an_integration_that_stays_busy_is_parked_and_the_lane_goes_on() -> None:
    """ia never answers: its third record waits `park_after`, is parked, and ia's later
    records are parked at once; ib's records behind them are delivered."""
    sink = Gated()
    delivery_lane, h = lane(sink, per_integration_backlog=2)
    delivery_lane.park_after = 0.05
    delivery_lane.acks.reset({(TOPIC, 0): 0})
    names = [("a0", "ia"), ("a1", "ia"), ("a2", "ia"), ("a3", "ia"), ("b0", "ib")]
    delivery_lane._take([Msg(i, record(a, n), 0, TOPIC) for i, (a, n) in enumerate(names)])
    await delivery_lane._after_read()
    started = time.monotonic()
    await asyncio.wait_for(delivery_lane._before_next_read(), 2)
    assert time.monotonic() - started < 1.0  # one wait, not one per record
    assert [d.alert.alert_id for d in h.parked] == ["a2", "a3"]
    sink.release("b0")
    await settle(lambda: "b0" in sink.finished)
    assert delivery_lane.acks.position((TOPIC, 0)) == 0  # a0 and a1 still in flight
    sink.release("a0", "a1")
    await settle(lambda: not h.deliveries._jobs)
    assert delivery_lane.acks.position((TOPIC, 0)) == 5


# ─── the runner ───────────────────────────────────────────────────────────────────────


def delivery(alert_id: str) -> Delivery:
    return Delivery.model_validate_json(record(alert_id, "ia"))


@pytest.mark.parametrize("parking", [True, False])
async def test_runner_cancelled_while_waiting_for_its_turn_sends_and_reports_nothing(
    parking: bool,
) -> None:
    """a0 is on the wire (the integration's only turn); meanwhile failures open the
    circuit and its cool-down passes, so the next delivery to ask would be the probe. a1
    waits for its turn and is cancelled: nothing sent, nothing reported, the turn comes
    back, and the breaker was not left waiting for a probe that never went out."""
    sink = Gated()
    reporter = Recorder()
    parked: list[Delivery] = []

    async def park(d: Delivery, delay: float) -> None:
        parked.append(d)

    breakers = Breakers(threshold=1, cooldown=0.0)
    runner = DeliveryRunner(
        sink,
        RetryPolicy(),
        reporter,
        BOX,
        per_integration_concurrency=1,
        park=park if parking else None,
        breakers=breakers,
    )
    first, second = Flight(), Flight()
    busy = asyncio.create_task(runner.deliver(delivery("a0"), first))
    await settle(lambda: sink.started == ["a0"])
    assert not first.waiting  # on the wire
    breakers.failure("t/ia", retryable=True)  # open; cool-down 0: the next one probes
    waiting = asyncio.create_task(runner.deliver(delivery("a1"), second))
    await asyncio.sleep(0.01)
    assert second.waiting
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not breakers.get("t/ia").probing
    gate = runner._gates["t/ia"]
    assert gate._value == 0 and not gate._waiters  # a0 still holds it
    sink.release("a0")
    await busy
    assert sink.started == ["a0"]
    assert [s.alert_id for s in reporter.statuses] == ["a0"]
    assert reporter.dead == [] and parked == []
    assert gate._value == 1 and not gate._waiters


async def test_the_next_reader_skips_what_the_last_commit_says_is_done() -> None:
    """Commit with a1 on the wire and a0, a2 done; a lane starting from that commit
    takes a1 and a3 only (at the position, a0 is not read at all)."""
    sink = Gated()
    first, _ = lane(sink)
    first._consumer = consumer = FakeConsumer()
    first.acks.reset({(TOPIC, 0): 0})
    first._take([Msg(i, record(f"a{i}", f"i{i}"), 0, TOPIC) for i in range(3)])
    await first._after_read()
    sink.release("a0", "a2")
    while first.deliveries.in_flight > 1:
        await first.deliveries.ended()
    await first._commit()
    [committed] = consumer.commits[-1]
    assert (committed.offset, committed.metadata) == (1, "v1 2 0")
    sink.release("a1")

    class Committed(FakeConsumer):
        def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
            return [committed]

    second_sink = Gated(auto=True)
    second, _ = lane(second_sink)
    second._consumer = Committed()
    starts = second._starts(frozenset({(TOPIC, 0)}))
    assert starts == {(TOPIC, 0): 1}
    second.acks.reset(starts)
    second._take([Msg(i, record(f"a{i}", f"i{i}"), 0, TOPIC) for i in (1, 2, 3)])
    await second._after_read()
    while second.deliveries.in_flight:
        await second.deliveries.ended()
    assert second_sink.started == ["a1", "a3"]  # a2 was done: not sent again
    assert second.acks.position((TOPIC, 0)) == 4
