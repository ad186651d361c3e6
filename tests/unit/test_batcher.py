"""Batcher: per-integration, per-source-partition buffers with count, bytes and age limits."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import orjson

from schemas.models import Alert, Delivery, IntegrationConfig, idempotency_key
from sinks.base import BatchLimits, BatchRecord
from streams.batcher import RECORD_OVERHEAD, Batcher, record_memory

DETECTED = dt.datetime(2024, 5, 1, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
# 2024-05-02 04:30 UTC, while 2024-05-01 in the alert's own zone


def make_delivery(
    offset: int,
    *,
    integration_id: str = "s3-1",
    tenant_id: str = "tenant-a",
    source_partition: int = 0,
    source_topic: str = "alerts",
    config_version: int = 1,
    produced_at: float | None = 1714564800.0,  # 2024-05-01T12:00:00Z
    detected_at: dt.datetime = DETECTED,
) -> Delivery:
    alert = Alert(
        alert_id=f"alert-{source_partition}-{offset}",
        tenant_id=tenant_id,
        event_type="client_side_risk",
        risk_level="high",
        title="t",
        detected_at=detected_at,
    )
    integration = IntegrationConfig(
        integration_id=integration_id,
        tenant_id=tenant_id,
        type="s3",
        name=f"v{config_version}",
        version=config_version,
        settings={"bucket": "b"},
    )
    return Delivery(
        alert=alert,
        integration=integration,
        config_version=config_version,
        idempotency_key=idempotency_key(alert.alert_id, integration_id),
        source_topic=source_topic,
        source_partition=source_partition,
        source_offset=offset,
        routed_at=time.time(),
        produced_at=produced_at,
    )


def batcher(**limits: Any) -> Batcher:
    fields: dict[str, Any] = {"max_events": 1000, "max_bytes": 10**9, "max_age": 60.0}
    fields.update(limits)
    return Batcher(BatchLimits(**fields))


def test_count_limit_returns_a_batch_exactly_at_max_events() -> None:
    b = batcher(max_events=3)
    assert b.add(make_delivery(0), "ack0", 0) is None
    assert b.add(make_delivery(1), "ack1", 0) is None
    pending = b.add(make_delivery(2), "ack2", 0)
    assert pending is not None
    assert [d.source_offset for d in pending.batch.records] == [0, 1, 2]
    assert len(b) == 0
    # the next record starts a new buffer
    assert b.add(make_delivery(3), "ack3", 0) is None
    assert len(b) == 1


def line_size(delivery: Delivery) -> int:
    """Bytes of the alert's line in a batch object, newline included."""
    return len(orjson.dumps(delivery.alert.wire())) + 1


def test_bytes_limit_counts_the_json_lines() -> None:
    size = line_size(make_delivery(0))
    b = batcher(max_bytes=3 * size - 1)
    assert b.add(make_delivery(0), "a", 0) is None
    assert b.add(make_delivery(1), "b", 0) is None
    pending = b.add(make_delivery(2), "c", 0)
    assert pending is not None
    assert pending.batch.size_bytes == 3 * size
    assert len(pending.batch.records) == 3


def test_one_oversized_record_is_a_batch_of_its_own() -> None:
    b = batcher(max_bytes=10)
    pending = b.add(make_delivery(0), "a", 0)
    assert pending is not None
    assert len(pending.batch.records) == 1


def test_due_by_age_uses_now() -> None:
    b = batcher(max_age=30.0)
    start = time.monotonic()
    b.add(make_delivery(0), "a", 0)
    assert b.due(now=start + 10.0) == []
    assert len(b) == 1
    due = b.due(now=time.monotonic() + 30.0)
    assert len(due) == 1
    assert [d.source_offset for d in due[0].batch.records] == [0]
    assert len(b) == 0
    assert b.due(now=time.monotonic() + 1000.0) == []


def test_age_counts_from_the_oldest_record() -> None:
    b = batcher(max_age=30.0)
    b.add(make_delivery(0), "a", 0)
    time.sleep(0.05)
    second = time.monotonic()
    b.add(make_delivery(1), "b", 0)  # does not restart the clock
    due = b.due(now=second + 29.98)  # 30 s after the first record, not the second
    assert len(due) == 1
    assert len(due[0].batch.records) == 2


