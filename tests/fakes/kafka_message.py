"""What confluent-kafka's Message and Consumer offer the lanes (streams/lane.py); an
alert's JSON and a config table entry to feed them."""

from __future__ import annotations

from typing import Any

import orjson
from confluent_kafka import TIMESTAMP_CREATE_TIME, TopicPartition

STAMP_MS = 1_790_000_000_123


class Msg:
    def __init__(
        self,
        offset: int,
        value: bytes,
        partition: int,
        topic: str = "alerts",
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self._offset, self._value, self._partition = offset, value, partition
        self._topic, self._headers = topic, headers

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return TIMESTAMP_CREATE_TIME, STAMP_MS


class FakeConsumer:
    """The calls `Lane` makes on confluent-kafka's Consumer."""

    def __init__(self, batches: list[list[Any]] | None = None) -> None:
        self.commits: list[list[TopicPartition]] = []
        self.assigned: list[list[TopicPartition]] = []
        self.reads: list[tuple[int, float]] = []
        self.batches = batches or []

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits.append(offsets)

    def assign(self, tps: list[TopicPartition]) -> None:
        self.assigned.append(tps)

    def unassign(self) -> None:
        self.assigned.append([])

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, 0) for tp in tps]

    def consume(self, n: int, timeout: float) -> list[Any]:
        self.reads.append((n, timeout))
        return self.batches.pop(0) if self.batches else []

    def close(self) -> None:
        pass


def alert_json(n: int, tenant: str) -> bytes:
    return orjson.dumps(
        {
            "alert_id": f"a-{n}",
            "tenant_id": tenant,
            "event_type": "client_side_risk",
            "risk_level": "high",
            "title": "t",
            "detected_at": "2026-01-01T00:00:00Z",
        }
    )


def table_entry(
    iid: str, tenant: str, kind: str, version: int = 1, settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An integration as the config table holds it (streams/tables.py)."""
    return {
        "config": {
            "integration_id": iid,
            "tenant_id": tenant,
            "type": kind,
            "name": iid,
            "enabled": True,
            "event_types": ["client_side_risk", "pci_scope_change"],
            "min_risk_level": "low",
            "settings": settings or {},
            "version": version,
        }
    }
