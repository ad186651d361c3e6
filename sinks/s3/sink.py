"""S3 delivery: batches of alerts as (compressed) JSON-lines objects, each written once.

An object is named from where its alerts came from (source partition and first offset)
and created only if absent. When the name is taken, the object's metadata says up to
which offset it already holds; only the alerts after that are written, as an object of
their own. A re-delivery after a crash or a replay therefore never stores an alert twice
in objects of the same layout, whatever the batch boundaries were.
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

    async def write(self, batch: Batch, settings: S3Settings) -> int | None:
        writer = self._writer(settings)
        codec = get_codec(settings.compression)
        records = batch.records
        while records:
            key = object_key(
                prefix=settings.prefix,
                tenant_id=batch.integration.tenant_id,
                integration_id=batch.integration.integration_id,
                day=batch.day,
                topic=batch.topic,
                partition=batch.partition,
                first_offset=records[0].source_offset,
                codec=codec,
            )
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
                return 200
            existing = await writer.head_metadata(key) or {}
            try:
                held_up_to = int(existing["alertrelay-last-offset"])
            except (KeyError, ValueError):
                raise PermanentError(
                    f"object {key} exists and was not written by alertrelay; "
                    "refusing to overwrite it"
                ) from None
            records = [r for r in records if r.source_offset > held_up_to]
        return 200

    async def check(self, integration: IntegrationConfig, settings: S3Settings) -> str:
        return await self._writer(settings).check(prefix=settings.prefix)
