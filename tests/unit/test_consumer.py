"""streams.consumer: what the consumer does with each record's offset, and how it is built."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from faust.types import TP

from streams import consumer as consumer_module
from streams import metrics
from streams.app import create_app
from streams.consumer import GaplessConsumer, ReadGuard, Verdict
from streams.settings import Settings
from streams.transport import DrainingProducer

A = TP("alerts", 0)
B = TP("alerts", 1)


def test_nothing_known_reads_anything_then_expects_the_next() -> None:
    guard = ReadGuard()
    assert guard.check(A, 17, dense=True) is Verdict.READ
    guard.read(A, 17)
    assert guard.expected(A) == 18
    assert guard.check(A, 18, dense=True) is Verdict.READ


def test_below_the_position_is_a_duplicate() -> None:
    guard = ReadGuard()
    guard.positioned(A, 10)
    assert guard.check(A, 9, dense=True) is Verdict.DUPLICATE


def test_a_hole_is_read_again_once_then_accepted() -> None:
    guard = ReadGuard()
    guard.positioned(A, 10)
    assert guard.check(A, 12, dense=True) is Verdict.REFETCH
    assert guard.expected(A) == 10  # where to seek back to
    # After the seek the hole is still there: a transaction marker, not a skip.
    assert guard.check(A, 12, dense=True) is Verdict.GAP
    assert guard.read(A, 12) is False
    # The next hole gets its own re-read.
    assert guard.check(A, 15, dense=True) is Verdict.REFETCH


def test_a_re_read_that_finds_the_record_says_so() -> None:
    guard = ReadGuard()
    guard.positioned(A, 10)
    assert guard.check(A, 11, dense=True) is Verdict.REFETCH
    assert guard.check(A, 10, dense=True) is Verdict.READ
    assert guard.read(A, 10) is True
    assert guard.read(A, 11) is False


def test_sparse_topics_accept_holes_without_a_re_read() -> None:
    guard = ReadGuard()
    guard.positioned(A, 10)
    assert guard.check(A, 30, dense=False) is Verdict.GAP


def test_positions_are_per_partition_and_forgotten_on_revocation() -> None:
    guard = ReadGuard()
    guard.positioned(A, 10)
    guard.positioned(B, 3)
    assert guard.check(B, 3, dense=True) is Verdict.READ
    guard.forget([A])
    assert guard.expected(A) is None
    assert guard.check(A, 99, dense=True) is Verdict.READ  # the new assignment decides
    assert guard.expected(B) == 3


def test_unknown_or_negative_positions_mean_unknown() -> None:
    guard = ReadGuard()
    guard.positioned(A, 10)
    guard.positioned(A, None)
    assert guard.expected(A) is None
    guard.positioned(A, -1001)  # "no committed offset" from the broker
    assert guard.expected(A) is None


async def test_the_app_reads_through_the_guarded_consumer_with_a_short_fetch_wait(
    tmp_path: Path,
) -> None:
    app = create_app(Settings(data_dir=tmp_path, fetch_max_wait_ms=42), 4)
    assert isinstance(app.consumer, GaplessConsumer)
    assert app.sparse_topics == {"integrations"}  # compacted: holes are normal
    kafka = app.consumer._thread._create_worker_consumer(app.transport)
    try:
        assert kafka._fetch_max_wait_ms == 42  # faust alone: 1 500
        assert kafka._max_partition_fetch_bytes == 256 * 1024  # faust alone: 1 MB
    finally:
        await kafka.stop()
    # faust reads no hot path: few events buffered per stream (the retry tiers' agents
    # sleep on their head; faust's 4 096 held tens of MB of parked records).
    assert app.conf.stream_buffer_maxsize == 256


def test_the_first_offset_fetched_is_remembered_until_revocation() -> None:
    guard = ReadGuard()
    guard.seen(A, 40)
    guard.seen(A, 41)
    assert guard.first_seen(A) == 40
    guard.forget([A])
    assert guard.first_seen(A) is None


async def test_seeking_to_committed_positions_the_guard(tmp_path: Path) -> None:
    """Committed offsets position the guard; a partition whose records were fetched (and
    held back) before is read again from its committed offset, or with nothing committed
    from the first record fetched."""
    app = create_app(Settings(data_dir=tmp_path), 4)
    consumer = app.consumer
    sought: list[dict[TP, int]] = []

    async def committed() -> dict[TP, int | None]:
        return {A: 12, B: None}

    async def seek_wait(partitions: dict[TP, int]) -> None:
        sought.append(dict(partitions))

    consumer._thread.seek_to_committed = committed
    consumer._thread.seek_wait = seek_wait
    consumer.read_guard.seen(A, 30)  # held back at start-up
    consumer.read_guard.seen(B, 5)
    await consumer.seek_to_committed()
    # aiokafka seeks only to committed offsets above 0 and never to "nothing committed":
    # partitions fetched before they were positioned are sought explicitly.
    assert sought == [{A: 12, B: 5}]
    assert consumer.read_guard.expected(A) == 12
    assert consumer.read_guard.expected(B) == 5


class _SlowBuffer:
    """A producer buffer whose flush returns after one record, as faust's does when the
    next record takes longer than 0.1 s to leave."""

    def __init__(self, pending: int) -> None:
        self.size = pending
        self.flushes = 0

    async def flush(self) -> None:
        self.flushes += 1
        self.size = max(0, self.size - 1)


async def test_the_producer_flush_before_a_commit_empties_the_whole_buffer(
    tmp_path: Path,
) -> None:
    app = create_app(Settings(data_dir=tmp_path), 4)
    producer = app.producer
    assert isinstance(producer, DrainingProducer)
    assert isinstance(app.consumer, GaplessConsumer)
    producer.buffer = _SlowBuffer(pending=3)
    await producer.flush()
    assert producer.buffer.size == 0
    assert producer.buffer.flushes >= 3  # faust's own flush: once


async def test_the_flush_before_a_commit_also_flushes_the_status_producer(
    tmp_path: Path,
) -> None:
    """Status records go through librdkafka (streams/direct_producer.py): they must be on
    the broker before the offsets of the alerts they report, like faust's own records."""
    app = create_app(Settings(data_dir=tmp_path), 4)
    flushed: list[str] = []

    async def status_flush() -> None:
        flushed.append("status")

    app.extra_flushes = (status_flush,)
    app.producer.buffer = _SlowBuffer(pending=1)
    await app.producer.flush()
    assert flushed == ["status"]


