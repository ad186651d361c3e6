"""Says why faust's table recovery waits, when it has waited long.

Rarely (about 1 run in 40 of tests/integration/test_faults.py's rebalance test) a worker's
recovery after another worker left waits for good: faust logs "No event received for
active tp ... since recovery start" every 5 s and nothing else, the config table never
completes, the lanes never get their partitions. faust's own log does not say which
part is stuck (the fetch position, a pause, faust's read offset, the fetched buffer), so
this logs each of them for the changelog partitions recovery still waits for, and where
aiokafka's fetch task waits. It found the one cause seen so far (records faust's getmany
dropped after aiokafka's position had moved past them: position at the end, nothing
buffered), now read again by streams/consumer.py; it stays for any other.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

__all__ = ["RECOVERY_STALL_SECONDS", "describe_fetcher", "describe_waiting", "watch_recovery"]

log = logging.getLogger(__name__)

RECOVERY_STALL_SECONDS = 20.0


def describe_waiting(app: Any) -> list[str]:
    """One line per active changelog partition recovery waits for (empty: none)."""
    recovery = app.tables.recovery
    lines = []
    for tp in sorted(recovery.active_tps):
        offset = recovery.active_offsets.get(tp)
        highwater = recovery.active_highwaters.get(tp)
        if highwater is None or highwater < 0 or (offset is not None and offset >= highwater):
            continue
        lines.append(f"{tp.topic}[{tp.partition}] at {offset} of {highwater}: {_where(app, tp)}")
    return lines


def describe_fetcher(app: Any) -> str:
    """aiokafka's background fetch task: where it waits and what it has under way."""
    try:
        fetcher = app.consumer._thread._consumer._fetcher
        task = fetcher._fetch_task
        if task.done():
            return f"fetch task ended ({task!r})"
        stack = task.get_stack()
        where = f"{stack[-1].f_code.co_name}:{stack[-1].f_lineno}" if stack else "?"
        pending = [t for t in fetcher._pending_tasks if not t.done()]
        waits = []
        for t in pending:
            frames = t.get_stack()
            waits.append(f"{frames[-1].f_code.co_name}:{frames[-1].f_lineno}" if frames else "?")
        return (
            f"fetch task at {where}, {len(pending)} request task(s) under way "
            f"({', '.join(waits) or 'none'}), nodes in flight {sorted(fetcher._in_flight)}"
        )
    except Exception as exc:  # diagnostics only: the internals may differ
        return f"fetcher state unknown ({type(exc).__name__})"


def _where(app: Any, tp: Any) -> str:
    consumer = app.consumer
    parts = [
        f"faust paused={tp in consumer._paused_partitions}",
        f"read_offset={consumer._read_offset.get(tp)}",
    ]
    try:
        client = consumer._thread._consumer
        state = client._subscription.subscription.assignment.state_value(tp)
        if state is None:
            parts.append("aiokafka: not assigned")
        else:
            position = state.position if state.has_valid_position else None
            parts.append(
                f"aiokafka paused={state.paused} position={position} "
                f"awaiting_reset={state.awaiting_reset} highwater={state.highwater}"
            )
        parts.append(f"buffered={tp in client._fetcher._records}")
    except Exception as exc:  # diagnostics only: the internals may differ
        parts.append(f"aiokafka state unknown ({type(exc).__name__})")
    return ", ".join(parts)


async def watch_recovery(app: Any, every: float = 5.0) -> None:
    """Log `describe_waiting` once a recovery has waited `RECOVERY_STALL_SECONDS`."""
    since: float | None = None
    told = False
    while True:
        await asyncio.sleep(every)
        recovery = app.tables.recovery
        if not recovery.in_recovery:
            since, told = None, False
            continue
        if since is None:
            since = time.monotonic()
        if not told and time.monotonic() - since >= RECOVERY_STALL_SECONDS:
            told = True
            try:
                waiting = describe_waiting(app)
            except Exception as exc:  # diagnostics must not stop the worker
                waiting = [f"(cannot say: {type(exc).__name__}: {exc})"]
            log.warning(
                "table recovery has waited %.0f s for: %s; aiokafka's %s",
                time.monotonic() - since,
                "; ".join(waiting) or "(nothing left to read)",
                describe_fetcher(app),
            )
