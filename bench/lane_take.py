"""Micro benchmark: the CPU the two alert lanes spend taking each alert, without a broker.

    .venv/bin/python bench/lane_take.py [--alerts 100000]

The batching scenario's alerts (bench/common.py `make_alert`, 8 tenants, one S3
integration each) as in-memory records, taken by the batch lane (decode, route, buffer;
its batches are cut but not written) and by the routing lane (tenant, partition, nothing
to route), in reads of 5 000 like the lanes' own. Where the end-to-end run moves ±20 %
from run to run on this machine, this moves ~3 %: the signal for changes to the lanes'
per-alert code (bench/analysis.md).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
from confluent_kafka import TIMESTAMP_CREATE_TIME
from pydantic import BaseModel

from bench.common import balanced_tenants, make_alert
from schemas.models import IntegrationConfig
from sinks.base import Batch, BatchingSink, BatchLimits
from sinks.secretbox import SecretBox, generate_key_spec
from streams.agents.router import RouteRules, tenant_partition
from streams.batch_lane import BatchLane
from streams.routing_lane import RoutingLane
from streams.settings import Settings

PARTITIONS = 8
READ = 5_000


class _Empty(BaseModel):
    pass


class _Lake(BatchingSink[_Empty]):
    type_name = "s3"
    settings_model = _Empty
    limits = BatchLimits(max_events=2_500, max_bytes=256 << 20, max_age=600)

    async def write(self, batch: Batch, settings: _Empty) -> int | None:
        return 200

    async def check(self, integration: IntegrationConfig, settings: _Empty) -> str:
        return "ok"


class _Msg:
    """What the lanes call on a confluent-kafka message."""

    def __init__(self, offset: int, value: bytes, partition: int) -> None:
        self._offset, self._value, self._partition = offset, value, partition
        self._stamp = int(time.time() * 1000)

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return "alerts"

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return TIMESTAMP_CREATE_TIME, self._stamp


class _Nowhere:
    """Reporter and outbox: the lanes send nothing in this run."""

    async def status(self, record: Any) -> None: ...

    async def dead_letter(self, record: Any) -> None: ...

    def send(self, topic: str, key: bytes | None, value: bytes, **kw: Any) -> None: ...

    async def flush(self) -> None: ...


def _entry(tenant: str) -> dict[str, Any]:
    config = {
        "integration_id": "lake",
        "tenant_id": tenant,
        "type": "s3",
        "name": "lake",
        "enabled": True,
        "event_types": ["client_side_risk", "pci_scope_change"],
        "min_risk_level": "low",
        "settings": {},
        "version": 1,
    }
    return {"lake": {"config": config}}


async def main(alerts: int) -> None:
    tenants = balanced_tenants(8, PARTITIONS, "lt-")
    table = {tenant: _entry(tenant) for tenant in tenants}
    rng = random.Random(1)
    offsets = dict.fromkeys(range(PARTITIONS), 0)
    messages = []
    for n in range(alerts):
        tenant = tenants[n % len(tenants)]
        partition = tenant_partition(tenant, PARTITIONS)
        value = orjson.dumps(make_alert(n, tenant, "lt", rng))
        messages.append(_Msg(offsets[partition], value, partition))
        offsets[partition] += 1
    rules, nowhere, settings = RouteRules(PARTITIONS, "detour", "replay"), _Nowhere(), Settings()
    box = SecretBox.parse(generate_key_spec())
    batch = BatchLane(settings, table, rules, {"s3": _Lake()}, nowhere, box, nowhere.flush)  # type: ignore[arg-type]
    batch.writers["s3"].spawn = lambda ready: None  # type: ignore[method-assign]
    routing = RoutingLane(settings, table, rules, ["webhook"], nowhere, nowhere, nowhere.flush)  # type: ignore[arg-type]
    for lane in (batch, routing):
        lane.acks.reset({("alerts", p): 0 for p in range(PARTITIONS)})
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)  # as the worker (streams/gc_tuning.py)
    print(f"{alerts} alerts of ~{sum(len(m.value()) for m in messages) // alerts} bytes")
    for name, lane in (("batch lane", batch), ("routing lane", routing)):
        started = time.perf_counter()
        for first in range(0, alerts, READ):
            lane._take(messages[first : first + READ])
        seconds = time.perf_counter() - started
        print(f"{name}: {seconds / alerts * 1e6:.2f} µs per alert")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().alerts))
