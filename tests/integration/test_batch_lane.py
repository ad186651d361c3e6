"""The lanes on a real broker: where the batch lane commits, and where both start.

The batch lane's group (`<app_id>-batching`) may only be committed past an alert once the
alert is in an object; a partition a lane has never read starts where faust's group is
(an upgraded worker: faust's router read the alerts before the lanes).
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from streams.agents.router import tenant_partition
from tests.harness import TopicSet, WorkerProcess, make_alert, produce, put_configs

pytestmark = pytest.mark.integration

PARTITIONS = 4
BUCKET = "lane-bucket"
ENV = {"ALERTRELAY_BATCH_MAX_EVENTS": "1000", "ALERTRELAY_BATCH_MAX_AGE": "5"}


@pytest.fixture(scope="module")
def moto_s3(moto_s3: str) -> str:
    """The shared moto server (tests/integration/conftest.py), with this module's bucket."""
    s3_client(moto_s3).create_bucket(Bucket=BUCKET)
    return moto_s3


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="AKIATESTTEST0000",
        aws_secret_access_key="x" * 40,
    )


def s3_config(tenant: str) -> dict[str, Any]:
    return {
        "integration_id": "lake",
        "tenant_id": tenant,
        "type": "s3",
        "name": "Data lake",
        "settings": {
            "access_key_id": "AKIATESTTEST0000",
            "secret_access_key": "x" * 40,
            "region": "us-east-1",
            "bucket": BUCKET,
            "compression": "gzip",
        },
    }


def stored_ids(endpoint: str, tenant: str) -> list[str]:
    s3 = s3_client(endpoint)
    ids: list[str] = []
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"alertrelay/{tenant}/lake/")
    for obj in listing.get("Contents", []):
        body = s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
        ids += [json.loads(line)["alert_id"] for line in gzip.decompress(body).splitlines()]
    return ids


def committed(bootstrap: str, group: str, topic: str, partition: int) -> int:
    from confluent_kafka import Consumer, TopicPartition

    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        (tp,) = reader.committed([TopicPartition(topic, partition)], timeout=10)
        return int(tp.offset)
    finally:
        reader.close()


def high_watermark(bootstrap: str, topic: str, partition: int) -> int:
    from confluent_kafka import Consumer, TopicPartition

    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": "lane-test-watermarks"})
    try:
        return int(reader.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1])
    finally:
        reader.close()


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def routed_to_s3(worker: WorkerProcess) -> float:
    for line in worker.metrics().splitlines():
        if line.startswith('alertrelay_deliveries_routed_total{type="s3"}'):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture(scope="module")
def worker(
    kafka_bootstrap: str, topics: TopicSet, moto_s3: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    env = {"AWS_ENDPOINT_URL": moto_s3, **ENV}
    proc = WorkerProcess(kafka_bootstrap, topics, tmp_path_factory.mktemp("lane-worker"), env)
    proc.start()
    yield proc
    proc.stop()
    print(proc.log_tail(40))


def test_the_lane_commits_an_alert_only_once_its_object_is_written(
    kafka_bootstrap: str, topics: TopicSet, worker: WorkerProcess, moto_s3: str
) -> None:
    tenant = "t-lane"
    put_configs(kafka_bootstrap, topics, worker, s3_config(tenant))
    partition = tenant_partition(tenant, PARTITIONS)
    first = high_watermark(kafka_bootstrap, topics.alerts, partition)
    alerts = [make_alert(i, tenant, alert_id=f"lane-{i}") for i in range(5)]
    before = routed_to_s3(worker)
    produce(kafka_bootstrap, topics.alerts, [(tenant, a) for a in alerts])
    wait_for(lambda: routed_to_s3(worker) >= before + 5, 30, "the lane to buffer the alerts")

    # Buffered, not written (the age limit is 5 s): the lane's group stays at the first.
    group = f"{topics.app_id}-batching"
    time.sleep(1.5)  # more than a commit interval
    assert stored_ids(moto_s3, tenant) == []
    assert committed(kafka_bootstrap, group, topics.alerts, partition) <= first

    wait_for(lambda: len(stored_ids(moto_s3, tenant)) >= 5, 30, "the object")
    assert sorted(stored_ids(moto_s3, tenant)) == sorted(a["alert_id"] for a in alerts)
    wait_for(
        lambda: committed(kafka_bootstrap, group, topics.alerts, partition) == first + 5,
        10,
        "the lane's commit past the written alerts",
    )


def test_an_upgraded_worker_s_lanes_start_where_the_earlier_version_stopped(
    kafka_bootstrap: str, moto_s3: str, tmp_path: Path
) -> None:
    """Two versions back, faust's group (`<app_id>`) routed the alerts and its sink agents
    read the delivery topics; one version back, the batch lane had its own group
    already. The routing lane and the delivery lanes, new, start where faust's group is;
    the batch lane resumes at its own position."""
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    fresh = TopicSet()
    tenant = "t-upgrade"
    partition = tenant_partition(tenant, PARTITIONS)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    webhooks = f"{fresh.app_id}-deliver-webhook"
    created = admin.create_topics(
        [NewTopic(fresh.alerts, PARTITIONS, 1), NewTopic(webhooks, PARTITIONS, 1)]
    )
    for future in created.values():
        future.result()
    old = [make_alert(i, tenant, alert_id=f"old-{i}") for i in range(4)]
    produce(kafka_bootstrap, fresh.alerts, [(tenant, a) for a in old])
    # Delivered by the earlier version's webhook agent (never to be read again).
    produce(kafka_bootstrap, webhooks, [(tenant, {"delivered": i}) for i in range(3)])
    # The earlier version's groups (no members left): its router had routed two alerts
    # and its webhook agent delivered three records, its batch lane had written all four.
    for group, tp in (
        (fresh.app_id, TopicPartition(fresh.alerts, partition, 2)),
        (fresh.app_id, TopicPartition(webhooks, partition, 3)),
        (f"{fresh.app_id}-batching", TopicPartition(fresh.alerts, partition, 4)),
    ):
        earlier = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
        earlier.commit(offsets=[tp], asynchronous=False)
        earlier.close()

    env = {"AWS_ENDPOINT_URL": moto_s3, **ENV}
    proc = WorkerProcess(kafka_bootstrap, fresh, tmp_path, env)
    proc.start()
    try:
        put_configs(kafka_bootstrap, fresh, proc, s3_config(tenant))
        new = [make_alert(i, tenant, alert_id=f"new-{i}") for i in range(3)]
        produce(kafka_bootstrap, fresh.alerts, [(tenant, a) for a in new])
        wait_for(lambda: len(stored_ids(moto_s3, tenant)) >= 3, 45, "the new alerts in S3")
        time.sleep(1)
        assert sorted(stored_ids(moto_s3, tenant)) == sorted(a["alert_id"] for a in new)
        log = proc.log_tail(400).splitlines()
        for lane, topic, start in (
            ("batch lane", fresh.alerts, 4),
            ("routing lane", fresh.alerts, 2),
            ("webhook lane", webhooks, 3),
        ):
            starts = next(line for line in log if f"{lane} reads" in line)
            assert f"{topic}[{partition}]@{start}" in starts
    finally:
        proc.stop()
