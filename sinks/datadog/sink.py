"""Datadog Incidents delivery: one incident per alert through the v2 Incidents API.

Request (VENDORS.md): `POST https://api.<site>/api/v2/incidents` with `DD-API-KEY` and
`DD-APPLICATION-KEY`, body `{"data": {"type": "incidents", "attributes": {title,
customer_impacted: false, fields: {severity: {type: dropdown, value: SEV-n}},
initial_cells: [markdown cell]}}}`. The host is always the configured site's API host.

Idempotency: what is and is not guaranteed. Datadog incidents have no dedup key. Each
incident title ends with a marker, `[ar<16 hex>]`, a digest of the alert's idempotency
key (one per alert and integration; the markdown cell carries the full key). Before
creating, the sink searches for the marker (`GET /api/v2/incidents/search?query=<marker>`)
and creates nothing when an incident whose TITLE contains the marker comes back. The
match is checked here, so a search that matches loosely can never suppress a new alert.
- Guaranteed: within one process, a re-delivery of an alert this process delivered
  (the last 4096) creates nothing; the sink remembers what it created and serialises
  deliveries of the same alert, so concurrent duplicates create one incident.
- Best effort: across processes and restarts (replays, crash re-deliveries) it relies
  on the search finding the marker. Datadog documents facet queries for this beta
  endpoint, not free-text matching of titles, and its search is not read-after-write;
  this was verified against the local fake only. If free text is ignored, or a create
  whose answer was lost is retried elsewhere before indexing, a duplicate incident
  appears. The marker makes such a duplicate easy to spot.
- Search needs `incident_read`. Without it (403), or when Datadog refuses the query
  (400/404), the sink still delivers, without duplicate protection, and logs a warning;
  it then skips the search for those keys on that site for 10 minutes. Test connection says
  whether duplicate protection works.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import httpx

from schemas.models import Alert, Delivery, EventType, IntegrationConfig, RiskLevel
from sinks.datadog.config import INCIDENTS_PATH, DatadogSettings
from sinks.errors import DeliveryError, PermanentError, RetryableError
from sinks.http import Redactor, response_json
from sinks.search_then_create import Existing, SearchThenCreateSink

if TYPE_CHECKING:
    from sinks.registry import SinkContext

__all__ = [
    "MARKDOWN_MAX",
    "SEVERITY_BY_RISK",
    "TITLE_MAX",
    "DatadogSink",
    "build_incident",
    "dedup_marker",
]

log = logging.getLogger(__name__)

SEVERITY_BY_RISK: Final[Mapping[RiskLevel, str]] = MappingProxyType(
    {
        RiskLevel.CRITICAL: "SEV-1",
        RiskLevel.HIGH: "SEV-2",
        RiskLevel.MEDIUM: "SEV-3",
        RiskLevel.LOW: "SEV-4",
    }
)
"""Risk level -> Datadog incident severity (the `severity` dropdown field).

