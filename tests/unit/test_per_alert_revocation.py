"""Per-alert sink agent on revocation of its partitions (issue #6, duplicates at rebalance).

Deliveries of a revoked partition that have not started their request are cancelled and
never sent; a request already on the wire finishes and reports, but its ack is dropped;
the in-flight slots, the per-integration backlog and the per-integration limit all come
back; nothing is reported for a cancelled delivery; other partitions go on unaffected.

The faust parts are faked: a stream whose `noack_take` yields the batches a test feeds it,
and events that know their partition, their generation and the app's flow control.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from faust.types import TP

from schemas.models import Alert, Delivery, IntegrationConfig, idempotency_key
from sinks.base import PerAlertSink
from sinks.errors import RetryableError
from sinks.retry import RetryPolicy
from sinks.secretbox import SecretBox, generate_key_spec
from sinks.webhook.config import WebhookSettings
from streams.agents.sinks import PerAlertAgent
from streams.breaker import Breakers
from streams.delivery import DeliveryRunner, Flight
from streams.settings import Settings
from tests.fakes.reporter import Recorder

BOX = SecretBox.parse(generate_key_spec())
TOPIC = Settings().delivery_topic("webhook")


# ─── fakes ────────────────────────────────────────────────────────────────────────────


class FlowControl:
    def __init__(self) -> None:
        self.active = True

    def is_active(self) -> bool:
        return self.active


class App:
    """What the agent reads of faust's App: flow control and the consumer generation."""

    def __init__(self) -> None:
        self.flow_control = FlowControl()
        self.consumer_generation_id = 1

    def rebalance(self) -> None:
        """As faust does on revocation: the flow stops, then a new generation starts."""
        self.flow_control.active = False
        self.consumer_generation_id += 1

    def resume(self) -> None:
        self.flow_control.active = True


class Message:
    def __init__(self, partition: int, offset: int, value: bytes, generation_id: int) -> None:
        self.topic = TOPIC
        self.partition = partition
        self.offset = offset
        self.value = value
        self.generation_id = generation_id
        self.tp = TP(TOPIC, partition)


class Event:
    def __init__(self, app: App, message: Message, acked: list[tuple[int, int]]) -> None:
        self.app = app
        self.message = message
        self._acked = acked

    def ack(self) -> None:
        self._acked.append((self.message.partition, self.message.offset))


