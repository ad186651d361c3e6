"""HTTP endpoints served by the worker's web server."""

from __future__ import annotations

from typing import Any

import faust
from faust.types import TableT
from faust.web import Request, Response, View

from streams import metrics

__all__ = ["register_views"]


def live_integrations(table: TableT) -> int:
    """Integrations this worker holds (deleted ones excluded)."""
    return sum(
        1
        for entries in table.values()
        for entry in (entries or {}).values()
        if entry.get("config") is not None
    )


def register_views(app: faust.App, table: TableT) -> None:
    @app.page("/health")
    class Health(View):  # type: ignore[misc]
        async def get(self, request: Request) -> Response:
            recovered = app.tables.recovery.completed.is_set()
            assigned = bool(app.consumer.assignment()) if app.consumer is not None else False
            ready = recovered and assigned and not app.rebalancing
            body: dict[str, Any] = {
                "status": "ok" if ready else "starting",
                "rebalancing": bool(app.rebalancing),
                "recovered": recovered,
                "assigned_partitions": len(app.consumer.assignment()) if assigned else 0,
                "tenants": len(table),
                "integrations": live_integrations(table),
            }
            return self.json(body, status=200 if ready else 503)

    @app.page("/metrics")
    class Metrics(View):  # type: ignore[misc]
        async def get(self, request: Request) -> Response:
            metrics.CONFIGS.set(live_integrations(table))
            return self.bytes(metrics.render(), content_type="text/plain; version=0.0.4")
