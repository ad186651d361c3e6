"""Writes delivery-status and DLQ records to Kafka without a round-trip per record.

`send_soon` only buffers; faust flushes the producer before it commits any offset (and
ours flushes the librdkafka one of status records too: streams/direct_producer.py), so a
status or DLQ record is on the broker before the offset of the alert it reports.

Every status record goes to the status topic (one per attempt: the users' contract).
The worker's own health fold needs only what can change health, so the same bytes go to
the internal health topic only when `HealthFeed` says so: failures, circuit changes, and
a success now and then. That spares a faust consume pass per alert (most are successes).
Both are keyed by tenant, the health topic co-partitioned with the config table.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import orjson

from schemas.models import DeadLetter, DeliveryStatus
from streams.agents.health import HealthFeed
from streams.delivery import BatchStatuses, StatusValues
from streams.wire import dumps

__all__ = ["KafkaReporter"]

# `model_dump_json` as bytes of exactly their length (no orjson buffer to trim), in
# ~1 µs instead of ~1.9 µs for `model_dump(mode="json")` through orjson; the same text.
_status_json = DeliveryStatus.__pydantic_serializer__.to_json


# Stand-ins for the two values that differ between a batch's status records.
_ALERT_ID, _KEY = "\x00alertrelay:alert_id\x00", "\x00alertrelay:idempotency_key\x00"
_ALERT_SLOT, _KEY_SLOT = orjson.dumps(_ALERT_ID), orjson.dumps(_KEY)


def _spliced(base: StatusValues) -> tuple[bytes, bytes, bytes] | None:
    """The JSON of `base` before, between and after its alert id and idempotency key,
    or None where that cannot be split (a slot's JSON inside an error text: never in
    practice), and the records are written one by one."""
    text = dumps({**base, "alert_id": _ALERT_ID, "idempotency_key": _KEY})
    if text.count(_ALERT_SLOT) != 1 or text.count(_KEY_SLOT) != 1:
        return None
    head, _, rest = text.partition(_ALERT_SLOT)
    middle, found, tail = rest.partition(_KEY_SLOT)
    return (head, middle, tail) if found else None


class RecordTopic(Protocol):
    """What the reporter needs of a topic: faust's, or a `DirectTopic` on librdkafka."""

    def send_soon(self, *, key: bytes | None, value: bytes, force: bool = ...) -> object: ...


class KafkaReporter:
    """A `streams.delivery.BatchReporter`: batch records come as plain values."""

    def __init__(
        self,
        status_topic: RecordTopic,
        dlq_topic: RecordTopic,
        health_topic: RecordTopic,
        feed: HealthFeed | None = None,
    ) -> None:
        self._status = status_topic
        self._dlq = dlq_topic
        self._health = health_topic
        self._feed = feed if feed is not None else HealthFeed()

    async def status(self, record: DeliveryStatus) -> None:
        self._send(
            record.tenant_id,
            record.integration_id,
            record.outcome.value,
            record.circuit,
            record.at,
            _status_json(record),
        )

    async def batch_statuses(self, records: Iterable[StatusValues]) -> None:
        """Status records of a batch, as `streams.delivery.batch_status_values` makes them."""
        if isinstance(records, BatchStatuses):
            parts = _spliced(records.base)
            if parts is not None:
                self._send_spliced(records, *parts)
                return
        for values in records:
            self._send(
                values["tenant_id"],
                values["integration_id"],
                values["outcome"],
                values["circuit"],
                values["at"],
                dumps(values),
            )

    def _send_spliced(
        self, statuses: BatchStatuses, head: bytes, middle: bytes, tail: bytes
    ) -> None:
        """Each record's JSON from the batch's: its two own values spliced in. (`_send`'s
        steps written out: a call per record was ~0.3 µs more, for every alert.)"""
        base = statuses.base
        tenant_id, integration_id = base["tenant_id"], base["integration_id"]
        outcome, circuit, at = base["outcome"], base["circuit"], base["at"]
        key = tenant_id.encode()
        status, health, wants = self._status.send_soon, self._health.send_soon, self._feed.wants
        join, text = b"".join, orjson.dumps
        for record in statuses.records:
            value = join((head, text(record.alert_id), middle, text(record.idempotency_key), tail))
            status(key=key, value=value, force=True)
            if wants(tenant_id, integration_id, outcome, circuit, at):
                health(key=key, value=value, force=True)

    def _send(
        self,
        tenant_id: str,
        integration_id: str,
        outcome: str,
        circuit: str | None,
        at: float,
        value: bytes,
    ) -> None:
        key = tenant_id.encode()  # by tenant, as the health topic must be
        self._status.send_soon(key=key, value=value, force=True)
        if self._feed.wants(tenant_id, integration_id, outcome, circuit, at):
            self._health.send_soon(key=key, value=value, force=True)

    async def dead_letter(self, record: DeadLetter) -> None:
        key = (record.tenant_id or "").encode() or None
        self._dlq.send_soon(key=key, value=dumps(record.model_dump(mode="json")), force=True)
