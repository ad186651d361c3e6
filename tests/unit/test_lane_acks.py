"""The batch lane commits a partition only up to the first alert not yet written."""

from __future__ import annotations

import random

from streams.lane import LaneAcks

TP = ("alerts", 0)


def test_position_is_the_first_alert_still_in_a_buffer() -> None:
    acks = LaneAcks()
    acks.reset({TP: 10})
    assert acks.position(TP) == 10
    assert acks.read(TP, 10, 0) is None  # for no batching integration: nothing to wait for
    first = acks.read(TP, 11, 1)
    second = acks.read(TP, 12, 1)
    acks.read(TP, 13, 0)
    assert first is not None and second is not None
    assert acks.position(TP) == 11
    acks.done(second)  # a later batch (another integration) written first
    assert acks.position(TP) == 11
    acks.done(first)
    assert acks.position(TP) == 14


def test_an_alert_in_two_buffers_waits_for_both() -> None:
    acks = LaneAcks()
    acks.reset({TP: 0})
    handle = acks.read(TP, 0, 2)
    assert handle is not None
    acks.done(handle)
    assert acks.position(TP) == 0
    acks.done(handle)
    assert acks.position(TP) == 1


def test_only_moved_positions_are_committed() -> None:
    acks = LaneAcks()
    acks.reset({TP: 5, ("alerts", 1): 7})
    assert acks.moved() == {}
    acks.read(TP, 5, 0)
    assert acks.moved() == {TP: 6}
    acks.committed({TP: 6})
    assert acks.moved() == {}


def test_a_batch_of_an_earlier_assignment_moves_nothing() -> None:
    acks = LaneAcks()
    acks.reset({TP: 0})
    old = acks.read(TP, 0, 1)
    assert old is not None
    acks.reset({TP: 0})  # revoked and assigned again: read again from the commit
    new = acks.read(TP, 0, 1)
    acks.done(old)
    assert acks.position(TP) == 0
    assert new is not None
    acks.done(new)
    assert acks.position(TP) == 1


def test_records_of_partitions_not_assigned_are_ignored() -> None:
    acks = LaneAcks()
    acks.reset({TP: 0})
    assert acks.read(("alerts", 3), 4, 1) is None
    assert acks.position(("alerts", 3)) is None
    assert not acks.reading(("alerts", 3)) and acks.reading(TP)


def test_position_follows_writes_in_any_order_across_many_reads() -> None:
    acks = LaneAcks()
    acks.reset({TP: 0})
    rng = random.Random(7)
    open_handles: dict[int, tuple[int, tuple[str, int], int]] = {}
    for offset in range(5000):
        handle = acks.read(TP, offset, rng.choice((0, 1, 1, 1)))
        if handle is not None:
            open_handles[offset] = handle
        if open_handles and rng.random() < 0.6:  # a batch of some integration written
            done = rng.choice(list(open_handles))
            acks.done(open_handles.pop(done))
        expected = min(open_handles, default=offset + 1)
        assert acks.position(TP) == expected


def test_a_position_never_runs_past_what_is_pending() -> None:
    acks = LaneAcks()
    acks.reset({TP: 10})
    handle = acks.read(TP, 12, 1)
    assert handle is not None and acks.position(TP) == 12
    acks.done(handle)
    assert acks.position(TP) == 13
    acks.read(TP, 11, 1)  # out of order (not how a lane reads): still found
    assert acks.position(TP) == 11
