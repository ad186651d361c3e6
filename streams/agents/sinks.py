"""Sink agents: one per integration type, consuming that type's delivery topic.

Both shapes take events without auto-ack (`noack_take`) and ack each one only once its
alert was delivered or dead-lettered, so a crash at any point re-reads it (DESIGN.md:
`take` would ack a whole batch on return, `concurrency > 1` commits past in-flight work).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from faust.types import TP, EventT, StreamT
from pydantic import ValidationError

from schemas.codec import format_errors
from schemas.models import DeadLetter, Delivery, IntegrationConfig
from sinks.base import BatchingSink, PerAlertSink
from sinks.secretbox import SecretBox
from streams import metrics
from streams.acks import OrderedAcks
from streams.batch_writer import BatchWriter
from streams.batcher import Pending, release_payload
from streams.breaker import Breakers
from streams.delivery import (
    DeliveryRunner,
    Flight,
    Park,
    Reporter,
    dead_letter_for,
)
from streams.settings import Settings

__all__ = ["BatchingAgent", "PerAlertAgent"]

log = logging.getLogger(__name__)


_CONFIG_CACHE_SIZE = 4096
_configs: dict[bytes, IntegrationConfig] = {}
"""Validated config snapshots by the exact JSON bytes they were read from (oldest first)."""


def _read_delivery(value: bytes) -> Delivery:
    """The delivery record in `value`, validated; its config snapshot validated once.

    Every record of an integration carries the same snapshot (until its version
    changes), so the validated `IntegrationConfig` is kept, keyed by the snapshot's own
    bytes (orjson output of what was read): a record is given a cached config only when
    its snapshot is identical to the one that was validated, whatever version it claims,
    so a forged or corrupt record cannot borrow another one's config. Everything else
    (the alert, the routing fields) is validated for every record. Raises
    orjson.JSONDecodeError or ValidationError.
    """
    data = orjson.loads(value)
    raw = data.get("integration") if isinstance(data, dict) else None
    if not isinstance(raw, dict):
        return Delivery.model_validate(data)  # fails, with the reason
    try:
        key = orjson.dumps(raw)
    except orjson.JSONEncodeError:  # nested deeper than orjson writes: never ours
        return Delivery.model_validate(data)
    config = _configs.get(key)
    if config is None:
        delivery = Delivery.model_validate(data)
        if len(_configs) >= _CONFIG_CACHE_SIZE:
            del _configs[next(iter(_configs))]
        _configs[key] = delivery.integration
        return delivery
    # A model instance is taken as it is (pydantic does not revalidate instances).
    data["integration"] = config
    return Delivery.model_validate(data)


async def _parse(event: EventT, reporter: Reporter, kind: str) -> Delivery | None:
    """A delivery record, or None after dead-lettering one that cannot be read.

    Delivery records are written by our routing lane, but anyone who can produce to a
    delivery topic can write garbage there: what does not parse or validate is
    dead-lettered with the reason, never delivered.
    """
    msg = event.message
    try:
        return _read_delivery(msg.value or b"")
    except orjson.JSONDecodeError as exc:
        reason = f"unreadable delivery record: invalid JSON: {exc.msg}"
    except ValidationError as exc:
        reason = f"unreadable delivery record: {format_errors(exc)}"
    metrics.DLQ.labels(kind, "deliver").inc()
    await reporter.dead_letter(
        DeadLetter(
            reason=reason,
            stage="deliver",
            source_topic=msg.topic,
            source_partition=msg.partition,
            source_offset=msg.offset,
            at=time.time(),
            integration_type=kind,
            payload_b64=base64.b64encode((msg.value or b"")[: 64 * 1024]).decode() or None,
        )
    )
    return None


def _stale(event: EventT) -> bool:
    """Read before a rebalance that is under way or has happened since.

    faust's own test (`Stream.__anext__`), for events it had already handed over: those
    waiting in the take buffer or in the batch being worked through. Their partition was
    revoked (a rebalance revokes every partition, even those assigned again), its
    pending acks forgotten, and its owner reads them again from the last commit.
    """
    app = event.app
    return (
        not app.flow_control.is_active()
        or event.message.generation_id != app.consumer_generation_id
    )


@dataclass(eq=False)
class _Job:
    """One delivery running as a task, and what its end gives back."""

    tp: TP
    slot: Any
    key: str
    flight: Flight
    revoked: bool = False


class PerAlertAgent:
    """Delivers each record of a per-alert type's delivery topic as its own task.

    Each event is acked when its own delivery ends: faust commits only up to the oldest
    un-acked offset, so nothing in flight is committed past, and a slow destination holds
    no other integration's alerts. Fairness: one integration may have
    `per_integration_backlog` deliveries in flight or waiting; beyond that (with parking)
    its deliveries are parked for a second instead.

    On revocation of its partitions (`on_revoked`), their pending acks are forgotten and
    the deliveries that have not started their request yet are cancelled: the new owner
    reads them again from the last commit. A request already on the wire finishes and
    reports; only its ack is dropped.
    """

    def __init__(
        self,
        sink: PerAlertSink[Any],
        settings: Settings,
        reporter: Reporter,
        box: SecretBox,
        park: Park | None = None,
    ) -> None:
        self.sink = sink
        self.settings = settings
        self.reporter = reporter
        self.park = park
        self.runner = DeliveryRunner(
            sink,
            settings.retry,
            reporter,
            box,
            settings.per_integration_concurrency,
            park=park,
            breakers=Breakers(settings.breaker_threshold, settings.breaker_cooldown),
        )
        self.topic_name = settings.delivery_topic(sink.type_name)
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._backlog: Counter[str] = Counter()
        self._jobs: dict[asyncio.Task[None], _Job] = {}
        self._acks = OrderedAcks()

    async def agent(self, stream: StreamT[Any]) -> None:
        settings, park, kind = self.settings, self.park, self.sink.type_name
        async for events in stream.noack_take(settings.take_max, within=settings.take_within):
            for event in events:
                if _stale(event):
                    continue  # not tracked: its partition's owner reads it again
                slot = self._acks.track(event)
                delivery = await _parse(event, self.reporter, kind)
                if delivery is None:
                    self._acks.done(slot)
                    continue
                key = delivery.integration.key
                if park is not None and self._backlog[key] >= settings.per_integration_backlog:
                    metrics.DEFERRED.labels(kind).inc()
                    await park(delivery.model_copy(update={"not_before": time.time() + 1}), 1.0)
                    self._acks.done(slot)
                    continue
                await self._slots.acquire()  # backpressure: stop taking when too much is in flight
                if _stale(event):  # revoked while it waited: its ack was forgotten
                    self._slots.release()
                    continue
                self._backlog[key] += 1
                flight = Flight()
                task = asyncio.create_task(self._deliver(delivery, flight))
                self._jobs[task] = _Job(event.message.tp, slot, key, flight)
                task.add_done_callback(self._finished)

    async def _deliver(self, delivery: Delivery, flight: Flight) -> None:
        try:
            await self.runner.deliver(delivery, flight)
        except Exception as exc:  # a bug must still end the alert somewhere visible
            log.exception("internal error delivering %s", delivery.alert.alert_id)
            await self.reporter.dead_letter(
                dead_letter_for(delivery, f"internal error: {type(exc).__name__}", 0)
            )

    def _finished(self, task: asyncio.Task[None]) -> None:
        # A done callback, not a `finally` in the task: a task cancelled before it first
        # ran never enters its body, and its slot and backlog must come back all the same.
        job = self._jobs.pop(task)
        self._backlog[job.key] -= 1
        if self._backlog[job.key] <= 0:
            del self._backlog[job.key]
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:  # BaseException only
            log.error("delivery task of %s ended with %r", job.key, task.exception())
        if not job.revoked:
            self._acks.done(job.slot)

    def on_revoked(self, revoked: Iterable[TP]) -> None:
        mine = {tp for tp in revoked if tp.topic == self.topic_name}
        if not mine:
            return
        self._acks.forget(mine)
        cancelled = finishing = 0
        for task, job in list(self._jobs.items()):
            if job.tp not in mine or job.revoked:
                continue
            job.revoked = True
            if job.flight.waiting:
                task.cancel()
                cancelled += 1
            else:
                finishing += 1
        if cancelled or finishing:
            log.info(
                "%s: revoked %d partitions; cancelled %d deliveries not yet sent, "
                "%d on the wire finish without an ack",
                self.sink.type_name,
                len(mine),
                cancelled,
                finishing,
            )


class BatchingAgent:
    """Buffers the records of a batching type's delivery topic and writes them.

    Alerts for batching integrations normally take the batch lane (streams/lane.py) and
    never reach a delivery topic; this agent empties what is there anyway (records
    routed by a version before the lane). Each record is acked once the batch holding
    it is written or dead-lettered, in offset order (`OrderedAcks`).
    """

    def __init__(
        self, sink: BatchingSink[Any], settings: Settings, reporter: Reporter, box: SecretBox
    ) -> None:
        self.sink = sink
        self.settings = settings
        self.reporter = reporter
        # Buffers of different integrations flush in any order; acks stay in offset order.
        self._acks = OrderedAcks()
        self.writer = BatchWriter(sink, settings, reporter, box, self._done)
        self.batcher = self.writer.batcher
        self.topic_name = settings.delivery_topic(sink.type_name)

    def _done(self, slots: list[Any]) -> None:
        for slot in slots:
            self._acks.done(slot)

    async def agent(self, stream: StreamT[Any]) -> None:
        settings, writer = self.settings, self.writer
        async for events in stream.noack_take(settings.take_max, within=settings.take_within):
            ready: list[Pending] = []
            for event in events:
                slot = self._acks.track(event)
                delivery = await _parse(event, self.reporter, self.sink.type_name)
                if delivery is None:
                    self._acks.done(slot)
                    continue
                if self.batcher.is_duplicate(delivery, event.message.partition):
                    self._acks.done(slot)  # its original holds the earlier offset
                    continue
                release_payload(event)  # from here on the event is only an ack handle
                pending = self.batcher.add(delivery, slot, event.message.partition)
                if pending is not None:
                    ready.append(pending)
            ready.extend(self.batcher.due())
            writer.spawn(ready)
            await writer.wait_for_room()

    @property
    def held(self) -> int:
        return self.writer.held

    async def flush(self, ready: list[Pending]) -> None:
        await self.writer.flush(ready)

    async def tick(self) -> None:
        """Timer: write batches whose time limit passed although no new record came."""
        self.writer.spawn(self.batcher.due())

    def on_revoked(self, revoked: Iterable[TP]) -> None:
        mine = [tp.partition for tp in revoked if tp.topic == self.topic_name]
        self._acks.forget(tp for tp in revoked if tp.topic == self.topic_name)
        if mine:
            dropped = self.writer.drop_partitions(mine)
            log.info("dropped %d %s buffers of revoked partitions", dropped, self.sink.type_name)