def test_buffers_are_per_source_partition() -> None:
    b = batcher()
    for offset in range(3):
        b.add(make_delivery(offset, source_partition=0), f"p0-{offset}", 0)
        b.add(make_delivery(offset, source_partition=1), f"p1-{offset}", 0)
    pendings = b.drain()
    assert len(pendings) == 2
    by_partition = {p.batch.partition: p for p in pendings}
    assert set(by_partition) == {0, 1}
    for partition, pending in by_partition.items():
        assert [r.alert_id for r in pending.batch.records] == [
            f"alert-{partition}-{o}" for o in range(3)
        ]
        assert pending.acks == [f"p{partition}-{o}" for o in range(3)]


def test_buffers_are_per_integration() -> None:
    b = batcher(max_events=2)
    assert b.add(make_delivery(0, integration_id="a"), 1, 0) is None
    assert b.add(make_delivery(1, integration_id="b"), 2, 0) is None
    pending = b.add(make_delivery(2, integration_id="a"), 3, 0)
    assert pending is not None
    assert pending.batch.integration.integration_id == "a"
    assert [d.source_offset for d in pending.batch.records] == [0, 2]
    assert len(b) == 1


def test_same_integration_of_two_tenants_is_not_mixed() -> None:
    b = batcher()
    b.add(make_delivery(0, tenant_id="t1", integration_id="same"), 1, 0)
    b.add(make_delivery(1, tenant_id="t2", integration_id="same"), 2, 0)
    assert len(b.drain()) == 2


def test_records_are_sorted_by_source_offset_with_first_and_last() -> None:
    b = batcher()
    for offset in (17, 12, 15, 13):
        b.add(make_delivery(offset, source_partition=4, source_topic="alerts"), offset, 0)
    (pending,) = b.drain()
    batch = pending.batch
    assert [d.source_offset for d in batch.records] == [12, 13, 15, 17]
    assert (batch.first_offset, batch.last_offset) == (12, 17)
    assert (batch.topic, batch.partition) == ("alerts", 4)
    assert batch.size_bytes == sum(line_size(make_delivery(o)) for o in (12, 13, 15, 17))


def test_batch_carries_the_newest_config() -> None:
    b = batcher()
    b.add(make_delivery(0, config_version=1), 0, 0)
    b.add(make_delivery(1, config_version=3), 1, 0)
    b.add(make_delivery(2, config_version=2), 2, 0)
    (pending,) = b.drain()
    assert pending.batch.integration.version == 3
    assert pending.batch.config_version == 3


def test_day_from_produced_at_in_utc() -> None:
    b = batcher()
    # 2024-05-01T23:59:59Z; local zones must not matter
    b.add(make_delivery(0, produced_at=1714607999.0), 0, 0)
    b.add(make_delivery(1, produced_at=1714608001.0), 1, 0)  # next day
    (pending,) = b.drain()
    assert pending.batch.day == dt.date(2024, 5, 1)  # the first record's day


def test_day_from_detected_at_when_produced_at_is_none() -> None:
    b = batcher()
    b.add(make_delivery(0, produced_at=None), 0, 0)
    (pending,) = b.drain()
    assert pending.batch.day == dt.date(2024, 5, 2)  # the UTC date, not the alert's zone


def test_drop_partitions_forgets_only_those_delivery_partitions() -> None:
    b = batcher()
    b.add(make_delivery(0, integration_id="a"), "a0", 0)
    b.add(make_delivery(1, integration_id="b"), "b1", 1)
    b.add(make_delivery(2, integration_id="c"), "c2", 2)
    b.add(make_delivery(3, integration_id="a"), "a3", 2)
    assert b.drop_partitions([2]) == 2
    assert b.drop_partitions([7]) == 0
    remaining = b.drain()
    assert sorted(p.delivery_partition for p in remaining) == [0, 1]
    assert sorted(ack for p in remaining for ack in p.acks) == ["a0", "b1"]


def test_acks_come_back_with_the_batch() -> None:
    b = batcher(max_events=3)
    acks = [object(), object(), object()]
    b.add(make_delivery(2), acks[0], 5)
    b.add(make_delivery(0), acks[1], 5)
    pending = b.add(make_delivery(1), acks[2], 5)
    assert pending is not None
    assert pending.delivery_partition == 5
    assert len(pending.acks) == 3
    assert set(map(id, pending.acks)) == set(map(id, acks))


