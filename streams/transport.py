"""faust's Kafka transport with the two changes our delivery guarantee needs.

- Consuming: `streams.consumer.GaplessConsumer` never lets a record it did not hand
  to an agent be committed.
- Producing: `DrainingProducer.flush` empties faust's producer buffer completely. faust
  flushes before every offset commit, but its buffer flush gives up as soon as no record
  left the buffer for 0.1 s (`ProducerBuffer.flush_atmost`), which on a busy event loop
  lets a commit through while records sent with `send_soon` (parked retries, DLQ
  records) are still only in memory: a crash then loses them although the offsets
  that produced them are committed.
"""

from __future__ import annotations

from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.consumer import GaplessConsumer

__all__ = ["DrainingProducer", "Transport"]


class DrainingProducer(faust_aiokafka.Producer):  # type: ignore[misc]
    async def flush(self) -> None:
        while self.buffer.size:
            await self.buffer.flush()
        await super().flush()
        for flush in getattr(self.app, "extra_flushes", ()):  # streams.direct_producer
            await flush()


class Transport(faust_aiokafka.Transport):  # type: ignore[misc]
    Consumer = GaplessConsumer
    Producer = DrainingProducer
