"""Text fitted to vendor field limits that are counted in UTF-16 code units.

Slack (JavaScript), PagerDuty and Opsgenie (Java) count a field's length in UTF-16 code
units, so a character outside the Basic Multilingual Plane (an emoji) counts twice. The
sinks for those vendors measured and cut text with the same code, written out in each;
it lives here once so that every such limit is met the same way. `rfc3339` is the alert
timestamp both PagerDuty and Opsgenie are sent.
"""

from __future__ import annotations

from typing import Final

from schemas.models import Alert

__all__ = ["ELLIPSIS", "clip_utf16", "rfc3339", "utf16_len"]

ELLIPSIS: Final = "…"


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units: never less than the character count, so a limit met
    in units is met however the vendor counts."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def clip_utf16(text: str, limit: int) -> str:
    """At most `limit` UTF-16 units, cut at a character boundary and marked with "…"."""
    if len(text) * 2 <= limit or utf16_len(text) <= limit:
        return text
    out: list[str] = []
    used = 0
    for ch in text[:limit]:
        width = 2 if ord(ch) > 0xFFFF else 1
        if used + width > limit - len(ELLIPSIS):
            break
        out.append(ch)
        used += width
    return "".join(out) + ELLIPSIS


def rfc3339(alert: Alert) -> str:
    """When the alert was detected, RFC 3339 in UTC with a `Z`."""
    return alert.detected_at.isoformat().replace("+00:00", "Z")
