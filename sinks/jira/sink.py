"""Jira Cloud delivery: one issue per alert through REST v2, deduplicated by a label.

Request (VENDORS.md): `POST https://<site>.atlassian.net/rest/api/2/issue` with
`Authorization: Basic base64(email:api_token)` and `{"fields": {project, summary,
issuetype, description, labels, priority?}}`.

Idempotency. Jira has no idempotency key, so every issue carries the label
`alertrelay-<idempotency key>` (one per alert and integration) and, before creating,
the sink looks for it with JQL (`project = <id> AND labels = "<label>"`). It does that on
EVERY delivery, not only when `delivery.attempt > 0`: a replay or a re-delivery after a
crash is a fresh record with attempt 0, and the in-process retries of the shared policy
do not change `delivery.attempt` either, so "only on retries" would never search at all.
One GET per alert is cheap next to the create. Inside one process the sink also
remembers the labels it created (and serialises deliveries of the same label), which
covers Jira's search lag for a quick re-delivery.

What remains (documented, not hidden): Jira's search is eventually consistent, so a
create whose answer was lost (timeout) and that is retried before Jira indexed the new
issue, in another process or after a restart, can create a second issue with the same
label. The label makes such a duplicate easy to find (`labels = alertrelay-ar-...`).

Search API: VENDORS.md names `GET /rest/api/2/search`; Atlassian removed that endpoint
from Jira Cloud in 2025 (CHANGE-2046, it now answers 410 Gone), so the sink uses its
replacement `GET /rest/api/2/search/jql`, which takes the same `jql` parameter.

Test connection (`check`) creates nothing: `GET /rest/api/2/myself` proves the token and
email, then the create metadata of the project (`GET /rest/api/2/issue/createmeta/
{project}/issuetypes` and `.../issuetypes/{id}`) proves that the project is visible, the
issue type exists there, and the Labels (and, when enabled, Priority) fields are on its
create screen, which is exactly what a create would be refused for. The older
`createmeta?projectIds=` form is deprecated in Jira Cloud, hence the per-project form.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import httpx

from schemas.models import Alert, Delivery, EventType, IntegrationConfig, RiskLevel
from sinks.errors import DeliveryError, PermanentError, RetryableError
from sinks.http import Redactor, response_json
from sinks.jira.config import JiraSettings
from sinks.search_then_create import Existing, SearchThenCreateSink

__all__ = [
    "DESCRIPTION_MAX",
    "LABEL_PREFIX",
    "PRIORITY_BY_RISK",
    "SUMMARY_MAX",
    "JiraSink",
    "build_issue",
    "idempotency_label",
    "search_jql",
]

log = logging.getLogger(__name__)

PRIORITY_BY_RISK: Final[Mapping[RiskLevel, str]] = MappingProxyType(
    {
        RiskLevel.LOW: "Low",
        RiskLevel.MEDIUM: "Medium",
        RiskLevel.HIGH: "High",
        RiskLevel.CRITICAL: "Highest",
    }
)
"""Risk level -> Jira priority name, sent only with `priority_from_risk`.

The names of Jira Cloud's default priority scheme (Highest, High, Medium, Low, Lowest);
"high risk -> high priority" as the spec says, and critical gets the top one. Lowest is
left unused. A site with a renamed scheme gets a 400 that names the priority.
"""

SUMMARY_MAX: Final = 255
"""Jira refuses longer summaries; counted like Java strings (UTF-16 code units)."""
DESCRIPTION_MAX: Final = 32_767
"""Jira's limit for a text field (description) in UTF-16 code units."""
LABEL_MAX: Final = 255
LABEL_PREFIX: Final = "alertrelay-"

