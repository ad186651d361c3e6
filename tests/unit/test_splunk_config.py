"""Splunk HEC settings: the collector URL form, the token, the index rule, compression."""

from __future__ import annotations

from typing import Any

import pytest

from sinks.registry import ConfigError, validate_integration
from sinks.splunk.config import SplunkSettings

TOKEN = "8a1f3c52-7d4e-4b9a-9c11-2f6e5d4c3b2a"
URL = "https://acme.splunkcloud.com/services/collector"


def splunk_config(**settings: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "integration_id": "splunk-1",
        "tenant_id": "tenant-a",
        "type": "splunk",
        "name": "SIEM",
        "settings": {"webhook_url": URL, "api_token": TOKEN},
    }
    base["settings"].update(settings)
    return base


def error_for(field: str, **settings: Any) -> str:
    with pytest.raises(ConfigError) as info:
        validate_integration(splunk_config(**settings))
    messages = [reason for name, reason in info.value.errors if name == f"settings.{field}"]
    assert messages, info.value.errors
    assert TOKEN not in str(info.value)
    bad_token = settings.get("api_token")
    if isinstance(bad_token, str) and len(bad_token) > 4:
        assert bad_token.strip() not in str(info.value)
    return messages[0]


def valid(**settings: Any) -> SplunkSettings:
    _, model = validate_integration(splunk_config(**settings))
    assert isinstance(model, SplunkSettings)
    return model


def test_defaults() -> None:
    settings = valid()
    assert settings.webhook_url == URL
    assert settings.api_token.get_secret_value() == TOKEN
    assert settings.index is None
    assert settings.compression == "none"
    assert settings.use_ack is False
    assert TOKEN not in repr(settings)


def test_required_fields() -> None:
    with pytest.raises(ConfigError) as info:
        validate_integration(splunk_config() | {"settings": {}})
    assert {name for name, _ in info.value.errors} == {"settings.webhook_url", "settings.api_token"}


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (URL, URL),
        (URL + "/event", URL + "/event"),
        (URL + "/", URL),
        ("  HTTPS://Acme.SplunkCloud.com/services/collector  ", URL),
        (
            "https://http-inputs-acme.splunkcloud.com:443/services/collector",
            "https://http-inputs-acme.splunkcloud.com:443/services/collector",
        ),
        (
            "https://http-inputs.acme.splunkcloud.com/services/collector/event",
            "https://http-inputs.acme.splunkcloud.com/services/collector/event",
        ),
        (
            "https://prd-p-abc12.splunkcloud.com:8088/services/collector",
            "https://prd-p-abc12.splunkcloud.com:8088/services/collector",
        ),
    ],
)
def test_valid_urls(given: str, stored: str) -> None:
    assert valid(webhook_url=given).webhook_url == stored


@pytest.mark.parametrize(
    "url",
    [
        "http://acme.splunkcloud.com/services/collector",  # not TLS
        "https://splunkcloud.com/services/collector",  # no customer identifier
        "https://acme.splunkcloud.com/services/collector/raw",  # raw endpoint
        "https://acme.splunkcloud.com/services/collector/health",
        "https://acme.splunkcloud.com/",
        "https://acme.splunkcloud.com.evil.example/services/collector",
        "https://evil.example/acme.splunkcloud.com/services/collector",
        "https://acme.splunkcloud.com:9999/services/collector",  # unexpected port
        "https://user:pw@acme.splunkcloud.com/services/collector",
        "https://acme.splunkcloud.com/services/collector?token=x",
        "https://a.b.c.splunkcloud.com/services/collector",  # three labels
        "https://-acme.splunkcloud.com/services/collector",
        "https://acme.splunkcloud.com/services/\ncollector",
        "https://acme.splunk.com/services/collector",
    ],
)
def test_invalid_urls(url: str) -> None:
    message = error_for("webhook_url", webhook_url=url)
    assert "https://<customer-identifier>.splunkcloud.com/services/collector" in message


@pytest.mark.parametrize("token", [TOKEN, TOKEN.upper(), f"Splunk {TOKEN}", f"  {TOKEN}\n"])
def test_valid_tokens(token: str) -> None:
    assert valid(api_token=token).api_token.get_secret_value() in (TOKEN, TOKEN.upper())


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not-a-guid-token-value",
        TOKEN[:-1],
        TOKEN + "0",
        TOKEN.replace("-", ""),
        "Bearer " + TOKEN,
    ],
)
def test_invalid_tokens(token: str) -> None:
    assert "GUID" in error_for("api_token", api_token=token)


@pytest.mark.parametrize(
    "index", ["main", "security", "cd_alerts", "cd-alerts-2", "0day", "a" * 80]
)
def test_valid_indexes(index: str) -> None:
    assert valid(index=index).index == index


@pytest.mark.parametrize("index", [None, "", "   "])
def test_empty_index_means_the_token_default(index: str | None) -> None:
    assert valid(index=index).index is None


@pytest.mark.parametrize(
    ("index", "reason"),
    [
        ("Security", "lowercase"),
        ("_internal", "not starting with an underscore"),
        ("-alerts", "not starting with an underscore or hyphen"),
        ("cd.alerts", "lowercase letters, digits, underscores and hyphens"),
        ("cd alerts", "lowercase letters"),
        ("a" * 81, "1-80"),
        ("my_kvstore_idx", "kvstore"),
        ("main\n", "lowercase"),
    ],
)
def test_invalid_indexes(index: str, reason: str) -> None:
    assert reason in error_for("index", index=index)


@pytest.mark.parametrize(
    ("given", "stored"), [(None, "none"), ("", "none"), ("none", "none"), ("gzip", "gzip")]
)
def test_compression(given: str | None, stored: str) -> None:
    assert valid(compression=given).compression == stored


def test_zstd_is_refused_with_the_reason() -> None:
    message = error_for("compression", compression="zstd")
    assert "only gzip" in message and "choose gzip or none" in message


def test_unknown_compression_is_refused() -> None:
    assert "none or gzip" in error_for("compression", compression="brotli")


def test_use_ack_flag() -> None:
    assert valid(use_ack=True).use_ack is True
    assert error_for("use_ack", use_ack="sometimes")


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        validate_integration(splunk_config(sourcetype="custom"))
    assert "settings.sourcetype" in {name for name, _ in info.value.errors}
