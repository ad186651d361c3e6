"""The routing lane: every alert to each matching per-alert integration of its tenant, as
one delivery record each (the per-alert sink agents read them).

It also sends an alert read on a partition its tenant's configs are not on (a producer
with another partitioner) to the detour topic on the right partition, with its origin,
and dead-letters what cannot be decoded. Batching integrations are the batch lane's
(streams/batch_lane.py).

Delivery and detour records go through a strict librdkafka producer and the DLQ through
faust's; the group `<app_id>-routing` is committed only once all of them are on the
broker, and a record the broker refused sends the lane back to its last commit (read
again, routed again: at least once). Reading, positions and commits: streams/lane.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Protocol

from faust.types import TableT

from schemas.codec import DecodeError, decode_alert
from streams import metrics
from streams.agents.router import RouteRules, delivery_record, detour_headers, tenant_partition
from streams.delivery import Reporter
from streams.lane import Lane, produced_at
from streams.settings import Settings

__all__ = ["Outbox", "RoutingLane"]

log = logging.getLogger(__name__)


class Outbox(Protocol):
    """Where the lane's records go (a strict `DirectProducer` in production)."""

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        *,
        partition: int = -1,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp_ms: int = 0,
    ) -> None: ...

    async def flush(self) -> None: ...


class RoutingLane(Lane):
    name = "routing lane"
    # It only decodes and produces: a small read-ahead keeps up (fan-out needs ~3 MB/s).
    prefetch_kb = 2 * 1024

    def __init__(
        self,
        settings: Settings,
        table: TableT,
        rules: RouteRules,
        per_alert_types: Collection[str],
        reporter: Reporter,
        outbox: Outbox,
        flush_producer: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__(
            settings,
            table,
            rules,
            reporter,
            group=settings.routing_lane_group,
            flushes=[outbox.flush, flush_producer],
        )
        self.outbox = outbox
        self.delivery_topics = {kind: settings.delivery_topic(kind) for kind in per_alert_types}
        self._routed = {kind: metrics.ROUTED.labels(kind) for kind in per_alert_types}
        self._alerts = {
            r: metrics.ALERTS.labels(r) for r in ("routed", "no_match", "unknown_tenant", "invalid")
        }

    def _take_one(self, msg: Any) -> None:
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        tp = (topic, partition)
        if self.acks.position(tp) is None:
            return  # not (or no longer) assigned
        # Done once read: what it makes is flushed before any commit (`Lane._commit`).
        self.acks.read(tp, offset, 0)
        headers, value = msg.headers(), msg.value()
        try:
            alert = decode_alert(value, headers)
        except DecodeError as exc:
            self._alerts["invalid"].inc()
            log.warning("undecodable alert at %s[%d]@%d: %s", topic, partition, offset, exc)
            self._dead_letter(msg, str(exc), "decode")
            return
        entries = self.table.get(alert.tenant_id)
        route = self.rules.route(topic, partition, offset, headers, alert, entries)
        if route is None:
            # Sent on to where its configs are, remembering where it came from (that,
            # not the detour, names it).
            _, stamp_ms = produced_at(msg)
            self.outbox.send(
                self.rules.detour_topic,
                alert.tenant_id.encode(),
                value,
                partition=tenant_partition(alert.tenant_id, self.rules.partitions),
                headers=detour_headers(headers, topic, partition, offset),
                timestamp_ms=stamp_ms,
            )
            return
        if not route.configs:
            self._alerts["no_match" if entries is not None else "unknown_tenant"].inc()
            return
        self._alerts["routed"].inc()
        wire: dict[str, Any] | None = None
        for config in route.configs:
            kind = config["type"]
            out = self.delivery_topics.get(kind)
            if out is None:  # the batch lane's, or a type this build lacks
                continue
            if wire is None:  # once per alert, and only for one with per-alert routes
                wire = alert.wire()
                produced, _ = produced_at(msg)
                now = time.time()
            self.outbox.send(
                out,
                f"{alert.tenant_id}/{config['integration_id']}".encode(),
                delivery_record(alert, wire, config, route.source, now, produced, route.redrive),
            )
            self._routed[kind].inc()
