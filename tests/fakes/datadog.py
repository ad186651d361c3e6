"""A local Datadog API (Incidents v2, key validation) that checks requests as Datadog does.

What it enforces (VENDORS.md, Datadog Incidents API v2):
- `DD-API-KEY` must be the org's API key (else 401 `{"errors": ["Unauthorized"]}`), and
  `DD-APPLICATION-KEY` a valid application key (else 403 `{"errors": ["Forbidden"]}`);
  an application key without the needed permission gets 403 naming it.
- `POST /api/v2/incidents` (JSON): `data.type == "incidents"`; `attributes.title` a
  non-empty string; `customer_impacted` a boolean (with `customer_impact_scope` when
  true); `fields.<name>` `{type: dropdown|multiselect|textbox|autocomplete, value}`,
  `fields.severity.value` one of SEV-1..SEV-5 / UNKNOWN; `initial_cells` a list of
  `{cell_type: "markdown", content: {content: str}}`; unknown attributes refused.
  400 `{"errors": [...]}` otherwise; 201 `{"data": {"id", "type": "incidents",
  "attributes": {...}}}`.
- `GET /api/v2/incidents/search?query=...` (needs incident_read): facets `state:` and
  `severity:` are understood; other terms are matched as free text against titles.
  Datadog documents the facets only; free-text title matching is this fake's model
  (the sink checks every hit itself, so a looser real search cannot mislead it).
  `search_lag` hides incidents newer than that many seconds (indexing delay).
- `GET /api/v2/validate_keys` -> `{"status": "ok"}` (401 / 403 as above);
  `GET /api/v1/validate` -> `{"valid": true}` (API key only).
- `script(path, *answers)` makes the next requests to a path answer e.g. 429 with
  `X-RateLimit-*` headers or 503; every request is recorded with the host it was meant
  for (`X-Forwarded-Host`), so tests can check the configured site was used.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.fakes._server import ApiRequest, RoutedFake, wait_for_count

__all__ = ["Answer", "FakeDatadog", "Received"]

SEVERITIES = ("SEV-1", "SEV-2", "SEV-3", "SEV-4", "SEV-5", "UNKNOWN")
FIELD_TYPES = ("dropdown", "multiselect", "textbox", "autocomplete", "textarray", "metrictag")
CREATE_ATTRIBUTES = {
    "title",
    "customer_impacted",
    "customer_impact_scope",
    "fields",
    "initial_cells",
    "notification_handles",
    "incident_type_uuid",
    "is_test",
}


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Received(ApiRequest):
    @property
    def meant_for(self) -> str:
        """The vendor host the client addressed (set by the host-override transport)."""
        return self.headers.get("X-Forwarded-Host", self.headers.get("Host", ""))


def _bad(*messages: str) -> Answer:
    return Answer(400, {"errors": list(messages)})


class FakeDatadog(RoutedFake[Received, Answer]):
    methods = ("GET", "POST", "PATCH", "DELETE")
    request_type = Received

    def __init__(
        self,
        api_key: str = "0123456789abcdef0123456789abcdef",
        app_key: str = "0123456789abcdef0123456789abcdef01234567",
        *,
        permissions: tuple[str, ...] = ("incident_read", "incident_write"),
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.app_key = app_key
        self.permissions = set(permissions)
        self.search_lag = 0.0
        self.incidents: list[dict[str, Any]] = []
        self._created_at: dict[str, float] = {}

    # -- test helpers --------------------------------------------------------------------

    def created(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.incidents)

    def wait_for_incidents(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        return wait_for_count(self.created, count, timeout, "incidents")

    # -- the API -------------------------------------------------------------------------

    def _auth(self, req: Received, permission: str | None) -> Answer | None:
        if req.headers.get("DD-API-KEY") != self.api_key:
            return Answer(401, {"errors": ["Unauthorized"]})
        if req.headers.get("DD-APPLICATION-KEY") != self.app_key:
            return Answer(403, {"errors": ["Forbidden"]})
        if permission is not None and permission not in self.permissions:
            return Answer(403, {"errors": [f"Forbidden: missing the {permission} permission"]})
        return None

    def _route(self, req: Received) -> Answer:
        path = req.path.rstrip("/")
        if req.method == "POST" and path == "/api/v2/incidents":
            return self._auth(req, "incident_write") or self._create(req)
        if req.method == "GET" and path == "/api/v2/incidents/search":
            return self._auth(req, "incident_read") or self._search(req)
        if req.method == "GET" and path == "/api/v2/validate_keys":
            return self._auth(req, None) or Answer(200, {"status": "ok"})
        if req.method == "GET" and path == "/api/v1/validate":
            if req.headers.get("DD-API-KEY") != self.api_key:
                return Answer(403, {"errors": ["Forbidden"]})
            return Answer(200, {"valid": True})
        return Answer(404, {"errors": ["Not found"]})

    def _create(self, req: Received) -> Answer:
        if not req.headers.get("Content-Type", "").lower().startswith("application/json"):
            return Answer(415, {"errors": ["Unsupported Media Type"]})
        try:
            body = req.json()
        except ValueError:
            return _bad("Invalid JSON")
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            return _bad("data is required")
        if data.get("type") != "incidents":
            return _bad("data.type must be 'incidents'")
        attrs = data.get("attributes")
        if not isinstance(attrs, dict):
            return _bad("data.attributes is required")
        errors: list[str] = []
        unknown = sorted(set(attrs) - CREATE_ATTRIBUTES)
        if unknown:
            errors.append(f"unknown attributes: {', '.join(unknown)}")
        title = attrs.get("title")
        if not isinstance(title, str) or not title.strip():
            errors.append("title is required")
        impacted = attrs.get("customer_impacted")
        if not isinstance(impacted, bool):
            errors.append("customer_impacted is required and must be a boolean")
        elif impacted and not attrs.get("customer_impact_scope"):
            errors.append("customer_impact_scope is required when customer_impacted is true")
        fields = attrs.get("fields", {})
        if not isinstance(fields, dict):
            errors.append("fields must be an object")
        else:
            for name, value in fields.items():
                if not isinstance(value, dict) or value.get("type") not in FIELD_TYPES:
                    errors.append(f"fields.{name}: invalid field type")
                elif value["type"] == "dropdown" and not isinstance(value.get("value"), str):
                    errors.append(f"fields.{name}: a dropdown value must be a string")
            severity = fields.get("severity")
            if isinstance(severity, dict) and severity.get("value") not in SEVERITIES:
                errors.append(f"fields.severity: invalid value {severity.get('value')!r}")
        cells = attrs.get("initial_cells", [])
        if not isinstance(cells, list):
            errors.append("initial_cells must be a list")
        else:
            for i, cell in enumerate(cells):
                content = cell.get("content") if isinstance(cell, dict) else None
                if not isinstance(cell, dict) or cell.get("cell_type") != "markdown":
                    errors.append(f"initial_cells[{i}].cell_type must be 'markdown'")
                elif not isinstance(content, dict) or not isinstance(content.get("content"), str):
                    errors.append(f"initial_cells[{i}].content.content must be a string")
        if errors:
            return _bad(*errors)
        incident_id = str(uuid.uuid4())
        with self._lock:
            public_id = len(self.incidents) + 1
            severity_value = (fields.get("severity") or {}).get("value", "UNKNOWN")
            incident = {
                "id": incident_id,
                "type": "incidents",
                "attributes": {
                    "public_id": public_id,
                    "title": title,
                    "customer_impacted": impacted,
                    "severity": severity_value,
                    "state": "active",
                    "fields": fields,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                },
                "initial_cells": cells,
                "meant_for": req.meant_for,
            }
            self.incidents.append(incident)
            self._created_at[incident_id] = time.monotonic()
        shown = {k: v for k, v in incident.items() if k in ("id", "type", "attributes")}
        return Answer(201, {"data": shown})

    def _search(self, req: Received) -> Answer:
        query = req.query.get("query", [""])[0].strip()
        if not query:
            return _bad("query is required")
        size = int(req.query.get("page[size]", ["10"])[0])
        if not 1 <= size <= 100:
            return _bad("page[size] must be between 1 and 100")
        terms = re.findall(r'"[^"]*"|\S+', query)
        now = time.monotonic()
        with self._lock:
            hits = []
            for incident in self.incidents:
                if now - self._created_at[incident["id"]] < self.search_lag:
                    continue
                attrs = incident["attributes"]
                ok = True
                for term in terms:
                    if term.upper() in ("AND",):
                        continue
                    facet, sep, value = term.partition(":")
                    if sep and facet in ("state", "severity"):
                        ok = ok and value.strip("()") in str(attrs[facet])
                    else:
                        ok = ok and term.strip('"').lower() in attrs["title"].lower()
                if ok:
                    hits.append(incident)
        shown = [
            {"data": {k: v for k, v in i.items() if k in ("id", "type", "attributes")}}
            for i in hits[:size]
        ]
        return Answer(
            200,
            {
                "data": {
                    "type": "incidents_search_results",
                    "attributes": {"incidents": shown, "facets": {}, "total": len(hits)},
                },
                "meta": {"pagination": {"offset": 0, "size": len(shown)}},
            },
        )
