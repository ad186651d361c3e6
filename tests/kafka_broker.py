"""Pytest plugin: a real Kafka broker for integration tests, on any machine.

Listed in ``pytest_plugins`` from tests/conftest.py. The broker is chosen in the order that
suits every machine (see /work/shared/KAFKA-LOCAL.md): an existing one from
``KAFKA_BOOTSTRAP_SERVERS``; else testcontainers when a Docker engine answers; else a local
JVM broker assembled from Maven Central jars (dev/kafka_local.py).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DEV_DIR = REPO_ROOT / "dev"


def _docker_engine_answers() -> bool:
    """A docker CLI or SDK alone is not enough; only a ping proves an engine is there."""
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _local_kafka_class() -> Any:
    """Import LocalKafka from dev/, which is a script folder rather than a package."""
    if str(DEV_DIR) not in sys.path:
        sys.path.insert(0, str(DEV_DIR))
    from kafka_local import LocalKafka

    return LocalKafka


def wait_for_broker(bootstrap: str, timeout: float = 60) -> None:
    """Block until an admin client gets cluster metadata with at least one broker."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if admin.list_topics(timeout=5).brokers:
                return
        except Exception as exc:  # KafkaException while the broker is still coming up
            last_error = exc
        time.sleep(0.5)
    raise TimeoutError(f"no Kafka broker answered at {bootstrap} within {timeout}s: {last_error}")


def warm_group_coordinator(bootstrap: str, timeout: float = 15) -> bool:
    """Best effort: get __consumer_offsets created and loaded before the first test's consumer.

    On a fresh broker the first JoinGroup gets COORDINATOR_LOAD_IN_PROGRESS and librdkafka
    backs off ~3 s; paying that here once keeps test timings honest and deterministic.
    """
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            group = "_kafka_broker_fixture_warmup"
            admin.describe_consumer_groups([group], request_timeout=5)[group].result()
            return True
        except Exception:  # NOT_COORDINATOR / COORDINATOR_LOAD_IN_PROGRESS while loading
            time.sleep(0.2)
    return False


def create_topics(
    bootstrap: str,
    topics: dict[str, int],
    config: dict[str, dict[str, str]] | None = None,
    timeout: float = 30,
) -> None:
    """Create topics (name -> partitions), tolerate existing ones, wait until all have leaders.

    Waiting matters: a producer or consumer started right after CreateTopics can otherwise
    see UNKNOWN_TOPIC_OR_PART or a partial partition list and flake.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    config = config or {}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    # No replication_factor: use the broker default, so this works on single- and multi-node
    # clusters alike.
    new_topics = [
        NewTopic(name, num_partitions=partitions, config=dict(config.get(name, {})))
        for name, partitions in topics.items()
    ]
    futures = admin.create_topics(new_topics, operation_timeout=timeout, request_timeout=timeout)
    expected: dict[str, int] = {}
    for name, future in futures.items():
        try:
            future.result()
            expected[name] = topics[name]
        except KafkaException as exc:
            error = exc.args[0]
            if not (
                isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS
            ):
                raise
            expected[name] = 1  # pre-existing: accept whatever partition count it has

    deadline = time.monotonic() + timeout
    pending = dict(expected)
    while pending:
        metadata = admin.list_topics(timeout=10)
        for name, minimum in list(pending.items()):
            topic = metadata.topics.get(name)
            if (
                topic is not None
                and topic.error is None
                and len(topic.partitions) >= minimum
                and all(p.error is None and p.leader >= 0 for p in topic.partitions.values())
            ):
                del pending[name]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not ready after {timeout}s: {sorted(pending)}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a real broker; whatever this fixture started, it stops."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if configured:
        wait_for_broker(configured)
        yield configured
        return

    if _docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        container = KafkaContainer()
        container.start()
        try:
            bootstrap: str = container.get_bootstrap_server()
            wait_for_broker(bootstrap)
            warm_group_coordinator(bootstrap)
            yield bootstrap
        finally:
            container.stop()
        return

    broker = _local_kafka_class()()
    try:
        bootstrap = broker.start()
        wait_for_broker(bootstrap)
        warm_group_coordinator(bootstrap)
        yield bootstrap
    finally:
        broker.stop()
