"""The routing lane without a broker: the records it writes for each alert (delivery,
detour, dead letter), which partitions it reads, and that a record the broker refused
keeps its commit back and makes it read again."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaException, TopicPartition

from streams import lane as lane_module
from streams.agents.router import ONLY_HEADER, SOURCE_HEADER, RouteRules, tenant_partition
from streams.routing_lane import RoutingLane
from streams.settings import Settings
from tests.fakes.kafka_message import STAMP_MS, FakeConsumer, Msg, alert_json, table_entry
from tests.fakes.reporter import Recorder

PARTITIONS = 4
TENANT = "acme"
HOME = tenant_partition(TENANT, PARTITIONS)
SETTINGS = Settings()


class Outbox:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.refuse = False

    def send(self, topic: str, key: bytes | None, value: bytes, **kw: Any) -> None:
        self.sent.append({"topic": topic, "key": key, "value": value, **kw})

    async def flush(self) -> None:
        if self.refuse:
            raise KafkaException("1 records were not written: not committing")


def alert(n: int, tenant: str = TENANT) -> bytes:
    return alert_json(n, tenant)


def config(iid: str, kind: str) -> dict[str, Any]:
    return table_entry(iid, TENANT, kind, 3, {"url": "https://example.com/x"})


TABLE = {
    TENANT: {
        "hook": config("hook", "webhook"),
        "chat": config("chat", "slack"),
        "lake": config("lake", "s3"),
    }
}


def routing_lane(table: dict[str, Any] | None = None) -> tuple[RoutingLane, Outbox, Recorder]:
    outbox, reporter = Outbox(), Recorder()
    flushed: list[int] = []

    async def flush_producer() -> None:
        flushed.append(1)

    rules = RouteRules(PARTITIONS, "detour", "replay")
    lane = RoutingLane(
        SETTINGS,
        TABLE if table is None else table,  # type: ignore[arg-type]
        rules,
        ["webhook", "slack"],
        reporter,
        outbox,
        flush_producer,
    )
    lane.acks.reset({("alerts", p): 0 for p in range(PARTITIONS)} | {("replay", HOME): 0})
    return lane, outbox, reporter


def test_an_alert_becomes_one_delivery_record_per_per_alert_integration() -> None:
    lane, outbox, _ = routing_lane()
    lane._take([Msg(7, alert(7), HOME)])
    assert [(s["topic"], s["key"]) for s in outbox.sent] == [
        (SETTINGS.delivery_topic("webhook"), f"{TENANT}/hook".encode()),
        (SETTINGS.delivery_topic("slack"), f"{TENANT}/chat".encode()),
    ]  # the S3 integration is the batch lane's
    record = orjson.loads(outbox.sent[0]["value"])
    assert record["alert"]["alert_id"] == "a-7"
    assert record["integration"]["integration_id"] == "hook"
    assert record["config_version"] == 3
    assert (record["source_topic"], record["source_partition"], record["source_offset"]) == (
        "alerts",
        HOME,
        7,
    )
    assert record["produced_at"] == STAMP_MS / 1000
    assert record["redrive"] is False
    assert lane.acks.position(("alerts", HOME)) == 8  # committed after the flush


def test_configs_are_looked_up_once_per_read_and_again_in_the_next() -> None:
    table: dict[str, Any] = {TENANT: {"lake": config("lake", "s3")}}
    lane, outbox, _ = routing_lane(table)
    lane._take([Msg(0, alert(0), HOME), Msg(1, alert(1), HOME)])
    assert outbox.sent == []  # batching only: the batch lane's
    table[TENANT] = {**table[TENANT], "hook": config("hook", "webhook")}
    lane._take([Msg(2, alert(2), HOME)])
    assert [s["key"] for s in outbox.sent] == [f"{TENANT}/hook".encode()]


def test_a_replayed_alert_goes_only_to_the_integration_it_names_with_its_origin() -> None:
    lane, outbox, _ = routing_lane()
    headers = [(SOURCE_HEADER, f"alerts/{HOME}/41".encode()), (ONLY_HEADER, b"chat")]
    lane._take([Msg(0, alert(1), HOME, topic="replay", headers=headers)])
    assert [s["key"] for s in outbox.sent] == [f"{TENANT}/chat".encode()]
    record = orjson.loads(outbox.sent[0]["value"])
    assert (record["source_topic"], record["source_offset"]) == ("alerts", 41)


def test_an_alert_on_another_partition_is_sent_on_to_its_tenants_with_its_origin() -> None:
    lane, outbox, _ = routing_lane()
    other = (HOME + 1) % PARTITIONS
    lane._take([Msg(5, alert(5), partition=other, headers=[("trace", b"x")])])
    [detour] = outbox.sent
    assert detour["topic"] == "detour" and detour["partition"] == HOME
    assert detour["key"] == TENANT.encode() and detour["value"] == alert(5)
    assert detour["headers"] == [("trace", b"x"), (SOURCE_HEADER, f"alerts/{other}/5".encode())]
    assert detour["timestamp_ms"] == STAMP_MS
    assert lane.acks.position(("alerts", other)) == 6


async def test_an_undecodable_alert_is_dead_lettered_and_the_lane_goes_on() -> None:
    lane, outbox, reporter = routing_lane()
    lane._take([Msg(0, b"{not json", HOME), Msg(1, alert(1), HOME)])
    await lane._dead_letter_failed()
    [dead] = reporter.dead
    assert (dead.stage, dead.source_topic, dead.source_offset) == ("decode", "alerts", 0)
    assert dead.reason and dead.payload_b64
    assert len(outbox.sent) == 2  # the next alert was routed
    assert lane.acks.position(("alerts", HOME)) == 2


def test_alerts_of_unknown_tenants_or_matching_nothing_write_nothing() -> None:
    lane, outbox, _ = routing_lane({})
    lane._take([Msg(0, alert(0), HOME)])
    assert outbox.sent == []
    assert lane.acks.position(("alerts", HOME)) == 1


async def test_a_refused_record_keeps_the_commit_back_and_the_lane_reads_again() -> None:
    lane, outbox, _ = routing_lane()
    lane._consumer = consumer = FakeConsumer()
    lane._take([Msg(0, alert(0), HOME), Msg(1, alert(1), HOME)])
    outbox.refuse = True
    await lane._commit()
    assert consumer.commits == []
    assert lane._reread
    await lane._read_again()
    assert {(tp.topic, tp.partition, tp.offset) for tp in consumer.assigned[-1]} >= {
        ("alerts", HOME, 0)
    }
    outbox.refuse = False
    lane._take([Msg(0, alert(0), HOME), Msg(1, alert(1), HOME)])
    await lane._commit()
    [offsets] = consumer.commits
    assert ("alerts", HOME, 2) in {(tp.topic, tp.partition, tp.offset) for tp in offsets}


@pytest.mark.parametrize("hangs", ["flush", "commit"])
async def test_a_commit_that_hangs_is_given_up_and_the_next_one_commits(
    hangs: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lane_module, "COMMIT_GIVE_UP_SECONDS", 0.2)
    lane, outbox, _ = routing_lane()
    lane._consumer = consumer = FakeConsumer()
    released = threading.Event()
    answered = consumer.commit

    async def hanging_flush() -> None:
        await asyncio.sleep(3600)

    def hanging_commit(offsets: list[TopicPartition], asynchronous: bool) -> None:
        released.wait(5)

    if hangs == "flush":
        monkeypatch.setattr(outbox, "flush", hanging_flush)
        lane._flushes = (outbox.flush,)
    else:
        monkeypatch.setattr(consumer, "commit", hanging_commit)
    lane._take([Msg(0, alert(0), HOME), Msg(1, alert(1), HOME)])
    await asyncio.wait_for(lane._commit(), 2)  # given up: the lane is not held
    assert consumer.commits == [] and lane.acks.last_committed()[("alerts", HOME)] == 0
    released.set()
    lane._flushes = (Outbox().flush,)
    monkeypatch.setattr(consumer, "commit", answered)
    await lane._commit()  # the positions were kept: the next commit takes them
    [offsets] = consumer.commits
    assert ("alerts", HOME, 2) in {(tp.topic, tp.partition, tp.offset) for tp in offsets}


async def test_a_lane_that_does_not_take_its_new_partitions_says_what_it_waits_for(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(lane_module, "SLOW_ASSIGNMENT_SECONDS", 0.1)
    lane, _, _ = routing_lane()
    lane.on_assigned([TopicPartition(SETTINGS.configs_by_tenant_topic, 1)])
    lane._phase = "committing before it takes the new partitions"
    watch = asyncio.create_task(lane._watch_assignment())
    await asyncio.sleep(0.25)
    assert any(
        "routing lane has not taken its new partitions" in r.getMessage()
        and "committing before it takes the new partitions" in r.getMessage()
        for r in caplog.records
    )
    lane._consumer = FakeConsumer()
    await lane._apply(frozenset({("alerts", 1)}))  # taken: no more warnings
    assert lane._wanted_since is None
    caplog.clear()
    await asyncio.sleep(0.15)
    watch.cancel()
    assert not caplog.records


async def test_partitions_assigned_while_a_revocation_is_applied_are_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A revocation, then the rebalance's new partitions before the lane has let go of the
    old ones: the lane takes the new ones (it used to wait for a signal it had cleared,
    and never read again: the rebalance test's rare stall)."""
    unassigning, let_go = threading.Event(), threading.Event()

    class SlowToLetGo(FakeConsumer):
        def unassign(self) -> None:
            unassigning.set()
            let_go.wait(5)
            super().unassign()

    consumer = SlowToLetGo()
    monkeypatch.setattr(lane_module, "Consumer", lambda *a, **kw: consumer)
    lane, _, _ = routing_lane()
    monkeypatch.setattr(lane, "_earlier_positions", dict)
    home = SETTINGS.configs_by_tenant_topic
    run = asyncio.create_task(lane.run())

    async def until(done: Any) -> None:
        for _ in range(300):  # 3 s
            if done():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("not within 3 s")

    try:
        lane.on_assigned([TopicPartition(home, HOME)])
        await until(lambda: ("alerts", HOME) in lane._assigned)
        lane.on_revoked([TopicPartition(home, HOME)])
        await until(unassigning.is_set)
        lane.on_assigned([TopicPartition(home, 1)])  # while the lane still lets go
        let_go.set()
        await until(lambda: ("alerts", 1) in lane._assigned)
        assert lane._wanted_since is None
        assert ("alerts", 1) in {(tp.topic, tp.partition) for tp in consumer.assigned[-1]}
    finally:
        let_go.set()
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run