_EVENT_NAMES: Final[Mapping[EventType, str]] = MappingProxyType(
    {
        EventType.CLIENT_SIDE_RISK: "Client-side risk",
        EventType.PCI_SCOPE_CHANGE: "PCI scope change",
    }
)
_SAFE_LINK = re.compile(r"https?://[^\s\[\]|{}<>\"'\\^`]{1,2000}")
_NOT_ON_SCREEN = re.compile(r"(?i)cannot be set|appropriate screen|unknown")
_MESSAGE_MAX = 600
_ISSUE_PATH = "/rest/api/2/issue"


def idempotency_label(key: str) -> str:
    """The label that marks the one issue of an (alert, integration); no spaces allowed."""
    label = LABEL_PREFIX + re.sub(r"[^A-Za-z0-9_.-]", "-", key)
    return label[:LABEL_MAX]


def search_jql(project_id: str, label: str) -> str:
    """JQL for the issue carrying `label` (label characters need no escaping)."""
    return f'project = {project_id} AND labels = "{label}"'


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _cut(text: str, limit: int, marker: str = "…") -> str:
    """`text` within `limit` UTF-16 units, ending in `marker` when cut (never a half pair)."""
    if _utf16_len(text) <= limit:
        return text
    budget = limit - _utf16_len(marker)
    out: list[str] = []
    used = 0
    for char in text:
        size = 2 if ord(char) > 0xFFFF else 1
        if used + size > budget:
            break
        out.append(char)
        used += size
    return "".join(out) + marker


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _summary(alert: Alert) -> str:
    risk = alert.risk_level.value.capitalize()
    return _cut(_one_line(f"[{risk} risk] {alert.title}"), SUMMARY_MAX)


def _description(alert: Alert, label: str) -> str:
    """Wiki text: a fixed header, then every alert value inside one {noformat} block.

    Alert values are outside our control (script URLs, page titles), so they go into a
    noformat block, where Jira renders them literally: no markup, no links injected by
    a hostile script URL. Only the console link is a link, and only when it is a plain
    http(s) URL. The block is always closed, also when the text is cut to the limit.
    """
    event = _EVENT_NAMES.get(alert.event_type, alert.event_type.value)
    head = [f"*Code Defender alert* ({alert.risk_level.value} risk, {event})"]
    if alert.console_url and _SAFE_LINK.fullmatch(alert.console_url):
        head.append(f"[Open this alert in the console|{alert.console_url}]")
    rows = [
        ("Title", alert.title),
        ("Risk level", alert.risk_level.value),
        ("Event type", alert.event_type.value),
        ("Domain", alert.domain),
        ("Page URL", alert.page_url),
        ("Script URL", alert.script_url),
        ("Detected at", alert.detected_at.isoformat()),
        ("Console", alert.console_url),
        ("Alert ID", alert.alert_id),
    ]
    lines = [f"{name + ':':<13}{_one_line(value)}" for name, value in rows if value]
    if alert.description:
        lines += ["", "Description:", alert.description]
    if alert.details:
        lines += ["", "Details:"] + [f"  {k}: {v}" for k, v in alert.details.items()]
    body = re.sub(r"(?i)\{noformat", "{ noformat", "\n".join(lines))
    opening = "\n".join(head) + "\n\n{noformat}\n"
    closing = f"\n{{noformat}}\nSent by alertrelay. Deduplication label: {label}"
    room = DESCRIPTION_MAX - _utf16_len(opening) - _utf16_len(closing)
    return opening + _cut(body, room, "\n… [truncated: the console has the full alert]") + closing


def build_issue(delivery: Delivery, settings: JiraSettings) -> dict[str, Any]:
    """The create-issue body for one alert (VENDORS.md: Jira Cloud REST v2)."""
    alert = delivery.alert
    label = idempotency_label(delivery.idempotency_key)
    issue_type = settings.issue_type_name
    fields: dict[str, Any] = {
        "project": {"id": settings.project_id},
        "summary": _summary(alert),
        "issuetype": (
            {"id": issue_type} if re.fullmatch(r"[0-9]+", issue_type) else {"name": issue_type}
        ),
        "description": _description(alert, label),
        "labels": [label, "alertrelay", f"risk-{alert.risk_level.value}", alert.event_type.value],
    }
    if settings.priority_from_risk:
        fields["priority"] = {"name": PRIORITY_BY_RISK[alert.risk_level]}
    return {"fields": fields}


