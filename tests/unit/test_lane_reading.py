"""The batch lane's reading, without a broker: what it buffers, what it leaves to the
routing lane, the invalid alerts it dead-letters, what it counts, and that a bug on one
record dead-letters that record and moves on."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from faust.types import TP as TopicPartition
from pydantic import BaseModel

from schemas.codec import decode_alert
from schemas.models import IntegrationConfig
from sinks.base import Batch, BatchingSink, BatchLimits, BatchRecord
from sinks.secretbox import SecretBox, generate_key_spec
from streams.agents.router import ONLY_HEADER, SOURCE_HEADER, RouteRules, tenant_partition
from streams.batch_lane import BatchLane
from streams.settings import Settings
from tests.fakes.kafka_message import Msg, alert_json, table_entry
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
        self.lines: list[bytes] = []
        self.prepared = 0

    def prepare(self) -> None:
        self.prepared += 1

    async def write(self, batch: Batch, settings: Empty) -> int | None:
        self.written.append([r.alert_id for r in batch.records])
        self.lines += [r.line for r in batch.records]
        return 200

    async def check(self, integration: IntegrationConfig, settings: Empty) -> str:
        return "ok"


def alert(n: int, tenant: str = TENANT) -> bytes:
    return alert_json(n, tenant)


def config(iid: str, kind: str = "s3", version: int = 1) -> dict[str, Any]:
    return table_entry(iid, TENANT, kind, version)


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
    lane_._take([Msg(0, alert(0), HOME), Msg(1, b"not json", HOME), Msg(2, alert(2), HOME)])
    assert lane_.acks.position(("alerts", HOME)) == 0  # 0 and 2 wait in the buffer
    await asyncio.sleep(0.05)  # the batch of two (max_events=2) is written
    assert sink.written == [["a-0", "a-2"]]
    assert lane_.acks.position(("alerts", HOME)) == 3


async def test_alerts_the_fast_path_leaves_to_the_model_are_buffered_alike() -> None:
    """schemas/fast_alert.py: an unknown field, or a time past microseconds."""
    lane_, sink, _ = lane({TENANT: {"lake": config("lake")}})
    extra = orjson.dumps({**orjson.loads(alert(0)), "schema_version": 2})
    nanos = orjson.dumps({**orjson.loads(alert(1)), "detected_at": "2026-11-25T03:47:01.9999999Z"})
    lane_._take([Msg(0, extra, HOME), Msg(1, nanos, HOME)])
    await asyncio.sleep(0.05)
    assert sink.lines == [
        BatchRecord.make(decode_alert(raw), "k", 0, None).line for raw in (extra, nanos)
    ]
    assert b"schema_version" not in sink.lines[0]
    assert b'"detected_at":"2026-11-25T03:47:01.999999Z"' in sink.lines[1]  # truncated


async def test_alerts_not_on_their_tenant_partition_are_left_to_the_routing_lane() -> None:
    lane_, _, _ = lane({TENANT: {"lake": config("lake")}})
    other = (HOME + 1) % PARTITIONS
    lane_.acks.reset({("alerts", other): 0})
    lane_._take([Msg(0, alert(0), partition=other)])
    assert lane_.writers["s3"].batcher.memory == 0  # read again from the detour topic
    assert lane_.acks.position(("alerts", other)) == 1


async def test_replayed_alerts_go_where_their_own_headers_say_within_one_read() -> None:
    lane_, _, _ = lane({TENANT: {"lake": config("lake"), "pond": config("pond")}})
    lane_.acks.reset({("replay", HOME): 0})

    def replayed(n: int, only: bytes) -> Msg:
        origin = (SOURCE_HEADER, f"alerts/{HOME}/{n}".encode())
        return Msg(n, alert(n), HOME, "replay", [origin, (ONLY_HEADER, only)])

    lane_._take([replayed(0, b"lake"), replayed(1, b"pond")])
    batcher = lane_.writers["s3"].batcher
    held = {
        (iid, n)
        for iid in ("lake", "pond")
        for n in range(2)
        if batcher.holds((f"{TENANT}/{iid}", HOME, "alerts", HOME), n)
    }
    assert held == {("lake", 0), ("pond", 1)}


async def test_configs_are_looked_up_once_per_read_and_again_in_the_next() -> None:
    table: dict[str, Any] = {}
    lane_, _, _ = lane(table)
    lane_._take([Msg(0, alert(0), HOME)])  # an unknown tenant: nothing buffered
    assert lane_.writers["s3"].batcher.memory == 0
    table[TENANT] = {"lake": config("lake")}
    lane_._take([Msg(1, alert(1), HOME)])
    assert lane_.writers["s3"].batcher.memory > 0


async def test_the_sink_prepares_once_when_its_first_alert_is_read() -> None:
    table: dict[str, Any] = {"other": {}}
    lane_, sink, _ = lane(table)
    elsewhere = tenant_partition("other", PARTITIONS)
    lane_.acks.reset({("alerts", HOME): 0, ("alerts", elsewhere): 0})
    lane_._take([Msg(0, alert(0, "other"), elsewhere)])
    await asyncio.sleep(0)
    assert sink.prepared == 0  # no S3 integration read yet
    table[TENANT] = {"lake": config("lake")}
    lane_._take([Msg(0, alert(0), HOME)])
    lane_._take([Msg(1, alert(1), HOME), Msg(2, alert(2), HOME)])
    await asyncio.sleep(0)
    assert sink.prepared == 1


def test_the_sinks_of_types_the_table_holds_prepare_when_the_lane_is_assigned() -> None:
    home = TopicPartition(Settings().configs_by_tenant_topic, HOME)
    table: dict[str, Any] = {"other": {"hook": config("hook", "webhook")}, "gone": {"x": {}}}
    lane_, sink, _ = lane(table)
    lane_.on_assigned([home])
    assert sink.prepared == 0  # no S3 integration held
    table[TENANT] = {"lake": config("lake")}
    lane_.on_assigned([home])
    lane_.on_assigned([home])
    assert sink.prepared == 1  # once, before any alert is read


async def test_a_bug_on_one_record_dead_letters_it_and_the_lane_goes_on() -> None:
    broken = config("lake")
    del broken["config"]["version"]
    lane_, _, reporter = lane({TENANT: {"lake": broken}})
    lane_._take([Msg(0, alert(0), HOME), Msg(1, alert(1), HOME)])
    await lane_._dead_letter_failed()
    assert [d.source_offset for d in reporter.dead] == [0, 1]
    assert all(d.stage == "route" and "internal error" in d.reason for d in reporter.dead)
    assert lane_.acks.position(("alerts", HOME)) == 2


def invalid_alert(n: int, tenant: str = TENANT) -> bytes:
    """Parses and names its tenant, but is not an alert (an unknown risk level)."""
    return alert(n, tenant).replace(b'"high"', b'"severe"')


async def test_an_invalid_alert_with_a_tenant_is_this_lanes_to_dead_letter() -> None:
    lane_, _, reporter = lane({})  # whatever the tenant's configs are
    lane_._take([Msg(0, invalid_alert(0), HOME), Msg(1, b"not json", HOME)])
    await lane_._dead_letter_failed()
    [dead] = reporter.dead  # the record that does not parse is the routing lane's
    assert (dead.stage, dead.source_offset) == ("decode", 0)
    assert "risk_level" in dead.reason and "severe" not in dead.reason
    assert lane_.acks.position(("alerts", HOME)) == 2  # after the DLQ's flush


async def test_a_record_with_a_tenant_but_not_json_further_in_is_this_lanes_to_dead_letter() -> (
    None
):
    lane_, _, reporter = lane({})
    lane_._take([Msg(0, alert(0)[:-1] + b',"extra":"\xff"}', HOME)])
    await lane_._dead_letter_failed()
    [dead] = reporter.dead  # the routing lane found its tenant (peek_tenant) and left it
    assert (dead.stage, dead.source_offset) == ("decode", 0)
    assert dead.reason.startswith("invalid JSON: str is not valid UTF-8")


async def test_every_alert_on_its_tenant_partition_is_counted_once_here() -> None:
    from streams import metrics

    def count(result: str) -> float:
        return metrics.ALERTS.labels(result)._value.get()

    before = {r: count(r) for r in ("routed", "no_match", "unknown_tenant", "invalid")}
    lane_, _, _ = lane({TENANT: {"lake": config("lake")}})
    lane_._take([Msg(0, alert(0), HOME), Msg(1, invalid_alert(1), HOME)])
    stranger = next(t for t in (f"t{i}" for i in range(99)) if tenant_partition(t, 4) == HOME)
    lane_._take([Msg(2, alert(2, stranger), HOME), Msg(3, b"{}", HOME)])
    other = (HOME + 1) % PARTITIONS
    lane_.acks.reset({("alerts", other): 0})
    lane_._take([Msg(0, alert(3), other)])  # counted where the detour brings it
    after = {r: count(r) - n for r, n in before.items()}
    assert after == {"routed": 1, "no_match": 0, "unknown_tenant": 1, "invalid": 1}
