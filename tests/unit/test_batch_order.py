"""Batches of one integration and source partition are written in the order they were
cut, even when the flush timer and the agent flush at the same time: the object sinks
skip offsets at or below the highest stored, so order is what keeps them correct."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import BaseModel

from schemas.models import Alert, Delivery, IntegrationConfig, idempotency_key
from sinks.base import Batch, BatchingSink, BatchLimits
from sinks.secretbox import SecretBox, generate_key_spec
from streams.agents.sinks import BatchingAgent
from streams.batcher import Pending
from streams.settings import Settings


class Empty(BaseModel):
    pass


class SlowFirst(BatchingSink[Empty]):
    type_name = "s3"
    settings_model = Empty

    def __init__(self) -> None:
        self.limits = BatchLimits(max_events=5)
        self.order: list[int] = []

    async def write(self, batch: Batch, settings: Empty) -> int | None:
        if batch.first_offset == 0:
            await asyncio.sleep(0.2)  # the older batch is slow (a retry, say)
        self.order.append(batch.first_offset)
        return 200

    async def check(self, integration: IntegrationConfig, settings: Empty) -> str:
        return "ok"


class Recorder:
    async def status(self, record: Any) -> None:
        pass

    async def dead_letter(self, record: Any) -> None:
        raise AssertionError("nothing should be dead-lettered")


class Message:
    tp = ("alertrelay-deliver-s3", 0)


class Ack:
    """A stand-in for a faust event: its partition, and whether it was acked."""

    message = Message()

    def __init__(self) -> None:
        self.acked = False

    def ack(self) -> None:
        self.acked = True


def delivery(offset: int) -> Delivery:
    alert = Alert.model_validate(
        {
            "alert_id": f"a{offset}",
            "tenant_id": "t",
            "event_type": "client_side_risk",
            "risk_level": "high",
            "title": "x",
            "detected_at": "2026-01-01T00:00:00Z",
        }
    )
    integration = IntegrationConfig(integration_id="i", tenant_id="t", type="s3", name="n")
    return Delivery(
        alert=alert,
        integration=integration,
        config_version=1,
        idempotency_key=idempotency_key(alert.alert_id, "i"),
        source_topic="alerts",
        source_partition=0,
        source_offset=offset,
        routed_at=time.time(),
    )


async def test_concurrent_flushes_write_batches_of_a_partition_in_order() -> None:
    sink = SlowFirst()
    agent = BatchingAgent(sink, Settings(), Recorder(), SecretBox.parse(generate_key_spec()))
    pending: list[Pending] = []
    acks = [Ack() for _ in range(10)]
    for offset in range(10):
        slot = agent._acks.track(acks[offset])
        ready = agent.batcher.add(delivery(offset), slot, 0)
        if ready is not None:
            pending.append(ready)
    older, newer = pending
    await asyncio.gather(agent.flush([older]), agent.flush([newer]))  # timer and agent
    assert sink.order == [0, 5]
    assert all(a.acked for a in acks)
