"""A delivery lane: one per-alert type's delivery topic, read with librdkafka.

Why not a faust agent: per-alert fan-out is bound by the one event loop, and faust's
per-record path (consumer thread, conductor, stream, take buffer, ack bookkeeping) cost
more of it per delivery than routing the alert did (bench/analysis.md). A lane reads
the records in bulk in a thread of its own and hands each to `PerAlertDeliveries`,
which delivers it as a task and says when it is done.

One lane per type, as there was one agent per type: a type whose destination is slow
fills only its own lane's in-flight limit and stops only its own reading. Within a type,
a record whose integration already has `per_integration_backlog` deliveries waits
(and the records behind it) until one of them ends, at most `park_after` seconds; then
it is parked on the 1 s retry topic and the lane goes on. (Parking at once, as the
faust agent did, sent thousands of records a second round the retry topic whenever the
lane read ahead of a few busy integrations.)

Which partitions and where to resume: as for every lane (streams/lane.py), the
partitions of `<app_id>-configs-by-tenant` faust assigned to this worker (a delivery
record carries its alert and config snapshot, so any worker can deliver it), the group
`<app_id>-delivery` (one group for all types' topics), and on first reading a partition,
faust's group's position on it (an upgrade: faust's sink agents read it before).
Committed only up to the oldest record whose delivery has not ended (delivered,
parked on a retry topic or dead-lettered) and only after the status, retry and dead
letter records of what is committed are on the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from faust.types import TableT

from schemas.models import Delivery
from streams.agents.router import RouteRules
from streams.agents.sinks import PerAlertDeliveries
from streams.delivery import Reporter
from streams.lane import Lane
from streams.settings import Settings

__all__ = ["DeliveryLane"]


@dataclass(slots=True)
class _Read:
    """A record read but not started yet (its integration's backlog is full)."""

    delivery: Delivery | None
    reason: str
    value: bytes
    where: tuple[str, int, int]
    done: Callable[[], None]


class DeliveryLane(Lane):
    prefetch_kb = 2 * 1024
    remembers_done = True  # deliveries end out of order (streams/done_marks.py)
    read_max = 500  # at most this many deliveries started per read (in-flight headroom)
    park_after = 1.0
    """Seconds a record waits for its integration's backlog before it is parked."""
    settle_on_revoke = 2.0
    """Seconds a revocation waits for the deliveries on the wire (streams/pipeline.py
    bounds the whole commit at revocation to 5 s)."""

    def __init__(
        self,
        settings: Settings,
        table: TableT,
        rules: RouteRules,
        deliveries: PerAlertDeliveries,
        reporter: Reporter,
        flushes: Sequence[Callable[[], Awaitable[None]]],
    ) -> None:
        self.name = f"{deliveries.kind} lane"
        super().__init__(settings, table, rules, reporter, settings.delivery_lane_group, flushes)
        self.deliveries = deliveries
        self.topics = frozenset({settings.delivery_topic(deliveries.kind)})
        self._waiting: deque[_Read] = deque()  # in offset order
        self._head_since = 0.0  # when the first waiting record was first refused
        self._late: set[str] = set()  # integrations whose records are parked at once

    def _take_one(self, msg: Any) -> None:
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        acks = self.acks
        handle = acks.read((topic, partition), offset, 1)
        if handle is None:
            return  # not (or no longer) assigned
        value = msg.value() or b""
        delivery, reason = self.deliveries.read(value)
        self._waiting.append(
            _Read(delivery, reason, value, (topic, partition, offset), lambda: acks.done(handle))
        )

    async def _after_read(self) -> None:
        self._start_waiting()

    def _start_waiting(self) -> None:
        """Start the waiting records in order, up to one whose integration is busy.

        An integration whose record had to wait `park_after` is late: its records are
        parked at once, not after a wait each, until one of them can start again."""
        waiting, offer, late_keys = self._waiting, self.deliveries.offer, self._late
        now = time.monotonic()
        head_late = self._head_since > 0 and now - self._head_since >= self.park_after
        while waiting:
            read = waiting[0]
            key = read.delivery.integration.key if read.delivery is not None else ""
            late = head_late or key in late_keys
            offered = offer(
                read.delivery, read.reason, read.value, read.where, read.done, late=late
            )
            if offered == "busy":
                if self._head_since == 0.0:
                    self._head_since = now
                return
            if offered == "parked":
                late_keys.add(key)
            elif offered == "started":
                late_keys.discard(key)
            waiting.popleft()
            self._head_since, head_late = 0.0, False

    async def _before_next_read(self) -> None:
        """Read on only once every record read is started and a whole read fits under the
        in-flight limit; meanwhile commit what finished, so a slow destination does not
        hold the positions back."""
        interval = self.settings.commit_interval
        while self._waiting:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.deliveries.ended(), self.park_after / 4)
            self._start_waiting()
            if time.monotonic() - self._last_commit >= interval:
                await self._commit()
        while True:
            try:
                await asyncio.wait_for(self.deliveries.wait_for_room(self.read_max), interval)
                return
            except TimeoutError:
                await self._commit()

    async def commit_revoked(self) -> None:
        """Deliveries on the wire when the partitions went are let finish first (up to
        `settle_on_revoke` s), so that what they delivered is committed with the rest:
        their new owner would send them, and every record after the oldest, again."""
        if not self._assigned:  # `on_revoked` dropped what this lane held
            await self.deliveries.settle(self.settle_on_revoke)
        await super().commit_revoked()

    def _drop_all(self) -> None:
        self._waiting.clear()
        self._head_since = 0.0
        self._late.clear()
        self.deliveries.drop()
