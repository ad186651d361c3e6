"""S3 delivery: batches of alerts as (compressed) JSON-lines objects, each written once.

An object is named from where its alerts came from (source partition and first offset)
and created only if absent, with the last offset it holds in its metadata. The sink keeps,
per integration and source partition, the highest offset already stored (learnt from the
newest object the first time it writes there after a start) and drops records at or
below it. A re-delivery after a crash therefore rewrites nothing, wherever its batch
starts; and when a name is taken anyway, the object's metadata says what it holds and
only the rest is written.

Known limit (issue 5): the high-water mark is per UTC day of the batch, so a re-delivery
that straddles midnight may store the alerts of the old day's last batch again.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING

from schemas.models import Delivery, IntegrationConfig
from sinks.base import Batch, BatchingSink
from sinks.errors import PermanentError
from sinks.objectstore import JSONL_CONTENT_TYPE, Codec, encode_jsonl, get_codec, object_key
from sinks.s3.client import S3Writer
from sinks.s3.config import S3Settings

if TYPE_CHECKING:
    from sinks.registry import SinkContext

__all__ = ["S3Sink", "encode_batch"]


def encode_batch(records: list[Delivery], codec: Codec) -> bytes:
    """JSON lines of the alerts, compressed; CPU work, so callers run it in a thread."""
    return codec.compress(encode_jsonl(r.alert.wire() for r in records))


class S3Sink(BatchingSink[S3Settings]):
    type_name = "s3"
    settings_model = S3Settings

    def __init__(self, ctx: SinkContext) -> None:
        self.limits = ctx.batch_limits
        self._writers: dict[str, S3Writer] = {}
        # (integration key, source topic, partition, day) -> highest source offset stored
        self._stored: dict[tuple[str, str, int, str], int] = {}

    def _writer(self, settings: S3Settings) -> S3Writer:
        secret = settings.secret_access_key.get_secret_value()
        ident = "\x00".join(
            [
                settings.access_key_id,
                hashlib.sha256(secret.encode()).hexdigest(),
                settings.region,
                settings.bucket,
            ]
        )
        writer = self._writers.get(ident)
        if writer is None:
            writer = self._writers[ident] = S3Writer(
                access_key_id=settings.access_key_id,
                secret_access_key=secret,
                region=settings.region,
                bucket=settings.bucket,
            )
        return writer

    def _key(self, batch: Batch, settings: S3Settings, first_offset: int, codec: Codec) -> str:
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

    async def _stored_up_to(
        self, writer: S3Writer, batch: Batch, settings: S3Settings, codec: Codec
    ) -> int:
        mark = (batch.integration.key, batch.topic, batch.partition, batch.day.isoformat())
        stored = self._stored.get(mark)
        if stored is None:
            # Everything up to the '+' before the offset: the objects of this partition.
            prefix = self._key(batch, settings, 0, codec).rsplit("+", 1)[0] + "+"
            newest = await writer.newest_key(prefix)
            meta = (await writer.head_metadata(newest) or {}) if newest else {}
            stored = int(meta.get("alertrelay-last-offset", -1))
            self._stored[mark] = stored
        return stored

    def _remember(self, batch: Batch, last_offset: int) -> None:
        mark = (batch.integration.key, batch.topic, batch.partition, batch.day.isoformat())
        self._stored[mark] = max(self._stored.get(mark, -1), last_offset)

    async def write(self, batch: Batch, settings: S3Settings) -> int | None:
        writer = self._writer(settings)
        codec = get_codec(settings.compression)
        stored = await self._stored_up_to(writer, batch, settings, codec)
        records = [r for r in batch.records if r.source_offset > stored]
        while records:
            key = self._key(batch, settings, records[0].source_offset, codec)
            body = await asyncio.to_thread(encode_batch, records, codec)
            metadata = {
                "alertrelay-first-offset": str(records[0].source_offset),
                "alertrelay-last-offset": str(records[-1].source_offset),
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
                self._remember(batch, records[-1].source_offset)
                return 200
            existing = await writer.head_metadata(key)
            if existing is None:
                continue  # removed since the 412: try again
            try:
                held_up_to = int(existing["alertrelay-last-offset"])
            except (KeyError, ValueError):
                raise PermanentError(
                    f"object {key} exists and was not written by alertrelay; "
                    "refusing to overwrite it"
                ) from None
            self._remember(batch, held_up_to)
            records = [r for r in records if r.source_offset > held_up_to]
        return 200

    async def check(self, integration: IntegrationConfig, settings: S3Settings) -> str:
        return await self._writer(settings).check(prefix=settings.prefix)
