"""Config intake and table upkeep.

The `integrations` topic is keyed `<tenant>/<integration>`, but alerts are keyed by
tenant. The intake agent validates each record and re-keys it by tenant onto an internal
topic with the alerts topic's partition count; the apply agent folds that topic into the
changelog-backed table. Table and alerts are then co-partitioned, so the lanes find a
tenant's configs locally on the worker that reads the alert's partition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from faust.types import EventT, StreamT, TableT

from schemas.models import DeadLetter
from sinks.registry import ConfigError, validate_integration
from sinks.secretbox import SecretBox, SecretBoxError
from streams import metrics
from streams.delivery import Reporter
from streams.topics import Topics
from streams.wire import dumps

__all__ = ["apply_change", "make_config_agents"]

log = logging.getLogger(__name__)

# Table value per tenant: {integration_id: {"version": int, "config": dict | None}}
# where a None config is a delete that remembers its version (stale re-creates lose).


def apply_change(current: dict[str, Any] | None, change: dict[str, Any]) -> dict[str, Any] | None:
    """The tenant's new table value, or None when the change changes nothing.

    A versioned write applies only with a version above the one held; an unversioned
    write (a producer that does not count) always applies, as the next version. A delete
    always applies and keeps the version it deleted, so an older write arriving late
    cannot resurrect it.
    """
    entries = dict(current or {})
    iid = change["integration_id"]
    old = entries.get(iid)
    if change.get("deleted"):
        if old is None or old["config"] is None:
            return None
        entries[iid] = {"version": old["version"], "config": None}
        return entries
    held = int(old["version"]) if old is not None else 0
    if change.get("version") is None:
        version = held + 1
    else:
        version = int(change["version"])
        if old is not None and version <= held:
            return None
    entries[iid] = {"version": version, "config": {**change["config"], "version": version}}
    return entries


def _split_key(key: bytes | None) -> tuple[str, str] | None:
    if not key:
        return None
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    tenant, sep, iid = text.partition("/")
    if not sep or not tenant or not iid or "/" in iid:
        return None
    return tenant, iid


def make_config_agents(
    topics: Topics, table: TableT, reporter: Reporter, box: SecretBox
) -> tuple[Any, Any]:
    async def reject(event: EventT, reason: str, tenant: str | None, iid: str | None) -> None:
        msg = event.message
        metrics.DLQ.labels("-", "config").inc()
        log.warning(
            "refused integration config at %s[%d]@%d: %s",
            msg.topic,
            msg.partition,
            msg.offset,
            reason,
        )
        # No payload: a config carries secrets, and the reason names the fields.
        await reporter.dead_letter(
            DeadLetter(
                reason=reason,
                stage="config",
                source_topic=msg.topic,
                source_partition=msg.partition,
                source_offset=msg.offset,
                at=time.time(),
                tenant_id=tenant,
                integration_id=iid,
            )
        )

    async def intake(stream: StreamT[Any]) -> None:
        async for event in stream.events():
            msg = event.message
            parts = _split_key(msg.key)
            if parts is None:
                await reject(event, "key must be '<tenant_id>/<integration_id>'", None, None)
                continue
            tenant, iid = parts
            if msg.value is None:
                change: dict[str, Any] = {
                    "integration_id": iid,
                    "version": msg.offset,
                    "deleted": True,
                }
            else:
                try:
                    data = orjson.loads(msg.value)
                    if not isinstance(data, dict):
                        raise ConfigError([("(config)", "must be a JSON object")])
                    raw = data.get("settings")
                    if isinstance(raw, dict):  # the API seals secrets; a producer may not
                        data = {**data, "settings": box.open_settings(raw, f"{tenant}/{iid}")}
                    # Off the loop: a body pattern is test-rendered (bounded, up to ~1 s).
                    config, settings = await asyncio.to_thread(validate_integration, data)
                    if (config.tenant_id, config.integration_id) != (tenant, iid):
                        raise ConfigError(
                            [("(key)", "key does not match tenant_id/integration_id")]
                        )
                except orjson.JSONDecodeError as exc:
                    await reject(event, f"invalid JSON: {exc.msg}", tenant, iid)
                    continue
                except ConfigError as exc:
                    await reject(event, f"invalid integration config: {exc}", tenant, iid)
                    continue
                except SecretBoxError as exc:
                    await reject(event, f"cannot open sealed settings: {exc}", tenant, iid)
                    continue
                stored = config.model_dump(mode="json")
                # From here on (table, changelog, delivery topics) secrets stay sealed.
                stored["settings"] = box.seal_settings(settings, config.key)
                change = {"integration_id": iid, "version": config.version, "config": stored}
            # `dumps`: an exact-size copy, as the record waits in the producer buffer.
            topics.configs_by_tenant.send_soon(key=tenant.encode(), value=dumps(change), force=True)

    async def apply(stream: StreamT[Any]) -> None:
        async for event in stream.events():
            tenant = (event.message.key or b"").decode("utf-8", "replace")
            try:
                change = orjson.loads(event.message.value or b"null")
                updated = apply_change(table.get(tenant), change)
            except Exception as exc:  # a bad internal record must not stop the table
                log.error("skipping unreadable config change for %s: %r", tenant, exc)
                continue
            if updated is None:
                log.info(
                    "ignored stale config change for %s/%s (version %s)",
                    tenant,
                    change.get("integration_id"),
                    change.get("version"),
                )
                continue
            table[tenant] = updated

    return intake, apply
