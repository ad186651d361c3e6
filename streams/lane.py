"""The batch lane: alerts for batching integrations (S3, GCS, Splunk) go from the alerts
topics straight into their integration's buffers, without a delivery topic.

Why: through faust every alert costs a trip through its consumer, conductor, stream and
producer per pass, and the delivery-topic path took two passes (router, then sink agent)
plus a second parse of the alert (bench/analysis.md). The lane reads the same alerts in
bulk with librdkafka (confluent-kafka, in a thread of its own), routes them with the
router's own rules (`RouteRules`) and the config table, and hands them to the same batch
writers. The router keeps delivering per-alert types and dead-letters what cannot be
decoded; the lane skips such records.

Which partitions: exactly those of the alerts topics that faust assigned to this worker
(the router's), taken once faust has recovered the config table after each rebalance
(`on_rebalance_complete`) and dropped when they are revoked: the lane only ever reads
the tenants whose configs this worker holds.

Where it resumes: its own consumer group, `<app_id>-batching`, whose position for a
partition is the first alert read that is not yet written (or dead-lettered) — so a
crash re-reads what was only buffered, and the sinks' object naming turns the re-write
into a no-op (README, "written once"). The first time the lane reads a partition its
group has no position: it starts where faust's group is (an upgrade: what came before
was routed to the delivery topic, which `BatchingAgent` still empties), else at the
beginning (like faust), and commits that start at once.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import (  # type: ignore[import-untyped]
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaException,
    TopicPartition,
)
from faust.types import TableT

from schemas.codec import DecodeError, decode_alert
from schemas.models import DeadLetter, IntegrationConfig, idempotency_key
from sinks.base import BatchingSink, BatchRecord
from sinks.secretbox import SecretBox
from streams import metrics
from streams.agents.router import RouteRules
from streams.batch_writer import BatchWriter
from streams.batcher import Pending
from streams.delivery import Reporter
from streams.settings import Settings

__all__ = ["BatchLane", "LaneAcks"]

log = logging.getLogger(__name__)

TopicPart = tuple[str, int]
Handle = tuple[int, TopicPart, int]  # lane epoch, partition read, offset read
T = TypeVar("T")

READ_MAX = 5000  # records per read from librdkafka's queue
PREFETCH_KB = 8 * 1024  # what librdkafka may hold fetched ahead of us (per lane)


@dataclass
class _Read:
    pending: dict[int, int] = field(default_factory=dict)  # offset -> buffers holding it
    next: int = 0  # the offset after the last one read
    committed: int = -1

    @property
    def position(self) -> int:
        """How far the group may be committed: the first alert still buffered, else
        everything read (pending offsets were added in read order)."""
        return next(iter(self.pending), self.next)


class LaneAcks:
    """Per partition read: the alerts still waiting in a buffer, and how far the lane's
    group may be committed (the first of them, or everything read).

    Offsets are read in order, so the dict of pending offsets is in offset order and its
    first key is the position. Handles carry the epoch they were read in: a batch of an
    earlier assignment that finishes late moves nothing."""

    def __init__(self) -> None:
        self.epoch = 0
        self._parts: dict[TopicPart, _Read] = {}

    def reset(self, starts: dict[TopicPart, int]) -> None:
        """A new assignment: read these partitions from these offsets (already committed)."""
        self.epoch += 1
        self._parts = {tp: _Read(next=start, committed=start) for tp, start in starts.items()}

    def read(self, tp: TopicPart, offset: int, holders: int) -> Handle | None:
        """One record read; a handle to give each of the `holders` buffers it went to."""
        part = self._parts.get(tp)
        if part is None:
            return None
        part.next = offset + 1
        if holders <= 0:
            part.pending.pop(offset, None)  # read again after a failure part-way
            return None
        part.pending[offset] = holders
        return (self.epoch, tp, offset)

    def done(self, handle: Handle) -> None:
        epoch, tp, offset = handle
        part = self._parts.get(tp)
        if epoch != self.epoch or part is None:
            return
        left = part.pending.get(offset, 0) - 1
        if left > 0:
            part.pending[offset] = left
        else:
            part.pending.pop(offset, None)

    def position(self, tp: TopicPart) -> int | None:
        part = self._parts.get(tp)
        return None if part is None else part.position

    def moved(self) -> dict[TopicPart, int]:
        """Positions that changed since they were last committed."""
        return {
            tp: part.position for tp, part in self._parts.items() if part.position != part.committed
        }

    def committed(self, positions: dict[TopicPart, int]) -> None:
        for tp, position in positions.items():
            part = self._parts.get(tp)
            if part is not None:
                part.committed = max(part.committed, position)

    def waiting(self) -> int:
        return sum(len(p.pending) for p in self._parts.values())


def _where(msg: Any) -> str:
    return f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"


class BatchLane:
    """One per worker; `run` is its task, the two `on_*` methods faust's rebalance hooks."""

    def __init__(
        self,
        settings: Settings,
        table: TableT,
        rules: RouteRules,
        sinks: dict[str, BatchingSink[Any]],
        reporter: Reporter,
        box: SecretBox,
        flush_producer: Callable[[], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.table = table
        self.rules = rules
        self.topics = frozenset({settings.topic_alerts, rules.detour_topic, rules.replay_topic})
        self.writers = {
            kind: BatchWriter(sink, settings, reporter, box, self._written)
            for kind, sink in sinks.items()
        }
        self.acks = LaneAcks()
        self.reporter = reporter
        self._failed: list[tuple[Any, str]] = []  # records a bug kept from their buffers
        self._flush_producer = flush_producer
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="batch-lane")
        self._consumer: Any = None
        self._assigned: frozenset[TopicPart] = frozenset()
        self._wanted: frozenset[TopicPart] | None = None
        self._changed = asyncio.Event()
        self._legacy: dict[TopicPart, int] = {}  # faust's group positions at start-up
        self._configs: dict[tuple[str, int], IntegrationConfig] = {}
        self._routed = {kind: metrics.ROUTED.labels(kind) for kind in sinks}
        self._last_commit = time.monotonic()
        self._read_any = False

    # -- faust's hooks ---------------------------------------------------------------

    def on_assigned(self, assignment: Iterable[Any]) -> None:
        """The rebalance is complete and the config table recovered: read these."""
        wanted = frozenset((tp.topic, tp.partition) for tp in assignment if tp.topic in self.topics)
        if wanted != self._assigned or self._wanted is not None:
            self._wanted = wanted
            self._changed.set()

    def on_revoked(self, revoked: Iterable[Any]) -> None:
        """Stop reading revoked partitions at once (their buffers are dropped: the new
        owner re-reads them). Nothing is awaited here, inside faust's rebalance: the run
        loop commits what was written before it reads anything again (`_apply`)."""
        gone = {(tp.topic, tp.partition) for tp in revoked if tp.topic in self.topics}
        if not gone & self._assigned:
            return
        self._wanted = self._assigned - gone
        self._assigned = frozenset()  # nothing read from now on is taken
        self._drop_all()
        self._changed.set()

    # -- the task ------------------------------------------------------------------------

    async def run(self) -> None:
        self._consumer = await self._call(Consumer, self._config(), logger=log)
        self._legacy = await self._call(self._faust_positions)
        try:
            while True:
                if self._wanted is not None:
                    await self._apply(self._wanted)
                if not self._assigned:
                    self._changed.clear()
                    await self._changed.wait()
                    continue
                epoch = self.acks.epoch
                messages = await self._call(self._consumer.consume, READ_MAX, 0.1)
                if epoch == self.acks.epoch and self._wanted is None:
                    self._take(messages)
                    await self._dead_letter_failed()
                for writer in self.writers.values():
                    writer.spawn(writer.batcher.due())
                if time.monotonic() - self._last_commit >= self.settings.commit_interval:
                    await self._commit()
                for writer in self.writers.values():
                    await writer.wait_for_room()
        finally:
            await asyncio.shield(self._close())

    async def _close(self) -> None:
        try:
            await asyncio.wait_for(self._commit(), timeout=10)
        except Exception as exc:  # shutting down: what is not committed is re-read
            log.warning("batch lane: last commit failed: %s", exc)
        if self._consumer is not None:
            await self._call(self._consumer.close)
        self._pool.shutdown(wait=False)

    # -- reading ---------------------------------------------------------------------

    def _take(self, messages: list[Any]) -> None:
        if not messages:
            return
        if not self._read_any:
            self._read_any = True
            metrics.LANE_FIRST_READ.set(time.time())
        metrics.LANE_READ.inc(len(messages))
        ready: dict[str, list[Pending]] = {}
        for msg in messages:
            if msg.error() is not None:
                log.warning("batch lane: read error: %s", msg.error())
                continue
            try:
                self._take_one(msg, ready)
            except Exception as exc:  # a bug must still end the alert somewhere visible
                log.exception("batch lane: internal error at %s", _where(msg))
                self.acks.read((msg.topic(), msg.partition()), msg.offset(), 0)
                self._failed.append(
                    (msg, f"internal error in the batch lane: {type(exc).__name__}")
                )
        for kind, batches in ready.items():
            self.writers[kind].spawn(batches)

    def _take_one(self, msg: Any, ready: dict[str, list[Pending]]) -> None:
        acks, writers, rules, table = self.acks, self.writers, self.rules, self.table
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        tp = (topic, partition)
        headers = msg.headers()
        try:
            alert = decode_alert(msg.value(), headers)
        except DecodeError:  # the router dead-letters it
            acks.read(tp, offset, 0)
            return
        entries = table.get(alert.tenant_id)
        route = rules.route(topic, partition, offset, headers, alert, entries) if entries else None
        targets = []
        if route is not None:
            src_topic, src_partition, src_offset = route.source
            for config in route.configs:
                writer = writers.get(config["type"])
                if writer is None:
                    continue
                integration = self._integration(config)
                key = (integration.key, partition, src_topic, src_partition)
                if not route.redrive and writer.batcher.holds(key, src_offset):
                    continue  # read again (a replay of what is written): not counted twice
                targets.append((writer, key, integration))
        handle = acks.read(tp, offset, len(targets))
        if route is None or handle is None:
            return
        stamp_type, stamp = msg.timestamp()
        produced_at = None if stamp_type == TIMESTAMP_NOT_AVAILABLE else stamp / 1000
        record: BatchRecord | None = None
        for writer, key, integration in targets:
            idem = idempotency_key(alert.alert_id, integration.integration_id)
            # The alert's line is serialised once, however many integrations take it.
            record = (
                BatchRecord.make(alert, idem, src_offset, produced_at, route.redrive)
                if record is None
                else dataclasses.replace(record, idempotency_key=idem)
            )
            pending = writer.batcher.add_record(
                key, integration, integration.version or 0, record, handle
            )
            self._routed[integration.type].inc()
            if pending is not None:
                ready.setdefault(integration.type, []).append(pending)

    async def _dead_letter_failed(self) -> None:
        failed, self._failed = self._failed, []
        for msg, reason in failed:
            metrics.DLQ.labels("-", "route").inc()
            await self.reporter.dead_letter(
                DeadLetter(
                    reason=reason,
                    stage="route",
                    source_topic=msg.topic(),
                    source_partition=msg.partition(),
                    source_offset=msg.offset(),
                    at=time.time(),
                    payload_b64=base64.b64encode((msg.value() or b"")[: 64 * 1024]).decode()
                    or None,
                )
            )

    def _integration(self, config: dict[str, Any]) -> IntegrationConfig:
        """The config table's entry as a model, parsed once per version."""
        key = (f"{config['tenant_id']}/{config['integration_id']}", int(config["version"]))
        integration = self._configs.get(key)
        if integration is None:
            if len(self._configs) > 10_000:
                self._configs.clear()
            integration = self._configs[key] = IntegrationConfig.model_validate(config)
        return integration

    def _written(self, handles: list[Any]) -> None:
        done = self.acks.done
        for handle in handles:
            done(handle)

    def _drop_all(self) -> None:
        for writer in self.writers.values():
            writer.drop_partitions(range(self.rules.partitions))

    # -- positions -------------------------------------------------------------------

    async def _apply(self, wanted: frozenset[TopicPart]) -> None:
        self._wanted = None
        await self._commit()
        self._drop_all()
        if not wanted:
            await self._call(self._consumer.unassign)
            self._assigned = frozenset()
            self.acks.reset({})
            return
        try:
            starts = await self._call(self._starts, wanted)
            await self._call(
                self._consumer.assign, [TopicPartition(t, p, o) for (t, p), o in starts.items()]
            )
        except KafkaException as exc:
            log.warning("batch lane: cannot take partitions yet (%s); trying again", exc)
            await asyncio.sleep(1)
            if self._wanted is None:
                self._wanted = wanted
            return
        self.acks.reset(starts)
        self._assigned = wanted
        log.info(
            "batch lane reads %s",
            ", ".join(f"{t}[{p}]@{o}" for (t, p), o in sorted(starts.items())),
        )

    def _starts(self, wanted: frozenset[TopicPart]) -> dict[TopicPart, int]:
        """Where to read each partition from (in the lane's thread); new ones committed."""
        tps = [TopicPartition(t, p) for t, p in sorted(wanted)]
        starts = {}
        fresh = []
        for tp in self._consumer.committed(tps, timeout=30):
            where = (tp.topic, tp.partition)
            if tp.offset >= 0:
                starts[where] = tp.offset
                continue
            start = self._legacy.get(where)
            if start is None:
                start, _high = self._consumer.get_watermark_offsets(tp, timeout=30)
            starts[where] = start
            fresh.append(TopicPartition(tp.topic, tp.partition, start))
        if fresh:
            self._consumer.commit(offsets=fresh, asynchronous=False)
        return starts

    def _faust_positions(self) -> dict[TopicPart, int]:
        """faust's group's committed positions of the alerts topics, read once at start-up
        (before this process's router commits anything): where an upgraded worker's
        lane begins."""
        tps = [
            TopicPartition(t, p) for t in sorted(self.topics) for p in range(self.rules.partitions)
        ]
        reader = Consumer(
            {
                "bootstrap.servers": self.settings.bootstrap_servers,
                "group.id": self.settings.app_id,
                "enable.auto.commit": False,
            },
            logger=log,
        )
        try:
            found = reader.committed(tps, timeout=30)
        except KafkaException as exc:
            log.warning("batch lane: cannot read faust's positions: %s", exc)
            return {}
        finally:
            reader.close()
        return {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}

    async def _commit(self) -> None:
        self._last_commit = time.monotonic()
        positions = self.acks.moved()
        if not positions or self._consumer is None:
            return
        # The status and DLQ records of what was written go out before its offsets.
        await self._flush_producer()
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        try:
            await self._call(self._consumer.commit, offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("batch lane: commit failed (will retry): %s", exc)
            return
        self.acks.committed(positions)

    def _config(self) -> dict[str, Any]:
        settings = self.settings
        return {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": settings.batch_lane_group,
            "client.id": f"{settings.app_id}-batch-lane",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": settings.fetch_max_wait_ms,
            "queued.max.messages.kbytes": PREFETCH_KB,
        }

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Every librdkafka call of the lane runs in its one thread, one at a time."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
