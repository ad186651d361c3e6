"""Google Cloud Storage sink: each batch becomes one JSON-lines object, written once.

Same contract as the S3 sink, on the same shared pieces (``sinks.objectstore``: names,
JSON lines, codecs):

* The object name comes from where the batch's first alert sits in the source topic
  (``object_key``), so a re-delivered batch targets the same object.
* Objects are created only if absent (``if_generation_match=0``). On a 412 the object's
  ``alertrelay-last-offset`` metadata says how far it reaches, and only the rest of the
  batch is written, under the next name.
* A per-(integration, source partition, day) high-water mark, learnt from the newest
  object after a start, skips alerts already stored by an object whose name differs
  (a batch re-formed differently after a crash).

The loop lives in ``ExactlyOnceObjects``, written against the ``ObjectWriter`` protocol
that ``S3Writer`` already satisfies, so S3 can share it unchanged (see its docstring).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from pydantic import SecretStr

from schemas.models import Delivery, IntegrationConfig
from sinks.base import Batch, BatchingSink
from sinks.errors import PermanentError
from sinks.gcs.client import GCSWriter
from sinks.gcs.config import GCSSettings, service_account_info
from sinks.objectstore import JSONL_CONTENT_TYPE, Codec, encode_jsonl, get_codec, object_key

if TYPE_CHECKING:
    from sinks.registry import SinkContext

__all__ = ["ExactlyOnceObjects", "GCSSink", "ObjectWriter", "encode_batch", "key_secrets"]

LAST_OFFSET = "alertrelay-last-offset"


def encode_batch(records: list[Delivery], codec: Codec) -> bytes:
    """JSON lines of the alerts, compressed; CPU work, so callers run it in a thread."""
    return codec.compress(encode_jsonl(r.alert.wire() for r in records))


class ObjectWriter(Protocol):
    """What the exactly-once loop needs from a store (S3Writer and GCSWriter both fit)."""

    async def put_if_absent(
        self,
        key: str,
        body: bytes,
        *,
        content_type: str,
        content_encoding: str | None,
        metadata: dict[str, str],
    ) -> bool: ...

    async def head_metadata(self, key: str) -> dict[str, str] | None: ...

    async def newest_key(self, prefix: str) -> str | None: ...


KeyFor = Callable[[int], str]
"""first source offset -> object name, for one batch."""


class ExactlyOnceObjects:
    """S3Sink's write loop and high-water mark, store-agnostic (proposed for
    ``sinks/objectstore``; S3Sink.write would become one call to ``write``)."""

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
        records = [r for r in batch.records if r.source_offset > stored]
        while records:
            key = key_for(records[0].source_offset)
            body = await asyncio.to_thread(encode_batch, records, codec)
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


def key_secrets(service_account_json: SecretStr) -> list[str]:
    """The key file plus the parts of it that can travel alone (the PEM key and its id).

    ``collect_secrets`` sees only the whole JSON text; the private key also appears
    decoded (real newlines instead of ``\\n``) wherever the parsed file is used.
    """
    text = service_account_json.get_secret_value()
    found = [text]
    try:
        info = service_account_info(service_account_json)
    except ValueError:
        return found
    for name in ("private_key", "private_key_id"):
        value = info.get(name)
        if isinstance(value, str) and value:
            found.append(value)
    return found


class GCSSink(BatchingSink[GCSSettings]):
    type_name = "gcs"
    settings_model = GCSSettings

    def __init__(self, ctx: SinkContext) -> None:
        self.limits = ctx.batch_limits
        self._writers: dict[str, GCSWriter] = {}
        self._once = ExactlyOnceObjects()

    def secrets(self, settings: GCSSettings) -> list[str]:
        return [*super().secrets(settings), *key_secrets(settings.service_account_json)]

    def _writer(self, settings: GCSSettings) -> GCSWriter:
        text = settings.service_account_json.get_secret_value()
        ident = "\x00".join([hashlib.sha256(text.encode()).hexdigest(), settings.bucket])
        writer = self._writers.get(ident)
        if writer is None:
            writer = self._writers[ident] = GCSWriter(
                info=service_account_info(settings.service_account_json),
                bucket=settings.bucket,
                secrets=self.secrets(settings),
            )
        return writer

    @staticmethod
    def _key_for(batch: Batch, settings: GCSSettings, codec: Codec) -> KeyFor:
        def key_for(first_offset: int) -> str:
            return object_key(
                prefix=settings.prefix,
                tenant_id=batch.integration.tenant_id,
                integration_id=batch.integration.integration_id,
                day=batch.day,
                topic=batch.topic,
                partition=batch.partition,
                first_offset=first_offset,
                codec=codec,
            )

        return key_for

    async def write(self, batch: Batch, settings: GCSSettings) -> int | None:
        codec = get_codec(settings.compression)
        key_for = self._key_for(batch, settings, codec)
        return await self._once.write(self._writer(settings), batch, codec, key_for)

    async def check(self, integration: IntegrationConfig, settings: GCSSettings) -> str:
        return await self._writer(settings).check(prefix=settings.prefix)

    async def aclose(self) -> None:
        writers, self._writers = list(self._writers.values()), {}
        for writer in writers:
            await asyncio.to_thread(writer.close)
