"""Smoke test for the kafka_bootstrap fixture: a real broker round-trips messages.

If this fails, every other integration test would fail for an infrastructure reason, so
it is worth seeing this one first.
"""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer

from tests.kafka_broker import create_topics

PARTITIONS = 3
COUNT = 10


@pytest.mark.integration
def test_produce_and_consume_roundtrip(kafka_bootstrap: str) -> None:
    topic = f"it-broker-smoke-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, {topic: PARTITIONS})

    delivery_errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            delivery_errors.append(err)

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all"})
    for i in range(COUNT):
        # Explicit partitions so every partition of the topic is exercised.
        producer.produce(
            topic,
            key=f"k{i}".encode(),
            value=f"v{i}".encode(),
            partition=i % PARTITIONS,
            on_delivery=on_delivery,
        )
    assert producer.flush(30) == 0, "messages still queued after flush"
    assert delivery_errors == []

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"it-broker-smoke-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    received: dict[bytes, tuple[bytes, int]] = {}
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        while len(received) < COUNT and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            key, value, partition = msg.key(), msg.value(), msg.partition()
            assert key is not None and value is not None and partition is not None
            received[key] = (value, partition)
    finally:
        consumer.close()

    assert {k: v for k, (v, _) in received.items()} == {
        f"k{i}".encode(): f"v{i}".encode() for i in range(COUNT)
    }
    assert {p for _, p in received.values()} == set(range(PARTITIONS))
