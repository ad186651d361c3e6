"""The webhook sink: the request it builds, and its answers against a real local receiver."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import ValidationError

from schemas.models import Alert, Delivery, IntegrationConfig, idempotency_key
from sinks.base import BatchLimits
from sinks.errors import PermanentError, RetryableError
from sinks.http import EgressGuard, HostOverrides
from sinks.registry import ConfigError, SinkContext, validate_integration
from sinks.webhook.config import WebhookSettings
from sinks.webhook.sink import WebhookSink, build_request, sign
from tests.fakes.webhook_receiver import Answer, WebhookReceiver

SECRET_TOKEN = "very-secret-hook-token"


def make_alert(alert_id: str = "alert-1") -> Alert:
    return Alert(
        alert_id=alert_id,
        tenant_id="tenant-a",
        event_type="pci_scope_change",
        risk_level="medium",
        title="Page entered PCI scope",
        detected_at=dt.datetime(2024, 5, 1, 12, 0, 1, tzinfo=dt.UTC),
        page_url="https://shop.example.com/pay",
        details={"reason": "payment form"},
    )


def make_integration(settings: dict[str, Any]) -> IntegrationConfig:
    return IntegrationConfig(
        integration_id="wh-1",
        tenant_id="tenant-a",
        type="webhook",
        name="SOC",
        version=2,
        settings=settings,
    )


def make_delivery(settings: dict[str, Any], alert_id: str = "alert-1") -> Delivery:
    alert = make_alert(alert_id)
    return Delivery(
        alert=alert,
        integration=make_integration(settings),
        config_version=2,
        idempotency_key=idempotency_key(alert.alert_id, "wh-1"),
        source_topic="alerts",
        source_partition=1,
        source_offset=10,
        routed_at=time.time(),
    )


def settings_for(url: str, **extra: Any) -> dict[str, Any]:
    return {"webhook_url": url, **extra}


# -- build_request -------------------------------------------------------------------


def test_build_request_basics() -> None:
    raw = settings_for("https://hooks.example.com/x", method="put")
    delivery = make_delivery(raw)
    method, url, headers, body = build_request(delivery, WebhookSettings.model_validate(raw))
    assert method == "PUT"
    assert url == "https://hooks.example.com/x"
    assert headers["Idempotency-Key"] == idempotency_key("alert-1", "wh-1")
    assert headers["Content-Type"] == "application/json"
    assert orjson.loads(body) == delivery.alert.wire()
    assert orjson.loads(body) == json.loads(orjson.dumps(make_alert().wire()))


def test_build_request_default_method_is_post() -> None:
    raw = settings_for("https://hooks.example.com/x")
    method, *_ = build_request(make_delivery(raw), WebhookSettings.model_validate(raw))
    assert method == "POST"


def test_user_headers_win_and_last_wins_by_name() -> None:
    raw = settings_for(
        "https://hooks.example.com/x",
        headers=[
            {"name": "content-type", "value": "application/vnd.soc+json"},
            {"name": "X-Token", "value": "first"},
            {"name": "IDEMPOTENCY-KEY", "value": "mine"},
            {"name": "x-token", "value": "last"},
        ],
    )
    _, _, headers, _ = build_request(make_delivery(raw), WebhookSettings.model_validate(raw))
    lowered: dict[str, list[str]] = {}
    for name, value in headers.items():
        lowered.setdefault(name.lower(), []).append(value)
    assert lowered["content-type"] == ["application/vnd.soc+json"]
    assert lowered["idempotency-key"] == ["mine"]
    assert lowered["x-token"] == ["last"]


# -- against the real receiver -------------------------------------------------------


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    """One server for the module; each test uses a path of its own."""
    with WebhookReceiver() as server:
        yield server


@pytest.fixture
def path() -> str:
    return f"/hooks/{uuid.uuid4().hex[:8]}/{SECRET_TOKEN}"


@pytest.fixture
async def sink() -> AsyncIterator[WebhookSink]:
    webhook = WebhookSink(
        SinkContext(HostOverrides(), EgressGuard.parse("127.0.0.1/32"), BatchLimits())
    )
    try:
        yield webhook
    finally:
        await webhook.aclose()


async def _send(sink: WebhookSink, raw: dict[str, Any]) -> int | None:
    delivery = make_delivery(raw)
    return await sink.send(delivery, sink.parse_settings(delivery.integration.settings))


async def test_send_200(sink: WebhookSink, receiver: WebhookReceiver, path: str) -> None:
    raw = settings_for(receiver.url + path, headers=[{"name": "X-Team", "value": "soc"}])
    assert await _send(sink, raw) == 200
    (request,) = receiver.received(path)
    assert request.method == "POST"
    assert request.json() == make_alert().wire()
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert headers["idempotency-key"] == idempotency_key("alert-1", "wh-1")
    assert headers["content-type"] == "application/json"
    assert headers["x-team"] == "soc"


async def test_send_uses_configured_method(
    sink: WebhookSink, receiver: WebhookReceiver, path: str
) -> None:
    assert await _send(sink, settings_for(receiver.url + path, method="PATCH")) == 200
    assert receiver.received(path)[0].method == "PATCH"


async def test_503_is_retryable(sink: WebhookSink, receiver: WebhookReceiver, path: str) -> None:
    receiver.script(path, Answer(503, b"maintenance"))
    with pytest.raises(RetryableError) as info:
        await _send(sink, settings_for(receiver.url + path))
    assert info.value.status == 503
    # the next request (script exhausted) succeeds: nothing sticky
    assert await _send(sink, settings_for(receiver.url + path)) == 200


async def test_429_retry_after(sink: WebhookSink, receiver: WebhookReceiver, path: str) -> None:
    receiver.script(path, Answer(429, b"slow down", headers={"Retry-After": "7"}))
    with pytest.raises(RetryableError) as info:
        await _send(sink, settings_for(receiver.url + path))
    assert info.value.status == 429
    assert info.value.retry_after == 7


async def test_400_is_permanent_without_the_url(
    sink: WebhookSink, receiver: WebhookReceiver, path: str
) -> None:
    echo = f"no such hook {path}".encode()  # a server echoing the secret path
    receiver.script(path, Answer(400, echo))
    with pytest.raises(PermanentError) as info:
        await _send(sink, settings_for(receiver.url + path))
    error = info.value
    assert error.status == 400
    assert "400" in error.message
    for text in (error.message, str(error)):
        assert SECRET_TOKEN not in text
        assert path not in text


async def test_one_settings_object_serves_many_alerts_with_what_was_worked_out_once(
    sink: WebhookSink, receiver: WebhookReceiver, path: str
) -> None:
    settings = sink.parse_settings(settings_for(receiver.url + path))
    receiver.script(path, Answer(400, b"nope"))
    with pytest.raises(PermanentError) as first:
        await sink.send(make_delivery({}, "alert-1"), settings)
    target = sink._target(settings)
    assert await sink.send(make_delivery({}, "alert-2"), settings) == 200
    assert sink._target(settings) is target  # not worked out again per alert
    assert target.redact is sink.redactor(settings)
    assert first.value.message.startswith("webhook http://127.0.0.1:")
    assert SECRET_TOKEN not in first.value.message and path not in first.value.message
    assert [r.json()["alert_id"] for r in receiver.received(path)] == ["alert-1", "alert-2"]
    other = sink.parse_settings(settings_for(receiver.url + path, method="PUT"))
    assert sink._target(other) is not target


async def test_egress_guard_refuses_loopback_when_not_allowed(
    receiver: WebhookReceiver, path: str
) -> None:
    guarded = WebhookSink(SinkContext(HostOverrides(), EgressGuard.parse(""), BatchLimits()))
    try:
        with pytest.raises(PermanentError) as info:
            await _send(guarded, settings_for(receiver.url + path))
    finally:
        await guarded.aclose()
    assert "127.0.0.1" in info.value.message
    assert SECRET_TOKEN not in info.value.message
    assert receiver.received(path) == []


async def test_check_sends_a_labelled_test_alert(
    sink: WebhookSink, receiver: WebhookReceiver, path: str
) -> None:
    raw = settings_for(receiver.url + path)
    integration = make_integration(raw)
    detail = await sink.check(integration, sink.parse_settings(integration.settings))
    assert "200" in detail
    (request,) = receiver.received(path)
    body = request.json()
    assert body["title"].startswith("[TEST]")
    assert body["tenant_id"] == "tenant-a"
    assert Alert.model_validate(body)  # a valid alert of the contract


def test_unusable_client_certificate_is_refused_with_the_settings() -> None:
    raw = settings_for(
        "https://127.0.0.1:9/x", protocol="tls", client_certificate="not a certificate"
    )
    with pytest.raises(ValidationError) as err:
        WebhookSettings.model_validate(raw)
    assert "client_certificate" in str(err.value)


# -- settings validation (through the registry, as the API and the config topic do) ---

SIGNING_SECRET = "whsec-0123456789abcdef"


def config_errors(settings: dict[str, Any]) -> dict[str, str]:
    """{field: message} of the refusal; fails when the settings are accepted."""
    with pytest.raises(ConfigError) as info:
        validate_integration(make_integration(settings).model_dump())
    return dict(info.value.errors)


def accepted(settings: dict[str, Any]) -> WebhookSettings:
    _, parsed = validate_integration(make_integration(settings).model_dump())
    assert isinstance(parsed, WebhookSettings)
    return parsed


@pytest.fixture(scope="module")
def client_ca() -> trustme.CA:
    return trustme.CA()


def pem_of(cert: trustme.LeafCert) -> str:
    return cert.private_key_and_cert_chain_pem.bytes().decode()


def tls_settings(pem: str, **extra: Any) -> dict[str, Any]:
    return settings_for(
        "https://hooks.example.com/x", protocol="tls", client_certificate=pem, **extra
    )


@pytest.mark.parametrize("method", ["GET", "get", "DELETE", "HEAD", "OPTIONS"])
def test_methods_without_a_body_are_refused_with_the_reason(method: str) -> None:
    errors = config_errors(settings_for("https://hooks.example.com/x", method=method))
    message = errors["settings.method"]
    assert f"method {method.upper()} is not supported" in message
    assert "POST, PUT or PATCH" in message and "body" in message


@pytest.mark.parametrize("method", ["post", " Put ", "PATCH"])
def test_body_methods_are_accepted_in_any_case(method: str) -> None:
    assert accepted(settings_for("https://h.example.com/x", method=method)).method == (
        method.strip().upper()
    )


def test_blank_body_pattern_means_the_default_body() -> None:
    assert (
        accepted(settings_for("https://h.example.com/x", body_pattern="  \n")).body_pattern is None
    )


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("{{ titel }}", "'titel' is undefined"),
        ("{{ ''.__class__.__mro__ }}", "is not accessible"),
        ("{{ cycler.__init__.__globals__ }}", "is not accessible"),
        ("{% for i in range(10**9) %}{% endfor %}", "range() is limited"),
        ("{% for %}", "line 1"),
        ("é" * 40_000, "larger than 64 KiB"),
    ],
)
def test_body_pattern_is_compiled_and_rendered_at_save_time(pattern: str, reason: str) -> None:
    errors = config_errors(settings_for("https://h.example.com/x", body_pattern=pattern))
    assert reason in errors["settings.body_pattern"]


def test_signing_secret_rules_without_echoing_it() -> None:
    short = "short-secret-15"
    errors = config_errors(settings_for("https://h.example.com/x", signing_secret=short))
    assert errors["settings.signing_secret"] == "signing secret must be at least 16 characters"
    with pytest.raises(ConfigError) as info:
        validate_integration(
            make_integration(
                settings_for("https://h.example.com/x", signing_secret=short)
            ).model_dump()
        )
    assert short not in str(info.value)
    assert accepted(settings_for("https://h.example.com/x", signing_secret=SIGNING_SECRET))


@pytest.mark.parametrize("name", ["X-Alertrelay-Signature", "x-alertrelay-timestamp"])
def test_signature_headers_are_reserved_when_signing(name: str) -> None:
    raw = settings_for(
        "https://h.example.com/x",
        signing_secret=SIGNING_SECRET,
        headers=[{"name": name, "value": "mine"}],
    )
    errors = config_errors(raw)
    assert "set by alertrelay when signing_secret is set" in errors["settings"]
    raw.pop("signing_secret")
    assert accepted(raw)  # without signing the name is the user's


@pytest.mark.parametrize("value", ["a\r\nX-Evil: 1", "a\nb", "a\x00b"])
def test_header_values_never_carry_line_breaks(value: str) -> None:
    raw = settings_for("https://h.example.com/x", headers=[{"name": "X-A", "value": value}])
    errors = config_errors(raw)
    assert "CR, LF or NUL" in errors["settings.headers.0.value"]
    assert value not in str(errors)


def test_tls_needs_a_certificate_and_an_https_url(client_ca: trustme.CA) -> None:
    errors = config_errors(settings_for("https://h.example.com/x", protocol="tls"))
    assert "client_certificate is required when protocol is tls" in errors["settings"]
    pem = pem_of(client_ca.issue_cert("soc@example.com"))
    errors = config_errors(
        settings_for("http://h.example.com/x", protocol="tls", client_certificate=pem)
    )
    assert "https://" in errors["settings"]
    assert accepted(tls_settings(pem)).protocol == "tls"


def test_expired_client_certificate_is_refused_with_the_date(client_ca: trustme.CA) -> None:
    expired = client_ca.issue_cert(
        "soc@example.com",
        not_before=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
        not_after=dt.datetime(2021, 6, 30, 23, 59, tzinfo=dt.UTC),
    )
    pem = pem_of(expired)
    errors = config_errors(tls_settings(pem))
    assert errors["settings.client_certificate"] == (
        "client certificate expired on 2021-06-30 23:59 UTC"
    )
    assert "PRIVATE KEY" not in str(errors)


def test_client_certificate_not_yet_valid_is_refused(client_ca: trustme.CA) -> None:
    future = client_ca.issue_cert(
        "soc@example.com",
        not_before=dt.datetime.now(dt.UTC) + dt.timedelta(days=2),
        not_after=dt.datetime.now(dt.UTC) + dt.timedelta(days=30),
    )
    errors = config_errors(tls_settings(pem_of(future)))
    assert "is not valid before" in errors["settings.client_certificate"]


def test_certificate_and_key_that_do_not_match_are_refused(client_ca: trustme.CA) -> None:
    one = client_ca.issue_cert("one@example.com")
    other = client_ca.issue_cert("other@example.com")
    pem = other.private_key_pem.bytes().decode() + one.cert_chain_pems[0].bytes().decode()
    errors = config_errors(tls_settings(pem))
    assert errors["settings.client_certificate"] == (
        "client certificate and private key do not belong together"
    )


def test_encrypted_private_key_is_refused(client_ca: trustme.CA) -> None:
    leaf = client_ca.issue_cert("soc@example.com")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    ).decode()
    errors = config_errors(tls_settings(encrypted + leaf.cert_chain_pems[0].bytes().decode()))
    assert "encrypted" in errors["settings.client_certificate"]


def test_certificate_not_meant_for_client_authentication_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "server-only")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = (
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        + cert.public_bytes(serialization.Encoding.PEM).decode()
    )
    errors = config_errors(tls_settings(pem))
    assert "lacks clientAuth" in errors["settings.client_certificate"]


# -- build_request: body, content type, signature --------------------------------------


def test_body_pattern_that_renders_json_is_sent_as_json() -> None:
    raw = settings_for(
        "https://h.example.com/x",
        body_pattern='{"text": {{ title|tojson }}, "k": "{{ idempotency_key }}"}',
    )
    delivery = make_delivery(raw)
    _, _, headers, body = build_request(delivery, WebhookSettings.model_validate(raw))
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"text": "Page entered PCI scope", "k": delivery.idempotency_key}


def test_body_pattern_that_renders_text_is_sent_as_text() -> None:
    raw = settings_for(
        "https://h.example.com/x", body_pattern="ALERT {{ risk_level }}: {{ title }}"
    )
    _, _, headers, body = build_request(make_delivery(raw), WebhookSettings.model_validate(raw))
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert body == b"ALERT medium: Page entered PCI scope"


def test_configured_content_type_wins_over_the_detected_one() -> None:
    raw = settings_for(
        "https://h.example.com/x",
        body_pattern="risk={{ risk_level }}",
        headers=[{"name": "content-type", "value": "application/x-www-form-urlencoded"}],
    )
    _, _, headers, _ = build_request(make_delivery(raw), WebhookSettings.model_validate(raw))
    assert [v for k, v in headers.items() if k.lower() == "content-type"] == [
        "application/x-www-form-urlencoded"
    ]


def test_signature_covers_timestamp_and_the_exact_body() -> None:
    raw = settings_for(
        "https://h.example.com/x",
        signing_secret=SIGNING_SECRET,
        headers=[{"name": "X-Team", "value": "soc"}],
    )
    _, _, headers, body = build_request(
        make_delivery(raw), WebhookSettings.model_validate(raw), timestamp=1714564801
    )
    assert headers["X-Alertrelay-Timestamp"] == "1714564801"
    expected = hmac.new(SIGNING_SECRET.encode(), b"1714564801." + body, hashlib.sha256).hexdigest()
    assert headers["X-Alertrelay-Signature"] == f"sha256={expected}"
    assert list(headers)[-2:] == ["X-Alertrelay-Timestamp", "X-Alertrelay-Signature"]
    assert sign(SIGNING_SECRET, 1714564801, body) == headers["X-Alertrelay-Signature"]


def test_known_signature_vector() -> None:
    """A fixed vector for receivers to test their own verification against."""
    assert sign("whsec-0123456789abcdef", 1700000000, b'{"a":1}') == (
        "sha256="
        + hmac.new(b"whsec-0123456789abcdef", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
    )


def test_no_signature_headers_without_a_secret() -> None:
    raw = settings_for("https://h.example.com/x")
    _, _, headers, _ = build_request(make_delivery(raw), WebhookSettings.model_validate(raw))
    assert not any(name.lower().startswith("x-alertrelay-sig") for name in headers)
    assert "X-Alertrelay-Timestamp" not in headers


def test_blank_client_certificate_is_no_certificate() -> None:
    raw = settings_for("https://h.example.com/x", client_certificate="  ")
    assert accepted(raw).client_certificate is None
    errors = config_errors({**raw, "protocol": "tls"})
    assert "client_certificate is required when protocol is tls" in errors["settings"]
