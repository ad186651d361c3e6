"""`alertrelay dlq list` and `alertrelay dlq redrive` against a real worker and broker.

A webhook answers 400, so its alert is dead-lettered at the deliver stage; once the
receiver is fixed, a redrive delivers it to that integration only, with the same
Idempotency-Key. An undecodable alert's record is listed but never redriven.
"""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner, Result

from streams.cli import main
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

TENANT = "t-redrive"
BROKEN = "/dlq/broken"
HEALTHY = "/dlq/healthy"


def dlq(bootstrap: str, topics: TopicSet, *args: str, input: str | None = None) -> Result:
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, **topics.env()}
    return CliRunner().invoke(main, ["dlq", *args], env=env, input=input, catch_exceptions=False)


def replay_size(bootstrap: str, topics: TopicSet) -> int:
    from confluent_kafka import Consumer, TopicPartition

    topic = f"{topics.app_id}-replay"
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks-probe"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        )
    finally:
        consumer.close()


def test_dead_lettered_delivery_is_listed_and_redriven_with_the_same_key(
    kafka_bootstrap: str, topics: TopicSet, worker: WorkerProcess, receiver: WebhookReceiver
) -> None:
    receiver.script(BROKEN, default=Answer(400, b"invalid_payload"))
    put_configs(
        kafka_bootstrap,
        topics,
        worker,
        webhook_config(TENANT, "broken", receiver.url + BROKEN),
        webhook_config(TENANT, "healthy", receiver.url + HEALTHY),
    )

    produce(
        kafka_bootstrap,
        topics.alerts,
        [
            (TENANT, make_alert(2, TENANT, alert_id="redrive-me")),
            (TENANT, b"{not json"),
        ],
    )
    first = receiver.wait_for(1, BROKEN)[0]
    receiver.wait_for(1, HEALTHY)
    consume(
        kafka_bootstrap,
        topics.dlq,
        min_count=2,
        until=lambda rs: {r["stage"] for r in rs} >= {"deliver", "decode"},
    )

    # list: the deliver record of the broken integration, in a table and as JSON.
    listed = dlq(kafka_bootstrap, topics, "list", "--integration", "broken")
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0].split() == [
        "TIME",
        "STAGE",
        "TENANT",
        "INTEGRATION",
        "ALERT",
        "ATTEMPTS",
        "REASON",
    ]
    row = next(line for line in lines if "redrive-me" in line).split()
    assert row[1:6] == ["deliver", TENANT, "broken", "redrive-me", "1"]
    assert "400" in " ".join(row[6:])
    assert "1 of 2 records" in listed.output
    as_json = dlq(kafka_bootstrap, topics, "list", "--stage", "decode", "--json")
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [r["stage"] for r in records] == ["decode"]
    assert records[0]["source_topic"] == topics.alerts
    assert (
        dlq(kafka_bootstrap, topics, "list", "--reason", "INVALID_PAYLOAD").output.count(
            "redrive-me"
        )
        == 1
    )
    assert "redrive-me" not in dlq(kafka_bootstrap, topics, "list", "--since", "now").output

    # A decode record is listed as not redrivable, and nothing is produced.
    size = replay_size(kafka_bootstrap, topics)
    refused = dlq(kafka_bootstrap, topics, "redrive", "--stage", "decode", "--yes")
    assert refused.exit_code == 0, refused.output
    assert "0 to redrive" in refused.output and "1 not redrivable" in refused.output
    assert "the payload itself is bad" in refused.output
    assert "Nothing to redrive." in refused.output
    # A dry run and a declined confirmation produce nothing either.
    dry = dlq(kafka_bootstrap, topics, "redrive", "--integration", "broken", "--dry-run")
    assert "1 alert would be redriven" in dry.output
    declined = dlq(kafka_bootstrap, topics, "redrive", "--integration", "broken", input="n\n")
    assert declined.exit_code == 1 and "Redrive 1 alert to" in declined.output
    assert replay_size(kafka_bootstrap, topics) == size

    # Fixed receiver: the redrive delivers to the broken integration only, same key.
    receiver.script(BROKEN, default=Answer(200))
    done = dlq(kafka_bootstrap, topics, "redrive", "--integration", "broken", "--yes")
    assert done.exit_code == 0, done.output
    assert "Redriven 1 of 1 alerts" in done.output and "append-only" in done.output
    again = receiver.wait_for(2, BROKEN)[1]
    assert again.json()["alert_id"] == "redrive-me"
    assert again.headers["Idempotency-Key"] == first.headers["Idempotency-Key"]
    time.sleep(1)
    assert len(receiver.received(BROKEN)) == 2
    assert len(receiver.received(HEALTHY)) == 1

    # Nothing was deleted: the record is still listed.
    still = dlq(kafka_bootstrap, topics, "list", "--integration", "broken")
    assert "redrive-me" in still.output
