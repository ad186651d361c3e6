"""Per-integration buffers for batching sinks, holding events un-acked until written.

An event's offset may only be committed once its alert is in the destination (or the
DLQ), so the buffer keeps the faust events and acks them after the flush. Buffers are
keyed by integration and source partition: a batch then names its object by where its
alerts came from, which a re-delivery or replay reproduces.

A buffered record is a `BatchRecord` (the alert's JSON line and a few fields), not the
parsed `Delivery`: the integration's config is held once per buffer. What a record costs
in memory is estimated by `record_memory` (its line plus a measured overhead), and
`Batcher.memory` is what the agent's memory cap counts.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from schemas.models import Delivery, IntegrationConfig
from sinks.base import Batch, BatchLimits, BatchRecord

__all__ = [
    "RECORD_OVERHEAD",
    "Batcher",
    "BufferKey",
    "Pending",
    "record_memory",
    "release_payload",
]

BufferKey = tuple[str, int, str, int]  # integration key, delivery partition, source topic, part

RECORD_OVERHEAD = 1000
"""Bytes one buffered record holds besides its JSON line: the `BatchRecord` and its
strings, its place in the buffer's lists and offset set, and the faust event kept to ack
it (with the delivery record's bytes already released). Measured with tracemalloc by
tests/unit/test_batch_memory.py, which keeps this within a factor of 1.5 of reality."""


def record_memory(record: BatchRecord) -> int:
    """Estimated bytes a buffered record holds (what `batch_memory_cap` counts)."""
    return len(record.line) + RECORD_OVERHEAD


@dataclass
class Pending:
    """One batch ready to write, with the handles to ack once it is written."""

    batch: Batch
    acks: list[Any]
    delivery_partition: int


@dataclass
class _Buffer:
    integration: IntegrationConfig  # the newest config snapshot of the buffered records
    config_version: int
    records: list[BatchRecord] = field(default_factory=list)
    offsets: set[int] = field(default_factory=set)
    acks: list[Any] = field(default_factory=list)
    size: int = 0  # JSON lines bytes, newlines included
    memory: int = 0
    opened: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(self, limits: BatchLimits) -> None:
        self.limits = limits
        self._buffers: dict[BufferKey, _Buffer] = {}
        self._cut: dict[BufferKey, int] = {}  # highest source offset already in a batch
        self._memory = 0

    def __len__(self) -> int:
        return sum(len(b.records) for b in self._buffers.values())

    @property
    def memory(self) -> int:
        """Estimated bytes held by the records buffered (not yet cut into a batch)."""
        return self._memory

    def is_duplicate(self, delivery: Delivery, delivery_partition: int) -> bool:
        """The same source offset again: a router that crashed before committing routes
        its alerts a second time. Counting it would also shift the batch boundaries.
        (Redriven records are never duplicates: they are sent on purpose.)"""
        key = (
            delivery.integration.key,
            delivery_partition,
            delivery.source_topic,
            delivery.source_partition,
        )
        return not delivery.redrive and self.holds(key, delivery.source_offset)

    def holds(self, key: BufferKey, source_offset: int) -> bool:
        """This source offset is buffered under `key` or was already cut into a batch."""
        buf = self._buffers.get(key)
        return (buf is not None and source_offset in buf.offsets) or (
            source_offset <= self._cut.get(key, -1)
        )

    def add(self, delivery: Delivery, ack: Any, delivery_partition: int) -> Pending | None:
        """Buffer one record; returns a batch when this record fills its buffer.

        Only the slim `BatchRecord` of `delivery` is kept (and its config, when it is
        newer than the buffer's): the caller may drop the delivery afterwards."""
        key = (
            delivery.integration.key,
            delivery_partition,
            delivery.source_topic,
            delivery.source_partition,
        )
        return self.add_record(
            key, delivery.integration, delivery.config_version, BatchRecord.of(delivery), ack
        )

    def add_record(
        self,
        key: BufferKey,
        integration: IntegrationConfig,
        config_version: int,
        record: BatchRecord,
        ack: Any,
    ) -> Pending | None:
        """`add` for a record already in its slim form, under its buffer key
        (integration key, partition read, source topic, source partition)."""
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = _Buffer(integration, config_version)
        elif config_version > buf.config_version:
            buf.integration, buf.config_version = integration, config_version
        memory = record_memory(record)
        buf.records.append(record)
        buf.offsets.add(record.source_offset)
        buf.acks.append(ack)
        buf.size += len(record.line) + 1
        buf.memory += memory
        self._memory += memory
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

    def cut_largest(self, until: int) -> list[Pending]:
        """Cut the buffers holding the most memory first, until at most `until` bytes
        are left buffered: under memory pressure the fewest, largest objects are written
        and the small buffers of other integrations keep filling."""
        cut = []
        for key in sorted(self._buffers, key=lambda k: self._buffers[k].memory, reverse=True):
            if self._memory <= until:
                break
            cut.append(self._take(key))
        return cut

    def drop_partitions(self, delivery_partitions: Iterable[Hashable]) -> int:
        """Forget buffers of revoked partitions; their new owner re-reads them."""
        gone = set(delivery_partitions)
        keys = [k for k in self._buffers if k[1] in gone]
        for key in keys:
            self._memory -= self._buffers.pop(key).memory
        for key in [k for k in self._cut if k[1] in gone]:
            del self._cut[key]
        return len(keys)

    def _take(self, key: BufferKey) -> Pending:
        buf = self._buffers.pop(key)
        self._memory -= buf.memory
        records = buf.records
        records.sort(key=lambda r: r.source_offset)
        self._cut[key] = max(self._cut.get(key, -1), records[-1].source_offset)
        first = records[0]
        batch = Batch(
            integration=buf.integration,
            config_version=buf.config_version,
            topic=key[2],
            partition=key[3],
            first_offset=first.source_offset,
            last_offset=records[-1].source_offset,
            day=first.day,
            records=records,
            size_bytes=buf.size,
            memory_bytes=buf.memory,
        )
        return Pending(batch=batch, acks=buf.acks, delivery_partition=key[1])


def release_payload(event: Any) -> None:
    """Drop the delivery record's bytes from a faust event kept only to ack it later.

    Once its `BatchRecord` is buffered, the event is an ack handle; left as it is, it
    (and its message, which faust's consumer tracks until the ack) would keep the whole
    wire record, alert and config, alive for as long as the batch waits."""
    event.value = None
    event.message.value = None
