"""Writes delivery-status and DLQ records to Kafka without a round-trip per record.

`send_soon` only buffers; faust flushes the producer before it commits any offset, so a
status or DLQ record is on the broker before the offset of the alert it reports.
"""

from __future__ import annotations

from faust.types import TopicT

from schemas.models import DeadLetter, DeliveryStatus
from streams.wire import dumps

__all__ = ["KafkaReporter"]


class KafkaReporter:
    def __init__(self, status_topic: TopicT, dlq_topic: TopicT) -> None:
        self._status = status_topic
        self._dlq = dlq_topic

    async def status(self, record: DeliveryStatus) -> None:
        self._status.send_soon(
            key=record.tenant_id.encode(),  # by tenant: co-partitioned with the config table
            value=dumps(record.model_dump(mode="json")),  # exact size: it waits queued
            force=True,
        )

    async def dead_letter(self, record: DeadLetter) -> None:
        key = (record.tenant_id or "").encode() or None
        self._dlq.send_soon(key=key, value=dumps(record.model_dump(mode="json")), force=True)
