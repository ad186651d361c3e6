"""Slack settings: every rule of the spec with a valid and an invalid example."""

from __future__ import annotations

from typing import Any

import pytest

from sinks.registry import ConfigError, validate_integration
from sinks.slack.config import SlackSettings

TOKEN = "Zq3xT9vLm2Kp8RsW4nYb6HcD"  # 24 letters and digits
URL = f"https://hooks.slack.com/services/T0ABC1234/B0DEF5678/{TOKEN}"


def config(**settings: Any) -> dict[str, Any]:
    return {
        "integration_id": "slack-1",
        "tenant_id": "tenant-a",
        "type": "slack",
        "name": "SOC Slack",
        "settings": {"webhook_url": URL, "channel": "#security-alerts", **settings},
    }


def settings_of(**settings: Any) -> SlackSettings:
    _, parsed = validate_integration(config(**settings))
    assert isinstance(parsed, SlackSettings)
    return parsed


def errors_of(**settings: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        validate_integration(config(**settings))
    return info.value


def fields_of(error: ConfigError) -> list[str]:
    return [field for field, _ in error.errors]


# -- webhook_url ---------------------------------------------------------------------


def test_spec_form_is_accepted_and_kept_secret() -> None:
    parsed = settings_of(
        webhook_url="https://hooks.slack.com/services/T00000000/B00000000/" + "X" * 24
    )
    assert parsed.webhook_url.get_secret_value().endswith("/T00000000/B00000000/" + "X" * 24)
    assert TOKEN not in repr(settings_of())  # SecretStr hides it


@pytest.mark.parametrize(
    "url",
    [
        URL,
        f"  {URL}\n",  # surrounding whitespace from copy and paste
        f"HTTPS://HOOKS.SLACK.COM/services/T0ABC1234/B0DEF5678/{TOKEN}",
        f"https://hooks.slack.com/services/T0ABC123456/B0DEF567890/{TOKEN}",  # 11-char IDs
    ],
)
def test_valid_webhook_urls_are_normalised(url: str) -> None:
    stored = settings_of(webhook_url=url).webhook_url.get_secret_value()
    assert stored.startswith("https://hooks.slack.com/services/T0ABC")
    assert stored == stored.strip()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("", "required"),
        (f"http://hooks.slack.com/services/T0ABC1234/B0DEF5678/{TOKEN}", "must start with"),
        (
            f"https://hooks.slack.com.evil.example/services/T0ABC1234/B0DEF5678/{TOKEN}",
            "must start",
        ),
        (f"https://slack.com/services/T0ABC1234/B0DEF5678/{TOKEN}", "must start with"),
        (f"https://hooks.slack.com/workflows/T0ABC1234/B0DEF5678/{TOKEN}", "must start with"),
        (f"https://hooks.slack.com/services/B0DEF5678/T0ABC1234/{TOKEN}", "T…/B…"),
        (f"https://hooks.slack.com/services/t0abc1234/b0def5678/{TOKEN}", "T…/B…"),
        ("https://hooks.slack.com/services/T0ABC1234/B0DEF5678/short", "24-character"),
        (f"https://hooks.slack.com/services/T0ABC1234/B0DEF5678/{TOKEN}X", "24-character"),
        (f"https://hooks.slack.com/services/T0ABC1234/B0DEF5678/{TOKEN}?x=1", "24-character"),
        (f"https://hooks.slack.com/services/T0ABC1234/B0DEF5678/{TOKEN}/", "24-character"),
        (f"https://hooks.slack.com/services/T0ABC1234/{TOKEN}", "24-character"),
        (f"https://hooks.slack.com/services/T0ABC1234/B0DEF5678/{TOKEN}\nx", "24-character"),
    ],
)
def test_invalid_webhook_urls_are_named(url: str, says: str) -> None:
    error = errors_of(webhook_url=url)
    assert fields_of(error) == ["settings.webhook_url"]
    assert says in error.errors[0][1]


def test_webhook_url_must_be_a_string() -> None:
    assert fields_of(errors_of(webhook_url=12345)) == ["settings.webhook_url"]


@pytest.mark.parametrize(
    "url",
    [
        f"https://hooks.slack.com/services/T0ABC1234/B0DEF5678/{TOKEN}extra",
        f"http://hooks.slack.com/services/T0ABC1234/B0DEF5678/{TOKEN}",
        f"https://hooks.slack.co/services/T0ABC1234/B0DEF5678/{TOKEN}",
    ],
)
def test_errors_never_contain_the_webhook_token(url: str) -> None:
    error = errors_of(webhook_url=url)
    assert TOKEN not in str(error)
    assert all(TOKEN not in reason for _, reason in error.errors)


# -- channel -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "channel",
    ["#security-alerts", "#soc_eu.1", "#a", "#" + "a" * 80, " #padded ", "#セキュリティ"],
)
def test_valid_channels(channel: str) -> None:
    assert settings_of(channel=channel).channel == channel.strip()


@pytest.mark.parametrize(
    ("channel", "says"),
    [
        ("security-alerts", "#slack-channel"),
        ("@someone", "#slack-channel"),
        ("", "#slack-channel"),
        ("#", "needs a name"),
        ("#Security", "'#security'"),
        ("#sec alerts", "may only contain"),
        ("#sec!alerts", "may only contain"),
        ("#sec/alerts", "may only contain"),
        ("##soc", "may only contain"),
        ("#" + "a" * 81, "at most 80"),
    ],
)
def test_invalid_channels_are_named(channel: str, says: str) -> None:
    error = errors_of(channel=channel)
    assert fields_of(error) == ["settings.channel"]
    assert says in error.errors[0][1]


# -- the model as a whole ------------------------------------------------------------


def test_missing_fields_are_named() -> None:
    data = config()
    data["settings"] = {}
    with pytest.raises(ConfigError) as info:
        validate_integration(data)
    assert sorted(fields_of(info.value)) == ["settings.channel", "settings.webhook_url"]


def test_unknown_setting_is_refused() -> None:
    assert fields_of(errors_of(username="bot")) == ["settings.username"]


def test_both_fields_wrong_are_both_listed_without_the_secret() -> None:
    error = errors_of(webhook_url=URL + "zz", channel="SOC")
    assert sorted(fields_of(error)) == ["settings.channel", "settings.webhook_url"]
    assert TOKEN not in str(error)


def test_slack_is_registered() -> None:
    from sinks.registry import available_types

    assert "slack" in available_types()
