"""What consumes the delivery topics: per-alert deliveries and the batching agent.

Per-alert types' delivery topics are read by delivery lanes (streams/delivery_lane.py)
that hand each record to `PerAlertDeliveries`. Batching types' delivery topics only hold
records routed before the batch lane existed; `BatchingAgent` empties them through faust,
taking events without auto-ack (`noack_take`) and acking each only once its batch was
written or dead-lettered (DESIGN.md: `take` would ack a whole batch on return).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Literal

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

__all__ = ["BatchingAgent", "PerAlertDeliveries"]

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


def _read_or_reason(value: bytes) -> tuple[Delivery | None, str]:
    """The delivery record in `value`, or None and why it cannot be read."""
    try:
        return _read_delivery(value), ""
    except orjson.JSONDecodeError as exc:
        return None, f"unreadable delivery record: invalid JSON: {exc.msg}"
    except ValidationError as exc:
        return None, f"unreadable delivery record: {format_errors(exc)}"


def _unreadable_letter(
    kind: str, reason: str, value: bytes, topic: str, partition: int, offset: int
) -> DeadLetter:
    metrics.DLQ.labels(kind, "deliver").inc()
    return DeadLetter(
        reason=reason,
        stage="deliver",
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        at=time.time(),
        integration_type=kind,
        payload_b64=base64.b64encode(value[: 64 * 1024]).decode() or None,
    )


async def _parse(event: EventT, reporter: Reporter, kind: str) -> Delivery | None:
    """A delivery record, or None after dead-lettering one that cannot be read.

    Delivery records are written by our routing lane, but anyone who can produce to a
    delivery topic can write garbage there: what does not parse or validate is
    dead-lettered with the reason, never delivered.
    """
    msg = event.message
    value = msg.value or b""
    delivery, reason = _read_or_reason(value)
    if delivery is None:
        letter = _unreadable_letter(kind, reason, value, msg.topic, msg.partition, msg.offset)
        await reporter.dead_letter(letter)
    return delivery


TopicPart = tuple[str, int]
Offered = Literal["started", "parked", "dead-lettered", "busy"]


@dataclass(eq=False)
class _Job:
    """One delivery running as a task, and what its end gives back."""

    tp: TopicPart
    done: Callable[[], None]
    key: str
    flight: Flight
    revoked: bool = False


class PerAlertDeliveries:
    """Delivers each record of a per-alert type's delivery topic as its own task.

    The delivery lane (streams/delivery_lane.py) hands every record over (`read`, then
    `offer`) with a `done` to call once its alert was delivered, parked or
    dead-lettered: the lane commits only up to the oldest record not done, so nothing in
    flight is committed past. Fairness: one integration may have
    `per_integration_backlog` deliveries in flight or waiting; a record beyond that is
    refused (the lane waits for that integration's deliveries to end) until it is
    `late`, then parked for a second (with parking), so a busy destination slows
    reading a little and a stuck one holds no other integration's alerts.

    On `drop` of partitions (revoked, or read again from the last commit), the
    deliveries that have not started their request yet are cancelled: the records are
    read again. A request already on the wire finishes, reports and is `done`: a lane
    committing at revocation waits for them (`settle`) so that their new owner does not
    send them again (the lane's acks ignore a `done` that comes after its next
    assignment).
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
        self.kind = sink.type_name
        self._backlog: Counter[str] = Counter()
        self._jobs: dict[asyncio.Task[None], _Job] = {}
        self._room = asyncio.Event()
        self._ended = asyncio.Event()
        self._room_below = settings.max_in_flight
        self._deferred = metrics.DEFERRED.labels(self.kind)

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    def read(self, value: bytes) -> tuple[Delivery | None, str]:
        """The delivery record in `value`, or None and why it cannot be read."""
        return _read_or_reason(value)

    def offer(
        self,
        delivery: Delivery | None,
        reason: str,
        value: bytes,
        where: tuple[str, int, int],
        done: Callable[[], None],
        *,
        late: bool,
    ) -> Offered:
        """Start what `read` gave for the record read at `where`: "busy" (nothing done)
        when its integration's backlog is full and it is not `late` yet; a late one is
        "parked" for a second instead (with parking; without, it waits in the backlog)."""
        topic, partition, offset = where
        if delivery is None:
            letter = _unreadable_letter(self.kind, reason, value, topic, partition, offset)
            self._start(self._dead_letter(letter), (topic, partition), "", done)
            return "dead-lettered"
        key = delivery.integration.key
        if self.park is not None and self._backlog[key] >= self.settings.per_integration_backlog:
            if not late:
                return "busy"
            self._deferred.inc()
            parked = delivery.model_copy(update={"not_before": time.time() + 1})
            self._start(self._park(parked), (topic, partition), "", done)
            return "parked"
        flight = Flight()
        self._backlog[key] += 1
        self._start(self._deliver(delivery, flight), (topic, partition), key, done, flight)
        return "started"

    async def ended(self) -> None:
        """Until some delivery ends."""
        self._ended.clear()
        await self._ended.wait()

    def _start(
        self,
        work: Coroutine[Any, Any, None],
        tp: TopicPart,
        key: str,
        done: Callable[[], None],
        flight: Flight | None = None,
    ) -> None:
        task = asyncio.create_task(work)
        # A parking or dead-lettering job is never called off: it has no flight.
        self._jobs[task] = _Job(tp, done, key, flight or _NEVER_WAITING)
        task.add_done_callback(self._finished)

    async def wait_for_room(self, headroom: int) -> None:
        """Until `headroom` more deliveries fit under `max_in_flight`."""
        limit = max(1, self.settings.max_in_flight - headroom)
        while len(self._jobs) >= limit:
            self._room_below = limit
            self._room.clear()
            await self._room.wait()

    async def _deliver(self, delivery: Delivery, flight: Flight) -> None:
        try:
            await self.runner.deliver(delivery, flight)
        except Exception as exc:  # a bug must still end the alert somewhere visible
            log.exception("internal error delivering %s", delivery.alert.alert_id)
            await self.reporter.dead_letter(
                dead_letter_for(delivery, f"internal error: {type(exc).__name__}", 0)
            )

    async def _park(self, delivery: Delivery) -> None:
        assert self.park is not None
        await self.park(delivery, 1.0)

    async def _dead_letter(self, letter: DeadLetter) -> None:
        await self.reporter.dead_letter(letter)

    def _finished(self, task: asyncio.Task[None]) -> None:
        # A done callback, not a `finally` in the task: a task cancelled before it first
        # ran never enters its body, and its backlog count must come back all the same.
        job = self._jobs.pop(task)
        if job.key:
            self._backlog[job.key] -= 1
            if self._backlog[job.key] <= 0:
                del self._backlog[job.key]
        self._ended.set()
        if len(self._jobs) < self._room_below:
            self._room.set()
        if not task.cancelled() and task.exception() is not None:  # BaseException only
            log.error("delivery task of %s ended with %r", job.key, task.exception())
        if not job.revoked:
            job.done()

    async def settle(self, within: float) -> None:
        """Until every delivery under way has ended, at most `within` seconds."""
        deadline = time.monotonic() + within
        while self._jobs and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ended(), left)

    def drop(self, tps: Iterable[TopicPart] | None = None) -> None:
        """Forget the records of these partitions (all when None): cancel their
        deliveries that have not sent anything yet; the others finish without `done`."""
        mine = None if tps is None else set(tps)
        cancelled = finishing = 0
        for task, job in list(self._jobs.items()):
            if job.revoked or (mine is not None and job.tp not in mine):
                continue
            if job.flight.waiting:
                job.revoked = True
                task.cancel()
                cancelled += 1
            else:
                finishing += 1
        if cancelled or finishing:
            log.info(
                "%s: cancelled %d deliveries not yet sent; %d on the wire finish",
                self.kind,
                cancelled,
                finishing,
            )


_NEVER_WAITING = Flight()
_NEVER_WAITING.waiting = False


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
