"""streams.wire.dumps: the same JSON as orjson, without orjson's retained write buffer."""

from __future__ import annotations

import tracemalloc
from typing import Any

import orjson
import pytest

from streams.wire import dumps

STATUS = {
    "alert_id": "a-123456",
    "tenant_id": "acme",
    "integration_id": "soc-hook",
    "integration_type": "webhook",
    "idempotency_key": "ar-" + "ab" * 32,
    "attempt": 1,
    "outcome": "delivered",
    "http_status": 200,
    "latency_ms": 12.345,
    "error": None,
    "at": 1732443823.123456,
    "next_attempt_at": None,
    "circuit": "closed",
}
COUNT = 2_000


def traced_per_result(make: Any, value: Any) -> float:
    """Bytes allocated per result while COUNT results are kept (as a producer queue does)."""
    tracemalloc.start()
    try:
        kept = [make(value) for _ in range(COUNT)]
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(kept) == COUNT
    return current / COUNT


@pytest.mark.parametrize("value", [STATUS, {"alert": {"title": "x" * 3000}}], ids=["small", "3k"])
def test_same_text_and_no_retained_slack(value: Any) -> None:
    assert dumps(value) == orjson.dumps(value)
    size = len(orjson.dumps(value))
    kept = traced_per_result(dumps, value)
    # The bytes object's header (~33 B) and the list slot, nothing near a write buffer.
    assert kept < size + 200, f"{kept:.0f} B kept for {size} B of JSON"


def test_orjson_alone_keeps_its_buffer() -> None:
    """Why the helper exists. Should this fail on a new orjson (exact-size results),
    the copy in streams.wire can go, and this test with it."""
    size = len(orjson.dumps(STATUS))
    assert traced_per_result(orjson.dumps, STATUS) > size + 1000
