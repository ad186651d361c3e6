"""Micro benchmark: the CPU our code spends per delivery-status record, without a broker.

    .venv/bin/python bench/status_records.py

`batch`: one successful attempt at a 10 000-alert batch through `BatchRunner.write` and
the Kafka reporter (status topic, health feed, end-to-end metric); `per-alert`: one
status record of a per-alert delivery and `KafkaReporter.status`. The topics are fakes
whose `send_soon` only counts, so faust's own per-record cost is not in these figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sys
import time
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import BaseModel

from schemas.models import Alert, Delivery, IntegrationConfig, Outcome, idempotency_key
from sinks.base import Batch, BatchingSink, BatchRecord
from sinks.retry import RetryPolicy
from sinks.secretbox import SecretBox, generate_key_spec
from streams.delivery import BatchRunner, _status
from streams.reporter import KafkaReporter

BATCH = 10_000


class _Settings(BaseModel):
    bucket: str


class _Sink(BatchingSink[_Settings]):
    type_name = "bucket"
    settings_model = _Settings

    async def write(self, batch: Batch, settings: _Settings) -> int | None:
        return None

    async def check(self, integration: IntegrationConfig, settings: _Settings) -> str:
        return "ok"


class _Topic:
    def __init__(self) -> None:
        self.sent = 0

    def send_soon(self, *, key: bytes | None, value: bytes, force: bool) -> None:
        self.sent += 1


def _delivery(i: int, integration: IntegrationConfig) -> Delivery:
    alert = Alert(
        alert_id=f"a-{i}",
        tenant_id=integration.tenant_id,
        event_type="client_side_risk",
        risk_level="high",
        title="New script reads the payment form",
        detected_at=dt.datetime(2026, 11, 24, 10, tzinfo=dt.UTC),
    )
    return Delivery(
        alert=alert,
        integration=integration,
        config_version=1,
        idempotency_key=idempotency_key(alert.alert_id, integration.integration_id),
        source_topic="alerts",
        source_partition=0,
        source_offset=i,
        routed_at=time.time(),
        produced_at=time.time(),
    )


def _integration(kind: str, settings: dict[str, Any]) -> IntegrationConfig:
    return IntegrationConfig(
        integration_id="bench", tenant_id="acme", type=kind, name="bench", settings=settings
    )


def batch_us_per_record() -> float:
    integration = _integration("bucket", {"bucket": "b"})
    records = [BatchRecord.of(_delivery(i, integration)) for i in range(BATCH)]
    batch = Batch(
        integration=integration,
        config_version=1,
        topic="alerts",
        partition=0,
        first_offset=0,
        last_offset=BATCH - 1,
        day=dt.date(2026, 11, 24),
        records=records,
        size_bytes=0,
    )
    reporter = KafkaReporter(_Topic(), _Topic(), _Topic())  # type: ignore[arg-type]
    runner = BatchRunner(_Sink(), RetryPolicy(), reporter, SecretBox.parse(generate_key_spec()))

    async def best() -> float:
        await runner.write(batch)
        times = []
        for _ in range(7):
            started = time.perf_counter()
            await runner.write(batch)
            times.append(time.perf_counter() - started)
        return min(times)

    return asyncio.run(best()) / BATCH * 1e6


def per_alert_us_per_record() -> float:
    delivery = _delivery(1, _integration("webhook", {}))
    reporter = KafkaReporter(_Topic(), _Topic(), _Topic())  # type: ignore[arg-type]

    def one() -> None:
        record = _status(delivery, 1, Outcome.DELIVERED, 0.0123, 200)
        coro = reporter.status(record.model_copy(update={"circuit": "closed"}))
        with contextlib.suppress(StopIteration):  # it never awaits: run it to its end
            coro.send(None)

    number = 50_000
    return min(timeit.repeat(one, number=number, repeat=5)) / number * 1e6


if __name__ == "__main__":
    print(f"batch:     {batch_us_per_record():.2f} µs per status record")
    print(f"per-alert: {per_alert_us_per_record():.2f} µs per status record")