class Stream:
    """`noack_take` yields what `feed` gets; `between` runs when the agent asks for the
    next batch, before anything else (tasks created for the last batch not yet started)."""

    def __init__(self) -> None:
        self.batches: asyncio.Queue[list[Event] | None] = asyncio.Queue()
        self.between: Callable[[], None] | None = None

    def feed(self, *events: Event) -> None:
        self.batches.put_nowait(list(events))

    async def noack_take(self, max_: int, within: float) -> AsyncIterator[list[Event]]:
        while True:
            if self.between is not None:
                hook, self.between = self.between, None
                hook()
            batch = await self.batches.get()
            if batch is None:
                return
            yield batch


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
    def __init__(self, sink: Gated, parking: bool = True, **settings: Any) -> None:
        self.app = App()
        self.stream = Stream()
        self.reporter = Recorder()
        self.acked: list[tuple[int, int]] = []
        self.parked: list[Delivery] = []
        self.sink = sink
        self.settings = Settings(**{"per_integration_concurrency": 1, **settings})

        async def park(delivery: Delivery, delay: float) -> None:
            self.parked.append(delivery)

        self.agent = PerAlertAgent(
            sink, self.settings, self.reporter, BOX, park if parking else None
        )
        self.task: asyncio.Task[None] | None = None
        self.offsets: dict[int, int] = {}

    def event(self, partition: int, alert_id: str, integration_id: str) -> Event:
        offset = self.offsets.get(partition, 0)
        self.offsets[partition] = offset + 1
        value = record(alert_id, integration_id)
        message = Message(partition, offset, value, self.app.consumer_generation_id)
        return Event(self.app, message, self.acked)

    def start(self) -> None:
        self.task = asyncio.create_task(self.agent.agent(self.stream))  # type: ignore[arg-type]

    async def stop(self) -> None:
        self.stream.batches.put_nowait(None)
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)  # the agent itself never raised

    def revoke(self, *partitions: int) -> None:
        self.agent.on_revoked([TP(TOPIC, p) for p in partitions])

    def statuses(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for s in self.reporter.statuses:
            out.setdefault(s.alert_id, []).append(s.outcome.value)
        return out

    def idle(self) -> None:
        """Every in-flight slot, backlog count and per-integration turn is back."""
        agent = self.agent
        assert agent._jobs == {}
        assert agent._slots._value == self.settings.max_in_flight
        assert not agent._backlog
        for gate in agent.runner._gates.values():
            assert gate._value == self.settings.per_integration_concurrency
            assert not gate._waiters


async def settle(until: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not until():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


# ─── the agent ────────────────────────────────────────────────────────────────────────


async def test_queued_deliveries_of_a_revoked_partition_are_never_sent() -> None:
    """Partition 0: a0 on the wire, a1 and a2 waiting for the integration's turn.
    Partition 1 (another integration): b0 on the wire, b1 waiting. Revoking partition 0
    cancels a1 and a2; a0 finishes and reports, without an ack; partition 1 goes on."""
    sink = Gated()
    h = Harness(sink)
    h.start()
    h.stream.feed(
        h.event(0, "a0", "ia"),
        h.event(0, "a1", "ia"),
        h.event(1, "b0", "ib"),
        h.event(0, "a2", "ia"),
        h.event(1, "b1", "ib"),
    )
    await settle(lambda: sink.started == ["a0", "b0"])
    assert h.agent._backlog == {"t/ia": 3, "t/ib": 2}

    h.revoke(0)
    await asyncio.sleep(0.01)
    assert len(h.agent._jobs) == 3  # a0 on the wire; b0 on the wire, b1 waiting
    assert h.agent._backlog == {"t/ia": 1, "t/ib": 2}

    sink.release("a0", "b0", "b1")
    await settle(lambda: not h.agent._jobs)
    assert sink.started == ["a0", "b0", "b1"]  # a1 and a2 never sent
    assert h.statuses() == {"a0": ["delivered"], "b0": ["delivered"], "b1": ["delivered"]}
    assert h.reporter.dead == [] and h.parked == []
    assert h.acked == [(1, 0), (1, 1)]  # a0's ack dropped: its new owner reads it again
    h.idle()
    await h.stop()


async def test_a_partition_assigned_again_is_read_again_and_acked() -> None:
    """A rebalance revokes every partition, and may give one straight back: this worker
    is then its new owner and reads again from the last commit. The cancelled deliveries'
    acks were forgotten, so they do not hold back the acks of the records read again."""
    sink = Gated()
    h = Harness(sink)
    h.start()
    h.stream.feed(h.event(0, "a0", "ia"), h.event(0, "a1", "ia"), h.event(0, "a2", "ia"))
    await settle(lambda: sink.started == ["a0"])
    h.app.rebalance()
    h.revoke(0)
    h.app.resume()
    h.offsets[0] = 0  # nothing of partition 0 was committed
    h.stream.feed(h.event(0, "a0", "ia"), h.event(0, "a1", "ia"), h.event(0, "a2", "ia"))
    await asyncio.sleep(0.01)
    sink.release("a0", "a1", "a2")
    await settle(lambda: len(h.acked) == 3)
    # a0 was on the wire at the revocation: sent twice (the one duplicate left);
    # a1 and a2 were waiting: sent once.
    assert sink.started == ["a0", "a0", "a1", "a2"]
    assert h.acked == [(0, 0), (0, 1), (0, 2)]
    h.idle()
    await h.stop()


async def test_other_partitions_keep_flowing_and_acking_after_a_revocation() -> None:
    sink = Gated(auto=True)
    h = Harness(sink)
    h.start()
    h.stream.feed(h.event(1, "b0", "ib"), h.event(1, "b1", "ib"))
    await settle(lambda: len(h.acked) == 2)
    h.revoke(0)  # a partition this worker had nothing of
    h.revoke(2)
    h.agent.on_revoked([TP("alertrelay-deliver-slack", 1)])  # another agent's topic
    h.stream.feed(h.event(1, "b2", "ib"))
    await settle(lambda: len(h.acked) == 3)
    assert h.acked == [(1, 0), (1, 1), (1, 2)]
    h.idle()
    await h.stop()


async def test_a_delivery_cancelled_before_its_task_first_ran_gives_everything_back() -> None:
    """Tasks made for a batch have not run yet when the agent asks for the next one: the
    revocation comes right then. Their bodies never run; the done callback still returns
    the in-flight slot and the backlog count."""
    sink = Gated(auto=True)
    h = Harness(sink)
    h.start()
    h.stream.between = lambda: None  # the first call, before any batch
    await asyncio.sleep(0)
    seen: list[int] = []

    def revoke_now() -> None:
        seen.append(len(h.agent._jobs))
        assert all(job.flight.waiting for job in h.agent._jobs.values())
        h.revoke(0)

    h.stream.feed(h.event(0, "a0", "ia"), h.event(0, "a1", "ia"), h.event(1, "b0", "ib"))
    h.stream.between = revoke_now
    await settle(lambda: seen != [] and not h.agent._jobs)
    assert seen == [3]
    assert sink.started == ["b0"]
    assert h.statuses() == {"b0": ["delivered"]}
    assert h.acked == [(1, 0)]
    h.idle()
    await h.stop()


async def test_events_read_before_the_rebalance_are_skipped_not_sent() -> None:
    """Events faust handed over before a rebalance (the take buffer, the rest of a batch)
    are skipped: not tracked, not sent, not acked. After the new assignment, the records
    read again are delivered as usual."""
    sink = Gated(auto=True)
    h = Harness(sink)
    before = [h.event(0, "a0", "ia"), h.event(0, "a1", "ia")]
    h.app.rebalance()
    h.revoke(0, 1)
    h.start()
    h.stream.feed(*before)  # still in the take buffer during the rebalance
    await asyncio.sleep(0.02)
    assert sink.started == [] and h.acked == []
    h.app.resume()
    h.offsets[0] = 0  # the new owner (this worker again) reads from the last commit
    h.stream.feed(h.event(0, "a0", "ia"), h.event(0, "a1", "ia"))
    await settle(lambda: len(h.acked) == 2)
    assert sink.started == ["a0", "a1"]
    assert h.acked == [(0, 0), (0, 1)]
    h.idle()
    await h.stop()


async def test_an_event_waiting_for_an_in_flight_slot_is_dropped_if_revoked_meanwhile() -> None:
    """max_in_flight 1: b0 holds the only slot and a0 waits for it in the agent loop.
    A rebalance revokes both partitions; when b0 ends, a0 gets the slot but is skipped."""
    sink = Gated()
    h = Harness(sink, max_in_flight=1)
    h.start()
    h.stream.feed(h.event(1, "b0", "ib"), h.event(0, "a0", "ia"))
    await settle(lambda: sink.started == ["b0"])
    h.app.rebalance()
    h.revoke(0, 1)
    sink.release("b0")
    await settle(lambda: not h.agent._jobs)
    await asyncio.sleep(0.01)
    assert sink.started == ["b0"]
    assert h.statuses() == {"b0": ["delivered"]}
    assert h.acked == []
    h.idle()
    await h.stop()


async def test_deliveries_over_the_backlog_are_parked_and_in_order_acks_still_hold() -> None:
    """A revocation between a deferral and the end of the delivery before it: the parked
    copy stays parked (it was produced), and no ack of the partition is given."""
    sink = Gated()
    h = Harness(sink, per_integration_backlog=1)
    h.start()
    h.stream.feed(h.event(0, "a0", "ia"), h.event(0, "a1", "ia"))
    await settle(lambda: sink.started == ["a0"] and len(h.parked) == 1)
    assert [d.alert.alert_id for d in h.parked] == ["a1"]
    assert h.acked == []  # a1 is done, but a0 before it is not
    h.revoke(0)
    sink.release("a0")
    await settle(lambda: not h.agent._jobs)
    assert h.acked == []
    h.idle()
    await h.stop()


async def test_a_delivery_waiting_for_an_in_process_retry_is_cancelled() -> None:
    """Without parking (tools, tests), a retryable failure waits in place: that wait is
    cancelled on revocation. The failed attempt was reported; nothing more is."""
    sink = Gated(auto=True)
    sink.fail = {"a0"}
    h = Harness(sink, parking=False, retry=RetryPolicy(max_attempts=5, base_delay=30))
    h.start()
    h.stream.feed(h.event(0, "a0", "ia"))
    await settle(lambda: h.statuses() == {"a0": ["retrying"]})
    await asyncio.sleep(0.01)
    h.revoke(0)
    await settle(lambda: not h.agent._jobs)
    assert sink.started == ["a0"]
    assert h.statuses() == {"a0": ["retrying"]}
    assert h.reporter.dead == [] and h.acked == []
    h.idle()
    await h.stop()


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
