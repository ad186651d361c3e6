"""Settings of the Jira integration (INTEGRATIONS-SPEC: Jira; VENDORS.md: Jira Cloud REST v2).

The spec's rules, each refused with a message that says how to fix it:

- `webhook_url` is the v2 create-issue address of a Jira Cloud site,
  `https://<companyname>.atlassian.net/rest/api/2/issue/` (trailing slash optional). The
  v3 address is refused: v3 wants descriptions in Atlassian Document Format, we send
  wiki text. Stored without the trailing slash.
- `project_id` is the project's numeric ID (not its key such as "SEC").
- `api_token` is a regular Atlassian API token created by the reporter's account. Scoped
  tokens are not supported (the spec). They cannot be told apart from regular ones by
  their text; what can be detected is their address: a scoped token only works through
  `https://api.atlassian.com/ex/jira/<cloudId>/...`, and that URL is refused with this
  reason. A scoped token used on the site URL shows up as a 401 at delivery / Test,
  whose message names scoped tokens as a cause.
- `reporter_email` is the address of the account that owns the token (Basic auth is
  `email:api_token`; the issue's reporter is that account).
- `issue_type` (optional, default "Task") must exist in the project: Test checks it.
  An all-digit value is sent as the issue type's ID, anything else as its name.
- `priority_from_risk` (optional, default false): set the priority from the risk level
  (see `sinks.jira.sink.PRIORITY_BY_RISK`); the Priority field must be on the project's
  create screen, which Test checks.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

__all__ = ["DEFAULT_ISSUE_TYPE", "JiraSettings"]

DEFAULT_ISSUE_TYPE = "Task"

_SITE_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_ISSUE_URL = re.compile(rf"https://(?P<site>{_SITE_LABEL})\.atlassian\.net/rest/api/2/issue/?")
_EMAIL = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)
_FORM = "https://<companyname>.atlassian.net/rest/api/2/issue/"


class JiraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    webhook_url: str = Field(description=f"Jira create-issue URL, {_FORM}")
    project_id: str = Field(description="numeric project ID")
    api_token: SecretStr = Field(
        description="regular Atlassian API token of the reporter (scoped tokens unsupported)"
    )
    reporter_email: str
    issue_type: str | None = Field(default=None, description='issue type name (default "Task")')
    priority_from_risk: bool = False

    @field_validator("webhook_url", mode="before")
    @classmethod
    def _v2_issue_url(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        url = value.strip()
        lowered = url.lower()
        if "/rest/api/3/" in lowered + "/":
            raise ValueError(
                f"Jira's v2 API address is mandatory (v3 wants ADF descriptions): use {_FORM}"
            )
        if re.match(r"https?://api\.atlassian\.com(/|$)", lowered):
            raise ValueError(
                "api.atlassian.com addresses are for scoped API tokens, which are not "
                f"supported: create a regular API token and use {_FORM}"
            )
        if lowered.startswith("http://"):
            raise ValueError(f"the Jira URL must use https: {_FORM}")
        if len(url) > 300:
            raise ValueError(f"the Jira URL must be in the form {_FORM}")
        match = _ISSUE_URL.fullmatch(lowered)
        if match is None:
            raise ValueError(f"the Jira URL must be in the form {_FORM}")
        return f"https://{match['site']}.atlassian.net/rest/api/2/issue"

    @field_validator("project_id", mode="before")
    @classmethod
    def _numeric_project(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            return value
        text = value.strip()
        if re.fullmatch(r"[0-9]{1,18}", text):
            return text
        if re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,254}", text):
            raise ValueError(
                "the project ID must be a number: this looks like a project key; the "
                "numeric ID is shown in the project's settings or by "
                "GET /rest/api/2/project/<key>"
            )
        raise ValueError("the project ID must be a number, e.g. 10000")

    @field_validator("api_token")
    @classmethod
    def _token_shape(cls, value: SecretStr) -> SecretStr:
        token = value.get_secret_value().strip()
        if not token:
            raise ValueError("the API token is required")
        if not re.fullmatch(r"[\x21-\x7e]{8,2048}", token):
            raise ValueError(
                "the API token must be 8-2048 printable characters without spaces "
                "(paste the token exactly as Atlassian showed it)"
            )
        return SecretStr(token)

    @field_validator("reporter_email", mode="before")
    @classmethod
    def _email(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        email = value.strip()
        if len(email) > 254 or not _EMAIL.fullmatch(email):
            raise ValueError("the reporter email must be a valid address, e.g. soc@example.com")
        return email

    @field_validator("issue_type", mode="before")
    @classmethod
    def _issue_type(cls, value: object) -> object:
        if value is None or not isinstance(value, str):
            return value
        name = value.strip()
        if not name:
            return None  # an empty optional field means "the default"
        if len(name) > 255 or re.search(r"[\x00-\x1f\x7f]", name):
            raise ValueError("the issue type must be a name of at most 255 characters")
        return name

    @property
    def site(self) -> str:
        """`<companyname>.atlassian.net`: the host every request goes to."""
        return self.webhook_url.split("/")[2]

    @property
    def base_url(self) -> str:
        return f"https://{self.site}"

    @property
    def issue_type_name(self) -> str:
        return self.issue_type or DEFAULT_ISSUE_TYPE
