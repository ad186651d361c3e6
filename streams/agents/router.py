"""The router: every alert to each matching integration of its tenant, one record each."""

from __future__ import annotations

import base64
import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka.partitioner import murmur2
from faust.types import EventT, StreamT, TableT

from schemas.codec import DecodeError, decode_alert
from schemas.models import RISK_ORDER, Alert, DeadLetter, idempotency_key
from streams import metrics
from streams.delivery import Reporter
from streams.reporter import RecordTopic
from streams.topics import Topics
from streams.wire import dumps

__all__ = [
    "ONLY_HEADER",
    "REDRIVE_HEADER",
    "SOURCE_HEADER",
    "Route",
    "RouteRules",
    "make_router",
    "matching",
    "tenant_partition",
]

SOURCE_HEADER = "x-alertrelay-source"  # "<topic>/<partition>/<offset>" of the original
ONLY_HEADER = "x-alertrelay-only"  # replay/redrive to this integration id only
REDRIVE_HEADER = "x-alertrelay-redrive"  # from the DLQ: known not to be delivered

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=65536)
def tenant_partition(tenant_id: str, partitions: int) -> int:
    """Where Kafka's default (murmur2) partitioner puts a tenant: where its configs live.
    (Cached: aiokafka's murmur2 is pure Python and every alert asks.)"""
    return int(murmur2(tenant_id.encode("utf-8")) & 0x7FFFFFFF) % partitions


# Risk levels by their wire value: the table holds configs as plain JSON values.
_LEVEL = {level.value: order for level, order in RISK_ORDER.items()}


def _header_items(headers: Any) -> list[tuple[str, bytes]]:
    if not headers:
        return []
    return list(headers.items()) if isinstance(headers, dict) else list(headers)


def _header(headers: Any, wanted: str) -> bytes | None:
    for name, value in _header_items(headers):
        if name == wanted and value:
            return bytes(value)
    return None


def _source_of(topic: str, partition: int, offset: int, headers: Any) -> tuple[str, int, int]:
    """The original location of an alert that took the detour or is replayed (its
    source header), else where it was read. Callers trust the header only on the
    internal topics: on the alerts topic it could be anything a producer chose to send.
    """
    for name, value in _header_items(headers):
        if name == SOURCE_HEADER and value:
            try:
                src_topic, _, src_offset = value.decode().rpartition("/")
                src_topic, _, src_partition = src_topic.rpartition("/")
                return src_topic, int(src_partition), int(src_offset)
            except (UnicodeDecodeError, ValueError):
                break
    return topic, partition, offset


@dataclass(frozen=True, slots=True)
class Route:
    """Where one alert goes: the configs it matches, and the location that names it."""

    source: tuple[str, int, int]
    configs: list[dict[str, Any]]
    redrive: bool


@dataclass(frozen=True)
class RouteRules:
    """What deciding a route needs besides the alert; the router and the batch lane
    (streams/lane.py) decide alike."""

    partitions: int
    detour_topic: str
    replay_topic: str

    def route(
        self,
        topic: str,
        partition: int,
        offset: int,
        headers: Any,
        alert: Alert,
        entries: dict[str, Any] | None,
    ) -> Route | None:
        """None: read on a partition its tenant's configs are not on (the router sends
        it to the detour topic, where it is read again with its origin)."""
        trusted = topic == self.detour_topic or topic == self.replay_topic
        source = _source_of(topic, partition, offset, headers) if trusted else None
        if source is None and partition != tenant_partition(alert.tenant_id, self.partitions):
            return None
        configs = matching(entries, alert.event_type, alert.risk_level)
        redrive = False
        if topic == self.replay_topic:
            only = _header(headers, ONLY_HEADER)
            if only is not None:
                configs = [c for c in configs if c["integration_id"].encode() == only]
            redrive = _header(headers, REDRIVE_HEADER) is not None
        return Route(source or (topic, partition, offset), configs, redrive)


def matching(entries: dict[str, Any] | None, alert_event: str, risk: str) -> list[dict[str, Any]]:
    """Configs (as stored) of enabled integrations whose filters let this alert through."""
    if not entries:
        return []
    level = _LEVEL[risk]
    out = []
    for entry in entries.values():
        config = entry["config"]
        if (
            config is not None
            and config["enabled"]
            and alert_event in config["event_types"]
            and _LEVEL[config["min_risk_level"]] <= level
        ):
            out.append(config)
    return out


def make_router(
    topics: Topics,
    table: TableT,
    reporter: Reporter,
    rules: RouteRules,
    delivery_out: Mapping[str, RecordTopic],
) -> Any:
    """The router agent. `delivery_out` are the delivery topics it writes to, by type
    (per-alert types only: the batching ones are the batch lane's, streams/lane.py)."""

    async def dead(event: EventT, reason: str) -> None:
        msg = event.message
        metrics.ALERTS.labels("invalid").inc()
        metrics.DLQ.labels("-", "decode").inc()
        log.warning(
            "undecodable alert at %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, reason
        )
        await reporter.dead_letter(
            DeadLetter(
                reason=reason,
                stage="decode",
                source_topic=msg.topic,
                source_partition=msg.partition,
                source_offset=msg.offset,
                at=time.time(),
                payload_b64=base64.b64encode((msg.value or b"")[: 64 * 1024]).decode() or None,
            )
        )

    async def route(stream: StreamT[Any]) -> None:
        async for event in stream.events():
            msg = event.message
            try:
                alert = decode_alert(msg.value, msg.headers)
            except DecodeError as exc:
                await dead(event, str(exc))
                continue
            entries = table.get(alert.tenant_id)
            plan = rules.route(msg.topic, msg.partition, msg.offset, msg.headers, alert, entries)
            if plan is None:
                # Produced with another partitioner: send it to where its configs are,
                # remembering where it came from (that, not the detour, names it).
                headers = [
                    *_header_items(msg.headers),
                    (SOURCE_HEADER, f"{msg.topic}/{msg.partition}/{msg.offset}".encode()),
                ]
                topics.alerts_by_tenant.send_soon(
                    key=alert.tenant_id.encode(),
                    value=msg.value,
                    partition=tenant_partition(alert.tenant_id, rules.partitions),
                    headers=headers,
                    timestamp=msg.timestamp,
                    force=True,
                )
                continue
            if not plan.configs:
                metrics.ALERTS.labels("no_match" if entries is not None else "unknown_tenant").inc()
                continue
            metrics.ALERTS.labels("routed").inc()
            src_topic, src_partition, src_offset = plan.source
            wire: dict[str, Any] | None = None
            now = time.time()
            for config in plan.configs:
                kind = config["type"]
                out = delivery_out.get(kind)
                if out is None:  # the batch lane's, or a type this build lacks
                    continue
                if wire is None:
                    wire = alert.wire()
                record = {
                    "alert": wire,
                    "integration": config,
                    "config_version": config["version"],
                    "idempotency_key": idempotency_key(alert.alert_id, config["integration_id"]),
                    "source_topic": src_topic,
                    "source_partition": src_partition,
                    "source_offset": src_offset,
                    "routed_at": now,
                    "produced_at": msg.timestamp,
                    "redrive": plan.redrive,
                }
                out.send_soon(
                    key=f"{alert.tenant_id}/{config['integration_id']}".encode(),
                    value=dumps(record),
                    force=True,
                )
                metrics.ROUTED.labels(kind).inc()

    return route
