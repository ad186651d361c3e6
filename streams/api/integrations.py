"""The integrations API: `/api/v1/tenants/{tenant_id}/integrations` (DESIGN.md contract).

Configs live in the config table, partitioned by tenant; a request is served by the worker
that owns its tenant's partition and forwarded there otherwise. Writes go through the
`integrations` topic like any producer's (the worker's intake validates and applies them),
with secrets already sealed; the answer waits briefly until the table holds the new
version so that a read right after a write sees it. Secrets are never returned: each
shows as `****` and its last four characters.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import orjson
from faust.types import TableT

from schemas.models import IntegrationConfig
from sinks.base import Sink
from sinks.errors import DeliveryError
from sinks.http import Redactor
from sinks.registry import ConfigError, validate_integration
from sinks.secretbox import SecretBox, SecretBoxError, is_sealed
from streams.topics import Topics

__all__ = ["ApiError", "IntegrationService", "Role", "authorize", "mask"]

Role = Literal["admin", "editor", "viewer"]
Action = Literal["read", "write", "test"]
MASK = "****"
CHECK_TIMEOUT = 20.0


class ApiError(Exception):
    def __init__(self, status: int, body: Mapping[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.body = dict(body)


def authorize(role: Role, action: Action, integration_type: str | None) -> None:
    """viewer reads; editor writes and tests all but HTTP webhooks; admin does all.

    The spec: "You must have Code Defender Admin permissions to create webhooks". Changing,
    deleting and testing an unsaved webhook are treated the same: each can point alertrelay
    at an arbitrary URL.
    """
    if action == "read":
        return
    if role == "viewer":
        raise ApiError(403, {"error": "viewer tokens may only read"})
    if role == "editor" and integration_type == "webhook" and action == "write":
        raise ApiError(403, {"error": "only admin tokens may create or change HTTP webhooks"})


def mask(secret: str) -> str:
    return MASK + (secret[-4:] if len(secret) >= 12 else "")


def _masked(value: Any, box: SecretBox, scope: str, path: str) -> Any:
    if is_sealed(value):
        try:
            return mask(box.open(value, f"{scope}:{path}"))
        except SecretBoxError:
            return MASK
    if isinstance(value, Mapping):
        return {k: _masked(v, box, scope, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, box, scope, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _keep_secrets(incoming: Any, stored: Any) -> Any:
    """Masked or omitted secrets in an update keep their stored (opened) value."""
    if isinstance(incoming, str) and incoming.startswith(MASK) and isinstance(stored, str):
        return stored
    if isinstance(incoming, Mapping) and isinstance(stored, Mapping):
        merged = {k: _keep_secrets(v, stored.get(k)) for k, v in incoming.items()}
        return merged
    if isinstance(incoming, list) and isinstance(stored, list):
        return [
            _keep_secrets(v, stored[i] if i < len(stored) else None) for i, v in enumerate(incoming)
        ]
    return incoming


@dataclass
class IntegrationService:
    table: TableT
    topics: Topics
    box: SecretBox
    sinks: Mapping[str, Sink[Any]]
    health: TableT | None = None

    def health_of(self, tenant_id: str, integration_id: str) -> dict[str, Any] | None:
        """Last success, last failure (redacted reason), consecutive failures, circuit."""
        if self.health is None:
            return None
        entry = (self.health.get(tenant_id) or {}).get(integration_id)
        return dict(entry) if entry else None

    # -- reads ------------------------------------------------------------------------

    def _entries(self, tenant_id: str) -> dict[str, Any]:
        return dict(self.table.get(tenant_id) or {})

    def public(self, config: Mapping[str, Any]) -> dict[str, Any]:
        scope = f"{config['tenant_id']}/{config['integration_id']}"
        view = dict(config)
        view["settings"] = _masked(config.get("settings", {}), self.box, scope, "settings")
        return view

    def list(self, tenant_id: str) -> list[dict[str, Any]]:
        live = [e["config"] for e in self._entries(tenant_id).values() if e["config"]]
        return [self.public(c) for c in sorted(live, key=lambda c: c["integration_id"])]

    def stored(self, tenant_id: str, integration_id: str) -> dict[str, Any]:
        entry = self._entries(tenant_id).get(integration_id)
        if not entry or not entry["config"]:
            raise ApiError(404, {"error": f"no integration {integration_id!r}"})
        return dict(entry["config"])

    # -- writes -----------------------------------------------------------------------

    async def _validate(
        self, tenant_id: str, body: Mapping[str, Any], integration_id: str | None = None
    ) -> tuple[IntegrationConfig, Any]:
        data = dict(body)
        data["tenant_id"] = tenant_id
        if integration_id is not None:
            data["integration_id"] = integration_id
        data.setdefault("integration_id", uuid.uuid4().hex[:12])
        data.pop("version", None)
        try:
            config, settings = await asyncio.to_thread(validate_integration, data)
        except ConfigError as exc:
            raise ApiError(
                422, {"errors": [{"field": f, "message": m} for f, m in exc.errors]}
            ) from None
        return config, settings

    def _check_name(self, config: IntegrationConfig) -> None:
        for entry in self._entries(config.tenant_id).values():
            other = entry["config"]
            if (
                other
                and other["integration_id"] != config.integration_id
                and other["name"].casefold() == config.name.casefold()
            ):
                raise ApiError(
                    422,
                    {
                        "errors": [
                            {
                                "field": "name",
                                "message": "another integration of this "
                                "tenant already has this name",
                            }
                        ]
                    },
                )

    async def save(
        self, tenant_id: str, body: Mapping[str, Any], integration_id: str | None, role: Role
    ) -> tuple[int, dict[str, Any]]:
        """Create (integration_id None or new) or replace; returns (version, public view)."""
        existing = None
        if integration_id is not None:
            existing = self.stored(tenant_id, integration_id)
            scope = f"{tenant_id}/{integration_id}"
            try:
                opened = self.box.open_settings(existing.get("settings", {}), scope)
            except SecretBoxError:
                opened = {}
            settings_in = body.get("settings")
            if isinstance(settings_in, Mapping):
                merged = dict(_keep_secrets(settings_in, opened))
                for key, value in existing.get("settings", {}).items():
                    if key not in merged and is_sealed(value):
                        merged[key] = opened.get(key)  # an omitted secret stays
                body = {**body, "settings": merged}
            authorize(role, "write", existing["type"])
        elif body.get("integration_id") in {
            k for k, e in self._entries(tenant_id).items() if e["config"]
        }:
            raise ApiError(409, {"error": "an integration with this id exists: use PUT"})
        authorize(role, "write", str(body.get("type", "")))
        config, settings = await self._validate(tenant_id, body, integration_id)
        if existing is not None and existing["type"] != config.type:
            raise ApiError(422, {"errors": [{"field": "type", "message": "cannot change"}]})
        self._check_name(config)
        held = int((self._entries(tenant_id).get(config.integration_id) or {}).get("version", 0))
        version = max(held + 1, int(time.time() * 1000))
        record = config.model_dump(mode="json")
        record["version"] = version
        record["settings"] = self.box.seal_settings(settings, config.key)
        await self._produce(config.key, orjson.dumps(record))
        await self._wait_for(tenant_id, config.integration_id, lambda v: v >= version)
        return version, self.public(self.stored(tenant_id, config.integration_id))

    async def delete(self, tenant_id: str, integration_id: str, role: Role) -> None:
        existing = self.stored(tenant_id, integration_id)
        authorize(role, "write", existing["type"])
        await self._produce(f"{tenant_id}/{integration_id}", None)
        await self._wait_for(tenant_id, integration_id, None)

    async def _produce(self, key: str, value: bytes | None) -> None:
        fut = await self.topics.integrations.send(key=key.encode(), value=value)
        await fut  # on the broker before we answer

    async def _wait_for(self, tenant_id: str, iid: str, done: Any) -> None:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            entry = self._entries(tenant_id).get(iid)
            if done is None and (entry is None or entry["config"] is None):
                return
            if done is not None and entry and entry["config"] and done(int(entry["version"])):
                return
            await asyncio.sleep(0.05)
        raise ApiError(
            503, {"error": "the change was written but not applied in time; read it again shortly"}
        )

    # -- test connection --------------------------------------------------------------

    async def test(self, config: IntegrationConfig, settings: Any) -> dict[str, Any]:
        sink = self.sinks.get(config.type)
        if sink is None:
            raise ApiError(422, {"errors": [{"field": "type", "message": "not available"}]})
        redact = Redactor(sink.secrets(settings))
        started = time.monotonic()
        try:
            detail = await asyncio.wait_for(sink.check(config, settings), CHECK_TIMEOUT)
            ok = True
        except DeliveryError as exc:
            ok, detail = False, redact(exc.message)
        except TimeoutError:
            ok, detail = False, f"no answer within {CHECK_TIMEOUT:.0f} s"
        except Exception as exc:  # a check must answer, never crash the view
            ok, detail = False, redact(f"{type(exc).__name__}: {exc}")
        return {
            "ok": ok,
            "detail": redact(str(detail)),
            "latency_ms": round((time.monotonic() - started) * 1000, 1),
        }

    async def test_unsaved(self, tenant_id: str, body: Mapping[str, Any], role: Role) -> Any:
        authorize(role, "test", str(body.get("type", "")))
        if role != "admin" and body.get("type") == "webhook":
            raise ApiError(403, {"error": "only admin tokens may test unsaved HTTP webhooks"})
        config, settings = await self._validate(tenant_id, body)
        return await self.test(config, settings)

    async def test_saved(self, tenant_id: str, integration_id: str, role: Role) -> Any:
        stored = self.stored(tenant_id, integration_id)
        authorize(role, "test", stored["type"])
        try:
            opened = self.box.open_settings(stored["settings"], f"{tenant_id}/{integration_id}")
        except SecretBoxError as exc:
            return {"ok": False, "detail": str(exc), "latency_ms": 0.0}
        config, settings = await self._validate(
            tenant_id, {**stored, "settings": opened}, integration_id
        )
        return await self.test(config, settings)


async def forward(url: str, method: str, headers: Mapping[str, str], body: bytes) -> Any:
    """Send a request on to the worker that owns the tenant's partition."""
    keep = {k: v for k, v in headers.items() if k.lower() in ("authorization", "content-type")}
    keep["X-Alertrelay-Forwarded"] = "1"
    async with httpx.AsyncClient(timeout=CHECK_TIMEOUT + 10) as client:
        return await client.request(method, url, headers=keep, content=body)
