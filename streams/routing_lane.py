"""The routing lane: every alert to each matching per-alert integration of its tenant, as
one delivery record each (the per-alert sink agents read them).

It also sends an alert read on a partition its tenant's configs are not on (a producer
with another partitioner) to the detour topic on the right partition, with its origin,
and dead-letters what has no tenant to route by (streams/lane.py, "who dead-letters
what"). It validates only the alerts it routes, so an alert for batching integrations
only costs it a look at its tenant (`peek_tenant`). Batching integrations are the batch lane's
(streams/batch_lane.py).

Delivery and detour records go through a strict librdkafka producer and the DLQ through
faust's; the group `<app_id>-routing` is committed only once all of them are on the
broker, and a record the broker refused sends the lane back to its last commit (read
again, routed again: at least once). Reading, positions and commits: streams/lane.py.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Protocol

from faust.types import TableT

from schemas.codec import DecodeError, decode_alert, parse_alert, validate_alert
from schemas.fast_alert import peek_tenant
from streams import metrics
from streams.agents.router import (
    RouteRules,
    delivery_record,
    detour_headers,
    filters_of,
    tenant_partition,
)
from streams.delivery import Reporter
from streams.lane import Lane, produced_at
from streams.settings import Settings

__all__ = ["Outbox", "RoutingLane"]


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
        self._counts: dict[str, int] = {}  # deliveries routed per type in this read
        self._invalid_alerts = metrics.ALERTS.labels("invalid")
        # A tenant's per-alert entries, looked up once per read (the config table cannot
        # change within one `_take`); batching-only tenants' alerts stop at the lookup.
        self._entries: dict[str, dict[str, Any]] = {}

    def _take(self, messages: list[Any]) -> None:
        super()._take(messages)
        self._entries.clear()
        if self._counts:  # counted per read: a counter increment per alert costs ~1 µs
            for kind, n in self._counts.items():
                self._routed[kind].inc(n)
            self._counts.clear()

    def _take_one(self, msg: Any) -> None:
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        tp = (topic, partition)
        if not self.acks.reading(tp):
            return  # not (or no longer) assigned
        # Done once read: what it makes is flushed before any commit (`Lane._commit`).
        self.acks.read(tp, offset, 0)
        headers, value = msg.headers(), msg.value()
        try:
            tenant = peek_tenant(value, headers)
        except DecodeError as exc:  # without a tenant no other lane can take it
            self._invalid(msg, exc)
            return
        rules = self.rules
        source = rules.locate(topic, partition, offset, headers, tenant)
        if source is None:
            try:  # dead-lettered where it was read, not where the detour takes it
                decode_alert(value, headers)
            except DecodeError as exc:
                self._invalid(msg, exc)
                return
            # Sent on to where its configs are, remembering where it came from (that,
            # not the detour, names it).
            _, stamp_ms = produced_at(msg)
            self.outbox.send(
                rules.detour_topic,
                tenant.encode(),
                value,
                partition=tenant_partition(tenant, rules.partitions),
                headers=detour_headers(headers, topic, partition, offset),
                timestamp_ms=stamp_ms,
            )
            return
        # From here on the batch lane validates every alert too, counts it and
        # dead-letters it if it is invalid: this lane validates only alerts it routes.
        try:
            entries = self._entries[tenant]
        except KeyError:
            entries = self._entries[tenant] = self._per_alert_entries(tenant)
        if not entries:
            return
        try:
            data = parse_alert(value, headers)
        except DecodeError:  # the batch lane dead-letters it
            return
        filters = filters_of(data)
        if filters is None:
            return
        configs, redrive = rules.select(topic, headers, entries, *filters)
        if not configs:
            return
        try:
            alert = validate_alert(data)
        except DecodeError:
            return
        wire = alert.wire()
        produced, _ = produced_at(msg)
        now = time.time()
        topics, counts = self.delivery_topics, self._counts
        for config in configs:
            kind = config["type"]
            self.outbox.send(
                topics[kind],
                f"{tenant}/{config['integration_id']}".encode(),
                delivery_record(alert, wire, config, source, now, produced, redrive),
            )
            counts[kind] = counts.get(kind, 0) + 1

    def _per_alert_entries(self, tenant: str) -> dict[str, Any]:
        """The tenant's entries of per-alert integrations (the others: the batch lane's)."""
        entries = self.table.get(tenant) or {}
        topics = self.delivery_topics
        return {
            name: entry
            for name, entry in entries.items()
            if entry["config"] is not None and entry["config"]["type"] in topics
        }

    def _invalid(self, msg: Any, exc: DecodeError) -> None:
        self._invalid_alerts.inc()
        self._undecodable(msg, exc)
