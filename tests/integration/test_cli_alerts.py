"""`alertrelay alerts send` on a real broker: what is read back is what was sent, keyed by
tenant and on the partition Kafka's Java clients would choose (murmur2)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from schemas.codec import decode_alert
from schemas.models import Alert
from streams.agents.router import tenant_partition
from streams.cli import main
from tests.harness import make_alert
from tests.kafka_broker import create_topics

pytestmark = pytest.mark.integration

PARTITIONS = 4


@dataclass(frozen=True)
class Record:
    key: bytes | None
    partition: int
    value: bytes


def read_back(bootstrap: str, topic: str, count: int, timeout: float = 60.0) -> list[Record]:
    import time

    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    out: list[Record] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            out.append(Record(msg.key(), int(msg.partition() or 0), msg.value() or b""))
        # A little longer: nothing more than what was sent may arrive.
        extra_deadline = time.monotonic() + 1.0
        while time.monotonic() < extra_deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                out.append(Record(msg.key(), int(msg.partition() or 0), msg.value() or b""))
    finally:
        consumer.close()
    assert len(out) == count, f"{topic}: expected {count} records, got {len(out)}"
    return out


@pytest.fixture
def topic(kafka_bootstrap: str) -> str:
    name = f"t{uuid.uuid4().hex[:8]}-alerts"
    create_topics(kafka_bootstrap, {name: PARTITIONS})
    return name


def send(bootstrap: str, topic: str, *args: str) -> Result:
    result = CliRunner().invoke(
        main,
        ["alerts", "send", "--bootstrap", bootstrap, "--topic", topic, *args],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return result


def assert_partitioned_by_tenant(records: list[Record]) -> None:
    for record in records:
        assert record.key is not None
        tenant = record.key.decode()
        assert record.partition == tenant_partition(tenant, PARTITIONS), tenant


def test_send_sample(kafka_bootstrap: str, topic: str) -> None:
    result = send(kafka_bootstrap, topic, "--sample", "5", "--tenant", "acme-cli")
    assert f"Sent 5 of 5 alerts (JSON) to {topic!r}" in result.stderr

    records = read_back(kafka_bootstrap, topic, 5)
    assert_partitioned_by_tenant(records)
    alerts = [Alert.model_validate(json.loads(r.value)) for r in records]
    assert {a.tenant_id for a in alerts} == {"acme-cli"}
    assert {r.key for r in records} == {b"acme-cli"}
    assert len({a.alert_id for a in alerts}) == 5
    assert {a.event_type.value for a in alerts} == {"client_side_risk", "pci_scope_change"}
    assert {a.risk_level.value for a in alerts} == {"low", "medium", "high", "critical"}
    # The worker's own decoder accepts every one of them.
    assert [decode_alert(r.value) for r in records] == alerts


def test_send_file_of_several_tenants(kafka_bootstrap: str, topic: str, tmp_path: Path) -> None:
    sent = [make_alert(n, tenant=t) for n in range(6) for t in ("acme", "globex", "initech")]
    path = tmp_path / "alerts.jsonl"
    path.write_text("".join(json.dumps(a) + "\n" for a in sent))
    result = send(kafka_bootstrap, topic, "--file", str(path))
    assert "Sent 18 of 18 alerts (JSON)" in result.stderr

    records = read_back(kafka_bootstrap, topic, len(sent))
    assert_partitioned_by_tenant(records)
    received = sorted((json.loads(r.value) for r in records), key=lambda a: a["alert_id"])
    assert received == sorted(sent, key=lambda a: a["alert_id"])
    for record in records:
        assert record.key is not None
        assert json.loads(record.value)["tenant_id"] == record.key.decode()
    # Each tenant's alerts keep their order (one partition per tenant).
    for tenant in ("acme", "globex", "initech"):
        ids = [json.loads(r.value)["alert_id"] for r in records if r.key == tenant.encode()]
        assert ids == [a["alert_id"] for a in sent if a["tenant_id"] == tenant]


def test_send_avro_with_progress(kafka_bootstrap: str, topic: str) -> None:
    result = send(
        kafka_bootstrap,
        topic,
        "--sample",
        "150",
        "--tenant",
        "avro-tenant",
        "--avro",
        "--schema-id",
        "7",
    )
    assert "Sent 150 of 150 alerts (Avro)" in result.stderr
    assert "150/150" in result.stderr  # the progress bar, shown above 100 alerts

    records = read_back(kafka_bootstrap, topic, 150)
    assert_partitioned_by_tenant(records)
    for record in records:
        assert record.value[:5] == b"\x00\x00\x00\x00\x07"  # Confluent framing, schema id 7
    alerts = [decode_alert(r.value) for r in records]
    assert len({a.alert_id for a in alerts}) == 150
    assert {a.tenant_id for a in alerts} == {"avro-tenant"}
