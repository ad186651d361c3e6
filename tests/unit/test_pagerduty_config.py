"""PagerDuty Events settings: every rule with a valid and an invalid example."""

from __future__ import annotations

from typing import Any

import pytest

from sinks.pagerduty.config import ENQUEUE_URL, EU_ENQUEUE_URL, PagerDutySettings
from sinks.registry import ConfigError, available_types, validate_integration

ROUTING_KEY = "R0ut1ngKeyAbCdEfGhIjKlMnOpQrStUv"  # 32 letters and digits
assert len(ROUTING_KEY) == 32


def config(**settings: Any) -> dict[str, Any]:
    return {
        "integration_id": "pd-1",
        "tenant_id": "tenant-a",
        "type": "pagerduty",
        "name": "On-call",
        "settings": {"webhook_url": ENQUEUE_URL, "api_key": ROUTING_KEY, **settings},
    }


def settings_of(**settings: Any) -> PagerDutySettings:
    _, parsed = validate_integration(config(**settings))
    assert isinstance(parsed, PagerDutySettings)
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
        ("https://events.pagerduty.com/v2/enqueue", ENQUEUE_URL),
        ("https://events.pagerduty.com/v2/enque", ENQUEUE_URL),  # the spec's typo
        ("https://events.pagerduty.com/v2/enqueue/", ENQUEUE_URL),
        (" HTTPS://Events.PagerDuty.com/v2/enqueue\n", ENQUEUE_URL),
        ("https://events.eu.pagerduty.com/v2/enqueue", EU_ENQUEUE_URL),
        ("https://events.eu.pagerduty.com/v2/enque", EU_ENQUEUE_URL),
    ],
)
def test_enqueue_urls_are_accepted_and_stored_in_the_real_form(url: str, stored: str) -> None:
    assert settings_of(webhook_url=url).webhook_url == stored


@pytest.mark.parametrize(
    "url",
    [
        "",
        "http://events.pagerduty.com/v2/enqueue",
        "https://events.pagerduty.com/v1/enqueue",
        "https://events.pagerduty.com/v2/enqueued",
        "https://events.pagerduty.com/generic/2010-04-15/create_event.json",
        "https://api.pagerduty.com/incidents",
        "https://events.pagerduty.com.evil.example/v2/enqueue",
        "https://events.pagerduty.com/v2/enqueue?x=1",
        "https://events.pagerduty.com/v2/enqueue\nx",
    ],
)
def test_other_urls_are_refused(url: str) -> None:
    error = errors_of(webhook_url=url)
    assert fields_of(error) == ["settings.webhook_url"]
    assert ENQUEUE_URL in error.errors[0][1]


def test_routing_key_is_secret_and_trimmed() -> None:
    parsed = settings_of(api_key=f"  {ROUTING_KEY}\n")
    assert parsed.api_key.get_secret_value() == ROUTING_KEY
    assert ROUTING_KEY not in repr(parsed)


@pytest.mark.parametrize(
    "key",
    [
        "",
        ROUTING_KEY[:-1],  # 31
        ROUTING_KEY + "x",  # 33
        ROUTING_KEY[:-1] + "-",
        "u+" + ROUTING_KEY[:30],  # a REST API token looks like this
        ROUTING_KEY[:16] + " " + ROUTING_KEY[17:],
    ],
)
def test_bad_routing_keys_are_refused_without_echoing_them(key: str) -> None:
    error = errors_of(api_key=key)
    assert fields_of(error) == ["settings.api_key"]
    assert "32-character Integration Key" in error.errors[0][1]
    if key.strip():
        assert key.strip() not in str(error)
        assert ROUTING_KEY[:20] not in str(error)


def test_missing_and_unknown_fields_are_named() -> None:
    data = config()
    data["settings"] = {"routing_key": ROUTING_KEY}
    with pytest.raises(ConfigError) as info:
        validate_integration(data)
    assert sorted(fields_of(info.value)) == [
        "settings.api_key",
        "settings.routing_key",
        "settings.webhook_url",
    ]
    assert ROUTING_KEY not in str(info.value)


def test_pagerduty_is_registered() -> None:
    assert "pagerduty" in available_types()
