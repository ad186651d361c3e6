"""Datadog settings: every rule, valid and invalid, through validate_integration."""

from __future__ import annotations

from typing import Any

import pytest

from sinks.datadog.config import SITES, DatadogSettings
from sinks.registry import ConfigError, validate_integration

API_KEY = "0123456789abcdef0123456789abcdef"
APP_KEY = "fedcba9876543210fedcba9876543210fedcba98"


def config(**settings: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "integration_id": "dd-1",
        "tenant_id": "tenant-a",
        "type": "datadog",
        "name": "Datadog incidents",
        "settings": {
            "webhook_url": "https://api.datadoghq.com/api/v2/incidents",
            "application_key": APP_KEY,
            "api_key": API_KEY,
        },
    }
    base["settings"].update(settings)
    base["settings"] = {k: v for k, v in base["settings"].items() if v is not ...}
    return base


def settings_of(**settings: Any) -> DatadogSettings:
    _, parsed = validate_integration(config(**settings))
    assert isinstance(parsed, DatadogSettings)
    return parsed


def error_for(field: str, **settings: Any) -> str:
    with pytest.raises(ConfigError) as info:
        validate_integration(config(**settings))
    text = str(info.value) + repr(info.value.errors)
    for secret in (API_KEY, APP_KEY, *(str(v) for v in settings.values())):
        if "key" in field and len(secret) >= 8:
            assert secret not in text
    reasons = [reason for name, reason in info.value.errors if name == f"settings.{field}"]
    assert reasons, info.value.errors
    return reasons[0]


def test_valid_config() -> None:
    parsed = settings_of()
    assert parsed.webhook_url == "https://api.datadoghq.com/api/v2/incidents"
    assert parsed.site == "datadoghq.com"
    assert parsed.api_base == "https://api.datadoghq.com"
    assert parsed.api_key.get_secret_value() == API_KEY
    assert API_KEY not in repr(parsed) and APP_KEY not in repr(parsed)


@pytest.mark.parametrize("site", SITES)
def test_every_known_site_full_url(site: str) -> None:
    parsed = settings_of(webhook_url=f"https://api.{site}/api/v2/incidents")
    assert parsed.site == site
    assert parsed.api_base == f"https://api.{site}"


@pytest.mark.parametrize(
    "url", ["https://api.datadoghq.eu", "https://api.datadoghq.eu/", " HTTPS://API.DATADOGHQ.EU "]
)
def test_base_url_is_stored_as_the_incidents_url(url: str) -> None:
    assert settings_of(webhook_url=url).webhook_url == "https://api.datadoghq.eu/api/v2/incidents"


def test_trailing_slash_on_incidents_url() -> None:
    parsed = settings_of(webhook_url="https://api.us5.datadoghq.com/api/v2/incidents/")
    assert parsed.webhook_url == "https://api.us5.datadoghq.com/api/v2/incidents"


@pytest.mark.parametrize(
    ("url", "suggested"),
    [
        ("https://app.datadoghq.com/incidents", "https://api.datadoghq.com/api/v2/incidents"),
        ("https://app.datadoghq.eu", "https://api.datadoghq.eu/api/v2/incidents"),
        ("https://us5.datadoghq.com/", "https://api.us5.datadoghq.com/api/v2/incidents"),
    ],
)
def test_app_urls_are_refused_with_the_api_url(url: str, suggested: str) -> None:
    reason = error_for("webhook_url", webhook_url=url)
    assert "app address" in reason and suggested in reason


@pytest.mark.parametrize(
    "url",
    [
        "https://api.datadoghq.org/api/v2/incidents",
        "https://api.example.com/api/v2/incidents",
        "https://api.datadoghq.com.evil.example/api/v2/incidents",
    ],
)
def test_unknown_sites_are_refused(url: str) -> None:
    assert "unknown Datadog site" in error_for("webhook_url", webhook_url=url)


@pytest.mark.parametrize(
    "url",
    [
        "http://api.datadoghq.com/api/v2/incidents",
        "https://api.datadoghq.com/api/v1/incidents",
        "https://api.datadoghq.com/api/v2/incidents/search",
        "https://api.datadoghq.com/api/v2/incidents?x=1",
        "https://api.datadoghq.com/api/v2/incidents\nx",
        "https://hooks.example.com/datadog",
        "api.datadoghq.com/api/v2/incidents",
        "",
    ],
)
def test_other_urls_are_refused(url: str) -> None:
    error_for("webhook_url", webhook_url=url)


@pytest.mark.parametrize("key", ["0123456789ABCDEF0123456789abcdef", f" {API_KEY}\n"])
def test_valid_api_keys(key: str) -> None:
    assert settings_of(api_key=key).api_key.get_secret_value() == key.strip()


@pytest.mark.parametrize(
    "key",
    ["", API_KEY[:-1], API_KEY + "0", "g" * 32, APP_KEY, "0123456789abcdef 123456789abcdef"],
)
def test_invalid_api_keys(key: str) -> None:
    reason = error_for("api_key", api_key=key)
    assert "32 hexadecimal" in reason
    assert not key.strip() or key.strip() not in reason


@pytest.mark.parametrize(
    "key", ["", APP_KEY[:-1], APP_KEY + "0", "z" * 40, API_KEY, "key=" + APP_KEY[4:]]
)
def test_invalid_application_keys(key: str) -> None:
    reason = error_for("application_key", application_key=key)
    assert "40 hexadecimal" in reason
    assert not key.strip() or key.strip() not in reason


def test_swapped_keys_are_both_reported_without_echo() -> None:
    with pytest.raises(ConfigError) as info:
        validate_integration(config(api_key=APP_KEY, application_key=API_KEY))
    fields = {name for name, _ in info.value.errors}
    assert fields == {"settings.api_key", "settings.application_key"}
    assert API_KEY not in str(info.value) and APP_KEY not in str(info.value)


def test_missing_fields_and_unknown_fields() -> None:
    with pytest.raises(ConfigError) as info:
        validate_integration(config(webhook_url=..., api_key=..., application_key=..., site="eu"))
    fields = {name for name, _ in info.value.errors}
    assert fields == {
        "settings.webhook_url",
        "settings.api_key",
        "settings.application_key",
        "settings.site",
    }
