"""A local Jira Cloud (REST v2) that checks requests as Jira does and answers like it.

What it enforces (VENDORS.md, Jira Cloud REST v2):
- `Authorization: Basic base64(email:api_token)` on every call, else 401 with Jira's
  `{"errorMessages": [...], "errors": {}}` body.
- `POST /rest/api/2/issue` (JSON only, else 415): `fields.project.id` of a known project
  (400 `errors.project`), 403 for a project the user may not create in,
  `issuetype` `{name}` or `{id}` of one of the project's types (400 `errors.issuetype`),
  `summary` required, one line, <= 255 (Java/UTF-16 length), `description` <= 32 767,
  `labels` only when on the create screen (400 "Field 'labels' cannot be set...") and
  without spaces, <= 255 each; `priority` only when on the screen and one of the
  site's priorities; any other field must be on the screen; required custom fields
  must be given. Errors of one request are reported together, as Jira does.
  201 `{"id", "key", "self"}`.
- `GET /rest/api/2/search/jql?jql=...` answers `{"issues": [...], "isLast": true}` for
  `[project = N AND] labels = "x"` (the only JQL it parses; anything else is a 400 JQL
  error). `search_lag` hides issues newer than that many seconds (Jira's index lag).
  The removed `GET /rest/api/2/search` answers 410 Gone with Atlassian's message.
- `GET /rest/api/2/myself`; `GET /rest/api/2/issue/createmeta/{project}/issuetypes` and
  `.../issuetypes/{id}` (paginated with startAt/maxResults/total), 404 for an unknown
  project.
- `/rest/api/3/...` is not served here (404): the integration must use v2.
- `script(path, *answers)` makes the next requests to a path answer 429 with
  Retry-After, 503 and so on; every request is recorded.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from dataclasses import dataclass, field
from typing import Any

from tests.fakes._server import ApiRequest, RoutedFake, wait_for_count

__all__ = ["Answer", "FakeJira", "Issue", "Project", "Received"]

DEFAULT_PRIORITIES = ("Highest", "High", "Medium", "Low", "Lowest")
SYSTEM_SCREEN = ("summary", "issuetype", "project", "description", "reporter", "labels", "priority")
_NOT_ON_SCREEN = "Field '{0}' cannot be set. It is not on the appropriate screen, or unknown."
_REMOVED = (
    "The requested API has been removed. Please migrate to the /rest/api/2/search/jql API. "
    "A full migration guideline is available at "
    "https://developer.atlassian.com/changelog/#CHANGE-2046"
)
_UNAUTHENTICATED = "You are not authenticated. Authentication required to perform this operation."
_JQL = re.compile(
    r'\s*(?:project\s*=\s*"?(?P<project>\d+)"?\s+AND\s+)?labels\s*=\s*"(?P<label>[^"\s]+)"\s*',
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Received(ApiRequest):
    """A request to the fake, as recorded (path without the query, query parsed)."""


@dataclass
class Project:
    """A project: its issue types and the fields on its create screen."""

    id: str = "10000"
    key: str = "SEC"
    issue_types: tuple[str, ...] = ("Task", "Bug", "Story")
    screen: tuple[str, ...] = SYSTEM_SCREEN
    required_custom: tuple[str, ...] = ()
    can_browse: bool = True
    can_create: bool = True

    def type_id(self, name: str) -> str:
        return str(10001 + self.issue_types.index(name))


@dataclass
class Issue:
    id: str
    key: str
    fields: dict[str, Any]
    created: float
    status: str = "To Do"


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _errors(messages: list[str] | None = None, errors: dict[str, str] | None = None) -> Any:
    return {"errorMessages": messages or [], "errors": errors or {}}


class FakeJira(RoutedFake[Received, Answer]):
    methods = ("GET", "POST", "PUT", "DELETE")
    request_type = Received

    def __init__(
        self,
        email: str = "reporter@example.com",
        token: str = "ATATT3xFfGF0-test-token-0123456789",
        *,
        projects: list[Project] | None = None,
        priorities: tuple[str, ...] = DEFAULT_PRIORITIES,
        display_name: str = "Security Bot",
        account_email_visible: bool = True,
    ) -> None:
        super().__init__()
        self.email = email
        self.token = token
        self.projects = {p.id: p for p in (projects or [Project()])}
        self.priorities = priorities
        self.display_name = display_name
        self.account_email_visible = account_email_visible
        self.search_lag = 0.0
        self.issues: list[Issue] = []

    def _content_type(self, payload: bytes) -> str | None:
        return "application/json;charset=UTF-8" if payload else None

    # -- test helpers --------------------------------------------------------------------

    def created(self) -> list[Issue]:
        with self._lock:
            return list(self.issues)

    def wait_for_issues(self, count: int, timeout: float = 60.0) -> list[Issue]:
        return wait_for_count(self.created, count, timeout, "Jira issues")

    # -- the API -------------------------------------------------------------------------

    def _authorized(self, req: Received) -> bool:
        header = req.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        email, _, token = decoded.partition(":")
        return email.lower() == self.email.lower() and token == self.token

    def _route(self, req: Received) -> Answer:
        if not req.path.startswith("/rest/api/2/"):
            return Answer(404, _errors(["Not found"]))
        if not self._authorized(req):
            return Answer(
                401,
                _errors([_UNAUTHENTICATED]),
                {"WWW-Authenticate": 'Basic realm="protected-area"'},
            )
        path = req.path.rstrip("/")
        if req.method == "POST" and path == "/rest/api/2/issue":
            return self._create(req)
        if req.method == "GET" and path == "/rest/api/2/search":
            return Answer(410, _errors([_REMOVED]))
        if req.method == "GET" and path == "/rest/api/2/search/jql":
            return self._search(req)
        if req.method == "GET" and path == "/rest/api/2/myself":
            return Answer(
                200,
                {
                    "accountId": "5b10a2844c20165700ede21g",
                    "emailAddress": self.email if self.account_email_visible else None,
                    "displayName": self.display_name,
                    "active": True,
                },
            )
        meta = re.fullmatch(r"/rest/api/2/issue/createmeta/([^/]+)/issuetypes(?:/([^/]+))?", path)
        if req.method == "GET" and meta:
            return self._createmeta(req, meta[1], meta[2])
        return Answer(404, _errors(["No such resource"]))

    def _project(self, ident: str) -> Project | None:
        return self.projects.get(ident) or next(
            (p for p in self.projects.values() if p.key == ident), None
        )

    @staticmethod
    def _page(req: Received, items: list[Any], key: str) -> Answer:
        start = int(req.query.get("startAt", ["0"])[0])
        size = min(200, int(req.query.get("maxResults", ["50"])[0]))
        chunk = items[start : start + size]
        return Answer(200, {key: chunk, "startAt": start, "maxResults": size, "total": len(items)})

    def _createmeta(self, req: Received, ident: str, type_id: str | None) -> Answer:
        project = self._project(ident)
        if project is None or not project.can_browse:
            return Answer(404, _errors([f"No project could be found with key or id '{ident}'."]))
        if not project.can_create:
            return Answer(
                403, _errors(["You do not have permission to create issues in this project."])
            )
        types = [
            {"id": project.type_id(n), "name": n, "subtask": False, "description": n}
            for n in project.issue_types
        ]
        if type_id is None:
            return self._page(req, types, "issueTypes")
        if type_id not in {t["id"] for t in types}:
            return Answer(404, _errors(["Issue type not found."]))
        fields: list[dict[str, Any]] = []
        for name in project.screen:
            item: dict[str, Any] = {
                "fieldId": name,
                "key": name,
                "name": name.capitalize(),
                "required": name in ("summary", "issuetype", "project"),
                "hasDefaultValue": name in ("reporter", "priority"),
                "operations": ["set"],
            }
            if name == "priority":
                item["allowedValues"] = [
                    {"id": str(i + 1), "name": p} for i, p in enumerate(self.priorities)
                ]
            fields.append(item)
        for custom in project.required_custom:
            fields.append(
                {
                    "fieldId": custom,
                    "key": custom,
                    "name": f"Custom {custom}",
                    "required": True,
                    "hasDefaultValue": False,
                    "operations": ["set"],
                }
            )
        return self._page(req, fields, "fields")

    def _create(self, req: Received) -> Answer:
        if not req.headers.get("Content-Type", "").lower().startswith("application/json"):
            return Answer(415, None)
        try:
            body = req.json()
        except ValueError:
            return Answer(400, _errors(["Unexpected character: the request body is not JSON"]))
        fields = body.get("fields") if isinstance(body, dict) else None
        if not isinstance(fields, dict):
            return Answer(400, _errors(["Issue must contain fields"]))
        errors: dict[str, str] = {}
        project_ref = fields.get("project")
        project = (
            self._project(str(project_ref.get("id") or project_ref.get("key") or ""))
            if isinstance(project_ref, dict)
            else None
        )
        if project is None or not project.can_browse:
            return Answer(400, _errors(errors={"project": "valid project is required"}))
        if not project.can_create:
            return Answer(
                403, _errors(["You do not have permission to create issues in this project."])
            )
        issue_type = fields.get("issuetype")
        known_ids = {project.type_id(n): n for n in project.issue_types}
        if not isinstance(issue_type, dict) or not (
            issue_type.get("name") in project.issue_types or issue_type.get("id") in known_ids
        ):
            errors["issuetype"] = "Specify a valid issue type"
        summary = fields.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            errors["summary"] = "You must specify a summary of the issue."
        elif "\n" in summary or "\r" in summary:
            errors["summary"] = "The summary is invalid because it contains newline characters."
        elif _utf16_len(summary) > 255:
            errors["summary"] = "Summary must be less than 255 characters."
        description = fields.get("description")
        if description is not None and not isinstance(description, str):
            errors["description"] = "Operation value must be a string"
        elif isinstance(description, str) and _utf16_len(description) > 32767:
            errors["description"] = (
                "The entered text is too long. It exceeds the allowed limit of 32,767 characters."
            )
        for name in fields:
            if name not in project.screen and name not in project.required_custom:
                errors[name] = _NOT_ON_SCREEN.format(name)
        labels = fields.get("labels")
        if "labels" in fields and "labels" not in errors:
            if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
                errors["labels"] = "Operation value must be an array of strings"
            else:
                for label in labels:
                    if re.search(r"\s", label):
                        errors["labels"] = f"The label '{label}' contains spaces which is invalid."
                    elif not label or len(label) > 255:
                        errors["labels"] = "The label must not exceed 255 characters."
        priority = fields.get("priority")
        if (
            "priority" in fields
            and "priority" not in errors
            and not (isinstance(priority, dict) and priority.get("name") in self.priorities)
        ):
            errors["priority"] = "Specify the Priority (name) in the string format"
        for custom in project.required_custom:
            if custom not in fields:
                errors[custom] = f"Custom {custom} is required."
        if errors:
            return Answer(400, _errors(errors=errors))
        with self._lock:
            number = len([i for i in self.issues if i.key.startswith(project.key + "-")]) + 1
            issue = Issue(
                id=str(10000 + len(self.issues) + 1),
                key=f"{project.key}-{number}",
                fields=fields,
                created=time.monotonic(),
            )
            self.issues.append(issue)
        host = req.headers.get("X-Forwarded-Host", "example.atlassian.net")
        return Answer(
            201,
            {
                "id": issue.id,
                "key": issue.key,
                "self": f"https://{host}/rest/api/2/issue/{issue.id}",
            },
        )

    def _search(self, req: Received) -> Answer:
        jql = req.query.get("jql", [""])[0]
        match = _JQL.fullmatch(jql)
        if match is None:
            return Answer(400, _errors([f"Error in the JQL Query: cannot parse '{jql}'."]))
        if match["project"] is not None and (
            match["project"] not in self.projects or not self.projects[match["project"]].can_browse
        ):
            # Jira's answer for a project that does not exist or the user cannot browse
            return Answer(
                400,
                _errors(
                    [f"The value '{match['project']}' does not exist for the field 'project'."]
                ),
            )
        now = time.monotonic()
        with self._lock:
            hits = [
                i
                for i in self.issues
                if match["label"] in (i.fields.get("labels") or [])
                and (match["project"] is None or i.fields["project"].get("id") == match["project"])
                and now - i.created >= self.search_lag
            ]
        size = int(req.query.get("maxResults", ["50"])[0])
        wanted = [f for f in req.query.get("fields", [""])[0].split(",") if f]
        issues = []
        for issue in hits[:size]:
            item: dict[str, Any] = {"id": issue.id, "key": issue.key, "self": f"/issue/{issue.id}"}
            if "status" in wanted:
                item["fields"] = {"status": {"name": issue.status}}
            issues.append(item)
        return Answer(200, {"issues": issues, "isLast": len(hits) <= size})
