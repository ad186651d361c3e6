"""A local Opsgenie Alert API that checks requests as VENDORS.md states.

Real HTTP on 127.0.0.1. Point a sink at it with `ALERTRELAY_HOST_OVERRIDES=<fake.override>`
(both `api.opsgenie.com` and `api.eu.opsgenie.com`) while the configured URL keeps its
real form.

What it enforces and answers (Opsgenie's JSON shapes):
- `POST /v2/alerts` with `Authorization: GenieKey <key>` of a registered key (else
  401 "Could not authenticate"); a key registered without create access gets 403.
- `Content-Type: application/json`, a JSON object (else 400).
- Fields, else 422 with per-field `errors`: `message` required, non-blank, ≤ 130; `alias`
  ≤ 512; `description` ≤ 15 000; `responders` [{type: team|user|escalation|schedule, id or
  name}]; `tags` ≤ 20 strings of ≤ 50; `details` a string→string map; `entity` ≤ 512;
  `source` ≤ 100; `priority` P1..P5. Lengths in UTF-16 units, as Java counts them.
- 202 `{"result": "Request will be processed", "took", "requestId"}`; errors
  `{"message", "took", "requestId"}` (+ `errors` for 422).
- Asynchronous processing as Opsgenie does it: `GET /v2/alerts/requests/{requestId}` tells
  the outcome (`data.isSuccess`, `data.status`); a responder team that does not exist
  fails there, not in the 202. `hold_processing()` leaves requests unprocessed (404).
- Dedup: an open alert with the same alias only counts up (`Alert.count`).
- `script()` queues raw answers (429, 5xx, …) for the next requests, before any checking.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.fakes._server import Received, ScriptedFake, wait_for_count

__all__ = ["Alert", "Answer", "FakeOpsgenie", "Received"]

HOSTS = ("api.opsgenie.com", "api.eu.opsgenie.com")
PRIORITIES = ("P1", "P2", "P3", "P4", "P5")
RESPONDER_TYPES = ("team", "user", "escalation", "schedule")
_REQUEST_STATUS = re.compile(r"/v2/alerts/requests/([^/?]+)")


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any] | str = ""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Alert:
    alert_id: str
    alias: str
    body: dict[str, Any]
    count: int = 1
    status: str = "open"


def _units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _too_long(value: Any, limit: int) -> bool:
    return isinstance(value, str) and _units(value) > limit


def _field_errors(body: dict[str, Any]) -> dict[str, str]:
    errors: dict[str, str] = {}
    message = body.get("message")
    if not isinstance(message, str) or not message.strip():
        errors["message"] = "Message can not be empty."
    elif _too_long(message, 130):
        errors["message"] = "Message can not be longer than 130 characters."
    for name, limit in (("alias", 512), ("description", 15000), ("entity", 512), ("source", 100)):
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            errors[name] = f"{name} must be a string."
        elif _too_long(value, limit):
            errors[name] = f"{name} can not be longer than {limit} characters."
    responders = body.get("responders", [])
    if not isinstance(responders, list) or any(
        not isinstance(r, dict)
        or r.get("type") not in RESPONDER_TYPES
        or not (r.get("id") or r.get("name") or r.get("username"))
        for r in responders
    ):
        errors["responders"] = "Responders must have a valid type and an id or name."
    tags = body.get("tags", [])
    if not isinstance(tags, list) or len(tags) > 20:
        errors["tags"] = "Tags can not be more than 20."
    elif any(not isinstance(t, str) or _too_long(t, 50) for t in tags):
        errors["tags"] = "Tags can not be longer than 50 characters."
    details = body.get("details", {})
    if not isinstance(details, dict) or any(
        not isinstance(k, str) or not isinstance(v, str) for k, v in details.items()
    ):
        errors["details"] = "Details must be a map of strings."
    if "priority" in body and body["priority"] not in PRIORITIES:
        errors["priority"] = "Priority should be one of [P1, P2, P3, P4, P5]."
    return errors


class FakeOpsgenie(ScriptedFake[Answer]):
    """Opsgenie's Alert API on a local port; see the module docstring."""

    methods = ("GET", "POST", "PUT", "DELETE")
    hosts = HOSTS

    def __init__(self) -> None:
        super().__init__()
        self.alerts: list[Alert] = []
        self._open: dict[str, Alert] = {}
        self._keys: dict[str, bool] = {}  # key -> may create
        self._teams: set[str] = set()
        self._statuses: dict[str, dict[str, Any]] = {}
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._hold = False

    # -- set-up and inspection -------------------------------------------------------------

    def add_key(self, key: str | None = None, *, can_create: bool = True) -> str:
        key = key or str(uuid.uuid4())
        with self._lock:
            self._keys[key] = can_create
        return key

    def add_team(self, team_id: str | None = None) -> str:
        team_id = team_id or str(uuid.uuid4())
        with self._lock:
            self._teams.add(team_id)
        return team_id

    def hold_processing(self, hold: bool = True) -> None:
        """While held, accepted requests stay unprocessed (request status 404)."""
        with self._lock:
            self._hold = hold
            if not hold:
                for request_id, body in self._pending:
                    self._process(request_id, body)
                self._pending.clear()

    def alert_by_alias(self, alias: str) -> Alert | None:
        with self._lock:
            return next((a for a in self.alerts if a.alias == alias), None)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Alert]:
        return wait_for_count(self._alerts, count, timeout, "Opsgenie alerts")

    def _alerts(self) -> list[Alert]:
        with self._lock:
            return list(self.alerts)

    # -- Opsgenie's behaviour --------------------------------------------------------------

    @staticmethod
    def _error(status: int, message: str, **extra: Any) -> Answer:
        body = {"message": message, "took": 0.001, "requestId": str(uuid.uuid4()), **extra}
        return Answer(status, body)

    def _answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        route = path.split("?")[0]
        auth = headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        with self._lock:
            may_create = self._keys.get(key.strip()) if scheme == "GenieKey" else None
        if may_create is None:
            return self._error(401, "Could not authenticate")
        status_match = _REQUEST_STATUS.fullmatch(route)
        if method == "GET" and status_match:
            return self._request_status(status_match.group(1))
        if route != "/v2/alerts" or method != "POST":
            return self._error(404, "Could not find the requested resource")
        if not may_create:
            return self._error(403, "You are not authorized to take this action.")
        if headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return self._error(400, "Content-Type must be application/json")
        try:
            alert = json.loads(body)
        except ValueError:
            return self._error(400, "Could not parse request body")
        if not isinstance(alert, dict):
            return self._error(400, "Request body must be a JSON object")
        errors = _field_errors(alert)
        if errors:
            return self._error(
                422, "Request body is not processable. Please check the errors.", errors=errors
            )
        request_id = str(uuid.uuid4())
        with self._lock:
            if self._hold:
                self._pending.append((request_id, alert))
            else:
                self._process(request_id, alert)
        return Answer(
            202, {"result": "Request will be processed", "took": 0.002, "requestId": request_id}
        )

    def _process(self, request_id: str, body: dict[str, Any]) -> None:
        """Opsgenie's asynchronous part: responders, then create or count up by alias."""
        now = dt.datetime.now(dt.UTC).isoformat()
        status: dict[str, Any] = {
            "success": True,
            "action": "Create",
            "processedAt": now,
            "integrationId": "fake-integration",
        }
        missing = [
            r["id"]
            for r in body.get("responders", [])
            if r.get("type") == "team" and r.get("id") and r["id"] not in self._teams
        ]
        if missing:
            status.update(isSuccess=False, status=f"Team with id [{missing[0]}] does not exist.")
            self._statuses[request_id] = status
            return
        alias = body.get("alias") or str(uuid.uuid4())
        existing = self._open.get(alias)
        if existing is not None:
            existing.count += 1
            status.update(isSuccess=True, status="Alert count incremented", alias=alias)
            status["alertId"] = existing.alert_id
        else:
            alert = Alert(str(uuid.uuid4()), alias, body)
            self.alerts.append(alert)
            self._open[alias] = alert
            status.update(isSuccess=True, status="Created alert", alias=alias)
            status["alertId"] = alert.alert_id
        self._statuses[request_id] = status

    def _request_status(self, request_id: str) -> Answer:
        with self._lock:
            status = self._statuses.get(request_id)
        if status is None:
            return self._error(404, "Request not found. It might not be processed, yet.")
        return Answer(200, {"data": status, "took": 0.001, "requestId": str(uuid.uuid4())})