def test_records_fetched_but_not_handed_over_count_as_read_again() -> None:
    guard = ReadGuard()
    guard.positioned(A, 8)
    guard.reading_again(A)  # the batch ended with offsets 8.. fetched, none handed over
    assert guard.check(A, 8, dense=True) is Verdict.READ
    assert guard.read(A, 8) is True


async def test_a_fetch_that_never_returns_is_given_up_and_the_next_one_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stall seen in CI (test_faults.py's rebalance test): a fetch started just before
    a rebalance never returned, and the read loop, which also feeds faust's table
    recovery, waited on it forever. Ours gives it up and fetches again."""
    app = create_app(Settings(data_dir=tmp_path), 4)
    consumer = app.consumer
    assert isinstance(consumer, GaplessConsumer)
    monkeypatch.setattr(consumer_module, "FETCH_STALL_AFTER", 0.05)
    calls: list[str] = []

    async def fetch(active_partitions: Any, timeout: float) -> dict[TP, list[Any]]:  # noqa: ASYNC109
        calls.append("fetch")
        if len(calls) == 1:
            await asyncio.Event().wait()  # the stuck fetch
        return {A: []}

    monkeypatch.setattr(consumer, "_getmany", fetch)
    monkeypatch.setattr(consumer, "_get_active_partitions", lambda: {A})
    stalls = metrics.FETCH_STALLS._value.get()
    # (bounded here too, so that without the fix this fails instead of hanging)
    assert await asyncio.wait_for(consumer._wait_next_records(0.01), 5) == (None, None)
    assert metrics.FETCH_STALLS._value.get() == stalls + 1
    assert await consumer._wait_next_records(0.01) == ({A: []}, {A})
    assert calls == ["fetch", "fetch"]


# -- changelog records faust's getmany dropped ----------------------------------------------

CHANGELOG = TP("app-configs-changelog", 0)
OTHER = TP("app-health-changelog", 1)


@pytest.mark.parametrize(
    ("taken", "expected"),
    [
        ({}, {CHANGELOG: (2, 0)}),  # none handed over (the flow stopped): all again
        ({CHANGELOG: 0}, {CHANGELOG: (2, 1)}),  # from the first one not handed over
        ({CHANGELOG: 1}, {}),  # all taken
    ],
)
def test_changelog_records_fetched_and_not_taken_are_read_again(
    taken: dict[TP, int], expected: dict[TP, tuple[int, int]]
) -> None:
    """The rebalance test's stall: a worker's table recovery waited for good for records
    aiokafka had fetched (position 2 = the end) and faust's getmany had dropped."""
    assert consumer_module.dropped_reads({CHANGELOG: (0, 1)}, taken, {CHANGELOG}) == expected


def test_paused_changelog_partitions_are_left_until_they_are_resumed() -> None:
    assert consumer_module.dropped_reads({CHANGELOG: (0, 1)}, {}, {OTHER}) == {}


async def test_a_partition_is_sought_back_only_if_nothing_positioned_it_since() -> None:
    class Client:
        sought: list[tuple[TP, int]] = []

        async def position(self, tp: TP) -> int:
            if tp == OTHER:
                raise RuntimeError("not assigned")
            return {CHANGELOG: 2, TP("moved", 0): 7}[tp]

        def seek(self, tp: TP, offset: int) -> None:
            self.sought.append((tp, offset))

    client = Client()
    moved = await consumer_module._ConsumerThread._seek_back_unmoved(
        None,  # type: ignore[arg-type]
        client,
        {CHANGELOG: (2, 0), TP("moved", 0): (2, 0), OTHER: (2, 0)},
    )
    assert moved == [CHANGELOG]
    assert client.sought == [(CHANGELOG, 0)]


async def test_only_changelog_records_are_sought_back_and_read_as_new(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path), 4)
    consumer = app.consumer
    changelog = TP(f"{app.conf.id}-configs-changelog", 0)
    alerts = TP("alerts", 0)  # acked: the read guard's business, not this
    app.topics._acking_topics.add(alerts.topic)
    asked: list[dict[TP, tuple[int, int]]] = []

    async def seek_back_unmoved(moves: dict[TP, tuple[int, int]]) -> list[TP]:
        asked.append(dict(moves))
        return list(moves)

    consumer._thread.seek_back_unmoved = seek_back_unmoved
    consumer._active_partitions = {changelog, alerts}
    consumer._read_offset[changelog] = 7  # set by an earlier seek
    before = metrics.REREAD.labels("recovered")._value.get()
    await consumer._reread_dropped_changelogs(
        {changelog: 0, alerts: 0}, {changelog: 1, alerts: 5}, {}
    )
    assert asked == [{changelog: (2, 0)}]
    assert consumer._read_offset[changelog] is None  # offsets from 0 on are new again
    assert metrics.REREAD.labels("recovered")._value.get() == before + 1
