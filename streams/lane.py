"""Lanes: the alerts topics (and the per-alert delivery topics) read in bulk with
librdkafka, beside faust.

Why: through faust every alert costs a trip through its consumer, conductor, stream and
producer, ~100-150 µs of the one event loop per record (bench/analysis.md). A lane reads
the same alerts in bulk (confluent-kafka, in a thread of its own, thousands of records
per call) and hands them on. Two lanes read the alerts topics, each with its own
consumer group, so that neither can hold the other up:

- the routing lane (streams/routing_lane.py) writes a delivery record per alert and
  per-alert integration, sends alerts read on the wrong partition on to their tenant's,
  and dead-letters what cannot be decoded; committed as soon as those records are on
  the broker;
- the batch lane (streams/batch_lane.py) buffers alerts for S3, GCS and Splunk and is
  committed only up to the first alert not yet written (a destination that is down
  stops it, and only it).

Who dead-letters what: every alert is read by both, so exactly one of them must
dead-letter an invalid one, decided by the record alone (the config table may change
between the two reads). The routing lane takes records without a valid `tenant_id` at
their top level (`schemas.fast_alert.peek_tenant`, which both lanes use: nobody can route
them), and invalid alerts read on a partition their tenant's configs are not on (it
would send them on to the detour topic); the batch lane decodes and validates every
other alert, counts it (`alertrelay_alerts_consumed_total`) and dead-letters it if it is
invalid. So the routing lane validates only what it routes.

Which partitions: those of the alerts topics whose tenants' configs this worker holds,
i.e. the partitions of `<app_id>-configs-by-tenant` that faust assigned to it, taken
once faust has recovered the config table after each rebalance
(`on_rebalance_complete`) and dropped when they are revoked.

Where a lane resumes: its group's position. The first time it reads a partition its
group has none: it starts where faust's group is (an upgrade: faust's router read the
alerts before the lanes did), else at the beginning (like faust), and commits that
start at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
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

from schemas.models import DeadLetter
from streams import done_marks, metrics
from streams.agents.router import RouteRules
from streams.delivery import Reporter
from streams.settings import Settings

__all__ = ["Lane", "LaneAcks", "produced_at"]

log = logging.getLogger(__name__)

TopicPart = tuple[str, int]
Handle = tuple[int, TopicPart, int]  # lane epoch, partition read, offset read
T = TypeVar("T")

READ_MAX = 5000  # records per read from librdkafka's queue
PREFETCH_KB = 8 * 1024  # what librdkafka may hold fetched ahead of us (per lane)
# Once that is full, librdkafka waits this long before fetching the partition again
# (its default, 1 000 ms, capped a lane at ~8 MB/s: 11 000 alerts/s; bench/analysis.md).
FETCH_QUEUE_BACKOFF_MS = 10
# A commit that waits longer than this for the producers' flush or for the broker's
# answer is given up (logged; the positions stay where they were and the next commit
# tries again): a lane whose commit hangs must not stop reading (`_apply` commits
# before it takes a new assignment).
COMMIT_GIVE_UP_SECONDS = 30.0
# A lane that has not taken a new assignment this long after it came says so, and what
# it is waiting for: a stall after a rebalance shows in the log, not only as alerts
# that stop arriving.
SLOW_ASSIGNMENT_SECONDS = 20.0


@dataclass
class _Read:
    pending: dict[int, int] = field(default_factory=dict)  # offset -> buffers holding it
    next: int = 0  # the offset after the last one read
    committed: int = -1
    committed_next: int = -1  # `next` when `committed` was (for the done marks)
    first: int = 0  # no offset below it is pending

    @property
    def position(self) -> int:
        """How far the group may be committed: the first alert still buffered, else
        everything read. Found by walking up from the last answer (offsets are read in
        order), not with `next(iter(pending))`: a dict whose first keys were removed
        steps over their empty slots on every iteration, and that was ~10 % of the
        batch lane's time with thousands of alerts buffered (bench/analysis.md)."""
        pending, first, end = self.pending, self.first, self.next
        if not pending:
            self.first = end
            return end
        while first not in pending and first < end:
            first += 1
        if first >= end:  # not read in order after all: the slow, sure way
            first = min(pending)
        self.first = first
        return first


