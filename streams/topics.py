"""Topic names and declarations, and finding how many partitions the alerts topic has."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import faust
from faust.types import TopicT

from streams.settings import Settings
from streams.tables import TABLES, changelog_topic

__all__ = ["Topics", "prepare_topics"]

log = logging.getLogger(__name__)


def prepare_topics(settings: Settings, types: list[str], timeout: float = 30.0) -> int:
    """Create missing topics and return the partition count everything must share.

    Tables and internal topics must have exactly as many partitions as the alerts topic
    (they are co-partitioned by tenant), so an existing alerts topic decides the count.
    Everything is created here, with a replication factor of min(3, brokers), the tables'
    changelogs included: faust would create those itself, but a consumer that started
    before its own topic existed keeps its stale metadata and faust never refreshes it
    (the config agent then fails with `PartitionsMismatch` "... has 0 partitions" every
    few seconds, seen under load).
    """
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    metadata = admin.list_topics(timeout=timeout)
    existing = metadata.topics
    alerts = existing.get(settings.topic_alerts)
    partitions = settings.partitions
    if alerts is not None and alerts.error is None and alerts.partitions:
        partitions = len(alerts.partitions)
        if partitions != settings.partitions:
            log.info(
                "alerts topic %r has %d partitions: using that", settings.topic_alerts, partitions
            )
    replicas = max(1, min(3, len(metadata.brokers)))
    compacted = {"cleanup.policy": "compact"}
    wanted = {
        settings.topic_alerts: {},
        settings.topic_integrations: compacted,
        settings.topic_status: {},
        settings.topic_dlq: {},
        settings.configs_by_tenant_topic: {},
        settings.alerts_by_tenant_topic: {},
        settings.replay_topic: {},
        settings.health_topic: {},
        **{settings.delivery_topic(t): {} for t in types},
        **{settings.retry_topic(t): {} for t in settings.retry_tiers},
        **{changelog_topic(settings.app_id, t): compacted for t in TABLES},
    }
    new = [
        NewTopic(name, num_partitions=partitions, replication_factor=replicas, config=config)
        for name, config in wanted.items()
        if name not in existing
    ]
    if new:
        for name, future in admin.create_topics(new, operation_timeout=timeout).items():
            try:
                future.result()
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise SystemExit(f"cannot create topic {name}: {exc}") from None
        log.info("created topics: %s", ", ".join(t.topic for t in new))
    for name in (
        settings.configs_by_tenant_topic,
        settings.alerts_by_tenant_topic,
        settings.replay_topic,
        settings.health_topic,  # feeds the health table, co-partitioned by tenant
        *(changelog_topic(settings.app_id, t) for t in TABLES),
    ):
        topic = existing.get(name)
        if topic is not None and topic.partitions and len(topic.partitions) != partitions:
            raise SystemExit(
                f"topic {name} has {len(topic.partitions)} partitions but {settings.topic_alerts}"
                f" has {partitions}: they must match (delete {name} to have it recreated)"
            )
    return partitions


@dataclass(frozen=True)
class Topics:
    integrations: TopicT
    configs_by_tenant: TopicT
    status: TopicT
    health: TopicT
    dlq: TopicT
    delivery: dict[str, TopicT]
    retry: dict[int, TopicT]

    @classmethod
    def declare(
        cls, app: faust.App, settings: Settings, partitions: int, types: list[str]
    ) -> Topics:
        def raw(*names: str, **kw: object) -> TopicT:
            return app.topic(
                *names,
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
                **kw,  # type: ignore[arg-type]
            )

        # The alerts topics (alerts, the detour, replay) are read by the lanes
        # (streams/lane.py), not by faust.
        return cls(
            integrations=raw(settings.topic_integrations, compacting=True, deleting=False),
            configs_by_tenant=raw(settings.configs_by_tenant_topic, partitions=partitions),
            status=raw(settings.topic_status),
            health=raw(settings.health_topic, partitions=partitions),
            dlq=raw(settings.topic_dlq),
            delivery={t: raw(settings.delivery_topic(t), partitions=partitions) for t in types},
            retry={
                t: raw(settings.retry_topic(t), partitions=partitions) for t in settings.retry_tiers
            },
        )
