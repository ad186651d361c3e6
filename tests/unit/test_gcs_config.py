"""GCS settings: Google's bucket naming rules and the service-account key file checks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sinks.gcs.config import GCSSettings
from sinks.gcs.sink import key_secrets
from sinks.http import Redactor
from sinks.registry import ConfigError, validate_integration
from tests.fakes.gcs_server import private_key_pem, service_account_json

KEY_BODY_LINE = private_key_pem().splitlines()[5]  # a line of the key's base64 body


def gcs_config(**settings: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "integration_id": "gcs-1",
        "tenant_id": "tenant-a",
        "type": "gcs",
        "name": "Lake",
        "settings": {
            "bucket": "alerts-archive",
            "service_account_json": service_account_json(),
            "compression": "gzip",
        },
    }
    base["settings"].update(settings)
    return base


def error_for(field: str, **settings: Any) -> str:
    with pytest.raises(ConfigError) as info:
        validate_integration(gcs_config(**settings))
    error = info.value
    messages = [reason for name, reason in error.errors if name == f"settings.{field}"]
    assert messages, error.errors
    for secret in (private_key_pem(), KEY_BODY_LINE, "3f1c0ffee0ddba11c0ffee0ddba11c0ffee0ddba"):
        assert secret not in str(error)
    return messages[0]


def valid(**settings: Any) -> GCSSettings:
    _, model = validate_integration(gcs_config(**settings))
    assert isinstance(model, GCSSettings)
    return model


def test_a_downloaded_key_file_is_accepted() -> None:
    settings = valid()
    assert settings.bucket == "alerts-archive"
    assert settings.compression == "gzip"
    assert settings.prefix == "alertrelay"
    assert KEY_BODY_LINE not in repr(settings)


def test_the_key_file_may_arrive_as_an_object() -> None:
    settings = valid(service_account_json=json.loads(service_account_json()))
    assert json.loads(settings.service_account_json.get_secret_value())["type"] == (
        "service_account"
    )


def test_required_fields() -> None:
    with pytest.raises(ConfigError) as info:
        validate_integration(gcs_config() | {"settings": {}})
    fields = {name for name, _ in info.value.errors}
    assert fields == {"settings.bucket", "settings.service_account_json"}


@pytest.mark.parametrize(
    "bucket",
    [
        "abc",
        "a" * 63,
        "my_bucket-01",
        "logs.example.com",
        ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 30]),  # 222 with dots
        "9lives",
    ],
)
def test_valid_bucket_names(bucket: str) -> None:
    assert valid(bucket=bucket).bucket == bucket


@pytest.mark.parametrize(
    ("bucket", "reason"),
    [
        ("ab", "3-63 characters"),
        ("a" * 64, "3-63 characters"),
        (".".join(["a" * 63] * 3 + ["b" * 31]), "3-63 characters"),  # 223 with dots
        ("a." + "b" * 64, "at most 63"),
        ("Alerts", "lowercase letters"),
        ("alerts bucket", "lowercase letters"),
        ("-alerts", "start and end with a letter or digit"),
        ("alerts_", "start and end with a letter or digit"),
        ("alerts..archive", "consecutive dots"),
        ("192.168.5.4", "IP address"),
        ("goog-alerts", "start with 'goog'"),
        ("my-google-alerts", "'google'"),
        ("my-g00gle-alerts", "'google'"),
        ("alerts\n", "lowercase letters"),
    ],
)
def test_invalid_bucket_names(bucket: str, reason: str) -> None:
    assert reason in error_for("bucket", bucket=bucket)


def test_key_file_must_be_json() -> None:
    message = error_for("service_account_json", service_account_json="{not json")
    assert "not valid JSON" in message
    assert "must be a JSON object" in error_for("service_account_json", service_account_json="[]")
    assert "required" in error_for("service_account_json", service_account_json="  ")


@pytest.mark.parametrize("missing", ["type", "project_id", "client_email", "private_key"])
def test_key_file_fields_are_required(missing: str) -> None:
    text = service_account_json(**{missing: None})
    assert f"missing {missing}" in error_for("service_account_json", service_account_json=text)


def test_key_file_must_be_a_service_account() -> None:
    text = service_account_json(type="authorized_user")
    assert "type 'service_account'" in error_for("service_account_json", service_account_json=text)


def test_client_email_must_be_a_service_account_address() -> None:
    text = service_account_json(client_email="someone@example.com")
    message = error_for("service_account_json", service_account_json=text)
    assert "gserviceaccount.com" in message


@pytest.mark.parametrize(
    "key",
    [
        "not a key",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n",
    ],
)
def test_private_key_must_be_pem(key: str) -> None:
    text = service_account_json(private_key=key)
    assert "PEM private key" in error_for("service_account_json", service_account_json=text)


def test_private_key_must_load() -> None:
    # PEM armour around a key whose body is damaged: the shape passes, loading does not.
    lines = private_key_pem().splitlines()
    lines[3] = lines[3][::-1]
    text = service_account_json(private_key="\n".join(lines) + "\n")
    message = error_for("service_account_json", service_account_json=text)
    assert "could not be loaded" in message
    assert lines[3] not in message


def test_token_uri_must_be_googles() -> None:
    """Otherwise the worker would POST a signed JWT to a URL the tenant chose."""
    text = service_account_json(token_uri="http://169.254.169.254/token")
    assert "token_uri" in error_for("service_account_json", service_account_json=text)


def test_other_universes_are_refused() -> None:
    text = service_account_json(universe_domain="example.net")
    assert "universe" in error_for("service_account_json", service_account_json=text)


@pytest.mark.parametrize(("given", "stored"), [("none", "none"), (None, "none"), ("", "none")])
def test_compression_none(given: str | None, stored: str) -> None:
    assert valid(compression=given).compression == stored


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_compression_codecs(codec: str) -> None:
    assert valid(compression=codec).compression == codec


def test_unknown_compression_is_refused() -> None:
    assert "'gzip'" in error_for("compression", compression="brotli")


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        validate_integration(gcs_config(region="us-east1"))
    assert "settings.region" in {name for name, _ in info.value.errors}


def test_redaction_covers_the_key_in_every_form() -> None:
    settings = valid()
    redact = Redactor(key_secrets(settings.service_account_json))
    pem = private_key_pem()
    for text in (
        pem,
        json.dumps(pem),
        KEY_BODY_LINE,
        settings.service_account_json.get_secret_value(),
    ):
        assert KEY_BODY_LINE not in redact(f"error: {text}")