def test_a_source_offset_seen_again_is_a_duplicate_and_not_counted() -> None:
    """A router that crashed before committing routes its alerts a second time."""
    batcher = Batcher(BatchLimits(max_events=3))
    first = [make_delivery(offset=o) for o in (0, 1)]
    for d in first:
        assert not batcher.is_duplicate(d, 0)
        assert batcher.add(d, object(), 0) is None
    again = make_delivery(offset=1)
    assert batcher.is_duplicate(again, 0)
    pending = batcher.add(make_delivery(offset=2), object(), 0)
    assert pending is not None and [r.source_offset for r in pending.batch.records] == [0, 1, 2]
    assert batcher.is_duplicate(make_delivery(offset=2), 0)  # already cut into a batch
    assert not batcher.is_duplicate(make_delivery(offset=3), 0)
    redriven = make_delivery(offset=1).model_copy(update={"redrive": True})
    assert not batcher.is_duplicate(redriven, 0)


def test_a_buffered_record_is_the_alert_line_and_what_reporting_needs() -> None:
    """Not the Delivery: no per-record config, no alert model."""
    b = batcher()
    delivery = make_delivery(7, produced_at=None).model_copy(update={"redrive": True})
    b.add(delivery, "a", 0)
    (pending,) = b.drain()
    (record,) = pending.batch.records
    assert record == BatchRecord(
        line=orjson.dumps(delivery.alert.wire()),
        alert_id="alert-0-7",
        idempotency_key=delivery.idempotency_key,
        source_offset=7,
        day=dt.date(2024, 5, 2),
        produced_at=None,
        redrive=True,
    )
    assert record.alert() == delivery.alert
    assert pending.batch.integration == delivery.integration


def test_the_config_is_held_once_per_buffer() -> None:
    b = batcher()
    for offset in range(5):
        b.add(make_delivery(offset), offset, 0)
    (pending,) = b.drain()
    assert not hasattr(pending.batch.records[0], "integration")
    assert pending.batch.integration.key == "tenant-a/s3-1"


def test_memory_counts_what_is_buffered_until_cut_or_dropped() -> None:
    b = batcher(max_events=3)
    deliveries = [make_delivery(o, integration_id="a") for o in range(2)]
    for d in deliveries:
        b.add(d, d.source_offset, 0)
    other = make_delivery(9, integration_id="b")
    b.add(other, 9, 1)
    each = len(orjson.dumps(deliveries[0].alert.wire())) + RECORD_OVERHEAD
    assert b.memory == 3 * each
    pending = b.add(make_delivery(2, integration_id="a"), 2, 0)
    assert pending is not None
    assert pending.batch.memory_bytes == 3 * each
    assert pending.batch.memory_bytes == sum(record_memory(r) for r in pending.batch.records)
    assert b.memory == each  # the other buffer
    assert b.drop_partitions([1]) == 1
    assert b.memory == 0


def test_under_memory_pressure_the_largest_buffers_are_cut_first() -> None:
    b = batcher()
    for offset in range(6):
        b.add(make_delivery(offset, integration_id="big"), offset, 0)
    for offset in range(3):
        b.add(make_delivery(offset, integration_id="mid"), offset, 0)
    b.add(make_delivery(0, integration_id="small"), 0, 0)
    each = b.memory // 10
    cut = b.cut_largest(until=5 * each)
    assert [p.batch.integration.integration_id for p in cut] == ["big"]
    assert b.memory == 4 * each  # the others keep filling
    cut = b.cut_largest(until=0)
    assert [p.batch.integration.integration_id for p in cut] == ["mid", "small"]
    assert b.memory == 0


def test_the_line_is_the_alert_s_wire_json_byte_for_byte() -> None:
    """Lines are made by pydantic-core's serialiser (faster, exact-size): the same bytes
    as `orjson.dumps(alert.wire())`, escapes, non-ASCII, offsets and details included."""
    alert = Alert.model_validate(
        {
            "alert_id": "a-é-1",
            "tenant_id": "acme",
            "event_type": "pci_scope_change",
            "risk_level": "critical",
            "title": 'Ünïcode ✓ "quoted" \\ </script>',
            "detected_at": "2026-01-01T10:00:00.123+02:00",
            "description": "line\nbreak\ttab \u2028",
            "page_url": "https://shop.example.com/é?q=1&r=2",
            "details": {"k": "v", "empty": ""},
        }
    )
    record = BatchRecord.make(alert, "ar-key", 7, 1714564800.0)
    assert record.line == orjson.dumps(alert.wire())
