"""Settings of the PagerDuty Events integration (INTEGRATIONS-SPEC: PagerDuty Events).

The spec's form is `https://events.pagerduty.com/v2/enque`, a typo for the real path
`/v2/enqueue` (DESIGN.md): both are accepted and the real one is stored, so configs copied
from the spec work. PagerDuty's EU service region (`events.eu.pagerduty.com`) is accepted
too: EU accounts must send there. `api_key` is the routing key ("Integration Key" of an
Events API v2 integration): 32 letters and digits, a secret.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator

from sinks.validators import regional_url, shaped_secret

__all__ = ["ENQUEUE_URL", "PagerDutySettings"]

ENQUEUE_URL = "https://events.pagerduty.com/v2/enqueue"
EU_ENQUEUE_URL = "https://events.eu.pagerduty.com/v2/enqueue"

_URL = re.compile(r"(?i:https://events(\.eu)?\.pagerduty\.com)/v2/(?:enqueue|enque)/?")
_ROUTING_KEY = re.compile(r"[A-Za-z0-9]{32}")


class PagerDutySettings(BaseModel):
    """`webhook_url` (not secret: the same for every customer) and `api_key` (secret)."""

    model_config = ConfigDict(extra="forbid")

    webhook_url: str
    api_key: SecretStr

    @field_validator("webhook_url")
    @classmethod
    def _enqueue_url(cls, value: str) -> str:
        return regional_url(
            value,
            _URL,
            ENQUEUE_URL,
            EU_ENQUEUE_URL,
            f"PagerDuty webhook URL must be {ENQUEUE_URL} "
            f"(or {EU_ENQUEUE_URL} for accounts in the EU service region)",
        )

    @field_validator("api_key")
    @classmethod
    def _routing_key(cls, value: SecretStr) -> SecretStr:
        return shaped_secret(
            value,
            _ROUTING_KEY,
            "PagerDuty API key must be the 32-character Integration Key (letters and "
            "digits) of an Events API v2 integration on the service, not a REST API key",
        )
