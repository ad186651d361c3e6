"""The webhook sink against a careful receiver (tests/fakes/https_receiver.py): mutual
TLS with a required client certificate, the body pattern, HMAC signatures verified by the
receiver, dedup by Idempotency-Key, and once the whole pipeline on a real broker.

Certificates come from trustme: one CA for the server, another for client certificates.
The sink trusts the server's CA through `SSL_CERT_FILE`, as a deployment would for a
private CA.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from schemas.models import Alert, Delivery, IntegrationConfig
from schemas.models import idempotency_key as make_key
from sinks.errors import DeliveryError, PermanentError, RetryableError
from sinks.webhook.sink import WebhookSink, build_request
from tests.fakes.https_receiver import Answer, HttpsReceiver
from tests.harness import (
    TopicSet,
    WorkerProcess,
    delivery_of,
    make_alert,
    produce,
    put_configs,
    sink_context,
)

pytestmark = pytest.mark.integration

SIGNING_SECRET = "whsec-contract-0123456789"
HEADER_SECRET = "hdr-secret-value-42"
PATH_TOKEN = "pathtoken0123456789"
PATTERN = """{
  "text": {{ ("[" ~ risk_level|upper ~ "] " ~ title)|tojson }},
  "alert": {{ alert_id|tojson }},
  "when": {{ detected_at|tojson }},
  "page": {{ page_url|tojson }},
  "scope": {{ details.pci_scope|tojson }},
  "description": {{ description|tojson }},
  "source": {{ integration.name|tojson }},
  "key": {{ idempotency_key|tojson }}
}
"""
_offsets = itertools.count(1)


# -- certificates and receivers ------------------------------------------------------


@pytest.fixture(scope="module")
def server_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def client_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_cert(server_ca: trustme.CA) -> trustme.LeafCert:
    return server_ca.issue_cert("127.0.0.1", "localhost")


@pytest.fixture(scope="module")
def client_pem(client_ca: trustme.CA) -> str:
    leaf = client_ca.issue_cert("soc-client@example.com", common_name="soc-client")
    return leaf.private_key_and_cert_chain_pem.bytes().decode()


@pytest.fixture(scope="module")
def server_ca_file(server_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("trust") / "server-ca.pem"
    server_ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(autouse=True)
def trust_server_ca(server_ca_file: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sink's default trust is SSL_CERT_FILE when set (sinks.http.build_client)."""
    monkeypatch.setenv("SSL_CERT_FILE", server_ca_file)


@pytest.fixture(scope="module")
def mtls(server_cert: trustme.LeafCert, client_ca: trustme.CA) -> Iterator[HttpsReceiver]:
    """TLS 1.3, client certificate required, signatures required."""
    with HttpsReceiver(
        server_cert=server_cert, client_ca=client_ca, signing_secret=SIGNING_SECRET
    ) as server:
        yield server


@pytest.fixture(scope="module")
def plain() -> Iterator[HttpsReceiver]:
    """Plain HTTP, signatures required: for body-pattern cases without TLS."""
    with HttpsReceiver(signing_secret=SIGNING_SECRET) as server:
        yield server


@pytest.fixture
async def sink() -> AsyncIterator[WebhookSink]:
    s = WebhookSink(sink_context())
    yield s
    await s.aclose()


@pytest.fixture
def path() -> str:
    return f"/hooks/{next(_offsets)}/{PATH_TOKEN}"


# -- helpers ---------------------------------------------------------------------------


def alert(**overrides: Any) -> Alert:
    fields: dict[str, Any] = {
        "alert_id": "alert-1",
        "tenant_id": "tenant-a",
        "event_type": "pci_scope_change",
        "risk_level": "high",
        "title": 'Checkout "pay" entered PCI scope',
        "detected_at": dt.datetime(2024, 5, 1, 12, 0, 1, tzinfo=dt.UTC),
        "page_url": "https://shop.example.com/pay",
        "details": {"pci_scope": "in"},
    }
    fields.update(overrides)
    return Alert.model_validate(fields)


