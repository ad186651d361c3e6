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
import functools
import logging
import threading
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

__all__ = ["DirectProducer", "DirectTopic"]

log = logging.getLogger(__name__)


class _Epoch:
    """The records sent between two flushes. Done once each has its delivery report.

    `sent` is counted by the sending thread (the event loop), `reported` by the poller
    thread alone (only it serves reports): one writer each, so no lock."""

    __slots__ = ("closed", "reported", "sent", "waiter")

    def __init__(self) -> None:
        self.sent = 0
        self.reported = 0
        self.closed = False
        self.waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    @property
    def done(self) -> bool:
        return self.closed and self.reported == self.sent

    def close(self) -> asyncio.Future[None]:
        """No more records join it; the future ends once all of them are reported."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self.waiter = (loop, future)
        self.closed = True
        if self.reported == self.sent:
            future.set_result(None)
        return future

    def reported_one(self) -> None:
        self.reported += 1
        if self.closed and self.reported == self.sent and self.waiter is not None:
            loop, future = self.waiter
            loop.call_soon_threadsafe(_settle, future)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class DirectProducer:
    """`strict`: a record the broker never took makes the next `flush` raise, so no
    offset is committed past it (the routing lane then reads again from its last commit).
    Without it (status records, informational) the loss is logged and counted.

    `flush` waits for the records sent before it, not for an empty queue: librdkafka's
    own flush also waits for every record sent while it waits, so with the lanes
    producing on (their commits run beside their reading, streams/lane.py) it could wait
    for as long as the load lasts. Each record's delivery report is counted in the epoch
    it was sent in (~0.5 µs of CPU a record); a flush closes the current epoch and waits
    for it and any earlier one still open."""

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
            },
            logger=log,
        )
        self.strict = strict
        self.failed = 0  # counted by the poller thread only
        self._raised = 0
        self._epoch = _Epoch()
        self._report = functools.partial(self._delivered, self._epoch)
        self._open: list[_Epoch] = []  # closed by a flush, not yet done
        # Delivery reports are served by poll() in this thread, and only here.
        self._stopped = threading.Event()
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
        """From the event loop's thread only (the epochs count on one sender)."""
        epoch, report = self._epoch, self._report
        while True:
            try:
                self._producer.produce(
                    topic,
                    value,
                    key,
                    partition,
                    on_delivery=report,
                    timestamp=timestamp_ms,
                    headers=headers,  # type: ignore[arg-type]  # (list is invariant)
                )
                break
            except BufferError:  # the queue is full: the poller thread makes room
                time.sleep(0.01)
        epoch.sent += 1

    async def flush(self) -> None:
        """Until every record sent so far is on the broker (or failed and was logged)."""
        closing, self._epoch = self._epoch, _Epoch()
        self._report = functools.partial(self._delivered, self._epoch)
        self._open = [e for e in self._open if not e.done]
        waits = [e.waiter[1] for e in self._open if e.waiter is not None]
        waits.append(closing.close())
        self._open.append(closing)
        while True:
            _, pending = await asyncio.wait(waits, timeout=5.0)
            if not pending:
                break
            log.warning("records are still waiting for the broker")
        if self.strict and self.failed > self._raised:
            self._raised = self.failed
            raise KafkaException(f"{self.failed} records were not written: not committing")

    def close(self) -> None:
        """Stop serving reports (tests; a worker's producers live as long as it does)."""
        self._stopped.set()
        self._poller.join()

    def _poll(self) -> None:
        # A daemon thread for the worker's life: what is sent is flushed before every
        # commit, the last one at shutdown included.
        while not self._stopped.is_set():
            self._producer.poll(0.1)

    def _delivered(self, epoch: _Epoch, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self.failed += 1
            log.error("a record for %s was not written: %s", msg.topic(), err.str())
        epoch.reported_one()


class DirectTopic:
    """The one method of a faust topic that `KafkaReporter` uses, on a `DirectProducer`."""

    def __init__(self, producer: DirectProducer, name: str) -> None:
        self._producer = producer
        self.name = name

    def send_soon(self, *, key: bytes | None, value: bytes, force: bool = True) -> None:
        self._producer.send(self.name, key, value)
