"""Exactly-once batch objects over any create-only object store (S3, GCS).

* The object name comes from where the batch's first alert sits in the source topic,
  so a re-delivered batch targets the same object.
* Objects are created only if absent. When the name is taken, the object's
  ``alertrelay-last-offset`` metadata says how far it reaches, and only the rest of
  the batch is written, under the next name.
* A per-(integration, source partition, day) high-water mark, learnt from the newest
  object after a start, skips alerts already stored under a different name.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Protocol

from sinks.base import Batch, BatchRecord
from sinks.errors import PermanentError
from sinks.objectstore.compression import Codec
from sinks.objectstore.format import JSONL_CONTENT_TYPE

__all__ = [
    "LAST_OFFSET",
    "Body",
    "ExactlyOnceObjects",
    "KeyFor",
    "ObjectWriter",
    "body_bytes",
    "encode_batch",
]

Body = bytes | Callable[[], bytes]
"""An object's content, or how to make it: a batch's body is made (joined, compressed)
in the writer's thread, in the same hop as the upload. A hop of its own waited for the
busy event loop between the two: ~0.1 s more per object and more memory held under
load (bench/analysis.md)."""


def body_bytes(body: Body) -> bytes:
    """The content itself (called in the writer's thread)."""
    return body() if callable(body) else body


def encode_batch(records: Sequence[BatchRecord], codec: Codec) -> bytes:
    """JSON lines of the alerts, compressed; CPU work, made in the writer's thread (`Body`).

    Each record already holds its alert's line as `encode_jsonl` would write it (orjson,
    one line, no surrounding whitespace), so the lines are only joined."""
    if not records:
        return codec.compress(b"")
    return codec.compress(b"\n".join([r.line for r in records]) + b"\n")


class ObjectWriter(Protocol):
    """What the exactly-once loop needs from a store (S3Writer and GCSWriter both fit)."""

    async def put_if_absent(
        self,
        key: str,
        body: Body,
        *,
        content_type: str,
        content_encoding: str | None,
        metadata: dict[str, str],
    ) -> bool: ...

    async def head_metadata(self, key: str) -> dict[str, str] | None: ...

    async def newest_key(self, prefix: str) -> str | None: ...


KeyFor = Callable[[int], str]
"""first source offset -> object name, for one batch."""


LAST_OFFSET = "alertrelay-last-offset"


class ExactlyOnceObjects:
    """The write loop and high-water mark shared by the object-store sinks."""

    def __init__(self) -> None:
        # (integration key, source topic, partition, day) -> highest source offset stored
        self._stored: dict[tuple[str, str, int, str], int] = {}

    @staticmethod
    def _mark(batch: Batch) -> tuple[str, str, int, str]:
        return (batch.integration.key, batch.topic, batch.partition, batch.day.isoformat())

    async def stored_up_to(self, writer: ObjectWriter, batch: Batch, key_for: KeyFor) -> int:
        mark = self._mark(batch)
        stored = self._stored.get(mark)
        if stored is None:
            # Everything up to the '+' before the offset: the objects of this partition.
            prefix = key_for(0).rsplit("+", 1)[0] + "+"
            newest = await writer.newest_key(prefix)
            meta = (await writer.head_metadata(newest) or {}) if newest else {}
            stored = int(meta.get(LAST_OFFSET, -1))
            self._stored[mark] = stored
        return stored

    def remember(self, batch: Batch, last_offset: int) -> None:
        mark = self._mark(batch)
        self._stored[mark] = max(self._stored.get(mark, -1), last_offset)

    async def write(self, writer: ObjectWriter, batch: Batch, codec: Codec, key_for: KeyFor) -> int:
        stored = await self.stored_up_to(writer, batch, key_for)
        # A redriven record is known not to be stored (its batch went to the DLQ), even
        # when a later batch moved the high-water mark past it.
        records = [r for r in batch.records if r.redrive or r.source_offset > stored]
        while records:
            key = key_for(records[0].source_offset)
            body = functools.partial(encode_batch, records, codec)
            metadata = {
                "alertrelay-first-offset": str(records[0].source_offset),
                LAST_OFFSET: str(records[-1].source_offset),
                "alertrelay-count": str(len(records)),
            }
            created = await writer.put_if_absent(
                key,
                body,
                content_type=JSONL_CONTENT_TYPE,
                content_encoding=codec.content_encoding,
                metadata=metadata,
            )
            if created:
                self.remember(batch, records[-1].source_offset)
                return 200
            existing = await writer.head_metadata(key)
            if existing is None:
                continue  # removed since the 412: try again
            try:
                held_up_to = int(existing[LAST_OFFSET])
            except (KeyError, ValueError):
                raise PermanentError(
                    f"object {key} exists and was not written by alertrelay; "
                    "refusing to overwrite it"
                ) from None
            self.remember(batch, held_up_to)
            records = [r for r in records if r.source_offset > held_up_to]
        return 200
