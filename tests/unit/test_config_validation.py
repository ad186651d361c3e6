"""validate_integration: common fields and per-type settings, with per-field errors."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import trustme

from sinks.registry import ConfigError, validate_integration
from sinks.s3.config import S3Settings
from sinks.webhook.config import WebhookSettings

WEBHOOK_URL = "https://hooks.example.com/services/T0001/B0002/webhook-secret-token"
S3_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
PEM = trustme.CA().issue_cert("client.example").private_key_and_cert_chain_pem.bytes().decode()


def webhook_config(**settings: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "integration_id": "wh-1",
        "tenant_id": "tenant-a",
        "type": "webhook",
        "name": "SOC webhook",
        "event_types": ["client_side_risk"],
        "min_risk_level": "medium",
        "settings": {"webhook_url": WEBHOOK_URL, "method": "post", "protocol": "tcp"},
    }
    base["settings"].update(settings)
    return base


def s3_config(**settings: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "integration_id": "s3-1",
        "tenant_id": "tenant-a",
        "type": "s3",
        "name": "Archive",
        "settings": {
            "access_key_id": "AKIAIOSFODNN7EXAMPLE",
            "secret_access_key": S3_SECRET,
            "region": "eu-west-1",
            "bucket": "alerts-archive",
            "compression": "zstd",
        },
    }
    base["settings"].update(settings)
    return base


def errors_of(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        validate_integration(data)
    return info.value


def fields_of(data: dict[str, Any]) -> set[str]:
    return {field for field, _ in errors_of(data).errors}


# -- valid examples ----------------------------------------------------------------------


def test_valid_webhook() -> None:
    config, settings = validate_integration(webhook_config())
    assert config.type == "webhook"
    assert config.enabled is True
    assert isinstance(settings, WebhookSettings)
    assert settings.method == "POST"  # normalised
    assert settings.webhook_url.get_secret_value() == WEBHOOK_URL


def test_valid_webhook_with_tls_and_headers() -> None:
    _, settings = validate_integration(
        webhook_config(
            protocol="TLS",
            client_certificate=PEM,
            method="PUT",
            headers=[{"name": "Authorization", "value": "Bearer abc"}],
        )
    )
    assert isinstance(settings, WebhookSettings)
    assert settings.protocol == "tls"
    assert settings.method == "PUT"


def test_valid_s3() -> None:
    config, settings = validate_integration(s3_config())
    assert config.type == "s3"
    assert isinstance(settings, S3Settings)
    assert settings.bucket == "alerts-archive"
    assert settings.compression == "zstd"
    assert config.event_types == ["client_side_risk", "pci_scope_change"]  # default both
    assert config.min_risk_level == "low"


def test_s3_compression_defaults_and_null() -> None:
    data = s3_config()
    del data["settings"]["compression"]
    assert validate_integration(data)[1].compression == "gzip"  # type: ignore[attr-defined]
    assert validate_integration(s3_config(compression=None))[1].compression == "none"  # type: ignore[attr-defined]


# -- each invalid field is named -----------------------------------------------------------


def _common(**changes: Any) -> dict[str, Any]:
    data = webhook_config()
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (webhook_config(webhook_url="ftp://hooks.example.com/x"), "settings.webhook_url"),
        (webhook_config(webhook_url="not a url"), "settings.webhook_url"),
        (webhook_config(method="DELETE"), "settings.method"),
        (webhook_config(protocol="udp"), "settings.protocol"),
        (webhook_config(unexpected="x"), "settings.unexpected"),
        (s3_config(region="mars-1"), "settings.region"),
        (s3_config(bucket="Not_A_Bucket"), "settings.bucket"),
        (s3_config(bucket="ab"), "settings.bucket"),
        (s3_config(bucket="192.168.1.1"), "settings.bucket"),
        (s3_config(access_key_id="lowercase"), "settings.access_key_id"),
        (s3_config(secret_access_key="short"), "settings.secret_access_key"),
        (s3_config(compression="brotli"), "settings.compression"),
        (_common(name="   "), "name"),
        (_common(name=""), "name"),
        (_common(event_types=[]), "event_types"),
        (_common(event_types=["malware"]), "event_types.0"),
        (_common(min_risk_level="urgent"), "min_risk_level"),
        (_common(type=None), "type"),
        (_common(integration_id="has space"), "integration_id"),
        (_common(enabled="maybe"), "enabled"),
        (_common(version=-1), "version"),
        (_common(colour="red"), "colour"),
    ],
)
def test_invalid_field_is_named(data: dict[str, Any], field: str) -> None:
    error = errors_of(data)
    assert field in {f for f, _ in error.errors}
    assert all(reason for _, reason in error.errors)
    assert field in str(error)


def test_missing_settings_field_is_named() -> None:
    data = s3_config()
    del data["settings"]["bucket"]
    assert "settings.bucket" in fields_of(data)


def test_several_invalid_fields_are_all_listed() -> None:
    data = webhook_config(webhook_url="ftp://x", method="DELETE")
    data.update(name="", min_risk_level="urgent", event_types=[])
    assert {
        "name",
        "event_types",
        "min_risk_level",
        "settings.webhook_url",
        "settings.method",
    } <= fields_of(data)


def test_several_invalid_s3_settings_are_all_listed() -> None:
    data = s3_config(region="nowhere", bucket="B", secret_access_key="!!")
    assert {"settings.region", "settings.bucket", "settings.secret_access_key"} <= fields_of(data)


def test_unknown_type_is_listed_with_other_invalid_fields() -> None:
    data = _common(type="carrier-pigeon", name="")
    assert {"type", "name"} <= fields_of(data)


# -- types ---------------------------------------------------------------------------------


def test_unknown_type_is_refused() -> None:
    error = errors_of(_common(type="carrier-pigeon"))
    assert [f for f, _ in error.errors] == ["type"]
    assert "unknown type" in error.errors[0][1]
    assert "webhook" in error.errors[0][1]  # says what is available


def test_contract_type_without_a_sink_is_refused_with_a_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sinks.registry as registry

    available = {k: v for k, v in registry._packages().items() if k != "slack"}
    monkeypatch.setattr(registry, "_packages", lambda: available)
    data = _common(type="slack", settings={"webhook_url": WEBHOOK_URL, "channel": "#soc"})
    error = errors_of(data)
    assert [f for f, _ in error.errors] == ["type"]
    assert "not available" in error.errors[0][1]


# -- webhook headers and TLS -----------------------------------------------------------


def test_repeated_header_name_keeps_the_last_value() -> None:
    _, settings = validate_integration(
        webhook_config(
            headers=[
                {"name": "X-Token", "value": "first"},
                {"name": "X-Other", "value": "kept"},
                {"name": "x-token", "value": "second"},
                {"name": "X-TOKEN", "value": "last"},
            ]
        )
    )
    assert isinstance(settings, WebhookSettings)
    pairs = [(h.name.lower(), h.value.get_secret_value()) for h in settings.headers]
    assert pairs.count(("x-token", "last")) == 1
    assert [name for name, _ in pairs].count("x-token") == 1
    assert ("x-other", "kept") in pairs


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb", "a\x00b"])
def test_crlf_in_header_value_is_refused(value: str) -> None:
    error = errors_of(webhook_config(headers=[{"name": "X-Token", "value": value}]))
    assert "settings.headers.0.value" in {f for f, _ in error.errors}


@pytest.mark.parametrize("name", ["Bad Name", "X:Y", "Host", "content-length", ""])
def test_invalid_or_reserved_header_name_is_refused(name: str) -> None:
    error = errors_of(webhook_config(headers=[{"name": name, "value": "v"}]))
    assert "settings.headers.0.name" in {f for f, _ in error.errors}


def test_header_name_with_trailing_newline_is_refused() -> None:
    error = errors_of(webhook_config(headers=[{"name": "X-Token\n", "value": "v"}]))
    assert "settings.headers.0.name" in {f for f, _ in error.errors}


@pytest.mark.parametrize(
    ("settings", "field"),
    [({"region": "eu-west-1\n"}, "settings.region"), ({"bucket": "alerts\n"}, "settings.bucket")],
)
def test_s3_region_or_bucket_with_trailing_newline_is_refused(
    settings: dict[str, str], field: str
) -> None:
    assert field in fields_of(s3_config(**settings))


def test_tls_without_client_certificate_is_refused() -> None:
    error = errors_of(webhook_config(protocol="tls"))
    assert any(f.startswith("settings") for f, _ in error.errors)
    assert "client_certificate" in str(error)


def test_tls_client_certificate_must_be_pem_with_key() -> None:
    error = errors_of(webhook_config(protocol="tls", client_certificate="not a certificate"))
    assert "client_certificate" in str(error)


def test_tls_needs_https_url() -> None:
    error = errors_of(
        webhook_config(
            protocol="tls", client_certificate=PEM, webhook_url="http://hooks.example.com/x"
        )
    )
    assert "https" in str(error)


# -- secrets never echoed ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "secret"),
    [
        (s3_config(secret_access_key="bad secret !! value"), "bad secret !! value"),
        (
            s3_config(secret_access_key="Sup3rS3cretButTooLong" * 10, region="x"),
            "Sup3rS3cretButTooLong",
        ),
        (webhook_config(webhook_url="ftp://hooks.example.com/tok-123456"), "tok-123456"),
        (webhook_config(webhook_url="https://hooks example.com/tok-abcdef"), "tok-abcdef"),
        (
            webhook_config(headers=[{"name": "Authorization", "value": "Bearer s3cr\r\net"}]),
            "s3cr",
        ),
        (
            webhook_config(
                protocol="tls",
                client_certificate="not-a-pem-SECRETKEY",
                webhook_url="http://hooks.example.com/x",
            ),
            "SECRETKEY",
        ),
    ],
)
def test_errors_never_contain_the_secret(data: dict[str, Any], secret: str) -> None:
    data = copy.deepcopy(data)
    data["name"] = ""  # also take the path where the common part fails first
    for attempt in (data, {**data, "name": "ok"}):
        error = errors_of(attempt)
        assert any(field.startswith("settings") for field, _ in error.errors)
        assert secret not in str(error)
        assert secret not in repr(error)
        assert all(secret not in reason for _, reason in error.errors)


@pytest.mark.parametrize(("level", "ok"), [(1, True), (19, True), (0, False), (23, False)])
def test_s3_zstd_level_is_configurable_within_zstd_range(level: int, ok: bool) -> None:
    data = s3_config(compression="zstd", zstd_level=level)
    if ok:
        _, settings = validate_integration(data)
        assert settings.zstd_level == level  # type: ignore[attr-defined]
    else:
        assert "settings.zstd_level" in fields_of(data)
