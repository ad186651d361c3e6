"""Reading never skips a record: streams/consumer.py against faust's own consumer.

The reader app (tests/integration/apps/dropping_reader.py) loses one fetched record per
partition the way faust's `getmany` does when it cuts a batch short. faust's consumer
then commits past it (the record is gone for good); ours seeks back and reads it.
Transaction markers leave real holes in the offsets: those must be read past, once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.kafka_broker import create_topics

pytestmark = pytest.mark.integration

PARTITIONS = 2
PER_PARTITION = 40
DROP = 7


def _fill(bootstrap: str, topic: str, *, transactional: bool = False) -> dict[int, int]:
    """PER_PARTITION records per partition; returns each partition's end offset."""
    from confluent_kafka import Producer

    conf = {"bootstrap.servers": bootstrap, "linger.ms": 5}
    if transactional:
        conf["transactional.id"] = f"tx-{uuid.uuid4().hex[:8]}"
    producer = Producer(conf)
    if transactional:
        producer.init_transactions(30)
    for chunk in range(4):
        if transactional:
            producer.begin_transaction()
        for partition in range(PARTITIONS):
            for n in range(PER_PARTITION // 4):
                producer.produce(topic, value=f"{chunk}-{n}".encode(), partition=partition)
        if transactional:
            producer.commit_transaction(30)
        producer.flush(30)
    from confluent_kafka import Consumer, TopicPartition

    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex}"})
    try:
        return {
            p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(PARTITIONS)
        }
    finally:
        probe.close()


def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def _read_with(
    bootstrap: str, topic: str, tmp: Path, ends: dict[int, int], *mode: str
) -> tuple[dict[int, list[int]], dict[int, int]]:
    """Run the reader until its group committed every partition's end; offsets it saw."""
    app_id = f"gapless-{uuid.uuid4().hex[:8]}"
    out = tmp / f"{app_id}.txt"
    out.touch()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.apps.dropping_reader",
            bootstrap,
            topic,
            app_id,
            str(out),
            str(DROP),
            *mode,
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp / f"{app_id}.log").open("wb"),
        # faust keeps its data directory in the working directory: the test's, not the repo's.
        cwd=tmp,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        deadline = time.monotonic() + 90
        committed: dict[int, int] = {}
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp / f"{app_id}.log").read_text()[-3000:]
            committed = _committed(bootstrap, app_id, topic)
            if all(committed.get(p, -1) >= ends[p] - 1 for p in ends):
                break
            time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(30)
    seen: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
    for line in out.read_text().splitlines():
        partition, offset = map(int, line.split())
        seen[partition].append(offset)
    return seen, committed


@pytest.fixture
def topic(kafka_bootstrap: str) -> str:
    name = f"gapless-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, {name: PARTITIONS})
    return name


def test_faust_alone_commits_past_a_record_it_never_handed_over(
    kafka_bootstrap: str, topic: str, tmp_path: Path
) -> None:
    """The failure the guard exists for, shown on faust's own consumer."""
    ends = _fill(kafka_bootstrap, topic)
    seen, committed = _read_with(kafka_bootstrap, topic, tmp_path, ends, "plain")
    for p in range(PARTITIONS):
        assert DROP not in seen[p]
        assert committed[p] >= ends[p] - 1  # ...and yet committed: lost


def test_a_record_skipped_by_the_engine_is_read_again(
    kafka_bootstrap: str, topic: str, tmp_path: Path
) -> None:
    ends = _fill(kafka_bootstrap, topic)
    seen, committed = _read_with(kafka_bootstrap, topic, tmp_path, ends)
    for p in range(PARTITIONS):
        assert sorted(set(seen[p])) == list(range(ends[p])), f"partition {p}: {seen[p]}"
        assert committed[p] == ends[p]


def test_transaction_markers_are_read_past(
    kafka_bootstrap: str, topic: str, tmp_path: Path
) -> None:
    """Each committed transaction leaves a one-offset hole (its marker): a real gap."""
    ends = _fill(kafka_bootstrap, topic, transactional=True)
    seen, committed = _read_with(kafka_bootstrap, topic, tmp_path, ends)
    for p in range(PARTITIONS):
        assert len(set(seen[p])) == PER_PARTITION, f"partition {p}: {seen[p]}"
        # The last marker has no record after it to commit: the end or one short of it.
        assert committed[p] >= ends[p] - 1
