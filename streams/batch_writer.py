"""Writing the batches of one batching sink, for whoever cuts them.

Both readers of batching deliveries use it: the batch lane (streams/lane.py, alerts
straight from the alerts topics) and the `BatchingAgent` (records on a batching type's
delivery topic). Each batch is written as a task, so a slow destination does not stop
the reader from taking the records of other integrations; batches of one integration
and source partition still go one at a time, in the order they were cut (the sinks skip
what is at or below the highest offset stored, so a newer batch landing first would make
an older one look written). What is buffered or being written is counted against
`batch_memory_cap`; the reader waits for room (`wait_for_room`) when it is passed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from sinks.base import BatchingSink
from sinks.secretbox import SecretBox
from streams import metrics
from streams.batcher import Batcher, Pending
from streams.delivery import BatchRunner, Reporter, dead_letter_for_record
from streams.settings import Settings

__all__ = ["BatchWriter"]

log = logging.getLogger(__name__)


class BatchWriter:
    """`acked` gets each batch's ack handles once it is written or dead-lettered."""

    def __init__(
        self,
        sink: BatchingSink[Any],
        settings: Settings,
        reporter: Reporter,
        box: SecretBox,
        acked: Callable[[list[Any]], None],
    ) -> None:
        self.sink = sink
        self.settings = settings
        self.reporter = reporter
        self.batcher = Batcher(sink.limits)
        self.runner = BatchRunner(sink, settings.retry, reporter, box)
        self._acked = acked
        self._order: dict[tuple[str, str, int], asyncio.Lock] = {}
        self._writing = 0  # estimated bytes of the batches cut and not written yet
        self._room = asyncio.Event()
        self._room.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._prepared = False

    @property
    def held(self) -> int:
        """Estimated bytes of the records buffered or being written."""
        return self.batcher.memory + self._writing

    @property
    def prepared(self) -> bool:
        return self._prepared

    def prepare(self) -> None:
        """Once: the sink loads its client while the first batch fills."""
        if not self._prepared:
            self._prepared = True
            try:
                self.sink.prepare()
            except Exception:  # its first write tries again, and says why
                log.warning("%s: could not prepare its client", self.sink.type_name, exc_info=True)

    def spawn(self, ready: list[Pending]) -> None:
        for pending in ready:
            self._writing += pending.batch.memory_bytes
            task = asyncio.create_task(self._write(pending))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def flush(self, ready: list[Pending]) -> None:
        """Write these batches and wait for them (tests, shutdown)."""
        if ready:
            self._writing += sum(p.batch.memory_bytes for p in ready)
            await asyncio.gather(*(self._write(p) for p in ready))

    async def wait_for_room(self) -> None:
        """Over the memory cap: stop taking until writes bring what is held back under
        80 % of the cap. What is buffered is cut (largest buffers first) only as far as
        that needs once the writes are done: batches already being written free their
        memory by themselves, and cutting more would only end objects early. Nothing
        is dropped."""
        cap = self.settings.batch_memory_cap
        if self.held <= cap:
            return
        metrics.BACKPRESSURE.labels(self.sink.type_name).inc()
        self.spawn(self.batcher.cut_largest(int(cap * 0.8)))
        self._room.clear()
        await self._room.wait()

    def drop_partitions(self, partitions: Iterable[int]) -> int:
        """Forget the buffers of partitions read no more; their new owner re-reads them."""
        dropped = self.batcher.drop_partitions(partitions)
        self._make_room()
        return dropped

    async def _write(self, pending: Pending) -> None:
        batch = pending.batch
        lock = self._order.setdefault(
            (batch.integration.key, batch.topic, batch.partition), asyncio.Lock()
        )
        async with lock:
            await self._write_now(pending)

    async def _write_now(self, pending: Pending) -> None:
        try:
            await self.runner.write(pending.batch)
        except Exception as exc:  # a bug must still end the batch somewhere visible
            log.exception("internal error writing a batch for %s", pending.batch.integration.key)
            reason = f"internal error: {type(exc).__name__}"
            for record in pending.batch.records:
                await self.reporter.dead_letter(
                    dead_letter_for_record(pending.batch, record, reason, 0)
                )
        self._acked(pending.acks)
        self._writing -= pending.batch.memory_bytes
        self._make_room()

    def _make_room(self) -> None:
        if self.held <= self.settings.batch_memory_cap * 0.8:
            self._room.set()
