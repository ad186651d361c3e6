"""Opsgenie settings: every rule with a valid and an invalid example."""

from __future__ import annotations

from typing import Any

import pytest

from sinks.opsgenie.config import ALERTS_URL, EU_ALERTS_URL, OpsgenieSettings
from sinks.registry import ConfigError, available_types, validate_integration

TEAM = "4513b7ea-3b91-438f-b7e4-e3e54af9147c"
KEY = "eb243592-faa2-4ba2-a551-1afdf565c889"


def config(**settings: Any) -> dict[str, Any]:
    return {
        "integration_id": "og-1",
        "tenant_id": "tenant-a",
        "type": "opsgenie",
        "name": "Opsgenie SOC",
        "settings": {"webhook_url": ALERTS_URL, "team_id": TEAM, "api_key": KEY, **settings},
    }


def settings_of(**settings: Any) -> OpsgenieSettings:
    _, parsed = validate_integration(config(**settings))
    assert isinstance(parsed, OpsgenieSettings)
    return parsed


def errors_of(**settings: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        validate_integration(config(**settings))
    return info.value


def fields_of(error: ConfigError) -> list[str]:
    return [field for field, _ in error.errors]


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        ("https://api.opsgenie.com/v2/alerts", ALERTS_URL),
        ("https://api.opsgenie.com/v2/alerts/", ALERTS_URL),
        (" HTTPS://API.OPSGENIE.COM/v2/alerts\n", ALERTS_URL),
        ("https://api.eu.opsgenie.com/v2/alerts", EU_ALERTS_URL),
    ],
)
def test_alert_api_urls(url: str, stored: str) -> None:
    assert settings_of(webhook_url=url).webhook_url == stored


@pytest.mark.parametrize(
    "url",
    [
        "",
        "http://api.opsgenie.com/v2/alerts",
        "https://api.opsgenie.com/v1/alerts",
        "https://api.opsgenie.com/v2/incidents",
        "https://api.us.opsgenie.com/v2/alerts",
        "https://api.opsgenie.com.evil.example/v2/alerts",
        "https://api.opsgenie.com/v2/alerts?apiKey=x",
        "https://api.opsgenie.com/v2/alerts\n/x",
    ],
)
def test_other_urls_are_refused(url: str) -> None:
    error = errors_of(webhook_url=url)
    assert fields_of(error) == ["settings.webhook_url"]
    assert ALERTS_URL in error.errors[0][1] and EU_ALERTS_URL in error.errors[0][1]


@pytest.mark.parametrize("team", [TEAM, TEAM.upper(), f" {TEAM} "])
def test_team_id_is_a_uuid_stored_in_lower_case(team: str) -> None:
    assert settings_of(team_id=team).team_id == TEAM


@pytest.mark.parametrize(
    "team",
    ["", "SOC team", TEAM.replace("-", ""), TEAM[:-1], TEAM + "0", "{" + TEAM + "}", TEAM + "\n0"],
)
def test_team_id_that_is_not_a_uuid_is_refused(team: str) -> None:
    error = errors_of(team_id=team)
    assert fields_of(error) == ["settings.team_id"]
    assert "team details page" in error.errors[0][1]


def test_api_key_is_a_secret_uuid() -> None:
    parsed = settings_of(api_key=f" {KEY} ")
    assert parsed.api_key.get_secret_value() == KEY
    assert KEY not in repr(parsed)


@pytest.mark.parametrize("key", ["", KEY[:-1], KEY.replace("-", ""), "GenieKey " + KEY, KEY + "x"])
def test_bad_api_keys_are_refused_without_echoing_them(key: str) -> None:
    error = errors_of(api_key=key)
    assert fields_of(error) == ["settings.api_key"]
    assert "Opsgenie API integration" in error.errors[0][1]
    assert KEY[:8] not in str(error) or not key  # never the key, not even in part


def test_missing_and_unknown_fields_are_named() -> None:
    data = config()
    data["settings"] = {"webhook_url": ALERTS_URL, "team": "SOC"}
    with pytest.raises(ConfigError) as info:
        validate_integration(data)
    assert sorted(fields_of(info.value)) == [
        "settings.api_key",
        "settings.team",
        "settings.team_id",
    ]


def test_opsgenie_is_registered() -> None:
    assert "opsgenie" in available_types()
