"""The batch lane: alerts for batching integrations (S3, GCS, Splunk) go from the alerts
topics straight into their integration's buffers, without a delivery topic.

It routes with the same rules (`RouteRules`) and the config table and hands alerts
to the same batch writers the `BatchingAgent` uses (which still empties the batching
delivery topics an earlier version wrote). It validates every alert on its tenant's
partition, counts it and dead-letters it if it is invalid; records without a tenant and
alerts on the wrong partition are the routing lane's (streams/lane.py, "who
dead-letters what").

Where it resumes: its group, `<app_id>-batching`, whose position for a partition is the
first alert read that is not yet written (or dead-lettered) — so a crash re-reads what
was only buffered, and the sinks' object naming turns the re-write into a no-op
(README, "written once"). Reading, positions and commits: streams/lane.py.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from faust.types import TableT

from schemas.codec import DecodeError, decode_alert
from schemas.fast_alert import FastAlert, fast_alert, peek_tenant
from schemas.models import Alert, IntegrationConfig, idempotency_key
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

_RESULTS = ("routed", "no_match", "unknown_tenant", "invalid")
_Target = tuple[BatchWriter, tuple[str, int, str, int], IntegrationConfig]
_Plan = tuple[str, bool, list[_Target]]


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
        self._alerts = {r: metrics.ALERTS.labels(r) for r in _RESULTS}
        # What this read counted, added to the metrics once per read.
        self._results: dict[str, int] = {}
        self._counts: dict[str, int] = {}
        self._read_any = False
        # Looked up once per read (the config table cannot change within one `_take`):
        # a tenant's entries, and a config's writer and model (by the config's id).
        self._entries: dict[str, Any] = {}
        self._targets: dict[int, tuple[BatchWriter, IntegrationConfig] | None] = {}
        self._plans: dict[tuple[str, str, str, int, str, int], _Plan] = {}

    def on_assigned(self, assignment: Iterable[Any]) -> None:
        super().on_assigned(assignment)
        self._prepare_held_types()

    def _prepare_held_types(self) -> None:
        """Load the clients of the batching types the config table holds now, before
        any alert is read: an import at the first alert (~0.2 s for boto3) held up the
        event loop while that alert and the ones after it waited. Types that arrive
        later still prepare at their first alert (`_target`)."""
        waiting = {kind for kind, writer in self.writers.items() if not writer.prepared}
        for entries in self.table.values() if waiting else ():
            for entry in (entries or {}).values():
                kind = (entry.get("config") or {}).get("type")
                if kind in waiting:
                    waiting.discard(kind)
                    self.writers[kind].prepare()
            if not waiting:
                return

    def _take(self, messages: list[Any]) -> None:
        if messages:
            if not self._read_any:
                self._read_any = True
                metrics.LANE_FIRST_READ.set(time.time())
            metrics.LANE_READ.inc(len(messages))
        super()._take(messages)
        self._entries.clear()
        self._targets.clear()
        self._plans.clear()
        ready, self._ready = self._ready, {}
        for kind, batches in ready.items():
            self.writers[kind].spawn(batches)
        # Counted per read: a counter increment per alert costs ~1 µs.
        for counts, children in ((self._results, self._alerts), (self._counts, self._routed)):
            if counts:
                for label, n in counts.items():
                    children[label].inc(n)
                counts.clear()

    async def _after_read(self) -> None:
        for writer in self.writers.values():
            writer.spawn(writer.batcher.due())

    async def _before_next_read(self) -> None:
        for writer in self.writers.values():
            await writer.wait_for_room()

    def _take_one(self, msg: Any) -> None:
        acks, rules = self.acks, self.rules
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        tp = (topic, partition)
        if not acks.reading(tp):
            return  # not (or no longer) assigned
        headers, value = msg.headers(), msg.value()
        alert: Alert | FastAlert | None = fast_alert(value, headers)
        if alert is not None:
            tenant = alert.tenant_id
        else:
            try:
                tenant = peek_tenant(value, headers)
            except DecodeError:  # the routing lane dead-letters it
                acks.read(tp, offset, 0)
                return
        source = rules.locate(topic, partition, offset, headers, tenant)
        if source is None:  # the routing lane sends it on to its tenant's partition
            acks.read(tp, offset, 0)
            return
        if alert is None:
            try:
                alert = decode_alert(value, headers)
            except DecodeError as exc:  # this lane's to dead-letter (streams/lane.py)
                acks.read(tp, offset, 0)
                self._count("invalid")
                self._undecodable(msg, exc)
                return
        src_topic, src_partition, src_offset = source
        plan_key = (tenant, alert.event_type, alert.risk_level, partition, src_topic, src_partition)
        plan = self._plans.get(plan_key)
        if plan is None:
            plan = self._plan(topic, headers, tenant, alert.event_type, alert.risk_level, plan_key)
        result, redrive, candidates = plan
        self._count(result)
        targets = [
            target
            for target in candidates
            # read again (a replay of what is written): not counted twice
            if redrive or not target[0].batcher.holds(target[1], src_offset)
        ]
        handle = acks.read(tp, offset, len(targets))
        if handle is None:
            return
        produced, _ = produced_at(msg)
        record: BatchRecord | None = None
        counts = self._counts
        for writer, key, integration in targets:
            idem = idempotency_key(alert.alert_id, integration.integration_id)
            # The alert's line is serialised once, however many integrations take it.
            record = (
                BatchRecord.make(alert, idem, src_offset, produced, redrive)
                if record is None
                else dataclasses.replace(record, idempotency_key=idem)
            )
            pending = writer.batcher.add_record(
                key, integration, integration.version or 0, record, handle
            )
            counts[integration.type] = counts.get(integration.type, 0) + 1
            if pending is not None:
                self._ready.setdefault(integration.type, []).append(pending)

    def _plan(
        self,
        topic: str,
        headers: Any,
        tenant: str,
        event_type: str,
        risk_level: str,
        plan_key: tuple[str, str, str, int, str, int],
    ) -> _Plan:
        """Where alerts of this tenant, type and level read here go: what they count as,
        whether they are a redrive, and their writers and buffer keys. Kept for the
        rest of the read (the same for every such alert), except on the replay topic,
        where the record's headers may name one integration or a redrive."""
        try:
            entries = self._entries[tenant]
        except KeyError:
            entries = self._entries[tenant] = self.table.get(tenant)
        configs, redrive = (
            self.rules.select(topic, headers, entries, event_type, risk_level)
            if entries
            else ([], False)
        )
        result = "routed" if configs else "no_match" if entries is not None else "unknown_tenant"
        _, _, _, partition, src_topic, src_partition = plan_key
        targets = []
        for config in configs:
            try:
                target = self._targets[id(config)]
            except KeyError:
                target = self._targets[id(config)] = self._target(config)
            if target is not None:
                writer, integration = target
                key = (integration.key, partition, src_topic, src_partition)
                targets.append((writer, key, integration))
        plan = (result, redrive, targets)
        if topic != self.rules.replay_topic:
            self._plans[plan_key] = plan
        return plan

    def _count(self, result: str) -> None:
        self._results[result] = self._results.get(result, 0) + 1

    def _target(self, config: dict[str, Any]) -> tuple[BatchWriter, IntegrationConfig] | None:
        """The writer and model of a batching integration's config (None: not batching)."""
        writer = self.writers.get(config["type"])
        if writer is None:
            return None
        writer.prepare()
        return writer, self._integration(config)

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
