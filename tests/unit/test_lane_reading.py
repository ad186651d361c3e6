"""The batch lane's reading, without a broker: what it buffers, what it leaves to the
routing lane, and that a bug on one record dead-letters that record and moves on."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from confluent_kafka import TIMESTAMP_CREATE_TIME
from pydantic import BaseModel

from schemas.models import IntegrationConfig
from sinks.base import Batch, BatchingSink, BatchLimits
from sinks.secretbox import SecretBox, generate_key_spec
from streams.agents.router import RouteRules, tenant_partition
from streams.batch_lane import BatchLane
from streams.settings import Settings
from tests.fakes.reporter import Recorder

PARTITIONS = 4
TENANT = "acme"
HOME = tenant_partition(TENANT, PARTITIONS)


class Empty(BaseModel):
    pass


class Lake(BatchingSink[Empty]):
    type_name = "s3"
    settings_model = Empty
    limits = BatchLimits(max_events=2, max_bytes=1 << 20, max_age=60)

    def __init__(self) -> None:
        self.written: list[list[str]] = []

    async def write(self, batch: Batch, settings: Empty) -> int | None:
        self.written.append([r.alert_id for r in batch.records])
        return 200

    async def check(self, integration: IntegrationConfig, settings: Empty) -> str:
        return "ok"


class Msg:
    """What confluent-kafka's Message offers the lane."""

    def __init__(self, offset: int, value: bytes, partition: int = HOME) -> None:
        self._offset, self._value, self._partition = offset, value, partition

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
        return TIMESTAMP_CREATE_TIME, 1_790_000_000_000


def alert(n: int, tenant: str = TENANT) -> bytes:
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


def config(iid: str, kind: str = "s3", version: int = 1) -> dict[str, Any]:
    return {
        "config": {
            "integration_id": iid,
            "tenant_id": TENANT,
            "type": kind,
            "name": iid,
            "enabled": True,
            "event_types": ["client_side_risk", "pci_scope_change"],
            "min_risk_level": "low",
            "settings": {},
            "version": version,
        }
    }


def lane(table: dict[str, Any]) -> tuple[BatchLane, Lake, Recorder]:
    sink, reporter = Lake(), Recorder()

    async def flush() -> None:
        return None

    rules = RouteRules(PARTITIONS, "detour", "replay")
    box = SecretBox.parse(generate_key_spec())
    lane = BatchLane(Settings(), table, rules, {"s3": sink}, reporter, box, flush)  # type: ignore[arg-type]
    lane.acks.reset({("alerts", HOME): 0})
    return lane, sink, reporter


async def test_alerts_of_batching_integrations_are_buffered_and_committed_once_written() -> None:
    table = {TENANT: {"lake": config("lake"), "hook": config("hook", kind="webhook")}}
    lane_, sink, _ = lane(table)
    lane_._take([Msg(0, alert(0)), Msg(1, b"not json"), Msg(2, alert(2))])
    assert lane_.acks.position(("alerts", HOME)) == 0  # 0 and 2 wait in the buffer
    await asyncio.sleep(0.05)  # the batch of two (max_events=2) is written
    assert sink.written == [["a-0", "a-2"]]
    assert lane_.acks.position(("alerts", HOME)) == 3


async def test_alerts_not_on_their_tenant_partition_are_left_to_the_routing_lane() -> None:
    lane_, _, _ = lane({TENANT: {"lake": config("lake")}})
    other = (HOME + 1) % PARTITIONS
    lane_.acks.reset({("alerts", other): 0})
    lane_._take([Msg(0, alert(0), partition=other)])
    assert lane_.writers["s3"].batcher.memory == 0  # read again from the detour topic
    assert lane_.acks.position(("alerts", other)) == 1


async def test_a_bug_on_one_record_dead_letters_it_and_the_lane_goes_on() -> None:
    broken = config("lake")
    del broken["config"]["version"]
    lane_, _, reporter = lane({TENANT: {"lake": broken}})
    lane_._take([Msg(0, alert(0)), Msg(1, alert(1))])
    await lane_._dead_letter_failed()
    assert [d.source_offset for d in reporter.dead] == [0, 1]
    assert all(d.stage == "route" and "internal error" in d.reason for d in reporter.dead)
    assert lane_.acks.position(("alerts", HOME)) == 2
