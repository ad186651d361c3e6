"""The whole pipeline on a real Kafka broker: configs, routing, delivery, retries, DLQ.

One worker process serves this module; each test uses its own tenant so they stay apart.
"""

from __future__ import annotations

import base64
import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from schemas.codec import MAX_ALERT_BYTES, encode_alert_avro
from schemas.models import Alert
from streams.agents.router import tenant_partition
from tests.fakes.webhook_receiver import Answer, WebhookReceiver
from tests.harness import (
    TopicSet,
    WorkerProcess,
    consume,
    make_alert,
    produce,
    put_configs,
    webhook_config,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4
SECRET_PATH = "/hooks/SECRETTOKEN0123456789"


@pytest.fixture(scope="module")
def worker(
    kafka_bootstrap: str, topics: TopicSet, moto_s3: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    env = {
        "AWS_ENDPOINT_URL": moto_s3,
        "ALERTRELAY_BATCH_MAX_EVENTS": "10",
        "ALERTRELAY_BATCH_MAX_AGE": "2",
        "ALERTRELAY_RETRY_MAX_ATTEMPTS": "5",
    }
    proc = WorkerProcess(kafka_bootstrap, topics, tmp_path_factory.mktemp("worker"), env)
    proc.start()
    yield proc
    proc.stop()
    print(proc.log_tail(40))


def raw_values(bootstrap: str, topic: str) -> list[bytes]:
    """Every value of a topic as stored on the broker."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"raw-{time.time()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    idle = time.monotonic() + 5
    while time.monotonic() < idle:
        msg = consumer.poll(0.3)
        if msg is not None and msg.error() is None:
            values.append(msg.value() or b"")
            idle = time.monotonic() + 2
    consumer.close()
    return values


def raw_json(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every record of a topic, as JSON (read until it has been idle for 2 s)."""
    return [json.loads(v) for v in raw_values(bootstrap, topic)]


def ids(requests: list[Any]) -> set[str]:
    return {r.json()["alert_id"] for r in requests}


def test_routes_each_alert_to_matching_integrations(
    kafka_bootstrap: str, topics: TopicSet, worker: WorkerProcess, receiver: WebhookReceiver
) -> None:
    tenant = "t-route"
    put_configs(
        kafka_bootstrap,
        topics,
        worker,
        webhook_config(
            tenant,
            "risky",
            receiver.url + "/route/risky",
            event_types=["client_side_risk"],
            min_risk_level="medium",
        ),
        webhook_config(
            tenant, "critical", receiver.url + "/route/critical", min_risk_level="critical"
        ),
        webhook_config(tenant, "off", receiver.url + "/route/off", enabled=False),
        webhook_config(
            tenant,
            "hdr",
            receiver.url + "/route/hdr",
            settings={
                "headers": [
                    {"name": "X-Team", "value": "first"},
                    {"name": "x-team", "value": "last"},
                ]
            },
        ),
    )
    alerts = [make_alert(i, tenant) for i in range(24)]
    produce(kafka_bootstrap, topics.alerts, [(tenant, a) for a in alerts])
    produce(kafka_bootstrap, topics.alerts, [("nobody", make_alert(0, "nobody"))])

    risky = {
        a["alert_id"]
        for a in alerts
        if a["event_type"] == "client_side_risk"
        and a["risk_level"] in ("medium", "high", "critical")
    }
    critical = {a["alert_id"] for a in alerts if a["risk_level"] == "critical"}
    assert ids(receiver.wait_for(len(alerts), "/route/hdr")) == {a["alert_id"] for a in alerts}
    assert ids(receiver.wait_for(len(risky), "/route/risky")) == risky
    assert ids(receiver.wait_for(len(critical), "/route/critical")) == critical
    time.sleep(1)  # nothing more may arrive
    assert ids(receiver.received("/route/risky")) == risky
    assert len(receiver.received("/route/critical")) == len(critical)
    assert receiver.received("/route/off") == []

    sample = receiver.received("/route/hdr")[0]
    assert sample.headers["x-team"] == "last"
    assert sample.headers["Content-Type"] == "application/json"
    assert sample.headers["Idempotency-Key"].startswith("ar-")
    body = sample.json()
    assert body["tenant_id"] == tenant and body["details"]["pci_scope"] == "in"

    metrics = worker.metrics()
    assert 'alertrelay_alerts_consumed_total{result="unknown_tenant"}' in metrics


def test_retryable_failures_then_exactly_one_success(
    kafka_bootstrap: str, topics: TopicSet, worker: WorkerProcess, receiver: WebhookReceiver
) -> None:
    tenant = "t-retry"
    receiver.script("/retry", Answer(503, b"busy"), Answer(503, b"busy"), Answer(503, b"busy"))
    put_configs(
        kafka_bootstrap, topics, worker, webhook_config(tenant, "flaky", receiver.url + "/retry")
    )
    alert = make_alert(1, tenant, alert_id="retry-me")
    produce(kafka_bootstrap, topics.alerts, [(tenant, alert)])

    requests = receiver.wait_for(4, "/retry")
    time.sleep(1)
    assert len(receiver.received("/retry")) == 4  # 3 failures + 1 success, nothing after
    statuses = consume(
        kafka_bootstrap,
        topics.status,
        min_count=4,
        until=lambda rs: len([r for r in rs if r["alert_id"] == "retry-me"]) >= 4,
    )
    mine = sorted((r for r in statuses if r["alert_id"] == "retry-me"), key=lambda r: r["attempt"])
    assert [r["outcome"] for r in mine] == ["retrying"] * 3 + ["delivered"]
    assert [r["http_status"] for r in mine] == [503, 503, 503, 200]
    assert len({r.headers["Idempotency-Key"] for r in requests}) == 1
    # The health feed has every failure and the success after them, as they are.
    fed = consume(
        kafka_bootstrap,
        topics.health,
        min_count=4,
        until=lambda rs: len([r for r in rs if r["alert_id"] == "retry-me"]) >= 4,
    )
    assert (
        sorted((r for r in fed if r["alert_id"] == "retry-me"), key=lambda r: r["attempt"]) == mine
    )


def test_permanent_error_goes_to_dlq_without_secrets(
    kafka_bootstrap: str, topics: TopicSet, worker: WorkerProcess, receiver: WebhookReceiver
) -> None:
    tenant = "t-dlq"
    receiver.script(SECRET_PATH, default=Answer(400, b"invalid_payload"))
    put_configs(
        kafka_bootstrap,
        topics,
        worker,
        webhook_config(
            tenant,
            "broken",
            receiver.url + SECRET_PATH,
            settings={"headers": [{"name": "Authorization", "value": "Bearer TOPSECRETVALUE"}]},
        ),
    )
    produce(kafka_bootstrap, topics.alerts, [(tenant, make_alert(2, tenant, alert_id="dead-1"))])

    records = consume(
        kafka_bootstrap,
        topics.dlq,
        min_count=1,
        until=lambda rs: any(r.get("alert_id") == "dead-1" for r in rs),
    )
    dead = next(r for r in records if r.get("alert_id") == "dead-1")
    assert dead["stage"] == "deliver"
    assert "400" in dead["reason"] and "invalid_payload" in dead["reason"]
    assert dead["integration_id"] == "broken" and dead["attempts"] == 1
    assert dead["alert"]["alert_id"] == "dead-1"
    assert len(receiver.received(SECRET_PATH)) == 1  # a 400 is not retried
    statuses = consume(
        kafka_bootstrap,
        topics.status,
        min_count=1,
        until=lambda rs: any(r["alert_id"] == "dead-1" for r in rs),
    )
    metrics = worker.metrics()
    assert 'alertrelay_delivery_attempts_total{outcome="dead_lettered",type="webhook"}' in metrics
    assert 'alertrelay_delivery_attempts_total{outcome="delivered",type="webhook"}' in metrics
    assert 'alertrelay_dead_letters_total{stage="deliver",type="webhook"}' in metrics
    assert 'alertrelay_delivery_attempt_seconds_bucket{le="0.1",type="webhook"}' in metrics
    assert 'alertrelay_end_to_end_seconds_count{type="webhook"}' in metrics
    health = worker.health() or {}
    assert health["status"] == "ok" and health["recovered"] is True
    stored = raw_values(kafka_bootstrap, f"{topics.app_id}-configs-changelog") + raw_values(
        kafka_bootstrap, f"{topics.app_id}-deliver-webhook"
    )
    assert any(b"broken" in v for v in stored)  # the config is there, its secrets sealed
    for text in (
        json.dumps(records),
        json.dumps(statuses),
        worker.log_tail(400),
        metrics,
        repr(stored),
    ):
        assert "SECRETTOKEN0123456789" not in text
        assert "TOPSECRETVALUE" not in text


def test_undecodable_alerts_are_dead_lettered_and_the_worker_goes_on(
    kafka_bootstrap: str, topics: TopicSet, worker: WorkerProcess, receiver: WebhookReceiver
) -> None:
    tenant = "t-decode"
    put_configs(
        kafka_bootstrap, topics, worker, webhook_config(tenant, "ok", receiver.url + "/decode")
    )
    bad: list[tuple[str, Any]] = [
        (tenant, b"{not json"),
        (tenant, {"alert_id": "m1", "tenant_id": tenant}),
        (tenant, make_alert(3, tenant, risk_level="apocalyptic")),
        (tenant, make_alert(4, tenant, description="x" * (MAX_ALERT_BYTES + 10))),
    ]
    produce(
        kafka_bootstrap,
        topics.alerts,
        [*bad, (tenant, make_alert(5, tenant, alert_id="after-bad"))],
    )
    assert ids(receiver.wait_for(1, "/decode")) == {"after-bad"}

    records = consume(
        kafka_bootstrap,
        topics.dlq,
        min_count=4,
        until=lambda rs: len([r for r in rs if r["stage"] == "decode"]) >= 4,
    )
    reasons = [r["reason"] for r in records if r["stage"] == "decode"]
    assert any(r.startswith("invalid JSON") for r in reasons)
    assert any("event_type: Field required" in r for r in reasons)
    assert any("risk_level" in r for r in reasons)
    assert any("exceeds" in r for r in reasons)
    for record in (r for r in records if r["stage"] == "decode"):
        assert record["source_topic"] == topics.alerts
        assert record["source_partition"] == tenant_partition(tenant, PARTITIONS)
        assert record["source_offset"] >= 0
    assert any(
        base64.b64decode(r["payload_b64"]) == b"{not json" for r in records if r["payload_b64"]
    )


def test_avro_alerts_and_alerts_on_the_wrong_partition_are_delivered(
    kafka_bootstrap: str, topics: TopicSet, worker: WorkerProcess, receiver: WebhookReceiver
) -> None:
    from confluent_kafka import Producer

    tenant = "t-avro"
    put_configs(
        kafka_bootstrap, topics, worker, webhook_config(tenant, "av", receiver.url + "/avro")
    )
    json_alert = make_alert(6, tenant, alert_id="as-json")
    avro_alert = Alert.model_validate(make_alert(6, tenant, alert_id="as-avro"))
    home = tenant_partition(tenant, PARTITIONS)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(
        topics.alerts, key=tenant, value=json.dumps(json_alert).encode(), partition=home
    )
    producer.produce(
        topics.alerts,
        key=tenant,
        value=encode_alert_avro(avro_alert, confluent_schema_id=3),
        partition=home,
    )
    # A producer with another partitioner: the worker must still find the configs.
    producer.produce(
        topics.alerts,
        key=tenant,
        value=json.dumps(make_alert(7, tenant, alert_id="elsewhere")).encode(),
        partition=(home + 1) % PARTITIONS,
    )
    assert producer.flush(30) == 0

    got = {r.json()["alert_id"]: r.json() for r in receiver.wait_for(3, "/avro")}
    assert set(got) == {"as-json", "as-avro", "elsewhere"}
    strip = {"alert_id"}
    assert {k: v for k, v in got["as-avro"].items() if k not in strip} == {
        k: v for k, v in got["as-json"].items() if k not in strip
    }


def test_invalid_config_is_refused_with_field_and_reason(
    kafka_bootstrap: str, topics: TopicSet, worker: WorkerProcess, receiver: WebhookReceiver
) -> None:
    bad = webhook_config(
        "t-badcfg", "bad", "ftp://example.com/SECRETPATHXYZ", min_risk_level="extreme"
    )
    put_configs(kafka_bootstrap, topics, None, bad)
    records = consume(
        kafka_bootstrap,
        topics.dlq,
        min_count=1,
        until=lambda rs: any(r.get("tenant_id") == "t-badcfg" for r in rs),
    )
    dead = next(r for r in records if r.get("tenant_id") == "t-badcfg")
    assert dead["stage"] == "config" and dead["integration_id"] == "bad"
    assert "settings.webhook_url" in dead["reason"] and "min_risk_level" in dead["reason"]
    assert "SECRETPATHXYZ" not in json.dumps(dead) and dead["payload_b64"] is None


def test_s3_batches_by_count_and_time_with_deterministic_names(
    kafka_bootstrap: str,
    topics: TopicSet,
    worker: WorkerProcess,
    receiver: WebhookReceiver,
    moto_s3: str,
) -> None:
    tenant = "t-s3"
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_s3,
        region_name="us-east-1",
        aws_access_key_id="AKIATESTTEST0000",
        aws_secret_access_key="x" * 40,
    )
    s3.create_bucket(Bucket="alerts-bucket")
    put_configs(
        kafka_bootstrap,
        topics,
        worker,
        {
            "integration_id": "lake",
            "tenant_id": tenant,
            "type": "s3",
            "name": "Data lake",
            "settings": {
                "access_key_id": "AKIATESTTEST0000",
                "secret_access_key": "x" * 40,
                "region": "us-east-1",
                "bucket": "alerts-bucket",
                "compression": "gzip",
            },
        },
    )
    alerts = [make_alert(i, tenant, alert_id=f"s3-{i}") for i in range(25)]
    produce(kafka_bootstrap, topics.alerts, [(tenant, a) for a in alerts])

    deadline = time.monotonic() + 60
    stored: dict[str, list[str]] = {}
    expected = {a["alert_id"] for a in alerts}
    while time.monotonic() < deadline:
        listing = s3.list_objects_v2(Bucket="alerts-bucket", Prefix=f"alertrelay/{tenant}/lake/")
        for obj in listing.get("Contents", []):
            if obj["Key"] not in stored:
                body = s3.get_object(Bucket="alerts-bucket", Key=obj["Key"])["Body"].read()
                stored[obj["Key"]] = [
                    json.loads(line)["alert_id"] for line in gzip.decompress(body).splitlines()
                ]
        got = [i for v in stored.values() for i in v if i.startswith("s3-")]
        if set(got) >= expected:
            break
        time.sleep(0.5)
    got = [i for v in stored.values() for i in v if i.startswith("s3-")]
    assert sorted(got) == sorted(expected), "every alert exactly once"
    partition = tenant_partition(tenant, PARTITIONS)
    for key in stored:
        name = Path(key).name
        assert key.startswith(f"alertrelay/{tenant}/lake/dt=")
        assert name.startswith(f"{topics.alerts}+{partition}+") and name.endswith(".jsonl.gz")
    assert max(len(v) for v in stored.values()) <= 10  # the count limit

    # One status record per alert; the health feed needs only a success now and then.
    def lake(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in records if r["integration_id"] == "lake"]

    statuses = consume(
        kafka_bootstrap,
        topics.status,
        min_count=len(alerts),
        until=lambda rs: {r["alert_id"] for r in lake(rs)} >= expected,
    )
    assert all(r["outcome"] == "delivered" for r in lake(statuses))
    fed = lake(raw_json(kafka_bootstrap, topics.health))
    assert 1 <= len(fed) < len(alerts) and all(r in statuses for r in fed)

    # A replay of the same alerts leaves the object set unchanged.
    from click.testing import CliRunner

    from streams.cli import main

    def routed() -> float:
        for line in worker.metrics().splitlines():
            if line.startswith('alertrelay_alerts_consumed_total{result="routed"}'):
                return float(line.split()[-1])
        return 0.0

    before = routed()
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, **topics.env()}
    result = CliRunner().invoke(main, ["replay", "--from", "-1h", "--tenant", tenant], env=env)
    assert result.exit_code == 0, result.output
    deadline = time.monotonic() + 60
    while routed() < before + len(alerts):  # the replayed alerts went through the router
        assert time.monotonic() < deadline, "the replay was not routed"
        time.sleep(0.3)
    time.sleep(4)  # past the 2 s batch age: anything the replay would write is written
    listing = s3.list_objects_v2(Bucket="alerts-bucket", Prefix=f"alertrelay/{tenant}/lake/")
    assert {o["Key"] for o in listing.get("Contents", [])} == set(stored)


