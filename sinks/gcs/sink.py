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
import importlib
from typing import TYPE_CHECKING

from pydantic import SecretStr

from schemas.models import IntegrationConfig
from sinks.base import Batch, BatchingSink
from sinks.gcs.config import GCSSettings, service_account_info
from sinks.objectstore import Codec, get_codec, object_key
from sinks.objectstore.exactly_once import ExactlyOnceObjects, KeyFor
from sinks.objectstore.vendor import client_module

if TYPE_CHECKING:
    from sinks.gcs.client import GCSWriter
    from sinks.registry import SinkContext

__all__ = ["GCSSink", "key_secrets"]


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

    def prepare(self) -> None:
        importlib.import_module("sinks.gcs.client")

    async def _writer(self, settings: GCSSettings) -> GCSWriter:
        text = settings.service_account_json.get_secret_value()
        ident = "\x00".join([hashlib.sha256(text.encode()).hexdigest(), settings.bucket])
        writer = self._writers.get(ident)
        if writer is None:
            # Another write may have made it meanwhile: the first one made is kept.
            client = await client_module("sinks.gcs.client")
            writer = self._writers.setdefault(
                ident,
                client.GCSWriter(
                    info=service_account_info(settings.service_account_json),
                    bucket=settings.bucket,
                    secrets=self.secrets(settings),
                ),
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
        codec = get_codec(settings.compression, zstd_level=settings.zstd_level)
        key_for = self._key_for(batch, settings, codec)
        return await self._once.write(await self._writer(settings), batch, codec, key_for)

    async def check(self, integration: IntegrationConfig, settings: GCSSettings) -> str:
        writer = await self._writer(settings)
        return await writer.check(prefix=settings.prefix)

    async def aclose(self) -> None:
        writers, self._writers = list(self._writers.values()), {}
        for writer in writers:
            await asyncio.to_thread(writer.close)
