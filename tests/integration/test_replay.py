"""`alertrelay replay` against a real worker on the real broker.

Alerts are produced with known record timestamps (a minute apart, an hour ago) and
delivered to two webhooks; replays of windows of them must re-deliver exactly the
alerts inside the window, with the first delivery's Idempotency-Key, to one integration
with --integration, nothing with --dry-run, and never move the worker's offsets.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from click.testing import CliRunner, Result

from streams.agents.router import tenant_partition
from streams.cli import main
from streams.replay import format_utc
from tests.fakes.webhook_receiver import Received, WebhookReceiver
from tests.harness import (
    TopicSet,
    WorkerProcess,
    make_alert,
    put_configs,
    webhook_config,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4
TENANT = "t-window"
MINUTE_MS = 60_000


def replay(bootstrap: str, topics: TopicSet, *args: str) -> Result:
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, **topics.env()}
    result = CliRunner().invoke(main, ["replay", *args], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def high_watermarks(bootstrap: str, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks-probe"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
    finally:
        consumer.close()


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets on a topic, read with the admin API (no joining)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(topic, p) for p in range(PARTITIONS)]
    )
    answer = admin.list_consumer_group_offsets([request])[group].result(timeout=10)
    return {tp.partition: tp.offset for tp in answer.topic_partitions}


def by_id(requests: list[Received]) -> dict[str, Received]:
    return {r.json()["alert_id"]: r for r in requests}


def wait_quiet(receiver: WebhookReceiver, path: str, count: int) -> list[Received]:
    """Wait for `count` requests, then make sure no more arrive."""
    receiver.wait_for(count, path, timeout=30)
    time.sleep(1.5)
    got = receiver.received(path)
    assert len(got) == count, [r.json()["alert_id"] for r in got]
    return got


def test_replay_redelivers_exactly_the_window(
    kafka_bootstrap: str, topics: TopicSet, worker: WorkerProcess, receiver: WebhookReceiver
) -> None:
    from confluent_kafka import Producer

    put_configs(
        kafka_bootstrap,
        topics,
        worker,
        webhook_config(TENANT, "a", receiver.url + "/w/a"),
        webhook_config(TENANT, "b", receiver.url + "/w/b"),
    )
    # Six alerts a minute apart, an hour ago, in offset order on the tenant's partition,
    # with a record stamped out of order and an undecodable one among them; and another
    # tenant's alert (on another partition) inside the window.
    base = (int(time.time()) - 3600) * 1000
    stamps = [base + i * MINUTE_MS for i in range(6)]
    records: list[tuple[str, bytes, int]] = [
        (TENANT, json.dumps(make_alert(i, TENANT, alert_id=f"w-{i}")).encode(), stamps[i])
        for i in range(6)
    ]
    late = make_alert(6, TENANT, alert_id="w-late")
    records.insert(3, (TENANT, json.dumps(late).encode(), stamps[0] - MINUTE_MS))
    records.insert(5, (TENANT, b"{not json", stamps[3] + 1))
    other = make_alert(0, "t-other", alert_id="other-0")
    records.append(("t-other", json.dumps(other).encode(), stamps[3]))
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "partitioner": "murmur2_random"})
    for key, value, stamp in records:
        producer.produce(topics.alerts, key=key, value=value, timestamp=stamp)
    assert producer.flush(30) == 0

    first_a = by_id(wait_quiet(receiver, "/w/a", 7))
    first_b = by_id(wait_quiet(receiver, "/w/b", 7))
    assert set(first_a) == {f"w-{i}" for i in range(6)} | {"w-late"}

    # Once the worker has committed everything it read, its offsets must stay put (its
    # routing lane's group: webhooks are per-alert integrations).
    group = f"{topics.app_id}-routing"
    alerts_end = {p: o for p, o in high_watermarks(kafka_bootstrap, topics.alerts).items() if o}
    deadline = time.monotonic() + 30
    while True:
        now = committed(kafka_bootstrap, group, topics.alerts)
        if {p: now.get(p) for p in alerts_end} == alerts_end:
            break
        assert time.monotonic() < deadline, f"worker committed {now}, end is {alerts_end}"
        time.sleep(0.3)
    offsets_before = committed(kafka_bootstrap, group, topics.alerts)
    replay_topic = f"{topics.app_id}-replay"
    replay_before = high_watermarks(kafka_bootstrap, replay_topic)

    # --dry-run reads and counts, produces nothing.
    window = ("--from", format_utc(stamps[2] / 1000), "--to", format_utc(stamps[4] / 1000))
    dry = replay(kafka_bootstrap, topics, *window, "--tenant", TENANT, "--dry-run")
    assert f"from {format_utc(stamps[2] / 1000)}" in dry.output
    assert "records in the offset range  5" in dry.output
    assert "would replay                 2" in dry.output
    assert "skipped by filter            1 (tenant 1)" in dry.output
    assert "outside the window           1" in dry.output
    assert "undecodable                  1" in dry.output
    assert high_watermarks(kafka_bootstrap, replay_topic) == replay_before

    # The window [stamps[2], stamps[4]) of every tenant: w-2, w-3 and the other tenant's.
    result = replay(kafka_bootstrap, topics, *window)
    assert "replayed                     3" in result.output
    assert "failed to produce            0" in result.output
    assert re.search(r"t-other +client_side_risk +1\n", result.output)
    again_a = wait_quiet(receiver, "/w/a", 9)[7:]
    again_b = wait_quiet(receiver, "/w/b", 9)[7:]
    assert set(by_id(again_a)) == set(by_id(again_b)) == {"w-2", "w-3"}
    for got, first in ((by_id(again_a), first_a), (by_id(again_b), first_b)):
        for alert_id, request in got.items():
            key = request.headers["Idempotency-Key"]
            assert key == first[alert_id].headers["Idempotency-Key"]
    replayed = high_watermarks(kafka_bootstrap, replay_topic)
    assert sum(replayed.values()) - sum(replay_before.values()) == 3
    home = tenant_partition(TENANT, PARTITIONS)
    assert replayed[home] - replay_before[home] == 2  # on the tenant's partition

    # --integration: the last two alerts (--to later than the newest record), to "a" only.
    result = replay(
        kafka_bootstrap,
        topics,
        "--from",
        format_utc(stamps[4] / 1000),
        "--to",
        "now",
        "--tenant",
        TENANT,
        "--integration",
        "a",
    )
    assert "replayed                     2" in result.output
    only_a = by_id(wait_quiet(receiver, "/w/a", 11)[9:])
    assert set(only_a) == {"w-4", "w-5"}
    assert all(
        r.headers["Idempotency-Key"] == first_a[i].headers["Idempotency-Key"]
        for i, r in only_a.items()
    )
    assert len(receiver.received("/w/b")) == 9

    # The worker's committed offsets on the alerts topic never moved, and the replay
    # left no consumer group behind.
    assert committed(kafka_bootstrap, group, topics.alerts) == offsets_before
    from confluent_kafka.admin import AdminClient

    groups = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_consumer_groups()
    names = {g.group_id for g in groups.result(timeout=10).valid}
    assert not [n for n in names if n.startswith("alertrelay-replay-")]