def test_replay_topic_redelivers_with_the_same_keys_to_the_named_integration(
    kafka_bootstrap: str, topics: TopicSet, worker: WorkerProcess, receiver: WebhookReceiver
) -> None:
    from confluent_kafka import Producer

    tenant = "t-replay"
    put_configs(
        kafka_bootstrap,
        topics,
        worker,
        webhook_config(tenant, "a", receiver.url + "/replay/a"),
        webhook_config(tenant, "b", receiver.url + "/replay/b"),
    )
    alert = make_alert(9, tenant, alert_id="replay-me")
    produce(kafka_bootstrap, topics.alerts, [(tenant, alert)])
    first = receiver.wait_for(1, "/replay/a")[0]
    receiver.wait_for(1, "/replay/b")

    home = tenant_partition(tenant, PARTITIONS)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(
        f"{topics.app_id}-replay",
        key=tenant,
        value=json.dumps(alert).encode(),
        partition=home,
        headers=[
            ("x-alertrelay-source", f"{topics.alerts}/{home}/0".encode()),
            ("x-alertrelay-only", b"a"),
        ],
    )
    assert producer.flush(30) == 0
    again = receiver.wait_for(2, "/replay/a")[1]
    time.sleep(1)
    assert len(receiver.received("/replay/b")) == 1
    assert again.headers["Idempotency-Key"] == first.headers["Idempotency-Key"]
