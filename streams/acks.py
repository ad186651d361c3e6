"""Acking events in offset order, whatever order their work finishes in.

faust commits a partition up to the end of the first run of consecutive acked offsets,
and does not check that run starts right after the last commit (DESIGN.md: upstream issue
#606). An event acked while an older one of the same partition is still in flight can
therefore be committed past the older one, which a crash would then lose. So work may
finish in any order, but events are acked only as an unbroken prefix of their partition.
"""

from __future__ import annotations

from collections import deque
from typing import Any

__all__ = ["OrderedAcks"]


class _Slot:
    __slots__ = ("done", "event")

    def __init__(self, event: Any) -> None:
        self.event = event
        self.done = False


class OrderedAcks:
    def __init__(self) -> None:
        self._queues: dict[Any, deque[_Slot]] = {}

    def track(self, event: Any) -> _Slot:
        """Call in the order events are received (their offset order per partition)."""
        slot = _Slot(event)
        self._queues.setdefault(event.message.tp, deque()).append(slot)
        return slot

    def done(self, slot: _Slot) -> None:
        slot.done = True
        queue = self._queues.get(slot.event.message.tp)
        while queue and queue[0].done:
            queue.popleft().event.ack()

    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def forget(self, tps: Any) -> None:
        """Partitions revoked: their new owner re-reads what was not acked."""
        for tp in tps:
            self._queues.pop(tp, None)
