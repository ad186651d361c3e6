"""The alert lanes' fast path: an alert in the contract's own shape, decoded and checked
in one pass by msgspec, and its stored line written by msgspec.

Why: the batch lane parsed every alert with orjson, validated the dict with pydantic and
serialised the model again (~14 µs of the one event loop per ~1 KB alert); the routing
lane parsed every alert only to learn its tenant (~4 µs). msgspec does the first in ~5 µs
and the second in ~1 µs (bench/analysis.md, tenth session).

The pydantic model `Alert` stays the authority. `fast_alert` answers only where its
answer is known to be the model's: an alert of the contract's fields and nothing else
(an unknown field is skipped by msgspec without the checks orjson makes: UTF-8, number
range), its `detected_at` written without escapes and with at most microseconds (msgspec
rounds further digits where pydantic truncates them). Anything else — Avro, extra
fields, invalid input — gets None and takes the model's path, which says why it is
invalid. tests/unit/test_fast_alert.py holds the two paths to the same answers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Annotated, Any

import msgspec

from schemas.codec import MAX_ALERT_BYTES, DecodeError, _header, parse_alert, tenant_of
from schemas.models import MAX_TENANT_CHARS, MAX_TEXT, EventType, RiskLevel

__all__ = ["FastAlert", "fast_alert", "fast_line", "peek_tenant"]

Headers = Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None


_AlertId = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
_TenantId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TENANT_CHARS)]
_Title = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)]
_Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
_Url = Annotated[str, msgspec.Meta(max_length=8192)]
_Domain = Annotated[str, msgspec.Meta(max_length=1024)]


class FastAlert(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """`schemas.models.Alert`, field for field and rule for rule (same names, order,
    limits and defaults), so that its JSON is the model's `wire()` JSON byte for byte."""

    alert_id: _AlertId
    tenant_id: _TenantId
    event_type: EventType
    risk_level: RiskLevel
    title: _Title
    detected_at: Annotated[datetime, msgspec.Meta(tz=True)]
    description: _Text | None = None
    page_url: _Url | None = None
    script_url: _Url | None = None
    domain: _Domain | None = None
    console_url: _Url | None = None
    details: dict[str, str] | None = None


class _Tenant(msgspec.Struct):
    tenant_id: Any = None


class _Read(FastAlert, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """As read: `detected_at` still the JSON text, for `fast_alert` to look at first."""

    detected_at: msgspec.Raw  # type: ignore[assignment]


_decode_alert = msgspec.json.Decoder(_Read).decode
_decode_when = msgspec.json.Decoder(Annotated[datetime, msgspec.Meta(tz=True)]).decode
_decode_tenant = msgspec.json.Decoder(_Tenant).decode
_set = msgspec.structs.force_setattr
fast_line = msgspec.json.Encoder().encode
"""The stored line of a `FastAlert`: the model's `wire()` as compact JSON."""

# A JSON string without escapes and with at most six digits after the seconds: msgspec
# rounds further digits where pydantic truncates them.
_PLAIN_TIME = re.compile(rb'"[^"\\.,]*(?:[.,]\d{1,6}(?!\d)[^"\\.,]*)?"')


def _json_body(raw: bytes | None, headers: Headers) -> bool:
    """True if `parse_alert` would read the record as JSON (no Avro, within the limits)."""
    if not raw or len(raw) > MAX_ALERT_BYTES or raw[0] == 0:
        return False
    return not _header(headers, "content-type")  # rare: let parse_alert read it


def fast_alert(raw: bytes | None, headers: Headers = None) -> FastAlert | None:
    """The alert if it is one the fast path answers for, else None (take the model's)."""
    if not _json_body(raw, headers):
        return None
    try:
        alert = _decode_alert(raw)  # type: ignore[arg-type]
        when = alert.detected_at
        if _PLAIN_TIME.fullmatch(when) is None:
            return None
        _set(alert, "detected_at", _decode_when(when))
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return alert


def peek_tenant(raw: bytes | None, headers: Headers = None) -> str:
    """The record's tenant without decoding the rest, or DecodeError (with
    `parse_alert`'s and `tenant_of`'s reasons).

    Both alert lanes call it, so both agree which records have no tenant (those the
    routing lane dead-letters). It reads the top level only: a record it accepts may
    still be invalid JSON further in (the batch lane's to dead-letter)."""
    if _json_body(raw, headers):
        try:
            return tenant_of({"tenant_id": _decode_tenant(raw).tenant_id})  # type: ignore[arg-type]
        except (msgspec.DecodeError, UnicodeDecodeError, DecodeError):
            pass  # the reason is the whole record's: the model's path says it
    return tenant_of(parse_alert(raw, headers))