def test_the_lane_reads_the_alerts_partitions_of_the_config_partitions_it_holds() -> None:
    lane, _, _ = routing_lane()
    home = SETTINGS.configs_by_tenant_topic
    lane.on_assigned([TopicPartition(home, 1), TopicPartition(home, 3), TopicPartition("x", 0)])
    assert lane._wanted == {(t, p) for t in ("alerts", "detour", "replay") for p in (1, 3)}


@pytest.mark.parametrize(
    ("batches", "expected"),
    [
        ([[1, 2]], [(5000, 0)]),  # what is fetched already, without waiting
        ([[], [1], [2, 3]], [(5000, 0), (1, 0.1), (4999, 0)]),  # waits for one only
    ],
)
def test_a_read_takes_what_is_there_and_waits_only_for_a_first_record(
    batches: list[list[Any]], expected: list[tuple[int, float]]
) -> None:
    lane, _, _ = routing_lane()
    records = [r for batch in batches for r in batch]
    lane._consumer = consumer = FakeConsumer(batches)
    assert lane._read() == records
    assert consumer.reads == expected


def test_a_full_read_ahead_delays_the_next_fetch_briefly_not_librdkafka_s_second() -> None:
    """librdkafka's default `fetch.queue.backoff.ms` (1 s) capped a lane at ~11 000
    alerts/s in the batching benchmark (bench/analysis.md); 10 ms gives ~20 000/s."""
    lane, _, _ = routing_lane()
    config = lane._config()
    assert config["fetch.queue.backoff.ms"] == 10
    assert config["queued.max.messages.kbytes"] == 2048  # it only decodes and produces
    assert config["group.id"] == SETTINGS.routing_lane_group


