"""The librdkafka producer of status and delivery records, on a real broker: a flush
waits for what was sent before it (not for an empty queue while records keep coming),
and a strict producer's flush fails when the broker refused a record."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from confluent_kafka import Consumer, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from streams.direct_producer import DirectProducer

pytestmark = pytest.mark.integration


def make_topic(bootstrap: str, **config: str) -> str:
    name = f"direct-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, 2, 1, config=config)]).values():
        future.result()
    return name


def read_all(bootstrap: str, topic: str, want: int) -> set[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    seen: set[bytes] = set()
    try:
        for _ in range(300):
            for msg in consumer.consume(1000, 0.1):
                if msg.error() is None:
                    seen.add(msg.value())
            if len(seen) >= want:
                break
    finally:
        consumer.close()
    return seen


async def test_a_flush_waits_for_what_was_sent_before_it_while_sending_goes_on(
    kafka_bootstrap: str,
) -> None:
    topic = make_topic(kafka_bootstrap)
    producer = DirectProducer(kafka_bootstrap, "test-direct")
    before = [f"before-{i}".encode() for i in range(2000)]
    for value in before:
        producer.send(topic, b"k", value)
    stop = asyncio.Event()

    async def keep_sending() -> None:  # what librdkafka's own flush would wait for too
        n = 0
        while not stop.is_set():
            for _ in range(200):
                producer.send(topic, b"k", f"after-{n}".encode())
                n += 1
            await asyncio.sleep(0.001)

    sender = asyncio.create_task(keep_sending())
    try:
        await asyncio.wait_for(producer.flush(), timeout=30)
        # Reported means on the broker: every record sent before the flush is there.
        assert producer._open[-1].done
    finally:
        stop.set()
        await sender
    assert set(before) <= read_all(kafka_bootstrap, topic, len(before))
    await asyncio.wait_for(producer.flush(), timeout=30)  # the rest, once sending stops
    producer.close()


async def test_a_strict_producers_flush_fails_when_the_broker_refused_a_record(
    kafka_bootstrap: str,
) -> None:
    topic = make_topic(kafka_bootstrap, **{"max.message.bytes": "2000"})
    producer = DirectProducer(kafka_bootstrap, "test-strict", strict=True)
    producer.send(topic, b"k", b"fits")
    await asyncio.wait_for(producer.flush(), timeout=30)
    producer.send(topic, b"k", b"x" * 10_000)  # over the topic's limit: refused
    with pytest.raises(KafkaException, match="1 records were not written"):
        await asyncio.wait_for(producer.flush(), timeout=60)
    producer.send(topic, b"k", b"fits again")
    await asyncio.wait_for(producer.flush(), timeout=30)  # counted once, not again
    producer.close()
