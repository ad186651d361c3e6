"""Wires one worker: topics, the config table, and every agent, on a fresh faust App."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TableT

from sinks.base import BatchingSink, PerAlertSink, Sink
from sinks.registry import SinkContext, build_sinks
from sinks.secretbox import SecretBox
from streams.agents.config import make_config_agents
from streams.agents.health import make_health_agent
from streams.agents.retry import make_parker, make_retry_agent
from streams.agents.router import RouteRules
from streams.agents.sinks import BatchingAgent, PerAlertDeliveries
from streams.api.integrations import IntegrationService
from streams.api.views import register_api, register_views
from streams.app import create_app
from streams.batch_lane import BatchLane
from streams.delivery_lane import DeliveryLane
from streams.direct_producer import DirectProducer
from streams.lane import Lane
from streams.recovery_watch import watch_recovery
from streams.reporter import KafkaReporter
from streams.routing_lane import RoutingLane
from streams.settings import Settings
from streams.tables import declare_config_table, declare_health_table
from streams.topics import Topics

__all__ = ["Pipeline", "build_pipeline"]

log = logging.getLogger(__name__)

REVOKED_COMMIT_SECONDS = 5.0


@dataclass
class Pipeline:
    app: faust.App
    topics: Topics
    table: TableT
    sinks: dict[str, Sink[Any]]
    box: SecretBox


def build_pipeline(settings: Settings, partitions: int, box: SecretBox) -> Pipeline:
    app = create_app(settings, partitions)
    ctx = SinkContext.from_env(settings.batch_limits)
    sinks = build_sinks(ctx)
    topics = Topics.declare(app, settings, partitions, sorted(sinks))
    table = declare_config_table(app, partitions)
    health = declare_health_table(app, partitions)
    # Status records (one per attempt) go through librdkafka; faust flushes that producer
    # before every commit (streams/direct_producer.py). The routing lane's delivery
    # records have a strict producer of their own, flushed before the lane's commits.
    direct = DirectProducer(settings.bootstrap_servers, f"{settings.app_id}-status")
    routed = DirectProducer(settings.bootstrap_servers, f"{settings.app_id}-router", strict=True)
    app.extra_flushes = (direct.flush,)
    reporter = KafkaReporter(
        direct.topic(settings.topic_status), topics.dlq, direct.topic(settings.health_topic)
    )

    intake, apply = make_config_agents(topics, table, reporter, box)
    app.agent(topics.integrations, name="config-intake")(intake)
    app.agent(topics.configs_by_tenant, name="config-apply")(apply)
    # The alerts topics are read by two lanes beside faust (streams/lane.py): one writes
    # delivery records for per-alert types, the other buffers alerts for batching ones.
    # Per-alert types' delivery topics are read by a lane each (streams/delivery_lane.py).
    rules = RouteRules(partitions, settings.alerts_by_tenant_topic, settings.replay_topic)
    per_alert = {k: s for k, s in sinks.items() if isinstance(s, PerAlertSink)}
    per_alert_types = sorted(per_alert)
    batching = {k: s for k, s in sinks.items() if isinstance(s, BatchingSink)}
    park = make_parker(topics, settings.retry_tiers)
    # Each per-alert type's delivery topic is read by a lane of its own; what a delivery
    # writes (status, retry and dead letter records) is flushed before the lane commits.
    delivery_lanes = [
        DeliveryLane(
            settings,
            table,
            rules,
            PerAlertDeliveries(per_alert[kind], settings, reporter, box, park),
            reporter,
            (direct.flush, app.producer.flush),
        )
        for kind in per_alert_types
    ]
    lanes = (
        RoutingLane(settings, table, rules, per_alert_types, reporter, routed, app.producer.flush),
        BatchLane(settings, table, rules, batching, reporter, box, app.producer.flush),
        *delivery_lanes,
    )
    for lane in lanes:
        app.task(lane.run)
    app.task(watch_recovery)  # says why, if faust's table recovery stalls

    @app.on_rebalance_complete.connect  # type: ignore[untyped-decorator]
    async def _rebalanced(_app: Any, **_kw: Any) -> None:
        for lane in lanes:
            lane.on_assigned(app.consumer.assignment())

    # Fed by the reporter with the status records that can change health, not all of them.
    app.agent(topics.health, name="health")(make_health_agent(health))
    for tier, topic in topics.retry.items():
        app.agent(topic, name=f"retry-{tier}s")(make_retry_agent(topics, tier))

    # Batching types' delivery topics (records routed before the batch lane existed) are
    # emptied by faust agents that hold buffers between events: told when partitions are
    # revoked, so that they drop them for the new owner.
    holders: list[BatchingAgent] = []
    for kind, sink in batching.items():
        holder = BatchingAgent(sink, settings, reporter, box)
        holders.append(holder)
        app.agent(topics.delivery[kind], name=f"sink-{kind}")(holder.agent)
        app.timer(min(1.0, max(0.05, sink.limits.max_age / 4)), name=f"flush-{kind}")(holder.tick)

    @app.on_partitions_revoked.connect  # type: ignore[untyped-decorator]
    async def _revoked(_app: Any, revoked: Any, **_kw: Any) -> None:
        for holder in holders:
            try:
                holder.on_revoked(revoked)
            except Exception:  # faust would crash the worker on an exception here
                log.exception("%s: handling revoked partitions failed", holder.sink.type_name)
        for lane in lanes:
            try:
                lane.on_revoked(revoked)
            except Exception:  # faust would crash the worker on an exception here
                log.exception("%s: handling revoked partitions failed", lane.name)
        await _commit_revoked(lanes)

    @app.on_before_shutdown.connect  # type: ignore[untyped-decorator]
    async def _stopping(_app: Any, **_kw: Any) -> None:
        # Before faust leaves the group (and the partitions move): as at a revocation.
        for lane in lanes:
            lane.on_stopping()
        await _commit_revoked(lanes)

    register_views(app, table)
    register_api(app, table, IntegrationService(table, topics, box, sinks, health), partitions)
    return Pipeline(app=app, topics=topics, table=table, sinks=sinks, box=box)


async def _commit_revoked(lanes: Sequence[Lane]) -> None:
    """What the lanes did with the partitions they gave up is committed before the
    rebalance goes on (their new owner starts there), within a bound: a broker that
    does not answer must not hold the rebalance up; the lanes commit again before
    reading anything."""
    commits = asyncio.gather(*(lane.commit_revoked() for lane in lanes), return_exceptions=True)
    try:
        results = await asyncio.wait_for(commits, REVOKED_COMMIT_SECONDS)
    except TimeoutError:
        log.warning("the lanes' commit at revocation took over %s s", REVOKED_COMMIT_SECONDS)
        return
    for lane, result in zip(lanes, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("%s: commit at revocation failed: %s", lane.name, result)