def delivery(settings: dict[str, Any], **alert_fields: Any) -> Delivery:
    a = alert(**alert_fields)
    integration = IntegrationConfig(
        integration_id="wh-1",
        tenant_id=a.tenant_id,
        type="webhook",
        name="SOC intake",
        version=3,
        settings=settings,
    )
    return delivery_of(a, integration, offset=next(_offsets), config_version=3)


def tls_settings(url: str, pem: str, **extra: Any) -> dict[str, Any]:
    return {
        "webhook_url": url,
        "protocol": "tls",
        "client_certificate": pem,
        "signing_secret": SIGNING_SECRET,
        **extra,
    }


async def send(sink: WebhookSink, d: Delivery) -> int | None:
    return await sink.send(d, sink.parse_settings(d.integration.settings))


async def failure(sink: WebhookSink, d: Delivery) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        await send(sink, d)
    return info.value


def assert_clean(error: DeliveryError, pem: str = "") -> None:
    """No secret of the settings in what reaches logs, status records and the DLQ."""
    secrets = [SIGNING_SECRET, HEADER_SECRET, PATH_TOKEN]
    secrets += [line for line in pem.splitlines() if len(line) > 40]
    for text in (error.message, str(error)):
        for secret in secrets:
            assert secret not in text, f"secret leaked: {text}"


# -- mutual TLS ------------------------------------------------------------------------


async def test_mtls_presents_the_client_certificate_with_the_pattern_and_signature(
    sink: WebhookSink, mtls: HttpsReceiver, client_pem: str, path: str
) -> None:
    settings = tls_settings(
        mtls.url + path,
        client_pem,
        method="put",
        body_pattern=PATTERN,
        headers=[
            {"name": "X-Team", "value": "first"},
            {"name": "Authorization", "value": f"Bearer {HEADER_SECRET}"},
            {"name": "x-team", "value": "soc"},
        ],
    )
    d = delivery(settings)
    assert await send(sink, d) == 200
    (request,) = mtls.received(path)
    assert request.status == 200  # the receiver verified the signature
    assert request.client_subject is not None
    assert request.client_subject["commonName"] == "soc-client"
    assert request.tls_version == "TLSv1.3"
    assert request.method == "PUT"
    assert request.header("content-type") == "application/json"
    assert request.header("idempotency-key") == d.idempotency_key
    assert request.header("authorization") == f"Bearer {HEADER_SECRET}"
    assert [v for k, v in request.headers.items() if k.lower() == "x-team"] == ["soc"]
    assert request.json() == {
        "text": '[HIGH] Checkout "pay" entered PCI scope',
        "alert": "alert-1",
        "when": "2024-05-01T12:00:01Z",
        "page": "https://shop.example.com/pay",
        "scope": "in",
        "description": None,
        "source": "SOC intake",
        "key": d.idempotency_key,
    }
    assert request.body.endswith(b"}\n")  # the pattern's trailing newline is kept


async def test_mtls_over_tls_1_2(
    sink: WebhookSink,
    server_cert: trustme.LeafCert,
    client_ca: trustme.CA,
    client_pem: str,
    path: str,
) -> None:
    import ssl

    with HttpsReceiver(
        server_cert=server_cert,
        client_ca=client_ca,
        signing_secret=SIGNING_SECRET,
        max_tls=ssl.TLSVersion.TLSv1_2,
    ) as server:
        assert await send(sink, delivery(tls_settings(server.url + path, client_pem))) == 200
        (request,) = server.received(path)
    assert request.tls_version == "TLSv1.2"
    assert request.client_subject and request.client_subject["commonName"] == "soc-client"
    assert request.json() == alert().wire()  # no pattern: the alert's JSON


