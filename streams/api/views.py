"""HTTP endpoints served by the worker's web server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import faust
import orjson
from faust.types import TP, TableT
from faust.web import Request, Response, View

from streams import metrics
from streams.agents.router import tenant_partition
from streams.api.integrations import ApiError, IntegrationService, forward

if TYPE_CHECKING:
    from streams.api.tokens import Principal

__all__ = ["register_api", "register_views"]


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


def register_api(
    app: faust.App, table: TableT, service: IntegrationService, partitions: int
) -> None:
    """The integrations API; every route authenticates, scopes to the token's tenant and
    runs on the worker that owns the tenant's partition."""
    from streams.api.tokens import TokenStore

    tokens = TokenStore.from_env()
    base = "/api/v1/tenants/{tenant_id}/integrations"
    changelog = table.changelog_topic.get_topic_name()

    async def handle(
        view: View,
        request: Request,
        tenant_id: str,
        run: Callable[[Principal, Any], Awaitable[tuple[int, Any]]],
    ) -> Response:
        principal = tokens.authenticate(request.headers.get("Authorization"))
        if principal is None:
            hint = "" if tokens.configured else " (no tokens yet: alertrelay tokens create)"
            return view.json({"error": f"a valid bearer token is required{hint}"}, status=401)
        if principal.tenant_id != tenant_id:
            return view.json({"error": "not found"}, status=404)
        # The owner of the tenant's table partition. Computed with the router's own
        # partitioner: faust's key_store asks the producer's metadata, which does not know
        # the changelog topic until this worker has written to it.
        owner_url = app.assignor._tps_url.get(
            TP(changelog, tenant_partition(tenant_id, partitions))
        )
        if owner_url is None:
            return view.json({"error": "the worker is starting; try again"}, status=503)
        owner = str(owner_url)
        body = await request.read()
        if owner.rstrip("/") != str(app.conf.canonical_url).rstrip("/"):
            if request.headers.get("X-Alertrelay-Forwarded"):
                return view.json({"error": "partitions are moving; try again"}, status=503)
            answer = await forward(
                owner.rstrip("/") + request.path_qs, request.method, request.headers, body
            )
            return view.bytes(
                answer.content,
                status=answer.status_code,
                content_type=answer.headers.get("content-type", "application/json"),
            )
        payload: Any = None
        if body:
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                return view.json({"error": f"invalid JSON: {exc.msg}"}, status=400)
            if not isinstance(payload, dict):
                return view.json({"error": "the body must be a JSON object"}, status=400)
        try:
            status, answer_body = await run(principal, payload)
        except ApiError as exc:
            return view.json(exc.body, status=exc.status)
        if status == 204:
            return view.bytes(b"", status=204)
        return view.json(answer_body, status=status)

    def need_body(payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict):
            raise ApiError(400, {"error": "a JSON object body is required"})
        return payload

    @app.page(base + "/test")
    class TestUnsaved(View):  # type: ignore[misc]
        async def post(self, request: Request, tenant_id: str) -> Response:
            async def run(p: Principal, payload: Any) -> tuple[int, Any]:
                return 200, await service.test_unsaved(tenant_id, need_body(payload), p.role)

            return await handle(self, request, tenant_id, run)

    @app.page(base)
    class Collection(View):  # type: ignore[misc]
        async def get(self, request: Request, tenant_id: str) -> Response:
            async def run(p: Principal, payload: Any) -> tuple[int, Any]:
                return 200, {"integrations": service.list(tenant_id)}

            return await handle(self, request, tenant_id, run)

        async def post(self, request: Request, tenant_id: str) -> Response:
            async def run(p: Principal, payload: Any) -> tuple[int, Any]:
                body = need_body(payload)
                if body.get("integration_id") == "test":
                    raise ApiError(
                        422,
                        {"errors": [{"field": "integration_id", "message": "'test' is reserved"}]},
                    )
                version, view = await service.save(tenant_id, body, None, p.role)
                return 201, {"integration": view, "version": version}

            return await handle(self, request, tenant_id, run)

    @app.page(base + "/{integration_id}")
    class Item(View):  # type: ignore[misc]
        async def get(self, request: Request, tenant_id: str, integration_id: str) -> Response:
            async def run(p: Principal, payload: Any) -> tuple[int, Any]:
                stored = service.stored(tenant_id, integration_id)
                return 200, {
                    "integration": service.public(stored),
                    "version": stored["version"],
                    "health": service.health_of(tenant_id, integration_id),
                }

            return await handle(self, request, tenant_id, run)

        async def put(self, request: Request, tenant_id: str, integration_id: str) -> Response:
            async def run(p: Principal, payload: Any) -> tuple[int, Any]:
                version, view = await service.save(
                    tenant_id, need_body(payload), integration_id, p.role
                )
                return 200, {"integration": view, "version": version}

            return await handle(self, request, tenant_id, run)

        async def delete(self, request: Request, tenant_id: str, integration_id: str) -> Response:
            async def run(p: Principal, payload: Any) -> tuple[int, Any]:
                await service.delete(tenant_id, integration_id, p.role)
                return 204, None

            return await handle(self, request, tenant_id, run)

    @app.page(base + "/{integration_id}/test")
    class TestSaved(View):  # type: ignore[misc]
        async def post(self, request: Request, tenant_id: str, integration_id: str) -> Response:
            async def run(p: Principal, payload: Any) -> tuple[int, Any]:
                return 200, await service.test_saved(tenant_id, integration_id, p.role)

            return await handle(self, request, tenant_id, run)
