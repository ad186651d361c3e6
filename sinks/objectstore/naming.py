"""Deterministic object names for batches.

A batch's name is derived only from what it contains (where its first record came
from), so re-delivering the same batch after a crash targets the same object
instead of creating a duplicate.
"""

from __future__ import annotations

import datetime
from urllib.parse import quote

from sinks.objectstore.compression import Codec

__all__ = ["MAX_KEY_BYTES", "object_key", "safe_component"]

# S3 and GCS both cap object names at 1024 bytes of UTF-8.
MAX_KEY_BYTES = 1024

# Kept as is besides letters, digits and "_.-~": the rest of AWS's "safe characters
# for object keys", so an operator's prefix such as "exports(v2)" is not rewritten.
_SAFE = "!*'()"


def safe_component(value: str, *, what: str = "component") -> str:
    """Percent-encode one path segment so it cannot add, remove or climb levels.

    Everything outside letters, digits and ``_.-~!*'()`` is encoded (``/``, ``%``,
    ``+``, whitespace, control and non-ASCII characters included), and the segments
    ``.`` and ``..`` become ``%2E`` / ``%2E%2E``. The encoding is injective, so two
    different ids never share a folder.
    """
    if not value:
        raise ValueError(f"{what} must not be empty")
    encoded = quote(value, safe=_SAFE)
    if encoded in (".", ".."):
        encoded = encoded.replace(".", "%2E")
    return encoded


def _day_string(day: datetime.date) -> str:
    if isinstance(day, datetime.datetime):
        # An aware datetime is filed under its UTC day; a naive one is taken as is.
        if day.tzinfo is not None:
            day = day.astimezone(datetime.UTC)
        day = day.date()
    return day.isoformat()


def object_key(
    *,
    prefix: str,
    tenant_id: str,
    integration_id: str,
    day: datetime.date,
    topic: str,
    partition: int,
    first_offset: int,
    codec: Codec,
) -> str:
    """``<prefix>/<tenant>/<integration>/dt=YYYY-MM-DD/<topic>+<partition>+<offset>.jsonl<ext>``.

    The offset is zero-padded to 20 digits so names sort in offset order. An empty
    prefix gives a key without a leading slash; a prefix may hold several levels
    (``a/b``), each sanitised like the other components.
    """
    if partition < 0:
        raise ValueError(f"partition must be >= 0, got {partition}")
    if first_offset < 0:
        raise ValueError(f"first_offset must be >= 0, got {first_offset}")
    segments = [safe_component(s, what="prefix segment") for s in prefix.split("/") if s]
    segments += [
        safe_component(tenant_id, what="tenant_id"),
        safe_component(integration_id, what="integration_id"),
        f"dt={_day_string(day)}",
        f"{safe_component(topic, what='topic')}+{partition}+{first_offset:020d}"
        f".jsonl{codec.extension}",
    ]
    key = "/".join(segments)
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise ValueError(f"object key is longer than {MAX_KEY_BYTES} bytes")
    return key