@pytest.mark.parametrize("version", ["TLSv1_3", "TLSv1_2"])
async def test_without_a_client_certificate_the_server_refuses_permanently(
    sink: WebhookSink,
    server_cert: trustme.LeafCert,
    client_ca: trustme.CA,
    version: str,
    path: str,
) -> None:
    """protocol tcp to an mTLS server: permanent, because the same certificate-less
    handshake would be refused on every retry; the message says what to change."""
    import ssl

    with HttpsReceiver(
        server_cert=server_cert,
        client_ca=client_ca,
        signing_secret=SIGNING_SECRET,
        max_tls=getattr(ssl.TLSVersion, version),
    ) as server:
        settings = {"webhook_url": server.url + path, "signing_secret": SIGNING_SECRET}
        error = await failure(sink, delivery(settings))
        # With TLS 1.3 the client has its answer before the server thread has logged the
        # failed handshake on its side.
        for _ in range(100):
            if server.handshake_failures:
                break
            await asyncio.sleep(0.05)
        failures = [f.reason for f in server.handshake_failures]
        assert server.received() == []
    assert isinstance(error, PermanentError)
    assert "refused the TLS handshake" in error.message
    assert "requires a client certificate: set protocol tls" in error.message
    assert failures == ["PEER_DID_NOT_RETURN_A_CERTIFICATE"]
    assert_clean(error)


async def test_client_certificate_from_an_issuer_the_server_does_not_trust(
    sink: WebhookSink, mtls: HttpsReceiver, path: str
) -> None:
    stranger = trustme.CA().issue_cert("stranger@example.com")
    pem = stranger.private_key_and_cert_chain_pem.bytes().decode()
    error = await failure(sink, delivery(tls_settings(mtls.url + path, pem)))
    assert isinstance(error, PermanentError)
    assert "(unknown ca)" in error.message
    assert "rejected the client certificate" in error.message
    assert mtls.received(path) == []
    assert_clean(error, pem)


