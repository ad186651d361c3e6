"""The batch lane: alerts for batching integrations (S3, GCS, Splunk) go from the alerts
topics straight into their integration's buffers, without a delivery topic.

It routes with the same rules (`RouteRules`) and the config table and hands alerts
to the same batch writers the `BatchingAgent` uses (which still empties the batching
delivery topics an earlier version wrote). Alerts it cannot decode, or that are on the
wrong partition, are the routing lane's (streams/routing_lane.py): this lane skips them.

Where it resumes: its group, `<app_id>-batching`, whose position for a partition is the
first alert read that is not yet written (or dead-lettered) — so a crash re-reads what
was only buffered, and the sinks' object naming turns the re-write into a no-op
(README, "written once"). Reading, positions and commits: streams/lane.py.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

from faust.types import TableT

from schemas.codec import DecodeError, decode_alert
from schemas.models import IntegrationConfig, idempotency_key
from sinks.base import BatchingSink, BatchRecord
from sinks.secretbox import SecretBox
from streams import metrics
from streams.agents.router import RouteRules
from streams.batch_writer import BatchWriter
from streams.batcher import Pending
from streams.delivery import Reporter
from streams.lane import Lane, produced_at
from streams.settings import Settings

__all__ = ["BatchLane"]


class BatchLane(Lane):
    name = "batch lane"

    def __init__(
        self,
        settings: Settings,
        table: TableT,
        rules: RouteRules,
        sinks: dict[str, BatchingSink[Any]],
        reporter: Reporter,
        box: SecretBox,
        flush_producer: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__(
            settings,
            table,
            rules,
            reporter,
            group=settings.batch_lane_group,
            flushes=[flush_producer],
        )
        self.writers = {
            kind: BatchWriter(sink, settings, reporter, box, self._written)
            for kind, sink in sinks.items()
        }
        self._ready: dict[str, list[Pending]] = {}
        self._configs: dict[tuple[str, int], IntegrationConfig] = {}
        self._routed = {kind: metrics.ROUTED.labels(kind) for kind in sinks}
        self._read_any = False

    def _take(self, messages: list[Any]) -> None:
        if messages:
            if not self._read_any:
                self._read_any = True
                metrics.LANE_FIRST_READ.set(time.time())
            metrics.LANE_READ.inc(len(messages))
        super()._take(messages)
        ready, self._ready = self._ready, {}
        for kind, batches in ready.items():
            self.writers[kind].spawn(batches)

    async def _after_read(self) -> None:
        for writer in self.writers.values():
            writer.spawn(writer.batcher.due())

    async def _before_next_read(self) -> None:
        for writer in self.writers.values():
            await writer.wait_for_room()

    def _take_one(self, msg: Any) -> None:
        acks, writers, rules, table = self.acks, self.writers, self.rules, self.table
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        tp = (topic, partition)
        headers = msg.headers()
        try:
            alert = decode_alert(msg.value(), headers)
        except DecodeError:  # the routing lane dead-letters it
            acks.read(tp, offset, 0)
            return
        entries = table.get(alert.tenant_id)
        route = rules.route(topic, partition, offset, headers, alert, entries) if entries else None
        targets = []
        if route is not None:
            src_topic, src_partition, src_offset = route.source
            for config in route.configs:
                writer = writers.get(config["type"])
                if writer is None:
                    continue
                integration = self._integration(config)
                key = (integration.key, partition, src_topic, src_partition)
                if not route.redrive and writer.batcher.holds(key, src_offset):
                    continue  # read again (a replay of what is written): not counted twice
                targets.append((writer, key, integration))
        handle = acks.read(tp, offset, len(targets))
        if route is None or handle is None:
            return
        produced, _ = produced_at(msg)
        record: BatchRecord | None = None
        for writer, key, integration in targets:
            idem = idempotency_key(alert.alert_id, integration.integration_id)
            # The alert's line is serialised once, however many integrations take it.
            record = (
                BatchRecord.make(alert, idem, src_offset, produced, route.redrive)
                if record is None
                else dataclasses.replace(record, idempotency_key=idem)
            )
            pending = writer.batcher.add_record(
                key, integration, integration.version or 0, record, handle
            )
            self._routed[integration.type].inc()
            if pending is not None:
                self._ready.setdefault(integration.type, []).append(pending)

    def _integration(self, config: dict[str, Any]) -> IntegrationConfig:
        """The config table's entry as a model, parsed once per version."""
        key = (f"{config['tenant_id']}/{config['integration_id']}", int(config["version"]))
        integration = self._configs.get(key)
        if integration is None:
            if len(self._configs) > 10_000:
                self._configs.clear()
            integration = self._configs[key] = IntegrationConfig.model_validate(config)
        return integration

    def _written(self, handles: list[Any]) -> None:
        done = self.acks.done
        for handle in handles:
            done(handle)

    def _drop_all(self) -> None:
        for writer in self.writers.values():
            writer.drop_partitions(range(self.rules.partitions))
