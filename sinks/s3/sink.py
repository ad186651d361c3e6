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

import hashlib
import importlib
from typing import TYPE_CHECKING

from schemas.models import IntegrationConfig
from sinks.base import Batch, BatchingSink
from sinks.objectstore import Codec, get_codec, object_key
from sinks.objectstore.exactly_once import ExactlyOnceObjects, encode_batch
from sinks.objectstore.vendor import client_module
from sinks.s3.config import S3Settings

if TYPE_CHECKING:
    from sinks.registry import SinkContext
    from sinks.s3.client import S3Writer

__all__ = ["S3Sink", "encode_batch"]  # encode_batch re-exported for callers


class S3Sink(BatchingSink[S3Settings]):
    type_name = "s3"
    settings_model = S3Settings

    def __init__(self, ctx: SinkContext) -> None:
        self.limits = ctx.batch_limits
        self._writers: dict[str, S3Writer] = {}
        self._once = ExactlyOnceObjects()

    def prepare(self) -> None:
        importlib.import_module("sinks.s3.client")

    async def _writer(self, settings: S3Settings) -> S3Writer:
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
            # Another write may have made it meanwhile: the first one made is kept.
            client = await client_module("sinks.s3.client")
            writer = self._writers.setdefault(
                ident,
                client.S3Writer(
                    access_key_id=settings.access_key_id,
                    secret_access_key=secret,
                    region=settings.region,
                    bucket=settings.bucket,
                ),
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

    async def write(self, batch: Batch, settings: S3Settings) -> int | None:
        codec = get_codec(settings.compression, zstd_level=settings.zstd_level)

        def key_for(first_offset: int) -> str:
            return self._key(batch, settings, first_offset, codec)

        return await self._once.write(await self._writer(settings), batch, codec, key_for)

    async def check(self, integration: IntegrationConfig, settings: S3Settings) -> str:
        writer = await self._writer(settings)
        return await writer.check(prefix=settings.prefix)
