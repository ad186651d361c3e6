"""Integration health, folded from the internal health topic into a table by tenant.

The delivery-status topic carries one record per attempt: it is for users. Reading all of
it back costs a full faust consume pass (~150-200 µs of CPU) per alert, although the
fold ignores almost every success. So the reporter also writes the records that can
change health to `<app_id>-health` (`HealthFeed` decides which: failures, circuit
changes, the first success after a failure and one success per REFRESH/2), and this
agent folds that topic with the same `fold_status` as before.

The health topic is keyed by tenant and has the alerts topic's partition count, so this
table is co-partitioned with the config table: the worker answering an API request for a
tenant holds both. A success only rewrites the entry when something changed or the last
one is a few seconds old, so a busy integration does not write a changelog record per
delivery.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import orjson
from faust.types import StreamT, TableT

__all__ = ["HealthFeed", "fold_status", "make_health_agent"]

log = logging.getLogger(__name__)
REFRESH = 5.0


def fold_status(entry: dict[str, Any] | None, status: dict[str, Any]) -> dict[str, Any] | None:
    """The integration's new health entry, or None when it need not be rewritten."""
    old = dict(entry or {})
    at = float(status["at"])
    circuit = status.get("circuit") or old.get("circuit") or "closed"
    if status["outcome"] == "delivered":
        if (
            old.get("consecutive_failures", 0) == 0
            and old.get("circuit", "closed") == circuit
            and at - float(old.get("last_success_at") or 0) < REFRESH
        ):
            return None
        old.update(last_success_at=at, consecutive_failures=0, circuit=circuit)
        return old
    old.update(
        last_failure_at=at,
        last_error=status.get("error"),
        last_status=status.get("http_status"),
        consecutive_failures=int(old.get("consecutive_failures", 0)) + 1,
        circuit=circuit,
    )
    return old


class HealthFeed:
    """Which status records the health fold needs, from what this process forwarded.

    A record is forwarded when it is not a success, when its circuit differs from the
    one last forwarded for its integration, or when it is a success and either the last
    record forwarded was not one or no success was forwarded in the last `interval`
    seconds (by the records' own `at`). Folding only these gives the same failures,
    errors and circuit as folding every record, and a `last_success_at` at most
    REFRESH + `interval` old instead of REFRESH. Deliveries of one integration share one
    delivery partition, so one process sees them all (apart from a rebalance, after
    which the new owner forwards its first record anyway).

    The memo holds `capacity` integrations, the least recently forwarded dropped first;
    one dropped only has its next record forwarded.
    """

    __slots__ = ("_capacity", "_interval", "_last")

    def __init__(self, capacity: int = 4096, interval: float = REFRESH / 2) -> None:
        self._capacity = capacity
        self._interval = interval
        # (tenant, integration) -> (last forwarded was a success, last forwarded circuit,
        # `at` of the last forwarded success); dict order is forwarding order.
        self._last: dict[tuple[str, str], tuple[bool, str | None, float]] = {}

    def wants(
        self, tenant_id: str, integration_id: str, outcome: str, circuit: str | None, at: float
    ) -> bool:
        """Whether to forward this record; when True, it is remembered as forwarded."""
        key = (tenant_id, integration_id)
        delivered = outcome == "delivered"
        last = self._last.get(key)
        if last is None:
            ok_at = -math.inf
            last_circuit = None
        else:
            was_ok, last_circuit, ok_at = last
            if (
                delivered
                and was_ok
                and (circuit is None or circuit == last_circuit)
                and 0.0 <= at - ok_at < self._interval
            ):
                return False
            del self._last[key]  # re-inserted last: the dict stays in forwarding order
        self._last[key] = (
            delivered,
            circuit if circuit is not None else last_circuit,
            at if delivered else ok_at,
        )
        if len(self._last) > self._capacity:
            del self._last[next(iter(self._last))]
        return True


def make_health_agent(table: TableT) -> Any:
    async def agent(stream: StreamT[Any]) -> None:
        async for event in stream.events():
            try:
                status = orjson.loads(event.message.value or b"{}")
                tenant, iid = status["tenant_id"], status["integration_id"]
                entries = dict(table.get(tenant) or {})
                updated = fold_status(entries.get(iid), status)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # not ours to judge: health is informational
            if updated is not None:
                entries[iid] = updated
                table[tenant] = entries

    return agent
