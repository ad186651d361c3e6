"""Settings of the Slack integration (INTEGRATIONS-SPEC: Slack).

The spec fixes both forms: the webhook URL is
`https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX` and the
channel is `#slack-channel`. The whole URL is the credential (no auth header exists), so it
is a `SecretStr` and no message here ever repeats it.
"""

from __future__ import annotations

import re
import string

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator

__all__ = ["CHANNEL_NAME_MAX", "WEBHOOK_URL_FORM", "SlackSettings"]

WEBHOOK_URL_FORM = "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"
WEBHOOK_PREFIX = "https://hooks.slack.com/services/"
CHANNEL_NAME_MAX = 80
"""Slack: channel names are at most 80 characters (the `#` not counted)."""

_PREFIX = re.compile(r"(?i:https://hooks\.slack\.com/services/)")
# Workspace (T…) and webhook (B…) IDs are upper-case alphanumerics, 9 characters in the
# spec's example and up to 11 today; the token is 24 letters and digits.
_WEBHOOK_PATH = re.compile(r"(T[A-Z0-9]{8,12})/(B[A-Z0-9]{8,12})/([A-Za-z0-9]{24})")
_CHANNEL_PUNCTUATION = frozenset("-_.")


def _channel_name_problem(name: str) -> str | None:
    """Why `name` (without `#`) breaks Slack's naming rules, or None.

    Slack: lowercase letters, digits, hyphens, underscores and periods, at most 80
    characters. Slack also allows non-Latin letters (e.g. Japanese channel names), so any
    letter that is not upper case counts as a lowercase letter.
    """
    if not name:
        return "Slack channel needs a name after the # (e.g. #security-alerts)"
    if len(name) > CHANNEL_NAME_MAX:
        return f"Slack channel names are at most {CHANNEL_NAME_MAX} characters"
    if any(ch.isupper() for ch in name):
        return f"Slack channel names are lowercase: use '#{name.lower()}'"
    for ch in name:
        if ch in string.digits or ch in _CHANNEL_PUNCTUATION:
            continue
        if ch.isalpha() and not ch.isupper():
            continue
        return (
            "Slack channel names may only contain lowercase letters, digits, hyphens, "
            "underscores and periods"
        )
    return None


class SlackSettings(BaseModel):
    """`webhook_url` (secret) and `channel` (informative for app webhooks, see the sink)."""

    model_config = ConfigDict(extra="forbid")

    webhook_url: SecretStr
    channel: str

    @field_validator("webhook_url")
    @classmethod
    def _slack_webhook(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value().strip()
        if not url:
            raise ValueError(f"Slack webhook URL is required (form: {WEBHOOK_URL_FORM})")
        prefix = _PREFIX.match(url)
        if prefix is None:
            raise ValueError(
                f"Slack webhook URL must start with {WEBHOOK_PREFIX} (form: {WEBHOOK_URL_FORM})"
            )
        if not _WEBHOOK_PATH.fullmatch(url[prefix.end() :]):
            raise ValueError(
                "Slack webhook URL must be https://hooks.slack.com/services/T…/B…/… with the "
                "workspace ID (T…), the webhook ID (B…) and the 24-character token, exactly "
                "as Slack shows it under Incoming Webhooks"
            )
        return SecretStr(WEBHOOK_PREFIX + url[prefix.end() :])

    @field_validator("channel")
    @classmethod
    def _slack_channel(cls, value: str) -> str:
        channel = value.strip()
        if not channel.startswith("#"):
            raise ValueError("Slack channel must be in the form #slack-channel")
        problem = _channel_name_problem(channel[1:])
        if problem is not None:
            raise ValueError(problem)
        return channel