def invalid_alert(n: int) -> bytes:
    """Parses and names its tenant, but is not an alert (an unknown risk level)."""
    return alert(n).replace(b'"high"', b'"severe"')


async def test_an_invalid_alert_with_a_tenant_on_its_partition_is_left_to_the_batch_lane() -> None:
    lane, outbox, reporter = routing_lane()
    missing_title = orjson.dumps({**orjson.loads(alert(1)), "title": ""})
    not_utf8 = alert(2)[:-1] + b',"extra":"\xff"}'  # its tenant is found (peek_tenant)
    lane._take(
        [Msg(0, invalid_alert(0), HOME), Msg(1, missing_title, HOME), Msg(2, not_utf8, HOME)]
    )
    await lane._dead_letter_failed()
    assert outbox.sent == [] and reporter.dead == []  # validated and dead-lettered there
    assert lane.acks.position(("alerts", HOME)) == 3


async def test_records_without_a_tenant_and_misplaced_invalid_alerts_are_dead_lettered_here() -> (
    None
):
    lane, outbox, reporter = routing_lane()
    other = (HOME + 1) % PARTITIONS
    no_tenant = orjson.dumps({**orjson.loads(alert(1)), "tenant_id": 7})
    lane._take([Msg(0, b"[]", HOME), Msg(1, no_tenant, HOME), Msg(2, invalid_alert(2), other)])
    await lane._dead_letter_failed()
    assert [(d.stage, d.source_partition, d.source_offset) for d in reporter.dead] == [
        ("decode", HOME, 0),
        ("decode", HOME, 1),
        ("decode", other, 2),
    ]
    assert "tenant_id" in reporter.dead[1].reason
    assert outbox.sent == []  # the misplaced one is not sent on to the detour


