"""What a buffered batching record really costs in memory, against what the memory cap
counts (`record_memory`: its JSON line plus `RECORD_OVERHEAD`).

Each record is taken the way the batching agent takes it: a faust event around the
delivery record's bytes, tracked for an in-order ack, parsed, its bytes released, then
buffered. tracemalloc measures what stays allocated once the parsed deliveries are gone.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from typing import Any

import orjson
from faust.events import Event
from faust.types import TP, Message

from schemas.models import Delivery, idempotency_key
from sinks.base import BatchLimits
from streams.acks import OrderedAcks
from streams.batcher import RECORD_OVERHEAD, Batcher, record_memory, release_payload

TOPIC = "alertrelay-deliver-s3"


def s3_config(tenant: str) -> dict[str, Any]:
    return {
        "integration_id": "s3-archive",
        "tenant_id": tenant,
        "type": "s3",
        "name": "Alert archive (S3, zstd)",
        "enabled": True,
        "event_types": ["client_side_risk", "pci_scope_change"],
        "min_risk_level": "low",
        "version": 3,
        "settings": {
            "access_key_id": "AKIAIOSFODNN7EXAMPLE",
            "secret_access_key": "sealed:v1:k1:" + "A" * 80,
            "region": "us-east-1",
            "bucket": "alert-archive",
            "compression": "zstd",
            "prefix": "alerts",
        },
    }


def alert(n: int, tenant: str, details: int) -> dict[str, Any]:
    """Shaped like the benchmark's alerts; `details` hashes make it longer."""
    return {
        "alert_id": f"run-{tenant}-{n:07d}",
        "tenant_id": tenant,
        "event_type": "client_side_risk",
        "risk_level": "high",
        "title": "Script reads payment form fields",
        "detected_at": "2026-11-24T10:00:00.123456Z",
        "description": (
            "cdn.tracker.example on https://shop.example.com/checkout: script reads payment "
            "form fields. The script was first observed in the last 24 hours and behaves "
            "differently from its previous version."
        ),
        "page_url": f"https://shop.{tenant}.example.com/checkout?session={n:010x}",
        "script_url": "https://cdn.tracker.example/lib/analytics-4.2.1.min.js",
        "domain": f"shop.{tenant}.example.com",
        "console_url": f"https://console.example.com/alerts/run-{tenant}-{n:07d}",
        "details": {f"hash_{i}": f"sha256-{n * 7919 + i:064x}" for i in range(details)},
    }


def wire(n: int, tenant: str, details: int) -> bytes:
    """A delivery record as the router writes it."""
    a = alert(n, tenant, details)
    return orjson.dumps(
        {
            "alert": a,
            "integration": s3_config(tenant),
            "config_version": 3,
            "idempotency_key": idempotency_key(a["alert_id"], "s3-archive"),
            "source_topic": "alerts",
            "source_partition": 1,
            "source_offset": n,
            "routed_at": time.time(),
            "produced_at": time.time(),
            "redrive": False,
        }
    )


def event_of(value: bytes, offset: int, tp: TP) -> Event:
    """What faust hands the agent: an event around the consumed message."""
    key = b"tenant-bench-01/s3-archive"
    message = Message(
        TOPIC,
        tp.partition,
        offset,
        time.time(),
        0,
        (),
        key,
        value,
        None,
        tp=tp,
        time_in=time.monotonic(),
        generation_id=1,
    )
    return Event(object(), key, value, message.headers, message)  # type: ignore[arg-type]


def measure(count: int, details: int) -> tuple[float, float]:
    """(bytes really held per buffered record, bytes the cap counts per record)."""
    batcher = Batcher(BatchLimits(max_events=10**9, max_bytes=10**12, max_age=3600.0))
    acks = OrderedAcks()
    tp = TP(TOPIC, 2)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for offset in range(count):
            event = event_of(wire(offset, "tenant-bench-01", details), offset, tp)
            slot = acks.track(event)
            delivery = Delivery.model_validate_json(event.message.value or b"")
            release_payload(event)
            assert batcher.add(delivery, slot, tp.partition) is None
        del event, slot, delivery
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(batcher) == count and acks.waiting() == count
    return held / count, batcher.memory / count


def test_the_estimate_is_within_half_of_the_real_size_for_typical_alerts() -> None:
    real, counted = measure(2000, details=6)  # ~1 KB lines, as in the benchmark
    assert 1 / 1.5 <= counted / real <= 1.5, (real, counted)


def test_the_estimate_holds_for_small_and_large_alerts() -> None:
    for details in (0, 40):  # ~0.6 KB and ~4 KB lines
        real, counted = measure(500, details=details)
        assert 1 / 1.5 <= counted / real <= 1.5, (details, real, counted)


def test_a_record_costs_far_less_than_its_parsed_delivery() -> None:
    """The point of slim records: the delivery (alert model plus a config copy) was
    several times the size of the line it is written as."""
    value = wire(1, "tenant-bench-01", 6)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        deliveries = [Delivery.model_validate_json(value) for _ in range(500)]
        gc.collect()
        per_delivery = (tracemalloc.get_traced_memory()[0] - before) / len(deliveries)
    finally:
        tracemalloc.stop()
    real, _ = measure(500, details=6)
    assert real * 2 < per_delivery, (real, per_delivery)


def test_record_memory_is_the_line_plus_the_overhead() -> None:
    batcher = Batcher(BatchLimits())
    delivery = Delivery.model_validate_json(wire(5, "t", 6))
    batcher.add(delivery, object(), 0)
    (pending,) = batcher.drain()
    (record,) = pending.batch.records
    assert record_memory(record) == len(orjson.dumps(delivery.alert.wire())) + RECORD_OVERHEAD
