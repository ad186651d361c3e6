"""Slim batch records write exactly what the full deliveries wrote: the same object bytes
(S3, GCS), the same Splunk envelopes, and the same alert in a dead letter."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import orjson
import pytest

from schemas.models import Alert, Delivery, IntegrationConfig, idempotency_key
from sinks.base import BatchRecord
from sinks.objectstore import encode_jsonl, get_codec
from sinks.objectstore.exactly_once import encode_batch
from sinks.splunk.sink import HOST, SOURCE, SOURCETYPE, build_requests

ALERTS: list[dict[str, Any]] = [
    {
        "alert_id": "a-1",
        "tenant_id": "acme",
        "event_type": "client_side_risk",
        "risk_level": "critical",
        "title": "New script reads the payment form",
        "detected_at": "2026-11-24T10:00:00Z",
    },
    {
        "alert_id": "a-2 ünïcödé \u2028",
        "tenant_id": "acme",
        "event_type": "pci_scope_change",
        "risk_level": "low",
        "title": 'Quotes " and \\ backslashes\nand a newline',
        "detected_at": "2024-05-01T23:30:00.123456-05:00",
        "description": "emoji \U0001f512 and tabs\t",
        "page_url": "https://shop.example.com/checkout?x=1&y=2",
        "details": {"k": "v", "empty": ""},
    },
    {
        "alert_id": "a-3",
        "tenant_id": "acme",
        "event_type": "client_side_risk",
        "risk_level": "medium",
        "title": "t",
        "detected_at": "2025-01-01T00:00:00.5+05:30",
        "console_url": "https://console.example.com/alerts/a-3",
    },
]


def delivery(raw: dict[str, Any], offset: int) -> Delivery:
    alert = Alert.model_validate(raw)
    integration = IntegrationConfig(
        integration_id="hec", tenant_id="acme", type="splunk", name="n", version=2
    )
    return Delivery(
        alert=alert,
        integration=integration,
        config_version=2,
        idempotency_key=idempotency_key(alert.alert_id, "hec"),
        source_topic="alerts",
        source_partition=0,
        source_offset=offset,
        routed_at=time.time(),
        produced_at=None,
    )


# As the wire carries them: the router's JSON, read back by the sink agent.
DELIVERIES = [
    Delivery.model_validate_json(delivery(a, i).model_dump_json()) for i, a in enumerate(ALERTS)
]


@pytest.mark.parametrize("codec", ["none", "gzip", "zstd"])
def test_object_bytes_are_those_of_the_full_deliveries(codec: str) -> None:
    c = get_codec(codec)
    before = c.compress(encode_jsonl(d.alert.wire() for d in DELIVERIES))
    assert encode_batch([BatchRecord.of(d) for d in DELIVERIES], c) == before


def test_the_line_parses_back_to_the_same_alert() -> None:
    for d in DELIVERIES:
        record = BatchRecord.of(d)
        assert record.alert() == d.alert
        assert record.alert().model_dump(mode="json") == d.alert.model_dump(mode="json")


def old_envelope(d: Delivery, index: str | None) -> dict[str, Any]:
    """The envelope as the Splunk sink built it from a full delivery."""
    alert = d.alert
    body: dict[str, Any] = {
        "time": round(alert.detected_at.timestamp(), 3),
        "host": HOST,
        "source": SOURCE,
        "sourcetype": SOURCETYPE,
    }
    if index:
        body["index"] = index
    body["event"] = alert.wire()
    body["fields"] = {
        "tenant_id": alert.tenant_id,
        "integration_id": d.integration.integration_id,
        "event_type": alert.event_type.value,
        "risk_level": alert.risk_level.value,
    }
    return body


@pytest.mark.parametrize("index", [None, "security"])
def test_splunk_request_bytes_are_those_of_the_full_deliveries(index: str | None) -> None:
    before = b"".join(orjson.dumps(old_envelope(d, index)) + b"\n" for d in DELIVERIES)
    records = [BatchRecord.of(d) for d in DELIVERIES]
    [(group, body)] = build_requests(records, "hec", index)
    assert body == before
    assert group == records


def test_record_day_is_the_utc_day_and_shared() -> None:
    a, b = (BatchRecord.of(d) for d in DELIVERIES[:2])
    assert a.day == dt.date(2026, 11, 24)
    assert b.day == dt.date(2024, 5, 2)  # 23:30 at -05:00 is the next day in UTC
    again = BatchRecord.of(DELIVERIES[0])
    assert again.day is a.day  # one date object per day, not one per record


def test_the_day_of_a_timestamp_is_its_utc_date_at_every_boundary() -> None:
    import random

    from sinks.base import _record_day

    alert = DELIVERIES[0].alert
    day = 86_400
    stamps = [0.0, day - 0.001, day, 1_795_564_799.999, 1_795_564_800.0, -0.5, -day - 1.0]
    rng = random.Random(3)
    stamps += [rng.uniform(0, 4_102_444_800) for _ in range(2000)]  # to 2100
    for stamp in stamps:
        expected = dt.datetime.fromtimestamp(stamp, tz=dt.UTC).date()
        assert _record_day(stamp, alert) == expected, stamp