Datadog's default scale: SEV-1 critical, SEV-2 high, SEV-3 moderate, SEV-4 low,
SEV-5 minor. Our four levels take the first four; SEV-5 and UNKNOWN are not used.
"""

TITLE_MAX: Final = 255
"""Our bound for the title (Datadog documents none); the marker is always kept whole."""
MARKDOWN_MAX: Final = 16_000
"""Our bound for the initial markdown cell (Datadog documents none); cut text says so."""

_EVENT_NAMES: Final[Mapping[EventType, str]] = MappingProxyType(
    {
        EventType.CLIENT_SIDE_RISK: "Client-side risk",
        EventType.PCI_SCOPE_CHANGE: "PCI scope change",
    }
)
_SAFE_LINK = re.compile(r"https?://[^\s()<>\[\]\"'\\`]{1,2000}")
_MD_INLINE = re.compile(r"([\\`*_\[\]<>|~])")
_BLOCK_START = re.compile(r"^(\s*)([#>+=-])")
_ORDERED_START = re.compile(r"^(\s*\d+)([.)])")
_INLINE_MAX = 500
_MESSAGE_MAX = 600
_NO_SEARCH_FOR = 600.0
_SEARCH_PATH = "/api/v2/incidents/search"
_VALIDATE_PATH = "/api/v2/validate_keys"


def dedup_marker(idempotency_key: str) -> str:
    """The title marker of an (alert, integration): one search token, no facet syntax."""
    return "ar" + hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:16]


def _escape(text: str) -> str:
    """Markdown-inert text on one line: emphasis, code, links, HTML, tables, strikes.

    Only the characters that start inline markup are escaped (CommonMark backslash
    escapes), so URLs and dates stay readable in the raw text too.
    """
    return _MD_INLINE.sub(r"\\\1", " ".join(text.split()))


def _code(text: str) -> str:
    """An inline code span: shown literally, never a link (hostile script URLs)."""
    text = " ".join(text.split())
    ticks = "`" * (1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _escape_block(text: str) -> str:
    """Markdown-inert multi-line text: inline markup, and block markers at line starts
    (headings, quotes, lists, setext underlines) so a line cannot change the layout."""
    lines = []
    for line in _MD_INLINE.sub(r"\\\1", text).splitlines():
        line = _BLOCK_START.sub(lambda m: m.group(1) + "\\" + m.group(2), line, count=1)
        lines.append(_ORDERED_START.sub(r"\1\\\2", line, count=1))
    return "\n".join(lines)


def _cut(text: str, limit: int, marker: str = "…") -> str:
    return text if len(text) <= limit else text[: max(0, limit - len(marker))] + marker


def _escaped_within(raw: str, room: int, marker: str) -> str:
    """`raw` escaped and, when too long, cut BEFORE escaping (no escape is split) to the
    longest prefix that fits in `room` together with `marker`."""
    escaped = _escape_block(raw)
    if len(escaped) <= room:
        return escaped
    low, high = 0, min(len(raw), max(0, room))
    while low < high:  # the longest prefix whose escaped form fits
        mid = (low + high + 1) // 2
        if len(_escape_block(raw[:mid])) + len(marker) <= room:
            low = mid
        else:
            high = mid - 1
    return _escape_block(raw[:low]) + marker


def _title(alert: Alert, marker: str) -> str:
    suffix = f" [{marker}]"
    head = " ".join(f"[{alert.risk_level.value.capitalize()} risk] {alert.title}".split())
    return _cut(head, TITLE_MAX - len(suffix)) + suffix


def _markdown(alert: Alert, key: str) -> str:
    """The initial timeline cell: fields, console link, description, details.

    Alert values are escaped (no markup or links smuggled in); the URL and domain
    fields are code spans, so a hostile script URL is never made clickable, not even by
    a renderer that auto-links bare URLs (free text such as the description may still
    be auto-linked there). Only the console URL becomes a link, and only when it is a
    plain http(s) URL. The details go into a code fence longer than any backtick run
    they contain. Cutting to `MARKDOWN_MAX` shortens the description and the details,
    and the fence is always closed.
    """
    event = _EVENT_NAMES.get(alert.event_type, alert.event_type.value)
    head = [f"**Code Defender alert**: {alert.risk_level.value} risk, {event}", ""]
    if alert.console_url and _SAFE_LINK.fullmatch(alert.console_url):
        head += [f"[Open this alert in the Code Defender console]({alert.console_url})", ""]
    rows = [  # (name, value, as code: URLs and hosts, never auto-linked)
        ("Title", alert.title, False),
        ("Risk level", alert.risk_level.value, False),
        ("Event type", alert.event_type.value, False),
        ("Domain", alert.domain, True),
        ("Page URL", alert.page_url, True),
        ("Script URL", alert.script_url, True),
        ("Detected at", alert.detected_at.isoformat(), False),
        ("Console", alert.console_url, True),
        ("Alert ID", alert.alert_id, False),
    ]
    head += [
        f"- **{name}:** " + (_code if code else _escape)(_cut(value, _INLINE_MAX))
        for name, value, code in rows
        if value
    ]
    tail = f"\n\n_Sent by alertrelay. Idempotency key: {_escape(key)}_"
    text = "\n".join(head)
    room = MARKDOWN_MAX - len(text) - len(tail)
    cut_note = "… (truncated: the console has the full alert)"
    details = "\n".join(f"{k}: {v}" for k, v in (alert.details or {}).items())
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", details)), default=0))
    details_frame = len(f"\n\n**Details**\n\n{fence}text\n\n{fence}")
    if alert.description:
        label = "\n\n**Description**\n\n"
        share = room - len(label) - (details_frame + min(len(details), room // 2) if details else 0)
        body = _escaped_within(alert.description, max(0, share), cut_note)
        text += label + body
        room -= len(label) + len(body)
    if details:
        body = _cut(details, max(0, room - details_frame), "\n" + cut_note)
        text += f"\n\n**Details**\n\n{fence}text\n{body}\n{fence}"
    return text + tail


def build_incident(delivery: Delivery) -> dict[str, Any]:
    """The create-incident body for one alert (VENDORS.md: Datadog Incidents API v2)."""
    alert = delivery.alert
    return {
        "data": {
            "type": "incidents",
            "attributes": {
                "title": _title(alert, dedup_marker(delivery.idempotency_key)),
                "customer_impacted": False,
                "fields": {
                    "severity": {"type": "dropdown", "value": SEVERITY_BY_RISK[alert.risk_level]}
                },
                "initial_cells": [
                    {
                        "cell_type": "markdown",
                        "content": {"content": _markdown(alert, delivery.idempotency_key)},
                    }
                ],
            },
        }
    }


def _errors(resp: httpx.Response) -> str:
    body = response_json(resp)
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list):
        return "; ".join(str(e) for e in errors if e)
    return ""


class DatadogSink(SearchThenCreateSink[DatadogSettings]):
    """Creates one Datadog incident per alert; see the module docstring for idempotency."""

    type_name = "datadog"
    settings_model = DatadogSettings
    vendor = "Datadog"
    _log = log

    def __init__(self, ctx: SinkContext) -> None:
        super().__init__(ctx)
        self._no_search_until: dict[str, float] = {}

    # -- plumbing ------------------------------------------------------------------------

    def _headers(self, settings: DatadogSettings) -> dict[str, str]:
        return {
            "DD-API-KEY": settings.api_key.get_secret_value(),
            "DD-APPLICATION-KEY": settings.application_key.get_secret_value(),
            "Accept": "application/json",
        }

    @staticmethod
    def _account(settings: DatadogSettings) -> str:
        """Which keys on which site, without the keys: the key of per-account state."""
        raw = "\x00".join(
            [
                settings.api_base,
                settings.api_key.get_secret_value(),
                settings.application_key.get_secret_value(),
            ]
        )
        return hashlib.sha256(raw.encode()).hexdigest()

    def _base_url(self, settings: DatadogSettings) -> str:
        return settings.api_base

    def _what(self, settings: DatadogSettings) -> str:
        return f"Datadog api.{settings.site}"

    def _fail(
        self, resp: httpx.Response, settings: DatadogSettings, redact: Redactor, action: str
    ) -> DeliveryError:
        """The actionable error for a non-2xx answer to `action`."""
        status = resp.status_code
        site = settings.site
        generic = self._classify(resp, settings, redact, action)
        if isinstance(generic, RetryableError):
            return generic
        detail = _errors(resp)
        said = f" (Datadog said: {detail})" if detail else ""
        if status == 400:
            text = f"Datadog refused to {action} (400){said}"
        elif status == 401:
            text = (
                f"401 from Datadog trying to {action}: check the API key; it must belong to "
                f"the org on {site} (keys do not work across sites){said}"
            )
        elif status == 403:
            text = (
                f"403 from Datadog trying to {action}: check the application key: it must be "
                f"valid on {site}, belong to the same org as the API key and have the "
                f"incident_write permission{said}"
            )
        elif status == 404:
            text = (
                f"404 from Datadog trying to {action}: no Incidents API at api.{site}; check "
                f"the site and that Incident Management is enabled for the org{said}"
            )
        else:
            text = generic
        return PermanentError(redact(_cut(" ".join(text.split()), _MESSAGE_MAX)), status=status)

    # -- delivery ------------------------------------------------------------------------

    def _dedup(self, delivery: Delivery, settings: DatadogSettings) -> tuple[str, str]:
        return settings.api_base, dedup_marker(delivery.idempotency_key)

    async def _find(
        self, settings: DatadogSettings, marker: str, redact: Redactor
    ) -> Existing | None:
        """The incident whose title carries `marker`; None also when the search is
        unusable for this account, so delivery goes on without it."""
        account = self._account(settings)
        if self._no_search_until.get(account, 0.0) > time.monotonic():
            return None
        resp = await self._call(
            "GET", _SEARCH_PATH, settings, redact, params={"query": marker, "page[size]": "100"}
        )
        if resp.status_code in (400, 403, 404):
            self._no_search_until[account] = time.monotonic() + _NO_SEARCH_FOR
            reason = self._fail(resp, settings, redact, "search incidents").message
            log.warning(
                "Datadog incident search unusable on %s, delivering without duplicate "
                "protection for %.0f s (does the application key have incident_read?): %s",
                settings.site,
                _NO_SEARCH_FOR,
                reason,
            )
            return None
        if resp.status_code != 200:
            raise self._fail(resp, settings, redact, "search for an existing incident")
        body = response_json(resp)
        data = body.get("data") if isinstance(body, dict) else None
        attributes = data.get("attributes") if isinstance(data, dict) else None
        found = attributes.get("incidents") if isinstance(attributes, dict) else None
        for item in found if isinstance(found, list) else []:
            incident = item.get("data") if isinstance(item, dict) else None
            if not isinstance(incident, dict):
                continue
            attrs = incident.get("attributes")
            title = attrs.get("title") if isinstance(attrs, dict) else None
            if isinstance(title, str) and f"[{marker}]" in title:
                ident = incident.get("id")
                return Existing(str(ident), resp.status_code, f"Datadog incident {ident}")
        return None

    async def _create(
        self, delivery: Delivery, settings: DatadogSettings, redact: Redactor
    ) -> tuple[str, int]:
        resp = await self._call(
            "POST", INCIDENTS_PATH, settings, redact, body=build_incident(delivery)
        )
        if resp.status_code not in (200, 201):
            raise self._fail(resp, settings, redact, "create the incident")
        created = response_json(resp)
        data = created.get("data") if isinstance(created, dict) else None
        return str(data.get("id") if isinstance(data, dict) else "?"), resp.status_code

    # -- Test connection -----------------------------------------------------------------

    async def check(self, integration: IntegrationConfig, settings: DatadogSettings) -> str:
        """Both keys on the configured site, and whether duplicate protection works.

        `incident_write` itself cannot be proven without creating an incident, which a
        Test should not do in an incident tool (it would page people); the first real
        alert proves it, and a 403 then names the permission.
        """
        redact = self.redactor(settings)
        resp = await self._call("GET", _VALIDATE_PATH, settings, redact)
        if resp.status_code != 200:
            raise self._fail(resp, settings, redact, "validate the keys")
        body = response_json(resp)
        if not (isinstance(body, dict) and body.get("status") == "ok"):
            raise PermanentError(f"Datadog api.{settings.site} did not confirm the keys")
        probe = dedup_marker(f"alertrelay-check-{time.time_ns()}")
        resp = await self._call(
            "GET", _SEARCH_PATH, settings, redact, params={"query": probe, "page[size]": "1"}
        )
        if resp.status_code == 200:
            dedup = "duplicate protection on (incident search works)"
        elif resp.status_code in (400, 403, 404):
            reason = self._fail(resp, settings, redact, "search incidents").message
            dedup = (
                "duplicate protection OFF, re-deliveries may create duplicate incidents "
                f"(give the application key incident_read): {reason}"
            )
        else:
            reason = self._fail(resp, settings, redact, "search incidents").message
            dedup = f"duplicate protection could not be checked now: {reason}"
        return (
            f"API and application keys valid on {settings.site}; {dedup}; incident_write is "
            "proven by the first alert (Test creates no incident)"
        )
