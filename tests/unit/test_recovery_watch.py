"""What the recovery watch says about a stalled table recovery (streams/recovery_watch.py)."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from streams import recovery_watch
from streams.recovery_watch import describe_fetcher, describe_waiting, watch_recovery

BEHIND = TP("app-configs-changelog", 0)
DONE = TP("app-configs-changelog", 2)
EMPTY = TP("app-health-changelog", 1)


def _app(in_recovery: bool = True, internals: bool = True) -> Any:
    recovery = SimpleNamespace(
        in_recovery=in_recovery,
        active_tps={BEHIND, DONE, EMPTY},
        active_offsets={BEHIND: -1, DONE: 1, EMPTY: -1},
        active_highwaters={BEHIND: 1, DONE: 1, EMPTY: -1},
    )
    state = SimpleNamespace(
        paused=True, has_valid_position=True, position=0, awaiting_reset=False, highwater=2
    )
    assignment = SimpleNamespace(state_value=lambda tp: state if tp == BEHIND else None)
    client = SimpleNamespace(
        _subscription=SimpleNamespace(subscription=SimpleNamespace(assignment=assignment)),
        _fetcher=SimpleNamespace(_records={}),
    )
    consumer = SimpleNamespace(
        _paused_partitions=set(),
        _read_offset={BEHIND: 1},
        _thread=SimpleNamespace(_consumer=client) if internals else None,
    )
    return SimpleNamespace(tables=SimpleNamespace(recovery=recovery), consumer=consumer)


def test_only_partitions_behind_their_highwater_are_described() -> None:
    assert describe_waiting(_app()) == [
        "app-configs-changelog[0] at -1 of 1: faust paused=False, read_offset=1, "
        "aiokafka paused=True position=0 awaiting_reset=False highwater=2, buffered=False"
    ]


def test_other_internals_do_not_break_it() -> None:
    (line,) = describe_waiting(_app(internals=False))
    assert line.endswith("aiokafka state unknown (AttributeError)")


@pytest.mark.parametrize("in_recovery", [True, False])
def test_it_warns_once_and_only_during_a_long_recovery(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, in_recovery: bool
) -> None:
    monkeypatch.setattr(recovery_watch, "RECOVERY_STALL_SECONDS", 0.02)

    async def watch() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(watch_recovery(_app(in_recovery), every=0.01), 0.2)

    with caplog.at_level(logging.WARNING, logger="streams.recovery_watch"):
        asyncio.run(watch())
    warned = [r.getMessage() for r in caplog.records]
    if in_recovery:
        assert len(warned) == 1
        assert "table recovery has waited" in warned[0]
        assert "app-configs-changelog[0] at -1 of 1" in warned[0]
    else:
        assert warned == []


def test_the_fetcher_is_described_by_where_its_tasks_wait() -> None:
    async def routine(stop: asyncio.Event) -> None:
        await stop.wait()

    async def request() -> None:
        await asyncio.sleep(10)

    async def describe() -> str:
        stop = asyncio.Event()
        fetch_task = asyncio.create_task(routine(stop))
        pending = asyncio.create_task(request())
        await asyncio.sleep(0)
        fetcher = SimpleNamespace(_fetch_task=fetch_task, _pending_tasks={pending}, _in_flight={0})
        app = SimpleNamespace(
            consumer=SimpleNamespace(
                _thread=SimpleNamespace(_consumer=SimpleNamespace(_fetcher=fetcher))
            )
        )
        try:
            return describe_fetcher(app)
        finally:
            stop.set()
            pending.cancel()

    line = asyncio.run(describe())
    assert line.startswith("fetch task at routine:")
    assert "1 request task(s) under way (request:" in line
    assert line.endswith("nodes in flight [0]")
    assert describe_fetcher(SimpleNamespace()) == "fetcher state unknown (AttributeError)"
