"""faust's Kafka consumer, made to never skip a record it did not hand to an agent.

faust reads records in a loop (`Consumer._drain_messages`) and, when the offsets it reads
jump (`offset > last read + 1`), records the hole as a "gap" that its commit logic later
treats as acknowledged. Holes are real on compacted or transactional topics, but faust
also makes its own: `getmany` stops a fetched batch half way (a generation change, the
flow suspended for a rebalance, a partition paused meanwhile) after the broker position
already moved past the rest, a record whose hand-off was cancelled by the flow stopping
still counts as read, and a read finishing after a rebalance writes a stale position.
Each of these is a record that was never processed yet gets committed: a silent loss
(seen as alerts "never routed" in the fan-out benchmark and the SIGKILL tests).

`GaplessConsumer` keeps faust's loop but, on a topic whose offsets are dense, answers a
hole by seeking back to the first missing offset and reading again. Only if the same
hole is still there after that re-read is it real (transaction markers, retention) and
handed to faust's gap bookkeeping as before.

At start-up faust hands records to the agents before its first table recovery has
positioned the partitions at their committed offsets, then empties the agents' queues
when it resumes the flow: records read in that window were neither processed nor read
again (faust took its seek back as a gap). So until the first recovery is complete only
changelog records are handed over; the others are read again from the committed offset
(or, with nothing committed, from the first one seen).

It also sets the broker's fetch wait, which faust fixes at 1 500 ms
(`AlertrelayApp.fetch_max_wait_ms`), and bounds how long one fetch may take: rarely
(about 1 run in 30 of tests/integration/test_faults.py's rebalance test, and once in CI) a
fetch started just before a rebalance never returns, the read loop waits on it forever and
faust's table recovery, which is fed by that loop, waits with it ("No event received for
active tp ... since recovery start"): the worker stalls. A fetch that takes far longer than
its own timeout is given up and the next one started (`_wait_next_records`).

Changelog records get the same care in one case: faust's `getmany` drops what a fetch
returns once the flow has stopped for a rebalance (or the generation changed), after
aiokafka's position moved past it. When the new generation's recovery had already sought
the partition (a worker that read it as a standby takes it over after another worker
left), the records it waits for were the dropped ones: recovery waited for good (the
rebalance test's stall, about 1 run in 40). Changelog records fetched but neither handed
over nor skipped as read are read again, unless something positioned the partition since
(`dropped_reads`, `_ConsumerThread.seek_back_unmoved`).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Iterable, Mapping
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streams import metrics

__all__ = ["GaplessConsumer", "ReadGuard", "Verdict", "dropped_reads"]

log = logging.getLogger(__name__)

_YIELD_EVERY = 100
FETCH_STALL_AFTER = 10.0  # seconds beyond a fetch's own timeout before it is given up


class Verdict(enum.Enum):
    READ = "read"
    """The next record of its partition (or the first one we know nothing about)."""
    DUPLICATE = "duplicate"
    """Below the position: already handed over (a re-read after a seek)."""
    REFETCH = "refetch"
    """A hole not seen before: seek back to `ReadGuard.expected(tp)` and read again."""
    GAP = "gap"
    """A hole still there after a re-read, or on a topic whose holes are normal."""


class ReadGuard:
    """Per partition, the offset the next record must have.

    Positions come from seeks (the committed offset after a rebalance, explicit seeks) and
    from each record handed over. What to do about a record is a pure decision, so the
    rules are tested without a broker.
    """

    def __init__(self) -> None:
        self._expected: dict[TP, int] = {}
        self._refetched: dict[TP, int] = {}
        self._first: dict[TP, int] = {}

    def seen(self, tp: TP, offset: int) -> None:
        """A record was fetched (handed over or held back)."""
        self._first.setdefault(tp, offset)

    def first_seen(self, tp: TP) -> int | None:
        """The first offset fetched since the partition was assigned."""
        return self._first.get(tp)

    def expected(self, tp: TP) -> int | None:
        return self._expected.get(tp)

    def positioned(self, tp: TP, offset: int | None) -> None:
        """The consumer was positioned here (None: unknown, e.g. reset to earliest)."""
        if offset is None or offset < 0:
            self._expected.pop(tp, None)
        else:
            self._expected[tp] = offset

    def forget(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self._expected.pop(tp, None)
            self._refetched.pop(tp, None)
            self._first.pop(tp, None)

    def check(self, tp: TP, offset: int, dense: bool) -> Verdict:
        expected = self._expected.get(tp)
        if expected is None or offset == expected:
            return Verdict.READ
        if offset < expected:
            return Verdict.DUPLICATE
        if not dense or self._refetched.get(tp) == expected:
            return Verdict.GAP
        self._refetched[tp] = expected
        return Verdict.REFETCH

    def reading_again(self, tp: TP) -> None:
        """Records from the expected offset on were fetched but not handed over."""
        expected = self._expected.get(tp)
        if expected is not None:
            self._refetched[tp] = expected

    def read(self, tp: TP, offset: int) -> bool:
        """The record at `offset` was handed over; True if a re-read just recovered it."""
        self._expected[tp] = offset + 1
        return self._refetched.pop(tp, None) == offset


def dropped_reads(
    fetched: Mapping[TP, tuple[int, int]],
    taken: Mapping[TP, int],
    active: Iterable[TP],
) -> dict[TP, tuple[int, int]]:
    """Changelog partitions of a fetched batch whose records were not all taken (handed
    over, or skipped as read before): per partition, the fetch position right after the
    batch and the first offset not taken, to read again from there.

    `fetched` holds each partition's first and last offset in the batch, `taken` the last
    offset taken per partition. Only partitions still `active` (assigned, not paused)
    qualify: a paused one is read again when it is resumed."""
    still = set(active)
    dropped = {}
    for tp, (first, last) in fetched.items():
        got = taken.get(tp)
        start = first if got is None else max(first, got + 1)
        if start <= last and tp in still:
            dropped[tp] = (last + 1, start)
    return dropped


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):  # type: ignore[misc]
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait: int | None = getattr(self.app, "fetch_max_wait_ms", None)
        if wait is not None:
            # faust passes a fixed 1 500 ms. Under load a partition left out of a fetch
            # (its records still buffered) waits for that fetch to expire: seconds of
            # latency (BENCHMARKS.md). aiokafka reads this when it starts its fetcher.
            consumer._fetch_max_wait_ms = wait
        return consumer

    async def seek_back_unmoved(self, moves: Mapping[TP, tuple[int, int]]) -> list[TP]:
        """Per partition (position, offset): seek to `offset` if the fetch position is
        still `position`, i.e. nothing (a rebalance's seek) moved it since the batch was
        fetched. Returns the partitions moved."""
        moved: list[TP] = await self.call_thread(
            self._seek_back_unmoved, self._ensure_consumer(), moves
        )
        return moved

    async def _seek_back_unmoved(
        self, consumer: Any, moves: Mapping[TP, tuple[int, int]]
    ) -> list[TP]:
        moved = []
        for tp, (position, offset) in moves.items():
            try:
                now = await asyncio.wait_for(consumer.position(tp), 1.0)
            except Exception:  # not assigned any more, or no position yet: leave it
                continue
            if now == position:
                consumer.seek(tp, offset)
                moved.append(tp)
        return moved


class GaplessConsumer(faust_aiokafka.Consumer):  # type: ignore[misc]
    """faust's aiokafka consumer with `_drain_messages` guarded by a `ReadGuard`.

    Topics named in the App's `sparse_topics` are read as faust does (holes accepted
    without a re-read): compacted topics, where holes are the norm. Everything else is
    assumed dense.
    """

    _n_acked: int  # faust's count of acks since the last commit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_guard = ReadGuard()
        self._last_fetched: dict[TP, int] = {}  # per partition, of the batch being read
        self._first_fetched: dict[TP, int] = {}

    async def _getmany(self, *args: Any, **kwargs: Any) -> Any:
        records = await super()._getmany(*args, **kwargs)
        for tp, batch in records.items():
            if batch:
                self._first_fetched.setdefault(tp, batch[0].offset)
                self._last_fetched[tp] = batch[-1].offset
        return records

    def _new_consumer_thread(self) -> Any:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _wait_next_records(self, timeout: float) -> Any:  # noqa: ASYNC109 (faust's)
        """faust's wait for the next fetch, given up when it takes `FETCH_STALL_AFTER`
        seconds beyond its timeout (module doc). Giving up returns "nothing fetched", so
        the read loop asks again at once; a fetch that only waited for the flow to resume
        after a rebalance is simply started again."""
        try:
            return await asyncio.wait_for(
                super()._wait_next_records(timeout), timeout + FETCH_STALL_AFTER
            )
        except TimeoutError:
            if self.flow_active:
                metrics.FETCH_STALLS.inc()
                log.warning(
                    "a fetch did not return after %.0f s; fetching again",
                    timeout + FETCH_STALL_AFTER,
                )
            return None, None

    # -- positions --------------------------------------------------------------------

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed: Mapping[TP, int] = await super().seek_to_committed()
        guard = self.read_guard
        unread: dict[TP, int] = {}
        for tp, offset in committed.items():
            first = guard.first_seen(tp)
            if first is None:
                guard.positioned(tp, offset)
            elif offset is None or offset < 0:
                unread[tp] = first  # nothing committed: from what was fetched first
            else:
                unread[tp] = offset  # (aiokafka does not seek to a committed offset 0)
        if unread:
            await self.seek_wait(unread)
        return committed

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        await super().seek_wait(partitions)
        for tp, offset in partitions.items():
            self.read_guard.positioned(tp, offset)

    async def _seek(self, partition: TP, offset: int) -> None:
        await super()._seek(partition, offset)
        self.read_guard.positioned(partition, offset)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self.read_guard.forget(revoked)
        await super().on_partitions_revoked(revoked)

    async def _refetch(self, tp: TP, offset: int) -> None:
        log.debug("%s-%d: offsets jumped past %d, reading again from there", *tp, offset)
        try:
            await self.seek_wait({tp: offset})
        except Exception as exc:  # revoked meanwhile: the new assignment positions it
            log.warning("seek of %s-%d to %d failed: %r", tp.topic, tp.partition, offset, exc)

    async def _refetch_unhanded(
        self, fetched: dict[TP, int], skipping: set[TP], sparse: frozenset[str]
    ) -> None:
        """After a batch: records fetched but neither handed over nor re-read yet (faust's
        getmany dropped them: a partition paused meanwhile, a batch cut short) leave no
        hole when nothing comes after them, so the position is compared instead."""
        acks_enabled_for = self.app.topics.acks_enabled_for
        for tp, last in fetched.items():
            expected = self.read_guard.expected(tp)
            if (
                expected is not None
                and last >= expected
                and tp not in skipping
                and acks_enabled_for(tp.topic)
                and tp.topic not in sparse
            ):
                self.read_guard.reading_again(tp)
                await self._refetch(tp, expected)

    async def _reread_dropped_changelogs(
        self, firsts: Mapping[TP, int], lasts: Mapping[TP, int], taken: Mapping[TP, int]
    ) -> None:
        """Changelog records fetched but dropped by faust's `getmany` (the flow stopped
        for a rebalance, or a generation changed, while the fetch was under way) are read
        again, unless something has positioned the partition since (module doc)."""
        acks_enabled_for = self.app.topics.acks_enabled_for
        fetched = {
            tp: (firsts.get(tp, last), last)
            for tp, last in lasts.items()
            if not acks_enabled_for(tp.topic)
        }
        if not fetched:
            return
        dropped = dropped_reads(fetched, taken, self._get_active_partitions())
        if not dropped:
            return
        for tp in await self._thread.seek_back_unmoved(dropped):
            offset = dropped[tp][1]
            self._read_offset[tp] = offset if offset > 0 else None
            metrics.REREAD.labels("recovered").inc()
            log.info("%s-%d: reading again from %d (fetched, not handed over)", *tp, offset)

    # -- the read loop ----------------------------------------------------------------

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - via tests
        """faust's loop (faust/transport/consumer.py) with the guard in the middle."""
        callback = self.callback
        stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        acks_enabled_for = self.app.topics.acks_enabled_for
        guard = self.read_guard
        sparse: frozenset[str] = getattr(self.app, "sparse_topics", frozenset())
        read_offset = self._read_offset
        recovered = self.app.tables.recovery.completed.is_set
        since_yield = 0
        try:
            while not (stopped() or fetcher_stopped()):
                self.diag.set_flag(CONSUMER_FETCHING)
                generation = self.app.consumer_generation_id
                records = self.getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    skipping: set[TP] = set()  # re-read after a seek or a lost hand-over
                    taken: dict[TP, int] = {}  # changelogs: last offset handed or skipped
                    async for tp, message in records:
                        since_yield += 1
                        if since_yield > _YIELD_EVERY:
                            await asyncio.sleep(0)
                            since_yield = 0
                        offset = message.offset
                        acked = acks_enabled_for(message.topic)
                        dense = acked and message.topic not in sparse
                        if not dense:
                            # Changelogs (unacked) and compacted topics: faust's own rules.
                            last = read_offset[tp]
                            if last is not None and offset < last:
                                if not acked:
                                    taken[tp] = offset
                                continue
                            if acked and last and offset - last > 1:
                                await self._add_gap(tp, last + 1, offset)
                        else:
                            if tp in skipping:
                                continue
                            guard.seen(tp, offset)
                            if not recovered():
                                continue  # start-up: read again once positioned (module doc)
                            verdict = guard.check(tp, offset, dense=True)
                            if verdict is Verdict.DUPLICATE:
                                continue
                            if verdict is Verdict.REFETCH:
                                skipping.add(tp)
                                await self._refetch(tp, cast(int, guard.expected(tp)))
                                continue
                            if verdict is Verdict.GAP:
                                metrics.REREAD.labels("real").inc()
                                await self._add_gap(tp, cast(int, guard.expected(tp)), offset - 1)
                        every: int | None = self._commit_every
                        if every is not None and self._n_acked >= every:
                            self._n_acked = 0
                            await self.commit()
                        handing = callback(message)
                        result = await self.wait_first(handing, self.suspend_flow.wait())
                        if not acked and handing in result.done:
                            taken[tp] = offset
                        if self.app.consumer_generation_id != generation:
                            # A rebalance happened meanwhile: its seek to the committed
                            # offsets decides where reading goes on, not this record.
                            # (Breaking out here instead stalls faust's table recovery.)
                            continue
                        if dense:
                            if handing not in result.done:
                                # The flow stopped before the record reached its agents:
                                # the hole it leaves is re-read (guard).
                                skipping.add(tp)
                                continue
                            if guard.read(tp, offset):
                                metrics.REREAD.labels("recovered").inc()
                                log.warning(
                                    "%s-%d: read offset %d again after it was skipped", *tp, offset
                                )
                        read_offset[tp] = offset
                    fetched, self._last_fetched = self._last_fetched, {}
                    firsts, self._first_fetched = self._first_fetched, {}
                    if self.app.consumer_generation_id == generation:
                        await self._refetch_unhanded(fetched, skipping, sparse)
                    await self._reread_dropped_changelogs(firsts, fetched, taken)
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)
