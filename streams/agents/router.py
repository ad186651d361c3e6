"""Routing rules: which integrations of its tenant an alert goes to, where it is named
from, and the records that carry it there. The lanes (streams/lane.py) apply them."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from aiokafka.partitioner import murmur2

from schemas.models import RISK_ORDER, Alert, EventType, idempotency_key
from streams.wire import dumps

__all__ = [
    "ONLY_HEADER",
    "REDRIVE_HEADER",
    "SOURCE_HEADER",
    "Route",
    "RouteRules",
    "delivery_record",
    "detour_headers",
    "filters_of",
    "matching",
    "tenant_partition",
]

SOURCE_HEADER = "x-alertrelay-source"  # "<topic>/<partition>/<offset>" of the original
ONLY_HEADER = "x-alertrelay-only"  # replay/redrive to this integration id only
REDRIVE_HEADER = "x-alertrelay-redrive"  # from the DLQ: known not to be delivered


@functools.lru_cache(maxsize=65536)
def tenant_partition(tenant_id: str, partitions: int) -> int:
    """Where Kafka's default (murmur2) partitioner puts a tenant: where its configs live.
    (Cached: aiokafka's murmur2 is pure Python and every alert asks.)"""
    return int(murmur2(tenant_id.encode("utf-8")) & 0x7FFFFFFF) % partitions


# Risk levels by their wire value: the table holds configs as plain JSON values.
_LEVEL = {level.value: order for level, order in RISK_ORDER.items()}
_EVENTS = frozenset(event.value for event in EventType)


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
    """What deciding a route needs besides the alert and its tenant's configs."""

    partitions: int
    detour_topic: str
    replay_topic: str

    def locate(
        self, topic: str, partition: int, offset: int, headers: Any, tenant_id: str
    ) -> tuple[str, int, int] | None:
        """Where the alert is named from (its origin, for one that took the detour or is
        replayed), or None: read on a partition its tenant's configs are not on (the
        routing lane sends it to the detour topic, where it is read again)."""
        trusted = topic == self.detour_topic or topic == self.replay_topic
        source = _source_of(topic, partition, offset, headers) if trusted else None
        if source is None and partition != tenant_partition(tenant_id, self.partitions):
            return None
        return source or (topic, partition, offset)

    def select(
        self,
        topic: str,
        headers: Any,
        entries: dict[str, Any] | None,
        event_type: str,
        risk_level: str,
    ) -> tuple[list[dict[str, Any]], bool]:
        """The configs the alert goes to (a replay may name one) and whether it is a
        redrive. `event_type` and `risk_level` must be valid values."""
        configs = matching(entries, event_type, risk_level)
        redrive = False
        if topic == self.replay_topic:
            only = _header(headers, ONLY_HEADER)
            if only is not None:
                configs = [c for c in configs if c["integration_id"].encode() == only]
            redrive = _header(headers, REDRIVE_HEADER) is not None
        return configs, redrive

    def route(
        self,
        topic: str,
        partition: int,
        offset: int,
        headers: Any,
        alert: Alert,
        entries: dict[str, Any] | None,
    ) -> Route | None:
        """`locate` and `select` for a validated alert (None: read on the wrong partition)."""
        source = self.locate(topic, partition, offset, headers, alert.tenant_id)
        if source is None:
            return None
        configs, redrive = self.select(topic, headers, entries, alert.event_type, alert.risk_level)
        return Route(source, configs, redrive)


def filters_of(data: dict[str, Any]) -> tuple[str, str] | None:
    """A parsed, not yet validated alert's event type and risk level, if both are valid
    values (else the alert is invalid: not matched, and the batch lane dead-letters it)."""
    event, risk = data.get("event_type"), data.get("risk_level")
    if isinstance(event, str) and event in _EVENTS and isinstance(risk, str) and risk in _LEVEL:
        return event, risk
    return None


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


def delivery_record(
    alert: Alert,
    wire: dict[str, Any],
    config: dict[str, Any],
    source: tuple[str, int, int],
    routed_at: float,
    produced_at: float | None,
    redrive: bool,
) -> bytes:
    """One per-alert delivery record (the JSON `streams.delivery` reads back): the alert,
    its integration's config as stored, and the location that names the alert."""
    src_topic, src_partition, src_offset = source
    return dumps(
        {
            "alert": wire,
            "integration": config,
            "config_version": config["version"],
            "idempotency_key": idempotency_key(alert.alert_id, config["integration_id"]),
            "source_topic": src_topic,
            "source_partition": src_partition,
            "source_offset": src_offset,
            "routed_at": routed_at,
            "produced_at": produced_at,
            "redrive": redrive,
        }
    )


def detour_headers(
    headers: Any, topic: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    """An alert's headers plus where it was read: sent on to the partition its tenant's
    configs are on, the alert is named by that location, not by the detour's."""
    return [*_header_items(headers), (SOURCE_HEADER, f"{topic}/{partition}/{offset}".encode())]