class LaneAcks:
    """Per partition read: the alerts still held (in a buffer), and how far the lane's
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
        self._parts = {
            tp: _Read(next=start, committed=start, first=start) for tp, start in starts.items()
        }

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

    def reading(self, tp: TopicPart) -> bool:
        """This partition is assigned to the lane (its records are taken)."""
        return tp in self._parts

    def position(self, tp: TopicPart) -> int | None:
        part = self._parts.get(tp)
        return None if part is None else part.position

    def moved(self, with_marks: bool = False) -> dict[TopicPart, int]:
        """Positions that changed since they were last committed (`with_marks`: or
        whose done marks did, i.e. more was read)."""
        return {
            tp: part.position
            for tp, part in self._parts.items()
            if part.position != part.committed
            or (with_marks and part.next != part.committed_next and part.pending)
        }

    def marks(self, tp: TopicPart) -> str:
        """What past the position is done already (streams/done_marks.py)."""
        part = self._parts[tp]
        return done_marks.encode(part.position, part.next, part.pending)

    def committed(
        self, positions: dict[TopicPart, int], reads: dict[TopicPart, int] | None = None
    ) -> None:
        """These positions are committed (with marks up to `reads`, if given)."""
        for tp, position in positions.items():
            part = self._parts.get(tp)
            if part is not None and position >= part.committed:
                part.committed = position
                if reads is not None:
                    part.committed_next = reads[tp]

    def read_to(self, tp: TopicPart) -> int:
        return self._parts[tp].next

    def last_committed(self) -> dict[TopicPart, int]:
        return {tp: part.committed for tp, part in self._parts.items()}

    def waiting(self) -> int:
        return sum(len(p.pending) for p in self._parts.values())


async def _in_daemon_thread(fn: Callable[[], Any], name: str) -> Any:
    """`fn` in a thread of its own, beside the lane's reading thread (librdkafka's
    consumer may commit in one thread while it is read in another). A daemon thread: a
    commit stuck on a broker that went away must not keep the process from exiting
    (an executor's threads are joined at exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def run() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting task
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shutdown)
            loop.call_soon_threadsafe(_settle_future, future, result, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future


def _settle_future(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("a lane's commit failed", exc_info=task.exception())


def _where(msg: Any) -> str:
    return f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"


def produced_at(msg: Any) -> tuple[float | None, int]:
    """When the record was produced: seconds (None if unknown), and milliseconds (0)."""
    stamp_type, stamp = msg.timestamp()
    if stamp_type == TIMESTAMP_NOT_AVAILABLE:
        return None, 0
    return stamp / 1000, stamp


class Lane:
    """One reader of the alerts topics; `run` is its task, the two `on_*` methods faust's
    rebalance hooks. Subclasses say what to do with each record (`_take_one`), what to
    do after each read (`_after_read`), and what must be on the broker before a commit
    (`flushes`)."""

    name = "lane"
    prefetch_kb = PREFETCH_KB
    read_max = READ_MAX
    remembers_done = False
    """Commit which records past the position are done, and skip them when read again
    (streams/done_marks.py): for lanes whose records end out of order."""

    def __init__(
        self,
        settings: Settings,
        table: TableT,
        rules: RouteRules,
        reporter: Reporter,
        group: str,
        flushes: Sequence[Callable[[], Awaitable[None]]],
    ) -> None:
        self.settings = settings
        self.table = table
        self.rules = rules
        self.reporter = reporter
        self.group = group
        self.topics = frozenset({settings.topic_alerts, rules.detour_topic, rules.replay_topic})
        self.acks = LaneAcks()
        self._flushes = tuple(flushes)
        self._failed: list[tuple[Any, str, str]] = []  # to dead-letter: record, reason, stage
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=self.name)
        self._committing: asyncio.Task[None] | None = None
        self._commit_lock = asyncio.Lock()  # one commit at a time
        self._consumer: Any = None
        self._assigned: frozenset[TopicPart] = frozenset()
        self._wanted: frozenset[TopicPart] | None = None
        self._changed = asyncio.Event()
        self._earlier: dict[TopicPart, int] = {}  # earlier versions' positions at start-up
        self._last_commit = time.monotonic()
        self._reread = False  # a record of ours was refused: read again from the commit
        self._marks: dict[TopicPart, done_marks.DoneMarks] = {}  # skipped when read
        self._phase = "starting"  # what the run loop awaits (for the slow-assignment log)
        self._wanted_since: float | None = None

    # -- to override ---------------------------------------------------------------------

    def _take_one(self, msg: Any) -> None:
        raise NotImplementedError

    async def _after_read(self) -> None:
        """Once per read, after its records were taken."""

    async def _before_next_read(self) -> None:
        """Once per read, after the commit that may follow it (a place to wait)."""

    def _drop_all(self) -> None:
        """Forget what is held for records read so far (partitions move, or re-read)."""

    # -- faust's hooks ---------------------------------------------------------------

    def _mirrored(self, tps: Iterable[Any]) -> set[TopicPart]:
        home = self.settings.configs_by_tenant_topic
        parts = {tp.partition for tp in tps if tp.topic == home}
        return {(topic, p) for topic in self.topics for p in parts}

    def on_assigned(self, assignment: Iterable[Any]) -> None:
        """The rebalance is complete and the config table recovered: read these."""
        wanted = frozenset(self._mirrored(assignment))
        if wanted != self._assigned or self._wanted is not None:
            self._want(wanted)

    def on_stopping(self) -> None:
        """The worker stops: like a revocation of everything (then `commit_revoked`),
        while the worker is still in faust's group, so that the next owner starts
        after what this one did."""
        if self._assigned:
            self._want(frozenset())
            self._assigned = frozenset()
            self._drop_all()

    def on_revoked(self, revoked: Iterable[Any]) -> None:
        """Stop reading revoked partitions at once (what is held for them is dropped:
        the new owner re-reads them). What was done is committed by `commit_revoked`
        next, and the run loop commits again before it reads anything (`_apply`)."""
        gone = self._mirrored(revoked)
        if not gone & self._assigned:
            return
        self._want(self._assigned - gone)
        self._assigned = frozenset()  # nothing read from now on is taken
        self._drop_all()

    def _want(self, wanted: frozenset[TopicPart]) -> None:
        self._wanted = wanted
        if self._wanted_since is None:
            self._wanted_since = time.monotonic()
        self._changed.set()

    # -- the task ------------------------------------------------------------------------

    async def run(self) -> None:
        self._consumer = await self._call(Consumer, self._config(), logger=log)
        self._earlier = await self._call(self._earlier_positions)
        watch = asyncio.create_task(self._watch_assignment())
        try:
            while True:
                if self._reread:
                    self._phase = "reading again from the last commit"
                    await self._read_again()
                if self._wanted is not None:
                    await self._apply(self._wanted)
                    # Looked at again: another assignment may have come while this one
                    # was applied (a revocation, then the rebalance's new partitions),
                    # and the wait below would clear its signal.
                    continue
                if not self._assigned:
                    self._phase = "waiting for partitions"
                    self._changed.clear()
                    await self._changed.wait()
                    continue
                epoch = self.acks.epoch
                self._phase = "reading"
                messages = await self._call(self._read)
                if epoch == self.acks.epoch and self._wanted is None:
                    self._take(messages)
                    self._phase = "dead-lettering"
                    await self._dead_letter_failed()
                self._phase = "after a read"
                await self._after_read()
                if time.monotonic() - self._last_commit >= self.settings.commit_interval:
                    self._commit_soon()
                self._phase = "waiting to read on"
                await self._before_next_read()
        finally:
            watch.cancel()
            await asyncio.shield(self._close())

    async def _watch_assignment(self) -> None:
        while True:
            await asyncio.sleep(SLOW_ASSIGNMENT_SECONDS / 2)
            since = self._wanted_since
            if since is not None and time.monotonic() - since >= SLOW_ASSIGNMENT_SECONDS:
                log.warning(
                    "%s has not taken its new partitions after %.0f s: %s",
                    self.name,
                    time.monotonic() - since,
                    self._phase,
                )

    async def _close(self) -> None:
        try:
            await asyncio.wait_for(self._commit(), timeout=10)
        except Exception as exc:  # shutting down: what is not committed is re-read
            log.warning("%s: last commit failed: %s", self.name, exc)
        if self._consumer is not None:
            await self._call(self._consumer.close)
        self._pool.shutdown(wait=False)

    # -- reading ---------------------------------------------------------------------

    def _read(self) -> list[Any]:
        """What librdkafka has fetched already, else the first record within 0.1 s and
        what came with it. (Its `consume(n, timeout)` waits for all n or the timeout:
        one alert a second would wait the whole timeout.)"""
        consume, most = self._consumer.consume, self.read_max
        messages: list[Any] = consume(most, 0)
        if not messages:
            messages = consume(1, 0.1)
            if messages and most > 1:
                messages.extend(consume(most - 1, 0))
        return messages

    def _take(self, messages: list[Any]) -> None:
        marks = self._marks
        for msg in messages:
            if msg.error() is not None:
                log.warning("%s: read error: %s", self.name, msg.error())
                continue
            if marks and self._done_before(marks, msg):
                continue
            try:
                self._take_one(msg)
            except Exception as exc:  # a bug must still end the alert somewhere visible
                log.exception("%s: internal error at %s", self.name, _where(msg))
                self.acks.read((msg.topic(), msg.partition()), msg.offset(), 0)
                reason = f"internal error in the {self.name}: {type(exc).__name__}"
                self._dead_letter(msg, reason, "route")

    def _done_before(self, marks: dict[TopicPart, done_marks.DoneMarks], msg: Any) -> bool:
        """Done before the last commit (its marks say so): read, not taken again."""
        tp = (msg.topic(), msg.partition())
        mark = marks.get(tp)
        if mark is None:
            return False
        offset = msg.offset()
        if offset >= mark.read_to:
            del marks[tp]
            return False
        if not mark.done(offset):
            return False
        self.acks.read(tp, offset, 0)
        return True

    def _dead_letter(self, msg: Any, reason: str, stage: str) -> None:
        """Dead-letter this record (sent before the next commit)."""
        self._failed.append((msg, reason, stage))

    def _undecodable(self, msg: Any, exc: Exception) -> None:
        """Dead-letter an alert that is not one, saying why (the lane counts it)."""
        log.warning("undecodable alert at %s: %s", _where(msg), exc)
        self._dead_letter(msg, str(exc), "decode")

    async def _dead_letter_failed(self) -> None:
        failed, self._failed = self._failed, []
        for msg, reason, stage in failed:
            metrics.DLQ.labels("-", stage).inc()
            await self.reporter.dead_letter(
                DeadLetter(
                    reason=reason,
                    stage=stage,
                    source_topic=msg.topic(),
                    source_partition=msg.partition(),
                    source_offset=msg.offset(),
                    at=time.time(),
                    payload_b64=base64.b64encode((msg.value() or b"")[: 64 * 1024]).decode()
                    or None,
                )
            )

    # -- positions -------------------------------------------------------------------

    async def _apply(self, wanted: frozenset[TopicPart]) -> None:
        self._wanted = None
        self._phase = "committing before it takes the new partitions"
        await self._commit()
        self._drop_all()
        if not wanted:
            self._phase = "unassigning"
            await self._call(self._consumer.unassign)
            self._assigned = frozenset()
            self.acks.reset({})
            self._taken()
            return
        try:
            self._phase = "asking where to start"
            starts = await self._call(self._starts, wanted)
            self._phase = "assigning"
            await self._assign(starts)
        except KafkaException as exc:
            log.warning("%s: cannot take partitions yet (%s); trying again", self.name, exc)
            await asyncio.sleep(1)
            if self._wanted is None:
                self._wanted = wanted
            return
        self._assigned = wanted
        self._taken()
        log.info(
            "%s reads %s",
            self.name,
            ", ".join(f"{t}[{p}]@{o}" for (t, p), o in sorted(starts.items())),
        )

    def _taken(self) -> None:
        """The wanted assignment is in place (unless another came meanwhile)."""
        if self._wanted is None:
            self._wanted_since = None

    async def _assign(self, starts: dict[TopicPart, int]) -> None:
        await self._call(
            self._consumer.assign, [TopicPartition(t, p, o) for (t, p), o in starts.items()]
        )
        self.acks.reset(starts)

    async def _read_again(self) -> None:
        """Back to the last commit: something read since then may not have reached
        the broker (`_commit`)."""
        async with self._commit_lock:  # not beside a commit under way
            self._reread = False
            self._marks = {}  # (those of the last commit are not kept: all is read)
            starts = self.acks.last_committed()
            self._drop_all()
            await self._assign(starts)
        log.warning("%s: reading again from %s", self.name, starts)

    def _starts(self, wanted: frozenset[TopicPart]) -> dict[TopicPart, int]:
        """Where to read each partition from (in the lane's thread); new ones committed."""
        tps = [TopicPartition(t, p) for t, p in sorted(wanted)]
        starts = {}
        fresh = []
        self._marks = {}
        for tp in self._consumer.committed(tps, timeout=30):
            where = (tp.topic, tp.partition)
            if tp.offset >= 0:
                starts[where] = tp.offset
                mark = done_marks.decode(tp.offset, tp.metadata) if self.remembers_done else None
                if mark is not None and mark.skipped:
                    self._marks[where] = mark
                    log.info(
                        "%s: %s[%d]: %d records past %d were done before the last commit",
                        self.name,
                        tp.topic,
                        tp.partition,
                        mark.skipped,
                        tp.offset,
                    )
                continue
            start = self._earlier.get(where)
            if start is None:
                start, _high = self._consumer.get_watermark_offsets(tp, timeout=30)
            starts[where] = start
            fresh.append(TopicPartition(tp.topic, tp.partition, start))
        if fresh:
            self._consumer.commit(offsets=fresh, asynchronous=False)
        return starts

    def _earlier_positions(self) -> dict[TopicPart, int]:
        """The committed positions of the group that read the alerts before this lane
        existed (faust's, whose router did), read once at start-up: where an upgraded
        worker's lane begins."""
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
            log.warning("%s: cannot read faust's group's positions: %s", self.name, exc)
            return {}
        finally:
            reader.close()
        return {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}

    def _commit_soon(self) -> None:
        """Commit in a task of its own while the lane reads on (one at a time): a commit
        waits for the broker twice (the flush, then the commit itself), ~100-300 ms
        under load, which held the lane's reading up for as long (bench/analysis.md)."""
        if self._committing is None or self._committing.done():
            self._committing = asyncio.create_task(self._commit())
            self._committing.add_done_callback(_log_failure)

    async def _commit(self) -> None:
        """Commit now, after any commit already under way."""
        async with self._commit_lock:
            self._last_commit = time.monotonic()
            await self._commit_now()

    async def commit_revoked(self) -> None:
        """After `on_revoked`, inside faust's rebalance (the pipeline bounds the wait):
        commit what was done with the partitions before their new owner reads them.
        Left to the next `_apply`, it came after the new owner had started from the
        previous commit, which re-delivered about one commit interval's alerts."""
        await self._commit()

    async def _commit_now(self) -> None:
        acks = self.acks
        positions = acks.moved(self.remembers_done)
        if not positions or self._consumer is None:
            return
        reads = {tp: acks.read_to(tp) for tp in positions}
        if self.remembers_done:
            offsets = [
                TopicPartition(t, p, o, acks.marks((t, p))) for (t, p), o in positions.items()
            ]
        else:
            offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        # What the alerts below these positions made (delivery, status, DLQ records)
        # goes out before the positions. (Records sent after this point need not: the
        # flushes wait for what was sent before them.)
        try:
            async with asyncio.timeout(COMMIT_GIVE_UP_SECONDS):
                for flush in self._flushes:
                    await flush()
        except KafkaException as exc:
            log.error("%s: %s; reading again from the last commit", self.name, exc)
            self._reread = True
            return
        except TimeoutError:
            log.warning(
                "%s: the producers did not flush within %.0f s; not committing yet",
                self.name,
                COMMIT_GIVE_UP_SECONDS,
            )
            return
        try:
            async with asyncio.timeout(COMMIT_GIVE_UP_SECONDS):
                await _in_daemon_thread(
                    lambda: self._consumer.commit(offsets=offsets, asynchronous=False),
                    f"{self.name} commit",
                )
        except KafkaException as exc:
            log.warning("%s: commit failed (will retry): %s", self.name, exc)
            return
        except TimeoutError:
            log.warning(
                "%s: no answer to the commit within %.0f s (will retry)",
                self.name,
                COMMIT_GIVE_UP_SECONDS,
            )
            return
        acks.committed(positions, reads)

    def _config(self) -> dict[str, Any]:
        settings = self.settings
        return {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": self.group,
            "client.id": f"{settings.app_id}-{self.name.replace(' ', '-')}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": settings.fetch_max_wait_ms,
            "queued.max.messages.kbytes": self.prefetch_kb,
            "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
        }

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Every librdkafka call of the lane runs in its one thread, one at a time."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
