"""A librdkafka producer for the records we write one per alert or attempt: the routing
lane's delivery and detour records, status records and the health feed.

Why not faust's producer: each `send_soon` there is a trip through faust's
`ProducerBuffer` (one message per `await`) and aiokafka's pure-Python record batching,
~30-50 µs of the event loop per record, and once 100 are pending every consumer waits
for the buffer to drain (bench/analysis.md). librdkafka takes a record in ~1-2 µs and
batches, compresses and sends it on its own threads.

The guarantee stays the one faust gave: a record is on the broker before the offset of
the alert it reports is committed. faust flushes its producer before every commit, and
our `DrainingProducer.flush` (streams/transport.py) flushes this one too; the lanes flush
it (and the routing lane its own strict one) before their commits. Delivery and detour
records use a `strict` producer: one the broker did not take stops the commit. DLQ
records stay on faust's producer (they are few).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

__all__ = ["DirectProducer", "DirectTopic"]

log = logging.getLogger(__name__)


class DirectProducer:
    """`strict`: a record the broker never took makes the next `flush` raise, so no
    offset is committed past it (the routing lane then reads again from its last commit).
    Without it (status records, informational) the loss is logged and counted."""

    def __init__(self, bootstrap_servers: str, client_id: str, *, strict: bool = False) -> None:
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap_servers,
                "client.id": client_id,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                # Keys land where Kafka's Java clients and aiokafka would put them.
                "partitioner": "murmur2_random",
                # Bounded: past this, `send` waits for room.
                "queue.buffering.max.messages": 200_000,
                "queue.buffering.max.kbytes": 16 * 1024,
                # A report per record would be a Python call per record: failures only.
                "delivery.report.only.error": True,
            },
            logger=log,
        )
        self.strict = strict
        self.failed = 0
        self._raised = 0
        # Delivery reports are served by poll(); without a poller they pile up.
        self._poller = threading.Thread(target=self._poll, name=client_id, daemon=True)
        self._poller.start()

    def topic(self, name: str) -> DirectTopic:
        return DirectTopic(self, name)

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        *,
        partition: int = -1,  # -1: the partitioner's choice
        headers: list[tuple[str, bytes]] | None = None,
        timestamp_ms: int = 0,  # 0: now
    ) -> None:
        while True:
            try:
                self._producer.produce(
                    topic,
                    value,
                    key,
                    partition,
                    on_delivery=self._delivered,
                    timestamp=timestamp_ms,
                    headers=headers,  # type: ignore[arg-type]  # (list is invariant)
                )
                return
            except BufferError:  # the queue is full: let librdkafka send some first
                self._producer.poll(0.05)

    async def flush(self) -> None:
        """Until every record sent so far is on the broker (or failed and was logged)."""
        while await asyncio.to_thread(self._producer.flush, 5.0):
            log.warning("records are still waiting for the broker")
        if self.strict and self.failed > self._raised:
            self._raised = self.failed
            raise KafkaException(f"{self.failed} records were not written: not committing")

    def _poll(self) -> None:
        # A daemon thread for the process's life: what is sent is flushed before every
        # commit, the last one at shutdown included.
        while True:
            self._producer.poll(0.1)

    def _delivered(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self.failed += 1
            log.error("a record for %s was not written: %s", msg.topic(), err.str())


class DirectTopic:
    """The one method of a faust topic that `KafkaReporter` uses, on a `DirectProducer`."""

    def __init__(self, producer: DirectProducer, name: str) -> None:
        self._producer = producer
        self.name = name

    def send_soon(self, *, key: bytes | None, value: bytes, force: bool = True) -> None:
        self._producer.send(self.name, key, value)
