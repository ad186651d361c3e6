"""Per-integration buffers for batching sinks, holding events un-acked until written.

An event's offset may only be committed once its alert is in the destination (or the
DLQ), so the buffer keeps the faust events and acks them after the flush. Buffers are
keyed by integration and source partition: a batch then names its object by where its
alerts came from, which a re-delivery or replay reproduces.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from schemas.models import Delivery
from sinks.base import Batch, BatchLimits

__all__ = ["Batcher", "Pending"]

BufferKey = tuple[str, int, str, int]  # integration key, delivery partition, source topic, part


@dataclass
class Pending:
    """One batch ready to write, with the handles to ack once it is written."""

    batch: Batch
    acks: list[Any]
    delivery_partition: int


@dataclass
class _Buffer:
    records: list[Delivery] = field(default_factory=list)
    offsets: set[int] = field(default_factory=set)
    acks: list[Any] = field(default_factory=list)
    size: int = 0
    opened: float = field(default_factory=time.monotonic)


def _day(delivery: Delivery) -> dt.date:
    stamp = delivery.produced_at
    if stamp is None:
        return delivery.alert.detected_at.astimezone(dt.UTC).date()
    return dt.datetime.fromtimestamp(stamp, tz=dt.UTC).date()


class Batcher:
    def __init__(self, limits: BatchLimits) -> None:
        self.limits = limits
        self._buffers: dict[BufferKey, _Buffer] = {}
        self._cut: dict[BufferKey, int] = {}  # highest source offset already in a batch

    def __len__(self) -> int:
        return sum(len(b.records) for b in self._buffers.values())

    @staticmethod
    def _key(delivery: Delivery, delivery_partition: int) -> BufferKey:
        return (
            delivery.integration.key,
            delivery_partition,
            delivery.source_topic,
            delivery.source_partition,
        )

    def is_duplicate(self, delivery: Delivery, delivery_partition: int) -> bool:
        """The same source offset again: a router that crashed before committing routes
        its alerts a second time. Counting it would also shift the batch boundaries.
        (Redriven records are never duplicates: they are sent on purpose.)"""
        if delivery.redrive:
            return False
        key = self._key(delivery, delivery_partition)
        buf = self._buffers.get(key)
        return (buf is not None and delivery.source_offset in buf.offsets) or (
            delivery.source_offset <= self._cut.get(key, -1)
        )

    def add(
        self, delivery: Delivery, ack: Any, delivery_partition: int, size: int
    ) -> Pending | None:
        """Buffer one record; returns a batch when this record fills its buffer."""
        key = self._key(delivery, delivery_partition)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = _Buffer()
        buf.records.append(delivery)
        buf.offsets.add(delivery.source_offset)
        buf.acks.append(ack)
        buf.size += size
        if len(buf.records) >= self.limits.max_events or buf.size >= self.limits.max_bytes:
            return self._take(key)
        return None

    def due(self, now: float | None = None) -> list[Pending]:
        """Batches whose oldest record waited `max_age` seconds."""
        now = time.monotonic() if now is None else now
        keys = [k for k, b in self._buffers.items() if now - b.opened >= self.limits.max_age]
        return [self._take(k) for k in keys]

    def drain(self) -> list[Pending]:
        return [self._take(k) for k in list(self._buffers)]

    def drop_partitions(self, delivery_partitions: Iterable[Hashable]) -> int:
        """Forget buffers of revoked partitions; their new owner re-reads them."""
        gone = set(delivery_partitions)
        keys = [k for k in self._buffers if k[1] in gone]
        for key in keys:
            del self._buffers[key]
        for key in [k for k in self._cut if k[1] in gone]:
            del self._cut[key]
        return len(keys)

    def _take(self, key: BufferKey) -> Pending:
        buf = self._buffers.pop(key)
        records = sorted(buf.records, key=lambda d: d.source_offset)
        self._cut[key] = max(self._cut.get(key, -1), records[-1].source_offset)
        first = records[0]
        batch = Batch(
            integration=max(records, key=lambda d: d.config_version).integration,
            topic=first.source_topic,
            partition=first.source_partition,
            first_offset=first.source_offset,
            last_offset=records[-1].source_offset,
            day=_day(first),
            records=records,
            size_bytes=buf.size,
        )
        return Pending(batch=batch, acks=buf.acks, delivery_partition=key[1])
