"""The batching agent's memory cap counts what records really hold: their slim form
(`record_memory`), buffered or being written, with the delivery record's bytes released
from the events kept for the acks. Past the cap it writes everything and takes nothing
more until the writes bring it back under; nothing is lost.

The faust parts are faked: a stream whose `noack_take` yields the batches a test feeds it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from faust.types import TP
from pydantic import BaseModel

from schemas.models import Alert, Delivery, IntegrationConfig, idempotency_key
from sinks.base import Batch, BatchingSink, BatchLimits
from sinks.secretbox import SecretBox, generate_key_spec
from streams.agents.sinks import BatchingAgent
from streams.batcher import record_memory
from streams.settings import Settings

BOX = SecretBox.parse(generate_key_spec())
TOPIC = Settings().delivery_topic("s3")


class Empty(BaseModel):
    pass


class Gated(BatchingSink[Empty]):
    """Writes wait until `open` is set; records what it was given."""

    type_name = "s3"
    settings_model = Empty

    def __init__(self, limits: BatchLimits) -> None:
        self.limits = limits
        self.open = asyncio.Event()
        self.open.set()
        self.written: list[list[str]] = []
        self.started = 0

    async def write(self, batch: Batch, settings: Empty) -> int | None:
        self.started += 1
        await self.open.wait()
        self.written.append([r.alert_id for r in batch.records])
        return 200

    async def check(self, integration: IntegrationConfig, settings: Empty) -> str:
        return "ok"


class Recorder:
    def __init__(self) -> None:
        self.statuses: list[Any] = []

    async def status(self, record: Any) -> None:
        self.statuses.append(record)

    async def dead_letter(self, record: Any) -> None:
        raise AssertionError(f"nothing should be dead-lettered: {record}")


class Message:
    def __init__(self, partition: int, offset: int, value: bytes) -> None:
        self.topic = TOPIC
        self.partition = partition
        self.offset = offset
        self.value: bytes | None = value
        self.tp = TP(TOPIC, partition)


class Event:
    def __init__(self, message: Message, acked: list[int]) -> None:
        self.message = message
        self.value: bytes | None = message.value
        self._acked = acked

    def ack(self) -> None:
        self._acked.append(self.message.offset)


class Stream:
    def __init__(self) -> None:
        self.batches: asyncio.Queue[list[Event] | None] = asyncio.Queue()
        self.asked = 0  # how many times the agent asked for a batch

    def feed(self, events: list[Event]) -> None:
        self.batches.put_nowait(events)

    async def noack_take(self, max_: int, within: float) -> AsyncIterator[list[Event]]:
        while True:
            self.asked += 1
            batch = await self.batches.get()
            if batch is None:
                return
            yield batch


def delivery(offset: int, tenant: str = "t") -> bytes:
    alert = Alert.model_validate(
        {
            "alert_id": f"{tenant}-{offset}",
            "tenant_id": tenant,
            "event_type": "client_side_risk",
            "risk_level": "high",
            "title": "x" * 300,
            "detected_at": "2026-01-01T00:00:00Z",
        }
    )
    integration = IntegrationConfig(
        integration_id="lake", tenant_id=tenant, type="s3", name="n", settings={"a": "b" * 500}
    )
    return (
        Delivery(
            alert=alert,
            integration=integration,
            config_version=1,
            idempotency_key=idempotency_key(alert.alert_id, "lake"),
            source_topic="alerts",
            source_partition=0,
            source_offset=offset,
            routed_at=time.time(),
        )
        .model_dump_json()
        .encode()
    )


def events(offsets: range, acked: list[int], partition: int = 0) -> list[Event]:
    return [Event(Message(partition, o, delivery(o)), acked) for o in offsets]


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_held_counts_slim_records_and_events_keep_no_payload() -> None:
    sink = Gated(BatchLimits(max_events=1000, max_age=3600))
    agent = BatchingAgent(sink, Settings(), Recorder(), BOX)
    stream, acked = Stream(), []
    run = asyncio.create_task(agent.agent(stream))  # type: ignore[arg-type]
    fed = events(range(10), acked)
    stream.feed(fed)
    await settle()
    assert len(agent.batcher) == 10
    assert all(e.value is None and e.message.value is None for e in fed)
    (pending,) = agent.batcher.drain()
    assert agent.held == 0  # drained: what is taken out is the caller's to count
    expected = sum(record_memory(r) for r in pending.batch.records)
    assert pending.batch.memory_bytes == expected
    sink.open.clear()
    write = asyncio.create_task(agent.flush([pending]))
    await settle()
    assert agent.held == expected  # being written still counts
    sink.open.set()
    await write
    assert agent.held == 0
    assert acked == list(range(10))
    stream.batches.put_nowait(None)
    await run


async def test_past_the_cap_everything_is_written_and_taking_waits_for_room() -> None:
    sink = Gated(BatchLimits(max_events=1000, max_age=3600))
    one = len(delivery(0))  # far above a record's memory: 20 records pass any cap below
    settings = Settings(batch_memory_cap=10 * one // 2)
    agent = BatchingAgent(sink, settings, Recorder(), BOX)
    stream, acked = Stream(), []
    sink.open.clear()
    run = asyncio.create_task(agent.agent(stream))  # type: ignore[arg-type]
    await settle()
    assert stream.asked == 1
    stream.feed(events(range(20), acked))
    stream.feed(events(range(20, 25), acked))
    await settle()
    # Over the cap: the buffer was cut and handed to a write, and the agent waits.
    assert sink.started == 1 and len(agent.batcher) == 0
    assert agent.held > settings.batch_memory_cap
    assert stream.asked == 1  # the second batch is not taken while the write hangs
    sink.open.set()
    await settle()
    assert agent.held < settings.batch_memory_cap
    assert stream.asked == 3  # room again: the next batch was taken, then asked for more
    assert len(agent.batcher) == 5
    await agent.flush(agent.batcher.drain())
    assert sink.written == [[f"t-{o}" for o in range(20)], [f"t-{o}" for o in range(20, 25)]]
    assert acked == list(range(25))
    assert agent.held == 0
    stream.batches.put_nowait(None)
    await run


async def test_revoked_buffers_no_longer_count() -> None:
    sink = Gated(BatchLimits(max_events=1000, max_age=3600))
    agent = BatchingAgent(sink, Settings(), Recorder(), BOX)
    stream, acked = Stream(), []
    run = asyncio.create_task(agent.agent(stream))  # type: ignore[arg-type]
    stream.feed(events(range(3), acked, partition=0) + events(range(3, 5), acked, partition=1))
    await settle()
    both = agent.held
    assert both > 0
    agent.on_revoked([TP(TOPIC, 1)])
    assert 0 < agent.held < both
    agent.on_revoked([TP(TOPIC, 0)])
    assert agent.held == 0
    stream.batches.put_nowait(None)
    await run
