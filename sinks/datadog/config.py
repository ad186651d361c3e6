"""Settings of the Datadog Incidents integration (INTEGRATIONS-SPEC: Datadog Incidents).

- `webhook_url`: the Incidents API of the org's Datadog site,
  `https://api.<site>/api/v2/incidents`. The site's API base URL `https://api.<site>` is
  accepted too and stored as the full incidents URL, so what is stored is always the
  address requests go to. Sites: the ones Datadog documents for this API (`SITES`). The
  app URL (`https://app.datadoghq.com`, `https://us5.datadoghq.com`...) is refused with the
  matching API URL in the message, because users paste it by mistake.
- `api_key`: the org's API key, 32 hex characters.
- `application_key`: an application key with `incident_write` (and, for duplicate
  protection, `incident_read`), 40 hex characters.
Keys are secrets: messages never show them.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from sinks.validators import shaped_secret

__all__ = ["INCIDENTS_PATH", "SITES", "DatadogSettings"]

SITES = (
    "datadoghq.com",
    "us3.datadoghq.com",
    "us5.datadoghq.com",
    "datadoghq.eu",
    "ap1.datadoghq.com",
    "ap2.datadoghq.com",
    "uk1.datadoghq.com",
    "ddog-gov.com",
    "us2.ddog-gov.com",
)
"""Datadog sites whose API host is `api.<site>` (Datadog's API reference, 2025)."""

INCIDENTS_PATH = "/api/v2/incidents"

_FORM = "https://api.<site>/api/v2/incidents (e.g. https://api.datadoghq.eu/api/v2/incidents)"
_URL = re.compile(r"https://api\.(?P<site>[a-z0-9.-]+?)(?P<path>/api/v2/incidents)?/?")
_APP_URL = re.compile(r"https://(?P<host>[a-z0-9.-]+)(?:/.*)?", re.DOTALL)


def _api_url_for_app_host(host: str) -> str | None:
    """The API URL a user probably meant when pasting an app URL, if it is one."""
    site = host.removeprefix("app.")
    return f"https://api.{site}{INCIDENTS_PATH}" if site in SITES else None


class DatadogSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    webhook_url: str = Field(description=f"Datadog Incidents API URL, {_FORM}")
    application_key: SecretStr = Field(description="application key with incident_write")
    api_key: SecretStr

    @field_validator("webhook_url", mode="before")
    @classmethod
    def _incidents_url(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        url = value.strip().lower()
        if url.startswith("http://"):
            raise ValueError(f"the Datadog URL must use https: {_FORM}")
        match = _URL.fullmatch(url)
        if match is not None:
            site = match["site"]
            if site not in SITES:
                raise ValueError(
                    f"unknown Datadog site {site!r}: use one of {', '.join(SITES)} as in {_FORM}"
                )
            return f"https://api.{site}{INCIDENTS_PATH}"
        app = _APP_URL.fullmatch(url)
        suggestion = _api_url_for_app_host(app["host"]) if app else None
        if suggestion is not None:
            raise ValueError(f"this is the Datadog app address; the API address is {suggestion}")
        raise ValueError(f"the Datadog URL must be the Incidents API URL {_FORM}")

    @field_validator("api_key")
    @classmethod
    def _api_key(cls, value: SecretStr) -> SecretStr:
        return shaped_secret(
            value,
            r"[0-9a-fA-F]{32}",
            "the API key must be 32 hexadecimal characters (Organization Settings > "
            "API Keys); an application key has 40",
        )

    @field_validator("application_key")
    @classmethod
    def _application_key(cls, value: SecretStr) -> SecretStr:
        return shaped_secret(
            value,
            r"[0-9a-fA-F]{40}",
            "the application key must be 40 hexadecimal characters (Organization "
            "Settings > Application Keys); an API key has 32",
        )

    @property
    def site(self) -> str:
        """The Datadog site, e.g. `datadoghq.eu`."""
        return self.webhook_url.split("/")[2].removeprefix("api.")

    @property
    def api_base(self) -> str:
        """`https://api.<site>`: every request of this integration goes to this host."""
        return self.webhook_url.removesuffix(INCIDENTS_PATH)
