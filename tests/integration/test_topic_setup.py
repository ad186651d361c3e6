"""What `prepare_topics` creates before the worker's consumers start, on a real broker."""

from __future__ import annotations

import dataclasses
import time

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from streams.settings import Settings
from streams.tables import TABLES, changelog_topic
from streams.topics import prepare_topics
from tests.harness import TopicSet

pytestmark = pytest.mark.integration


def settings_for(bootstrap: str, topics: TopicSet) -> Settings:
    return dataclasses.replace(
        Settings(),
        bootstrap_servers=bootstrap,
        app_id=topics.app_id,
        topic_alerts=topics.alerts,
        topic_integrations=topics.integrations,
        topic_status=topics.status,
        topic_dlq=topics.dlq,
    )


def test_the_tables_changelogs_exist_compacted_with_the_alerts_partitions(
    kafka_bootstrap: str,
) -> None:
    """faust would create them itself, but a consumer started before its topic existed
    never refreshes its metadata (`PartitionsMismatch` ... "0 partitions" at start-up)."""
    topics = TopicSet()
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_topics([NewTopic(topics.alerts, 3, 1)]).values():
        future.result()

    assert prepare_topics(settings_for(kafka_bootstrap, topics), ["webhook"]) == 3

    names = [changelog_topic(topics.app_id, t) for t in TABLES]
    assert names == [f"{topics.app_id}-configs-changelog", f"{topics.app_id}-health-changelog"]
    deadline = time.monotonic() + 15  # metadata of topics just created may lag
    while not set(names) <= set(existing := admin.list_topics(timeout=10).topics):
        assert time.monotonic() < deadline, f"not created: {set(names) - set(existing)}"
        time.sleep(0.2)
    for name in names:
        assert len(existing[name].partitions) == 3
        [config] = admin.describe_configs([ConfigResource("topic", name)]).values()
        assert config.result()["cleanup.policy"].value == "compact"
