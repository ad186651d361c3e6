"""Settings of the Opsgenie integration (INTEGRATIONS-SPEC: Opsgenie).

- `webhook_url`: the Alert API, `https://api.opsgenie.com/v2/alerts`, or
  `https://api.eu.opsgenie.com/v2/alerts` for accounts hosted in the EU (a key only works
  on its own region's host).
- `team_id`: the team's ID as shown on Opsgenie's team details page, which is a UUID
  (e.g. `4513b7ea-3b91-438f-b7e4-e3e54af9147c`); team names are not accepted because the
  alert's responder is addressed by ID. Stored in lower case.
- `api_key`: the API key of the Opsgenie API integration (also a UUID), a secret; it is
  sent as `Authorization: GenieKey <key>`.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator

from sinks.validators import regional_url, shaped_secret

__all__ = ["ALERTS_URL", "EU_ALERTS_URL", "OpsgenieSettings"]

ALERTS_URL = "https://api.opsgenie.com/v2/alerts"
EU_ALERTS_URL = "https://api.eu.opsgenie.com/v2/alerts"

_URL = re.compile(r"(?i:https://api(\.eu)?\.opsgenie\.com)/v2/alerts/?")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class OpsgenieSettings(BaseModel):
    """`webhook_url` and `team_id` are not secret; `api_key` is."""

    model_config = ConfigDict(extra="forbid")

    webhook_url: str
    team_id: str
    api_key: SecretStr

    @field_validator("webhook_url")
    @classmethod
    def _alerts_url(cls, value: str) -> str:
        return regional_url(
            value,
            _URL,
            ALERTS_URL,
            EU_ALERTS_URL,
            f"Opsgenie webhook URL must be {ALERTS_URL} "
            f"(or {EU_ALERTS_URL} for accounts hosted in the EU)",
        )

    @field_validator("team_id")
    @classmethod
    def _team_uuid(cls, value: str) -> str:
        team = value.strip()
        if not _UUID.fullmatch(team):
            raise ValueError(
                "Opsgenie team ID must be the team's ID from its team details page, a UUID "
                "like 4513b7ea-3b91-438f-b7e4-e3e54af9147c (not the team name)"
            )
        return team.lower()

    @field_validator("api_key")
    @classmethod
    def _key_uuid(cls, value: SecretStr) -> SecretStr:
        return shaped_secret(
            value,
            _UUID,
            "Opsgenie API key must be the API key of an Opsgenie API integration "
            "(a UUID of the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)",
        )
