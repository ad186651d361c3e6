"""Delay topics: deliveries parked after a retryable failure wait here, not in the
delivery partition, and go back to their type's delivery topic when due.

One agent per tier. Records of a tier arrive roughly in due order (they were parked for
similar delays), so waiting for the head of the partition is waiting for the earliest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from faust.types import StreamT

from schemas.models import Delivery
from sinks.retry import tier_for
from streams.topics import Topics
from streams.wire import dumps

__all__ = ["make_parker", "make_retry_agent"]

log = logging.getLogger(__name__)


def make_parker(topics: Topics, tiers: tuple[int, ...]) -> Any:
    async def park(delivery: Delivery, delay: float) -> None:
        # Awaited, not `send_soon`: when the producer's buffer is full the parking
        # delivery waits, and with it its lane's in-flight limit holds the reading back
        # (a destination that is down made the lanes park faster than the producer sent,
        # and the buffer grew by tens of MB).
        await topics.retry[tier_for(delay, tiers)].send(
            key=delivery.integration.key.encode(),
            value=dumps(delivery.model_dump(mode="json")),  # waits queued: exact size
        )

    return park


def make_retry_agent(topics: Topics, tier: int) -> Any:
    async def agent(stream: StreamT[Any]) -> None:
        async for event in stream.events():
            try:
                record = orjson.loads(event.message.value or b"{}")
                kind = record["integration"]["type"]
                target = topics.delivery[kind]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                log.error("dropping an unreadable parked delivery from the %ds tier", tier)
                continue
            wait = float(record.get("not_before") or 0) - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            target.send_soon(key=event.message.key, value=event.message.value, force=True)

    return agent
