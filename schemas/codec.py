"""Turning raw records from the `alerts` topic into `Alert`s, or a reason why not.

JSON is the default encoding. Avro is recognised two ways: the Confluent wire format
(magic byte 0 and a 4-byte schema id, then the body) or a `content-type` header of
`avro/binary` / `application/avro` for a bare body. Both use `alert.avsc`.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from typing import Any

import fastavro
import orjson
from pydantic import ValidationError

from schemas import load_schema
from schemas.models import MAX_TENANT_CHARS, Alert

__all__ = [
    "MAX_ALERT_BYTES",
    "DecodeError",
    "decode_alert",
    "encode_alert_avro",
    "format_errors",
    "parse_alert",
    "tenant_of",
    "validate_alert",
]

# Real alerts are ~1 KB; a quarter MiB leaves room for large `details` yet stays far
# below the broker's default 1 MiB record limit, so the check is reachable.
MAX_ALERT_BYTES = 256 * 1024
_AVRO_TYPES = {b"avro/binary", b"application/avro", b"avro"}


class DecodeError(ValueError):
    """The record cannot become an Alert; the message says why (without the payload)."""


def format_errors(exc: ValidationError) -> str:
    """Field-and-reason list without the offending values (they may be secrets)."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(record)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def _header(headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None, name: str) -> bytes:
    if not headers:
        return b""
    items = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in items:
        if key.lower() == name:
            return value or b""
    return b""


def _decode_avro(body: bytes) -> Any:
    buffer = io.BytesIO(body)
    try:
        record = fastavro.schemaless_reader(buffer, load_schema("Alert"), None)
    except Exception as exc:  # fastavro raises many types for bad input
        raise DecodeError(f"invalid Avro body: {type(exc).__name__}") from None
    if buffer.tell() != len(body):
        # Leftover bytes mean another schema wrote it: the fields read may be wrong.
        raise DecodeError(f"invalid Avro body: {len(body) - buffer.tell()} bytes left over")
    return record


def parse_alert(
    raw: bytes | None,
    headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None = None,
) -> dict[str, Any]:
    """The record's fields, not yet validated (JSON or Avro), or DecodeError.

    The routing lane stops here for tenants without per-alert integrations: the batch
    lane validates every alert anyway (streams/lane.py, "who dead-letters what")."""
    if raw is None or len(raw) == 0:
        raise DecodeError("empty record")
    if len(raw) > MAX_ALERT_BYTES:
        raise DecodeError(f"record of {len(raw)} bytes exceeds the {MAX_ALERT_BYTES}-byte limit")
    content_type = _header(headers, "content-type").split(b";")[0].strip().lower()
    data: Any
    if content_type in _AVRO_TYPES:
        data = _decode_avro(raw)
    elif raw[0] == 0 and len(raw) > 5:
        data = _decode_avro(raw[5:])
    else:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"invalid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(data, dict):
        raise DecodeError(f"an alert must be a JSON object, not {type(data).__name__}")
    return data


def tenant_of(data: Mapping[str, Any]) -> str:
    """The parsed alert's tenant, held to the model's rule for `tenant_id`."""
    tenant = data.get("tenant_id")
    if isinstance(tenant, str) and 1 <= len(tenant) <= MAX_TENANT_CHARS:
        return tenant
    if tenant is None:
        raise DecodeError("invalid alert: tenant_id: Field required")
    raise DecodeError(
        f"invalid alert: tenant_id: must be a string of 1 to {MAX_TENANT_CHARS} characters"
    )


def validate_alert(data: dict[str, Any]) -> Alert:
    """A parsed alert (`parse_alert`) as the model, or DecodeError with the fields at fault."""
    try:
        return Alert.model_validate(data)
    except ValidationError as exc:
        raise DecodeError(f"invalid alert: {format_errors(exc)}") from None


def decode_alert(
    raw: bytes | None,
    headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None = None,
) -> Alert:
    """Decode and validate one alert, raising DecodeError with a readable reason."""
    return validate_alert(parse_alert(raw, headers))


def encode_alert_avro(alert: Alert, *, confluent_schema_id: int | None = None) -> bytes:
    """Avro body of an alert (with the Confluent header when a schema id is given)."""
    record = alert.model_dump(mode="json")
    out = io.BytesIO()
    if confluent_schema_id is not None:
        out.write(b"\x00" + confluent_schema_id.to_bytes(4, "big"))
    fastavro.schemaless_writer(out, load_schema("Alert"), record)
    return out.getvalue()
