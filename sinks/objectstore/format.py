"""JSON Lines encoding for batch objects: one JSON object per line, UTF-8."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

__all__ = ["JSONL_CONTENT_TYPE", "decode_jsonl", "encode_jsonl"]

JSONL_CONTENT_TYPE = "application/x-ndjson"


def _line(record: Mapping[str, Any] | bytes, index: int) -> bytes:
    if isinstance(record, bytes | bytearray | memoryview):
        # Already-encoded JSON is trusted (not re-validated), only framed: whitespace
        # around it is dropped, and a pretty-printed document is re-serialised so a
        # raw newline cannot split one record over several lines. JSON strings cannot
        # hold raw newlines, so re-serialising loses nothing.
        line = bytes(record).strip()
        if not line:
            raise ValueError(f"record {index}: empty bytes are not a JSON document")
        if b"\n" in line or b"\r" in line:
            line = orjson.dumps(orjson.loads(line))
        return line
    return orjson.dumps(record if isinstance(record, dict) else dict(record))


def encode_jsonl(records: Iterable[Mapping[str, Any] | bytes]) -> bytes:
    """Encode records as JSON Lines with a trailing newline (``b""`` for no records)."""
    lines = [_line(record, i) for i, record in enumerate(records)]
    if not lines:
        return b""
    return b"\n".join(lines) + b"\n"


def decode_jsonl(data: bytes) -> list[dict[str, Any]]:
    """Decode JSON Lines (blank lines skipped); every line must be a JSON object."""
    records: list[dict[str, Any]] = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"line {number}: invalid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise ValueError(f"line {number}: expected a JSON object, got {type(value).__name__}")
        records.append(value)
    return records