def test_an_alert_for_batching_integrations_only_is_not_parsed_here(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streams import routing_lane as module

    lane, outbox, _ = routing_lane({TENANT: {"lake": config("lake", "s3")}})
    called: list[object] = []
    for name in ("parse_alert", "validate_alert", "decode_alert"):
        monkeypatch.setattr(module, name, called.append)
    lane._take([Msg(0, alert(0), HOME)])
    assert called == [] and outbox.sent == []  # only its tenant read: the batch lane validates


async def test_a_commit_runs_beside_reading_and_commits_what_was_done_when_it_began() -> None:
    """The flush before a commit waits for the broker; the lane reads on meanwhile
    (streams/lane.py `_commit_soon`), and a second commit waits for the first."""
    import asyncio

    lane, outbox, _ = routing_lane()
    lane._consumer = consumer = FakeConsumer()
    release = asyncio.Event()
    flushing: list[int] = []

    async def slow_flush() -> None:
        flushing.append(1)
        await release.wait()

    lane._flushes = (slow_flush,)
    lane._take([Msg(0, alert(0), HOME), Msg(1, alert(1), HOME)])
    lane._commit_soon()
    await asyncio.sleep(0)
    assert flushing == [1]
    lane._take([Msg(2, alert(2), HOME)])  # read and taken while the flush waits
    lane._commit_soon()  # one at a time: no second commit yet
    second = asyncio.create_task(lane._commit())
    await asyncio.sleep(0.01)
    assert flushing == [1] and consumer.commits == []
    release.set()
    await second
    first, then = consumer.commits
    assert [(tp.partition, tp.offset) for tp in first if tp.topic == "alerts"] == [(HOME, 2)]
    assert [(tp.partition, tp.offset) for tp in then if tp.topic == "alerts"] == [(HOME, 3)]
    assert len(outbox.sent) == 6


async def test_what_was_routed_is_committed_at_revocation_before_the_new_owner_reads() -> None:
    lane, _, _ = routing_lane()
    lane._consumer = consumer = FakeConsumer()
    home = SETTINGS.configs_by_tenant_topic
    lane._assigned = frozenset({("alerts", HOME)})
    lane._take([Msg(0, alert(0), HOME), Msg(1, alert(1), HOME)])
    lane.on_revoked([TopicPartition(home, HOME)])
    await lane.commit_revoked()  # awaited inside faust's rebalance (streams/pipeline.py)
    [offsets] = consumer.commits
    assert ("alerts", HOME, 2) in {(tp.topic, tp.partition, tp.offset) for tp in offsets}