async def test_untrusted_server_certificate_is_permanent(
    sink: WebhookSink,
    mtls: HttpsReceiver,
    client_pem: str,
    path: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    monkeypatch.setenv("SSL_CERT_FILE", str(other))
    error = await failure(sink, delivery(tls_settings(mtls.url + path, client_pem)))
    assert isinstance(error, PermanentError)
    assert error.message.startswith("TLS verification failed for webhook https://127.0.0.1:")
    assert mtls.received(path) == []
    assert_clean(error, client_pem)


# -- signature -------------------------------------------------------------------------


async def test_wrong_signing_secret_is_refused_by_the_receiver(
    sink: WebhookSink, plain: HttpsReceiver, path: str
) -> None:
    settings = {"webhook_url": plain.url + path, "signing_secret": "another-secret-0123456"}
    error = await failure(sink, delivery(settings))
    assert isinstance(error, PermanentError)
    assert error.status == 401
    assert "signature does not match" in error.message
    assert "another-secret-0123456" not in error.message
    assert plain.accepted_for(path) == []


async def test_unsigned_delivery_is_refused_by_a_receiver_that_requires_signatures(
    sink: WebhookSink, plain: HttpsReceiver, path: str
) -> None:
    error = await failure(sink, delivery({"webhook_url": plain.url + path}))
    assert error.status == 401
    assert "missing X-Alertrelay-Timestamp" in error.message


async def test_a_signature_older_than_five_minutes_is_refused(
    plain: HttpsReceiver, path: str
) -> None:
    """The scheme's replay bound, as a receiver applies it."""
    settings = {"webhook_url": plain.url + path, "signing_secret": SIGNING_SECRET}
    d = delivery(settings)
    from sinks.webhook.config import WebhookSettings

    parsed = WebhookSettings.model_validate(settings)
    for age, status in ((400, 401), (0, 200)):
        method, url, headers, body = build_request(d, parsed, timestamp=int(time.time()) - age)
        async with httpx.AsyncClient() as client:
            response = await client.request(method, url, headers=headers, content=body)
        assert response.status_code == status


async def test_text_pattern_is_signed_and_sent_as_text(
    sink: WebhookSink, plain: HttpsReceiver, path: str
) -> None:
    pattern = "{{ risk_level|upper }} {{ title }} ({{ details.pci_scope }}) {{ domain }}"
    settings = {"webhook_url": plain.url + path, "signing_secret": SIGNING_SECRET}
    assert await send(sink, delivery({**settings, "body_pattern": pattern})) == 200
    (request,) = plain.received(path)
    assert request.status == 200
    assert request.header("content-type") == "text/plain; charset=utf-8"
    assert request.body == b'HIGH Checkout "pay" entered PCI scope (in) '


# -- body pattern failures at delivery -------------------------------------------------


async def test_a_pattern_that_runs_away_on_some_alert_fails_permanently_and_stops(
    sink: WebhookSink, plain: HttpsReceiver, path: str
) -> None:
    """Validated against the sample alert (risk high), it loops 10^8 times for a
    critical one: the sink gives up after the time limit, the render thread stops, and
    nothing is sent."""
    pattern = (
        "{% if risk_level == 'critical' %}{% for i in range(10000) %}"
        "{% for j in range(10000) %}{% endfor %}{% endfor %}{% endif %}{{ title|tojson }}"
    )
    settings = {
        "webhook_url": plain.url + path,
        "signing_secret": SIGNING_SECRET,
        "body_pattern": pattern,
    }
    started = time.monotonic()
    error = await failure(sink, delivery(settings, risk_level="critical"))
    assert time.monotonic() - started < 3.0
    assert isinstance(error, PermanentError)
    assert error.message == "body pattern: rendering took longer than 1 s"
    deadline = time.monotonic() + 2
    while any(t.name == "webhook-body-pattern" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the render thread kept running"
        await asyncio.sleep(0.02)
    assert await send(sink, delivery(settings, risk_level="low")) == 200
    assert len(plain.received(path)) == 1


# -- answers ---------------------------------------------------------------------------


async def test_server_errors_are_retryable(
    sink: WebhookSink, mtls: HttpsReceiver, client_pem: str, path: str
) -> None:
    mtls.script(path, Answer(503, b'{"error": "maintenance"}'))
    error = await failure(sink, delivery(tls_settings(mtls.url + path, client_pem)))
    assert isinstance(error, RetryableError)
    assert error.status == 503
    assert "maintenance" in error.message
    assert_clean(error, client_pem)


async def test_429_is_retryable_with_retry_after(
    sink: WebhookSink, mtls: HttpsReceiver, client_pem: str, path: str
) -> None:
    mtls.script(path, Answer(429, b'{"error": "slow down"}', headers={"Retry-After": "9"}))
    error = await failure(sink, delivery(tls_settings(mtls.url + path, client_pem)))
    assert isinstance(error, RetryableError)
    assert (error.status, error.retry_after) == (429, 9)


async def test_client_errors_are_permanent_with_the_answer(
    sink: WebhookSink, mtls: HttpsReceiver, client_pem: str, path: str
) -> None:
    echo = json.dumps({"error": f"unknown hook {path}", "auth": f"Bearer {HEADER_SECRET}"})
    mtls.script(path, Answer(422, echo.encode()))
    settings = tls_settings(
        mtls.url + path,
        client_pem,
        headers=[{"name": "Authorization", "value": f"Bearer {HEADER_SECRET}"}],
    )
    error = await failure(sink, delivery(settings))
    assert isinstance(error, PermanentError)
    assert error.status == 422
    assert "unknown hook" in error.message
    assert_clean(error, client_pem)


async def test_redirect_to_the_metadata_address_is_not_followed(
    sink: WebhookSink, mtls: HttpsReceiver, client_pem: str, path: str
) -> None:
    location = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    mtls.script(path, Answer(302, b"", headers={"Location": location}))
    error = await failure(sink, delivery(tls_settings(mtls.url + path, client_pem)))
    assert isinstance(error, PermanentError)
    assert error.status == 302
    assert "redirect to http://169.254.169.254" in error.message
    assert "not followed" in error.message
    assert len(mtls.received(path)) == 1


async def test_the_same_delivery_twice_is_accepted_once(
    sink: WebhookSink, mtls: HttpsReceiver, client_pem: str, path: str
) -> None:
    settings = tls_settings(mtls.url + path, client_pem, body_pattern=PATTERN)
    d = delivery(settings, alert_id=f"dedup-{path}")
    assert await send(sink, d) == 200
    assert await send(sink, d) == 200
    first, second = mtls.received(path)
    assert first.header("idempotency-key") == second.header("idempotency-key")
    assert first.body == second.body
    assert second.header("idempotent-replayed") is None  # a request header would be odd
    assert len(mtls.accepted_for(path)) == 1


async def test_check_sends_a_signed_test_alert_and_reports_failures(
    sink: WebhookSink, mtls: HttpsReceiver, client_pem: str, path: str
) -> None:
    settings = tls_settings(mtls.url + path, client_pem, body_pattern=PATTERN)
    integration = delivery(settings).integration
    detail = await sink.check(integration, sink.parse_settings(settings))
    assert detail == "test alert accepted with HTTP 200"
    (request,) = mtls.received(path)
    assert request.json()["text"].startswith("[LOW] [TEST]")
    bad = {**settings, "signing_secret": "not-the-right-secret-0"}
    with pytest.raises(PermanentError) as info:
        await sink.check(integration, sink.parse_settings(bad))
    assert info.value.status == 401
    assert "not-the-right-secret-0" not in str(info.value)


# -- end to end on a real broker -------------------------------------------------------


def test_worker_delivers_over_mtls_signed_and_patterned_end_to_end(
    kafka_bootstrap: str,
    tmp_path: Path,
    server_cert: trustme.LeafCert,
    client_ca: trustme.CA,
    client_pem: str,
    server_ca_file: str,
) -> None:
    topics = TopicSet()
    tenant = "t-webhook-e2e"
    path = f"/intake/{PATH_TOKEN}"
    with HttpsReceiver(
        server_cert=server_cert, client_ca=client_ca, signing_secret=SIGNING_SECRET
    ) as server:
        env = {"SSL_CERT_FILE": server_ca_file}
        with WorkerProcess(kafka_bootstrap, topics, tmp_path, env) as worker:
            config = {
                "integration_id": "hook-e2e",
                "tenant_id": tenant,
                "type": "webhook",
                "name": "SOC intake",
                "settings": tls_settings(
                    server.url + path,
                    client_pem,
                    method="POST",
                    body_pattern=PATTERN,
                    headers=[{"name": "Authorization", "value": f"Bearer {HEADER_SECRET}"}],
                ),
            }
            put_configs(kafka_bootstrap, topics, worker, config)
            alerts = [make_alert(i, tenant, alert_id=f"wh-e2e-{i}") for i in range(4)]
            # the same alert twice (a producer retry): the receiver accepts it once
            produce(kafka_bootstrap, topics.alerts, [(tenant, a) for a in [*alerts, alerts[0]]])
            server.wait_for(len(alerts) + 1, path, timeout=45)
            time.sleep(0.5)
            log = worker.log_tail(400)
    requests = server.received(path)
    assert all(r.status == 200 for r in requests), [r.status for r in requests]
    assert all(
        r.client_subject and r.client_subject["commonName"] == "soc-client" for r in requests
    )
    accepted = server.accepted_for(path)
    by_alert = {r.json()["alert"]: r.json() for r in accepted}
    assert set(by_alert) == {a["alert_id"] for a in alerts}
    for a in alerts:
        body = by_alert[a["alert_id"]]
        assert body["text"] == f"[{a['risk_level'].upper()}] {a['title']}"
        assert body["scope"] == "in"
        assert body["description"] == a["description"]
        assert body["key"] == make_key(a["alert_id"], "hook-e2e")
    assert server.handshake_failures == []
    for secret in (SIGNING_SECRET, HEADER_SECRET, PATH_TOKEN):
        assert secret not in log
