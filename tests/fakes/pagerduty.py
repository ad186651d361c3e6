"""A local PagerDuty Events API v2 that checks events as VENDORS.md states.

Real HTTP on 127.0.0.1. Point a sink at it with `ALERTRELAY_HOST_OVERRIDES=<fake.override>`
while the configured URL stays `https://events.pagerduty.com/v2/enqueue`.

What it enforces and answers (PagerDuty's JSON shapes):
- `POST /v2/enqueue`, `Content-Type: application/json`, body ≤ 512 KB, a JSON object.
- `routing_key`: present, 32 characters, alphanumeric (PagerDuty's own error texts), and
  registered with `add_routing_key` (else "Invalid routing key").
- `event_action` ∈ trigger | acknowledge | resolve; `dedup_key` ≤ 255 and required for
  acknowledge/resolve.
- trigger: `payload` with `summary` (non-blank, ≤ 1024), `source` (non-blank), `severity`
  ∈ critical | error | warning | info; `timestamp` ISO 8601 when given; `component`,
  `group`, `class` strings; `custom_details` any JSON; `links` [{href, text?}].
- 202 `{"status": "success", "message": "Event processed", "dedup_key": …}`;
  400 `{"status": "invalid event", "message": "Event object is invalid", "errors": […]}`.
- Dedup: open incidents are kept by (routing_key, dedup_key); a trigger on an open one
  only adds to it, resolve closes it, a trigger after resolve opens a new one.
- `script()` queues raw answers (429, 5xx, …) for the next requests, before any checking.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.fakes._server import Received, ScriptedFake, wait_for_count

__all__ = ["Answer", "FakePagerDuty", "Incident", "Received"]

HOST = "events.pagerduty.com"
MAX_BYTES = 512 * 1024
SEVERITIES = ("critical", "error", "warning", "info")
ACTIONS = ("trigger", "acknowledge", "resolve")


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any] | str = ""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Incident:
    number: int
    routing_key: str
    dedup_key: str
    status: str  # triggered | acknowledged | resolved
    events: list[dict[str, Any]]

    @property
    def payload(self) -> dict[str, Any]:
        return dict(self.events[0]["payload"])


def _invalid(*errors: str) -> Answer:
    return Answer(
        400,
        {"status": "invalid event", "message": "Event object is invalid", "errors": list(errors)},
    )


def _is_blank(value: Any) -> bool:
    return not isinstance(value, str) or not value.strip()


def _payload_errors(payload: Any) -> list[str]:
    if not isinstance(payload, dict):
        return ["'payload' is missing or not an object"]
    errors = []
    summary = payload.get("summary")
    if not isinstance(summary, str) or _is_blank(summary):
        errors.append("'payload.summary' is missing or blank")
    elif len(summary) > 1024:
        errors.append("'payload.summary' is too long (maximum is 1024 characters)")
    if _is_blank(payload.get("source")):
        errors.append("'payload.source' is missing or blank")
    if payload.get("severity") not in SEVERITIES:
        errors.append("'payload.severity' must be one of: critical, error, warning, info")
    timestamp = payload.get("timestamp")
    if timestamp is not None:
        try:
            dt.datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
        except ValueError:
            errors.append("'payload.timestamp' is not a valid ISO 8601 timestamp")
    for name in ("component", "group", "class"):
        if name in payload and not isinstance(payload[name], str):
            errors.append(f"'payload.{name}' must be a string")
    return errors


def _links_errors(links: Any) -> list[str]:
    if links is None:
        return []
    if not isinstance(links, list):
        return ["'links' must be an array"]
    errors = []
    for link in links:
        if not isinstance(link, dict) or _is_blank(link.get("href")):
            errors.append("'links[].href' is missing or blank")
        elif "text" in link and not isinstance(link["text"], str):
            errors.append("'links[].text' must be a string")
    return errors


class FakePagerDuty(ScriptedFake[Answer]):
    """PagerDuty's Events API v2 on a local port; see the module docstring."""

    hosts = (HOST,)

    def __init__(self) -> None:
        super().__init__()
        self.incidents: list[Incident] = []
        self._open: dict[tuple[str, str], Incident] = {}
        self._keys: set[str] = set()

    # -- set-up and inspection -------------------------------------------------------------

    def add_routing_key(self, key: str | None = None) -> str:
        key = key or uuid.uuid4().hex
        with self._lock:
            self._keys.add(key)
        return key

    def incidents_for(self, routing_key: str) -> list[Incident]:
        with self._lock:
            return [i for i in self.incidents if i.routing_key == routing_key]

    def wait_for(self, routing_key: str, count: int, timeout: float = 30.0) -> list[Incident]:
        return wait_for_count(
            lambda: self.incidents_for(routing_key), count, timeout, "PagerDuty incidents"
        )

    # -- PagerDuty's behaviour -------------------------------------------------------------

    def _answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        if path.split("?")[0] != "/v2/enqueue":
            return Answer(404, "Not Found")
        if method != "POST":
            return Answer(405, "Method Not Allowed")
        if len(body) > MAX_BYTES:
            return _invalid("Event object is larger than 512 KB")
        if headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _invalid("Content-Type must be application/json")
        try:
            event = json.loads(body)
        except ValueError:
            return _invalid("Event object is not valid JSON")
        if not isinstance(event, dict):
            return _invalid("Event object must be a JSON object")
        return self._event(event)

    def _event(self, event: dict[str, Any]) -> Answer:
        errors: list[str] = []
        key = event.get("routing_key")
        if not isinstance(key, str) or _is_blank(key):
            errors.append("'routing_key' is missing or blank")
        else:
            if len(key) != 32:
                errors.append("Length of 'routing_key' is incorrect (should be 32 characters)")
            if not key.isalnum() or not key.isascii():
                errors.append("'routing_key' cannot contain non-alphanumeric characters.")
        action = event.get("event_action")
        if action not in ACTIONS:
            errors.append("'event_action' is invalid (must be trigger, acknowledge or resolve)")
        dedup = event.get("dedup_key")
        if dedup is not None and (not isinstance(dedup, str) or len(dedup) > 255):
            errors.append("'dedup_key' must be a string of at most 255 characters")
        if action in ("acknowledge", "resolve") and _is_blank(dedup):
            errors.append("'dedup_key' is missing or blank")
        if action == "trigger":
            errors += _payload_errors(event.get("payload"))
        errors += _links_errors(event.get("links"))
        if errors:
            return _invalid(*errors)
        with self._lock:
            if key not in self._keys:
                return _invalid("Invalid routing key")
            dedup_key = dedup or uuid.uuid4().hex
            self._apply(key, str(action), dedup_key, event)
        return Answer(
            202, {"status": "success", "message": "Event processed", "dedup_key": dedup_key}
        )

    def _apply(self, key: str, action: str, dedup_key: str, event: dict[str, Any]) -> None:
        """PagerDuty's dedup: one open incident per (routing_key, dedup_key)."""
        incident = self._open.get((key, dedup_key))
        if action == "trigger":
            if incident is None:
                incident = Incident(len(self.incidents) + 1, key, dedup_key, "triggered", [])
                self.incidents.append(incident)
                self._open[(key, dedup_key)] = incident
            incident.events.append(event)
        elif incident is not None:
            incident.events.append(event)
            if action == "resolve":
                incident.status = "resolved"
                del self._open[(key, dedup_key)]
            else:
                incident.status = "acknowledged"
