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
from pydantic import BaseModel

from bench.common import balanced_tenants, make_alert
from schemas.models import IntegrationConfig
from sinks.base import Batch, BatchingSink, BatchLimits
from sinks.secretbox import SecretBox, generate_key_spec
from streams.agents.router import RouteRules, tenant_partition
from streams.batch_lane import BatchLane
from streams.routing_lane import RoutingLane
from streams.settings import Settings
from tests.fakes.kafka_message import Msg, table_entry

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


class _Nowhere:
    """Reporter and outbox: the lanes send nothing in this run."""

    async def status(self, record: Any) -> None: ...

    async def dead_letter(self, record: Any) -> None: ...

    def send(self, topic: str, key: bytes | None, value: bytes, **kw: Any) -> None: ...

    async def flush(self) -> None: ...


async def main(alerts: int) -> None:
    tenants = balanced_tenants(8, PARTITIONS, "lt-")
    table = {tenant: {"lake": table_entry("lake", tenant, "s3")} for tenant in tenants}
    rng = random.Random(1)
    offsets = dict.fromkeys(range(PARTITIONS), 0)
    messages = []
    for n in range(alerts):
        tenant = tenants[n % len(tenants)]
        partition = tenant_partition(tenant, PARTITIONS)
        value = orjson.dumps(make_alert(n, tenant, "lt", rng))
        messages.append(Msg(offsets[partition], value, partition))
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
