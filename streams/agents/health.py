"""Integration health, folded from the delivery-status topic into a table by tenant.

The status topic is keyed by tenant and has the alerts topic's partition count, so this
table is co-partitioned with the config table: the worker answering an API request for a
tenant holds both. A success only rewrites the entry when something changed or the last
one is a few seconds old, so a busy integration does not write a changelog record per
delivery.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from faust.types import StreamT, TableT

__all__ = ["fold_status", "make_health_agent"]

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


def make_health_agent(table: TableT) -> Any:
    async def agent(stream: StreamT[Any]) -> None:
        async for event in stream.events():
            try:
                status = orjson.loads(event.message.value or b"{}")
                tenant, iid = status["tenant_id"], status["integration_id"]
                entries = dict(table.get(tenant) or {})
                updated = fold_status(entries.get(iid), status)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # not ours to judge: the status topic is informational
            if updated is not None:
                entries[iid] = updated
                table[tenant] = entries

    return agent