def _jira_errors(resp: httpx.Response) -> tuple[list[str], dict[str, str]]:
    """(errorMessages, errors) of Jira's error body; empty when it is not one."""
    body = response_json(resp)
    if not isinstance(body, dict):
        return [], {}
    messages = [str(m) for m in body.get("errorMessages") or [] if m]
    raw = body.get("errors")
    errors = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
    return messages, errors


class JiraSink(SearchThenCreateSink[JiraSettings]):
    """Creates one Jira issue per alert; see the module docstring for idempotency."""

    type_name = "jira"
    settings_model = JiraSettings
    vendor = "Jira"
    _log = log

    # -- plumbing ------------------------------------------------------------------------

    @staticmethod
    def _credentials(settings: JiraSettings) -> str:
        raw = f"{settings.reporter_email}:{settings.api_token.get_secret_value()}"
        return base64.b64encode(raw.encode("utf-8")).decode("ascii")

    def secrets(self, settings: JiraSettings) -> list[str]:
        """The Basic credentials too (base64 of email:token, as they travel), so the
        redactor built once per settings object hides them: it used to be built again
        for every alert, and the runner's own redactor missed them."""
        return [*super().secrets(settings), self._credentials(settings)]

    def _headers(self, settings: JiraSettings) -> dict[str, str]:
        return {
            "Authorization": f"Basic {self._credentials(settings)}",
            "Accept": "application/json",
        }

    def _base_url(self, settings: JiraSettings) -> str:
        return settings.base_url

    def _what(self, settings: JiraSettings) -> str:
        return f"Jira {settings.site}"

    def _fail(
        self, resp: httpx.Response, settings: JiraSettings, redact: Redactor, action: str
    ) -> DeliveryError:
        """The actionable error for a non-2xx answer to `action` (e.g. "create the issue")."""
        status = resp.status_code
        generic = self._classify(resp, settings, redact, action)
        if isinstance(generic, RetryableError):
            return generic
        messages, errors = _jira_errors(resp)
        who, project = settings.reporter_email, settings.project_id
        if status == 401:
            text = (
                f"401 from Jira trying to {action}: check the API token and reporter email "
                f"(the token must be a regular API token created by {who}; scoped tokens "
                "are not supported)"
            )
        elif status == 403 and "denied" in resp.headers.get("x-seraph-loginreason", "").lower():
            text = (
                f"403 from Jira: login of {who} is blocked by a CAPTCHA after failed "
                "logins; sign in to Jira in a browser once, then check the API token"
            )
        elif status == 403:
            detail = "; ".join(messages) or "forbidden"
            text = (
                f"403 from Jira trying to {action}: {who} lacks permission in project "
                f"{project} (needs Browse Projects and Create Issues): {detail}"
            )
        elif status == 404:
            text = (
                f"404 from Jira trying to {action}: project {project} does not exist on "
                f"{settings.site} or {who} cannot see it"
            )
        elif status == 410:
            text = f"410 from Jira trying to {action}: Jira removed this API: " + "; ".join(
                messages
            )
        elif status == 400 and (messages or errors):
            parts = [self._field_error(name, msg, settings) for name, msg in errors.items()]
            parts += [self._jql_error(msg, settings) for msg in messages]
            text = f"Jira refused to {action} (400): " + "; ".join(parts)
        else:
            text = generic
        message = redact(_cut(_one_line(text), _MESSAGE_MAX))
        return PermanentError(message, status=status)

    @staticmethod
    def _jql_error(message: str, settings: JiraSettings) -> str:
        """Jira's search says an unknown or invisible project "does not exist"."""
        if re.search(r"does not exist for the field 'project'", message):
            return (
                f"project {settings.project_id} does not exist or {settings.reporter_email} "
                f"cannot see it ({message})"
            )
        return message

    @staticmethod
    def _field_error(name: str, message: str, settings: JiraSettings) -> str:
        project = settings.project_id
        if name == "labels":
            if _NOT_ON_SCREEN.search(message):
                return (
                    "Labels field must exist in the project (spec prerequisite): add Labels "
                    f"to the create screen of project {project} ({message})"
                )
            return f"labels: {message}"
        if name == "issuetype":
            return (
                f"issue type {settings.issue_type_name} does not exist in project {project} "
                f"({message})"
            )
        if name == "priority":
            if _NOT_ON_SCREEN.search(message):
                return (
                    f"the Priority field is not on the create screen of project {project}: "
                    f"add it or turn off priority_from_risk ({message})"
                )
            return (
                "a risk-based priority (Low, Medium, High, Highest) is not in this Jira's "
                f"priority scheme: adjust it or turn off priority_from_risk ({message})"
            )
        if name == "project":
            return (
                f"project {project} does not exist or {settings.reporter_email} cannot "
                f"create issues in it ({message})"
            )
        if name.startswith("customfield_") or "required" in message.lower():
            return (
                f"{name}: {message} (a field alertrelay does not fill is required on the "
                "create screen: make it optional or give it a default)"
            )
        return f"{name}: {message}"

    # -- delivery ------------------------------------------------------------------------

    def _dedup(self, delivery: Delivery, settings: JiraSettings) -> tuple[str, str]:
        return settings.site, idempotency_label(delivery.idempotency_key)

    async def _find(self, settings: JiraSettings, label: str, redact: Redactor) -> Existing | None:
        """The issue already carrying `label`, if Jira's search finds one (its status is
        logged)."""
        resp = await self._call(
            "GET",
            "/rest/api/2/search/jql",
            settings,
            redact,
            params={
                "jql": search_jql(settings.project_id, label),
                "fields": "status",
                "maxResults": "1",
            },
        )
        if resp.status_code != 200:
            raise self._fail(resp, settings, redact, "search for an existing issue")
        body = response_json(resp)
        issues = body.get("issues") if isinstance(body, dict) else None
        if not isinstance(issues, list):
            raise RetryableError(f"Jira {settings.site} answered the search without issues")
        found = issues[0] if issues else None
        if not isinstance(found, dict):
            return None
        key = str(found.get("key") or found.get("id") or "?")
        fields = found.get("fields")
        state = fields.get("status") if isinstance(fields, dict) else None
        name = state.get("name") if isinstance(state, dict) else None
        return Existing(key, resp.status_code, f"Jira issue {key} (status {name or 'unknown'})")

    async def _create(
        self, delivery: Delivery, settings: JiraSettings, redact: Redactor
    ) -> tuple[str, int]:
        resp = await self._call(
            "POST", _ISSUE_PATH, settings, redact, body=build_issue(delivery, settings)
        )
        if resp.status_code != 201:
            if 200 <= resp.status_code < 300:
                raise PermanentError(
                    f"Jira {settings.site} answered {resp.status_code} instead of 201 "
                    "to the create: is the URL a Jira Cloud site?",
                    status=resp.status_code,
                )
            raise self._fail(resp, settings, redact, "create the issue")
        created = response_json(resp)
        new_key = created.get("key") if isinstance(created, dict) else None
        return str(new_key or "?"), resp.status_code

    # -- Test connection -----------------------------------------------------------------

    async def _pages(
        self, path: str, keys: tuple[str, ...], settings: JiraSettings, redact: Redactor
    ) -> list[dict[str, Any]]:
        """All items of a paginated createmeta answer (at most 10 pages of 200)."""
        items: list[dict[str, Any]] = []
        start = 0
        for _ in range(10):
            resp = await self._call(
                "GET",
                path,
                settings,
                redact,
                params={"startAt": str(start), "maxResults": "200"},
            )
            if resp.status_code != 200:
                raise self._fail(resp, settings, redact, "read the project's create metadata")
            body = response_json(resp)
            if not isinstance(body, dict):
                raise PermanentError(f"Jira {settings.site} answered createmeta without JSON")
            page: list[Any] = next((body[k] for k in keys if isinstance(body.get(k), list)), [])
            items += [item for item in page if isinstance(item, dict)]
            total = body.get("total")
            start += len(page)
            if not page or body.get("isLast") is True:
                break
            if not isinstance(total, int) or start >= total:
                break
        return items

    async def check(self, integration: IntegrationConfig, settings: JiraSettings) -> str:
        """Credentials, project, issue type and create-screen fields, creating nothing."""
        redact = self._redactor(settings)
        resp = await self._call("GET", "/rest/api/2/myself", settings, redact)
        if resp.status_code != 200:
            raise self._fail(resp, settings, redact, "read the account (myself)")
        me = response_json(resp)
        me = me if isinstance(me, dict) else {}
        email = me.get("emailAddress")
        if isinstance(email, str) and email and email.lower() != settings.reporter_email.lower():
            raise PermanentError(
                f"the API token belongs to {email}, not to the reporter email "
                f"{settings.reporter_email}: the spec allows only tokens of the reporter"
            )
        project = settings.project_id
        base = f"/rest/api/2/issue/createmeta/{project}/issuetypes"
        types = await self._pages(
            base, ("issueTypes", "values", "createMetaIssueType"), settings, redact
        )
        wanted = settings.issue_type_name
        chosen = next(
            (
                t
                for t in types
                if str(t.get("id")) == wanted or str(t.get("name", "")).lower() == wanted.lower()
            ),
            None,
        )
        if chosen is None:
            names = ", ".join(sorted(str(t.get("name")) for t in types)) or "none"
            raise PermanentError(
                f"issue type {wanted} does not exist in project {project} "
                f"(available to {settings.reporter_email}: {names})"
            )
        fields = await self._pages(
            f"{base}/{chosen.get('id')}", ("fields", "values", "results"), settings, redact
        )
        by_id = {str(f.get("fieldId") or f.get("key")): f for f in fields}
        if "labels" not in by_id:
            raise PermanentError(
                f"Labels field must exist in the project (spec prerequisite): the create "
                f"screen of {wanted} issues in project {project} has no Labels field"
            )
        if settings.priority_from_risk:
            priority = by_id.get("priority")
            if priority is None:
                raise PermanentError(
                    f"the Priority field is not on the create screen of {wanted} issues in "
                    f"project {project}: add it or turn off priority_from_risk"
                )
            allowed = priority.get("allowedValues")
            if isinstance(allowed, list) and allowed:
                names_ok = {str(v.get("name")) for v in allowed if isinstance(v, dict)}
                missing = [p for p in PRIORITY_BY_RISK.values() if p not in names_ok]
                if missing:
                    raise PermanentError(
                        f"priorities {', '.join(missing)} are not in project {project}'s "
                        "priority scheme: adjust it or turn off priority_from_risk"
                    )
        filled = {
            "project",
            "summary",
            "issuetype",
            "description",
            "labels",
            "priority",
            "reporter",
        }
        blocking = sorted(
            str(f.get("name") or key)
            for key, f in by_id.items()
            if f.get("required") and not f.get("hasDefaultValue") and key not in filled
        )
        if blocking:
            raise PermanentError(
                f"the create screen of {wanted} issues in project {project} requires "
                f"{', '.join(blocking)}, which alertrelay does not fill: make them optional "
                "or give them a default"
            )
        who = me.get("displayName") or settings.reporter_email
        extra = " and Priority" if settings.priority_from_risk else ""
        return (
            f"authenticated as {who}; project {project} accepts {chosen.get('name')} issues "
            f"with Labels{extra} (nothing was created)"
        )
