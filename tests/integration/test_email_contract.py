"""The email sink against a real SMTP relay (aiosmtpd with STARTTLS and AUTH), and one
end-to-end run through a worker on the real broker."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
import logging
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller

from schemas.models import Alert, Delivery, IntegrationConfig, idempotency_key
from sinks.base import BatchLimits
from sinks.email.config import EmailSettings
from sinks.email.sink import NO_RELAY, EmailSink, SmtpRelay
from sinks.errors import DeliveryError, PermanentError, RetryableError
from sinks.http import EgressGuard, HostOverrides
from sinks.registry import SinkContext
from tests.fakes.smtp import FakeSmtp, ReceivedMail
from tests.harness import (
    TopicSet,
    WorkerProcess,
    consume,
    delivery_of,
    free_port,
    make_alert,
    produce,
    put_configs,
)

pytestmark = pytest.mark.integration

PASSWORD = FakeSmtp.PASSWORD
CTX = SinkContext(HostOverrides(), EgressGuard(), BatchLimits())


@pytest.fixture(scope="module")
def relay_server() -> Iterator[FakeSmtp]:
    with FakeSmtp() as fake:
        yield fake


@pytest.fixture
def fake(relay_server: FakeSmtp) -> FakeSmtp:
    relay_server.reset()
    return relay_server


@pytest.fixture
def sink(fake: FakeSmtp) -> EmailSink:
    return EmailSink(CTX, relay=SmtpRelay.from_env(fake.env()))


def make_delivery(
    alert_id: str = "alert-1", integration_id: str = "mail-1", **alert: Any
) -> Delivery:
    fields: dict[str, Any] = {
        "alert_id": alert_id,
        "tenant_id": "tenant-a",
        "event_type": "client_side_risk",
        "risk_level": "critical",
        "title": "New script reads the card number field",
        "detected_at": dt.datetime(2026, 11, 20, 10, 0, 5, tzinfo=dt.UTC),
        "description": "cdn.tracker.example/x.js started reading #card-number.",
        "page_url": "https://shop.example.com/checkout",
        "script_url": "https://cdn.tracker.example/x.js",
        "domain": "shop.example.com",
        "console_url": "https://console.example.com/alerts/1?tab=details&x=1",
        "details": {"pci_scope": "in", "script_hash": "abc123"},
    }
    fields.update(alert)
    integration = IntegrationConfig(
        integration_id=integration_id,
        tenant_id="tenant-a",
        type="email",
        name="SOC mailbox",
        version=3,
        settings={},
    )
    return delivery_of(Alert.model_validate(fields), integration, offset=7, config_version=3)


def settings(*emails: str) -> EmailSettings:
    return EmailSettings(emails=list(emails or ["soc@example.com"]))


def parts(mail: ReceivedMail) -> tuple[str, str]:
    plain = mail.message.get_body(("plain",))
    rich = mail.message.get_body(("html",))
    assert plain is not None and rich is not None
    return plain.get_content(), rich.get_content()


def header_block(mail: ReceivedMail) -> str:
    return mail.raw.split(b"\r\n\r\n", 1)[0].decode("ascii")


# -- the message ------------------------------------------------------------------------


async def test_message_structure(fake: FakeSmtp, sink: EmailSink) -> None:
    delivery = make_delivery(
        title="<script>alert('x')</script> & friends",
        details={"<b>key</b>": "<img src=x onerror=alert(1)>", "pci_scope": "in"},
    )
    assert await sink.send(delivery, settings("soc@example.com", "oncall@example.org")) is None

    (mail,) = fake.received()
    assert mail.tls and mail.auth_user == FakeSmtp.USERNAME
    assert mail.mail_from == FakeSmtp.SENDER
    assert mail.rcpt_tos == ["soc@example.com", "oncall@example.org"]

    msg = mail.message
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert msg["Subject"] == "[CRITICAL] <script>alert('x')</script> & friends"
    assert msg["From"] == f"Security alerts <{FakeSmtp.SENDER}>"
    assert [a.addr_spec for a in msg["To"].addresses] == ["soc@example.com", "oncall@example.org"]
    # Folded onto a continuation line when long (legal FWS); compare without it.
    assert msg["Message-ID"].strip() == f"<{delivery.idempotency_key}@alertrelay.example.com>"
    assert msg["X-Alertrelay-Alert-Id"] == "alert-1"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert (msg["Importance"], msg["X-Priority"]) == ("high", "1 (Highest)")
    sent = email.utils.parsedate_to_datetime(msg["Date"])
    assert abs(sent.timestamp() - time.time()) < 60

    plain, rich = parts(mail)
    assert "[CRITICAL] <script>alert('x')</script> & friends" in plain
    assert "Detected at: 2026-11-20 10:00:05 UTC" in plain
    assert "  <b>key</b>: <img src=x onerror=alert(1)>" in plain
    assert "https://console.example.com/alerts/1?tab=details&x=1" in plain

    assert "<script>" not in rich and "<img" not in rich and "<b>key" not in rich
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; friends" in rich
    assert "<th" in rich and "&lt;b&gt;key&lt;/b&gt;" in rich
    assert "&lt;img src=x onerror=alert(1)&gt;" in rich
    assert '<a href="https://console.example.com/alerts/1?tab=details&amp;x=1"' in rich
    assert "https://cdn.tracker.example/x.js" in rich
    assert 'href="https://cdn.tracker.example' not in rich  # the script URL is not a link


async def test_risk_levels_map_to_subject_tag_and_priority(fake: FakeSmtp, sink: EmailSink) -> None:
    expected = {
        "low": ("[LOW]", "low", "5 (Lowest)"),
        "medium": ("[MEDIUM]", "normal", "3 (Normal)"),
        "high": ("[HIGH]", "high", "2 (High)"),
        "critical": ("[CRITICAL]", "high", "1 (Highest)"),
    }
    for n, risk in enumerate(expected):
        await sink.send(make_delivery(f"risk-{n}", risk_level=risk), settings())
    for mail, (tag, importance, priority) in zip(fake.wait_for(4), expected.values(), strict=True):
        assert mail.message["Subject"].startswith(tag + " ")
        assert (mail.message["Importance"], mail.message["X-Priority"]) == (importance, priority)


async def test_crlf_in_alert_text_cannot_inject_headers(fake: FakeSmtp, sink: EmailSink) -> None:
    delivery = make_delivery(
        "inject\r\nBcc: evil2@attacker.example",
        title="Hello\r\nBcc: evil@attacker.example\r\nX-Injected: yes\n\rSubject: other",
        console_url="javascript:alert(1)//\r\nBcc: evil3@attacker.example",
    )
    await sink.send(delivery, settings())
    (mail,) = fake.received()
    assert mail.rcpt_tos == ["soc@example.com"]
    msg = mail.message
    for name in ("Bcc", "X-Injected", "Cc"):
        assert msg[name] is None
    headers = header_block(mail)
    assert "\nBcc" not in headers and "\nX-Injected" not in headers
    assert headers.count("\nSubject:") + headers.startswith("Subject:") == 1
    assert msg["Subject"].strip() == (  # folded whole onto a continuation line
        "[CRITICAL] Hello Bcc: evil@attacker.example X-Injected: yes Subject: other"
    )
    assert msg["X-Alertrelay-Alert-Id"] == "inject Bcc: evil2@attacker.example"
    _, rich = parts(mail)
    assert "javascript:" not in rich.split("Console:")[0]  # never a link
    assert 'href="javascript' not in rich


async def test_long_and_non_ascii_text_stays_valid(fake: FakeSmtp, sink: EmailSink) -> None:
    title = "Skript liest Kartenfeld \u2013 ÄÖÜ 日本語 " + "x" * 2000
    delivery = make_delivery(title=title, description="ü" * 5000, details={"clé": "välue" * 500})
    await sink.send(delivery, settings("soc@bücher.example"))
    (mail,) = fake.received()  # the fake refuses 8-bit data and lines over 998 octets
    assert mail.rcpt_tos == ["soc@xn--bcher-kva.example"]
    subject = mail.message["Subject"]
    assert subject.startswith("[CRITICAL] Skript liest Kartenfeld \u2013 ÄÖÜ 日本語 ")
    assert subject.endswith("…") and len(subject) <= 200
    plain, rich = parts(mail)
    assert "ü" * 5000 in plain and "välue" * 500 in rich


# -- recipients -------------------------------------------------------------------------


async def test_one_transaction_for_several_recipients(fake: FakeSmtp, sink: EmailSink) -> None:
    emails = [f"analyst{i}@example.com" for i in range(12)]
    await sink.send(make_delivery(), settings(*emails))
    assert fake.transactions == 1
    (mail,) = fake.received()
    assert mail.rcpt_tos == emails
    assert [a.addr_spec for a in mail.message["To"].addresses] == emails


async def test_partial_permanent_refusal_delivers_to_the_others_and_warns(
    fake: FakeSmtp, sink: EmailSink, caplog: pytest.LogCaptureFixture
) -> None:
    fake.refuse("gone@example.com")
    delivery = make_delivery()
    with caplog.at_level(logging.WARNING, logger="sinks.email.sink"):
        result = await sink.send(delivery, settings("a@example.com", "gone@example.com", "c@x.org"))
    assert result is None
    (mail,) = fake.received()
    assert mail.rcpt_tos == ["a@example.com", "c@x.org"]
    (record,) = [r for r in caplog.records if r.name == "sinks.email.sink"]
    text = record.getMessage()
    assert "delivered to 2 of 3 recipients" in text
    assert "gone@example.com (550 5.1.1 <gone@example.com>: Recipient address rejected" in text

    # A re-delivery of the same alert reaches nobody twice and does not retry the refused.
    again = await sink.send(delivery, settings("a@example.com", "gone@example.com", "c@x.org"))
    assert again is None
    assert len(fake.received()) == 1 and fake.transactions == 1


async def test_temporary_refusal_is_retried_for_those_recipients_only(
    fake: FakeSmtp, sink: EmailSink
) -> None:
    emails = settings("a@example.com", "full@example.com", "gone@example.com")
    fake.refuse("full@example.com", "452 4.2.2 <full@example.com>: Mailbox full")
    fake.refuse("gone@example.com")
    delivery = make_delivery()
    with pytest.raises(RetryableError) as info:
        await sink.send(delivery, emails)
    message = info.value.message
    assert "temporarily refused full@example.com (452 4.2.2" in message
    assert "delivered to 1 other recipient(s), the retry goes only to the refused ones" in message
    assert "refused for good: gone@example.com (550" in message
    (first,) = fake.received()
    assert first.rcpt_tos == ["a@example.com"]

    fake.reset()  # the mailbox has room again
    assert await sink.send(delivery, emails) is None
    (second,) = fake.received()
    assert second.rcpt_tos == ["full@example.com"]
    assert second.message["Message-ID"] == first.message["Message-ID"]
    assert second.message["To"] == first.message["To"]  # the same message, to the rest


async def test_all_recipients_refused_is_permanent(fake: FakeSmtp, sink: EmailSink) -> None:
    fake.refuse("a@example.com")
    fake.refuse("b@example.com", "553 5.1.3 <b@example.com>: bad destination mailbox")
    with pytest.raises(PermanentError) as info:
        await sink.send(make_delivery(), settings("a@example.com", "b@example.com"))
    assert info.value.message == (
        f"SMTP relay 127.0.0.1:{fake.port} refused every recipient: "
        "a@example.com (550 5.1.1 <a@example.com>: Recipient address rejected: User unknown), "
        "b@example.com (553 5.1.3 <b@example.com>: bad destination mailbox)"
    )
    assert fake.received() == []


async def test_all_recipients_refused_temporarily_is_retryable(
    fake: FakeSmtp, sink: EmailSink
) -> None:
    fake.refuse(
        "a@example.com", "450 4.2.0 <a@example.com>: Recipient address rejected: greylisted"
    )
    with pytest.raises(RetryableError, match=r"temporarily refused a@example\.com \(450 4\.2\.0"):
        await sink.send(make_delivery(), settings("a@example.com"))


# -- reply classes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "reply"),
    [
        ("data", "451 4.3.0 Error: queue file write error"),
        ("data", "452 4.3.1 Insufficient system storage"),
        ("mail", "421 4.7.0 smtp.fake.example Service not available, closing channel"),
        ("mail", "451 4.7.1 Try again later"),
        ("rcpt", "450 4.2.0 Mailbox unavailable"),
    ],
)
async def test_temporary_replies_are_retryable(
    fake: FakeSmtp, sink: EmailSink, stage: Any, reply: str
) -> None:
    fake.fail_next(stage, reply)
    with pytest.raises(RetryableError) as info:
        await sink.send(make_delivery(), settings())
    assert reply.split()[0] in info.value.message
    assert fake.received() == []
    assert await sink.send(make_delivery(), settings()) is None  # the next attempt goes through
    assert len(fake.received()) == 1


@pytest.mark.parametrize(
    ("stage", "reply", "text"),
    [
        ("data", "554 5.7.1 Message rejected as spam", "refused the message (554 5.7.1"),
        ("data", "550 5.7.1 Policy violation", "refused the message (550 5.7.1"),
        ("mail", "553 5.7.1 <alerts@alertrelay.example.com>: Sender address rejected", "sender"),
    ],
)
async def test_permanent_replies_are_permanent(
    fake: FakeSmtp, sink: EmailSink, stage: Any, reply: str, text: str
) -> None:
    fake.fail_next(stage, reply)
    with pytest.raises(PermanentError) as info:
        await sink.send(make_delivery(), settings())
    assert text in info.value.message
    if stage == "mail":
        assert "check ALERTRELAY_SMTP_FROM" in info.value.message


async def test_refused_credentials_are_permanent(fake: FakeSmtp, sink: EmailSink) -> None:
    fake.reject_auth = True
    with pytest.raises(PermanentError) as info:
        await sink.send(make_delivery(), settings())
    assert info.value.message.startswith("SMTP relay refused the credentials (535 5.7.8")
    assert "check ALERTRELAY_SMTP_USERNAME and ALERTRELAY_SMTP_PASSWORD" in info.value.message
    assert PASSWORD not in info.value.message
    assert fake.auth_attempts and all(a.tls for a in fake.auth_attempts)  # AUTH only after TLS


async def test_wrong_password_is_permanent_and_never_shown(fake: FakeSmtp) -> None:
    wrong = "Wrong-Pa55-0f-the-Day"
    sink = EmailSink(CTX, relay=SmtpRelay.from_env(fake.env(password=wrong)))
    with pytest.raises(PermanentError, match="refused the credentials") as info:
        await sink.send(make_delivery(), settings())
    assert wrong not in str(info.value)
    assert sink.secrets(settings()) == [wrong]


async def test_connection_refused_is_retryable() -> None:
    relay = SmtpRelay(
        host="127.0.0.1", port=free_port(), tls="none", sender="a@example.com",
        from_header="a@example.com",
    )  # fmt: skip
    with pytest.raises(RetryableError, match="could not be reached"):
        await EmailSink(CTX, relay=relay).send(make_delivery(), settings())


async def test_silent_server_times_out_retryably() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts the TCP handshake, never greets
        relay = SmtpRelay(
            host="127.0.0.1", port=listener.getsockname()[1], tls="none",
            sender="a@example.com", from_header="a@example.com", timeout=0.5,
        )  # fmt: skip
        with pytest.raises(RetryableError, match="timed out while connecting"):
            await EmailSink(CTX, relay=relay).send(make_delivery(), settings())


async def test_untrusted_certificate_is_permanent(fake: FakeSmtp, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    sink = EmailSink(CTX, relay=SmtpRelay.from_env(fake.env(ca_file=str(other))))
    with pytest.raises(PermanentError) as info:
        await sink.send(make_delivery(), settings())
    assert info.value.message.startswith(
        f"TLS verification failed for SMTP relay 127.0.0.1:{fake.port}"
    )
    assert "ALERTRELAY_SMTP_CA_FILE" in info.value.message
    assert fake.auth_attempts == []  # the password never left


async def test_a_relay_without_starttls_is_refused_not_downgraded() -> None:
    class Accept:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 OK"

    controller = Controller(Accept(), hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        relay = SmtpRelay(
            host="127.0.0.1", port=controller.port, tls="starttls",
            sender="a@example.com", from_header="a@example.com",
        )  # fmt: skip
        with pytest.raises(PermanentError, match="does not offer STARTTLS"):
            await EmailSink(CTX, relay=relay).send(make_delivery(), settings())
    finally:
        controller.stop()


async def test_implicit_tls_with_an_injected_context() -> None:
    with FakeSmtp(implicit_tls=True) as fake:
        context = ssl.create_default_context()
        fake.ca.configure_trust(context)
        relay = SmtpRelay(
            host=fake.host, port=fake.port, tls="implicit", username=fake.username,
            password=fake.password, sender=FakeSmtp.SENDER, from_header=FakeSmtp.SENDER,
        )  # fmt: skip
        sink = EmailSink(CTX, relay=relay, tls_context=context)
        assert await sink.send(make_delivery(), settings()) is None
        (mail,) = fake.received()
        assert mail.tls and mail.auth_user == fake.username


async def test_no_relay_configured_is_permanent() -> None:
    sink = EmailSink(CTX, relay=SmtpRelay())
    with pytest.raises(PermanentError) as info:
        await sink.send(make_delivery(), settings())
    assert info.value.message == NO_RELAY
    with pytest.raises(PermanentError, match="ALERTRELAY_SMTP_HOST"):
        await sink.check(make_delivery().integration, settings())


async def test_redelivery_sends_one_email(fake: FakeSmtp, sink: EmailSink) -> None:
    delivery = make_delivery()
    await sink.send(delivery, settings("a@example.com", "b@example.com"))
    await sink.send(delivery, settings("a@example.com", "b@example.com"))
    assert len(fake.received()) == 1
    # A new address added to the integration in between still gets the alert.
    await sink.send(delivery, settings("a@example.com", "b@example.com", "new@example.com"))
    assert [m.rcpt_tos for m in fake.received()] == [
        ["a@example.com", "b@example.com"],
        ["new@example.com"],
    ]


async def test_concurrent_sends(fake: FakeSmtp, sink: EmailSink) -> None:
    await asyncio.gather(*(sink.send(make_delivery(f"c-{i}"), settings()) for i in range(8)))
    ids = {m.message["X-Alertrelay-Alert-Id"] for m in fake.wait_for(8)}
    assert ids == {f"c-{i}" for i in range(8)}


# -- check() ----------------------------------------------------------------------------


async def test_check_sends_a_labelled_test_message(fake: FakeSmtp, sink: EmailSink) -> None:
    integration = make_delivery().integration
    detail = await sink.check(integration, settings("a@example.com", "b@example.com"))
    assert detail == (
        f"test email accepted by SMTP relay 127.0.0.1:{fake.port} for 2 recipient(s) "
        f"(STARTTLS, authenticated as {FakeSmtp.USERNAME})"
    )
    (mail,) = fake.received()
    assert mail.rcpt_tos == ["a@example.com", "b@example.com"] and mail.tls
    assert mail.message["Subject"] == "[LOW] [TEST] alertrelay connection test - no action needed"
    plain, _ = parts(mail)
    assert "This test message checks the 'SOC mailbox' integration." in plain


async def test_check_fails_on_refused_credentials(fake: FakeSmtp, sink: EmailSink) -> None:
    fake.reject_auth = True
    with pytest.raises(PermanentError, match="SMTP relay refused the credentials"):
        await sink.check(make_delivery().integration, settings())
    assert fake.received() == []


async def test_check_fails_when_an_address_is_refused(fake: FakeSmtp, sink: EmailSink) -> None:
    fake.refuse("typo@example.com")
    with pytest.raises(PermanentError) as info:
        await sink.check(make_delivery().integration, settings("a@example.com", "typo@example.com"))
    assert "refused typo@example.com (550 5.1.1" in info.value.message
    assert "the test email went to 1 of 2 recipients" in info.value.message


# -- secrets ----------------------------------------------------------------------------


async def test_password_never_appears_in_errors_logs_or_mail(
    fake: FakeSmtp, sink: EmailSink, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    errors: list[DeliveryError] = []
    caplog.set_level(logging.DEBUG)

    async def attempt(target: EmailSink, emails: EmailSettings | None = None) -> None:
        try:
            await target.send(make_delivery(f"s-{len(errors)}"), emails or settings())
        except DeliveryError as exc:
            errors.append(exc)

    fake.reject_auth = True
    await attempt(sink)
    fake.reset()
    fake.refuse("gone@example.com", f"550 5.1.1 unknown user, your password was {PASSWORD}")
    await attempt(sink, settings("gone@example.com"))
    await attempt(sink, settings("a@example.com", "gone@example.com"))
    fake.reset()
    fake.fail_next("data", f"554 5.7.1 rejected: AUTH PLAIN {PASSWORD}")
    await attempt(sink)
    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    await attempt(EmailSink(CTX, relay=SmtpRelay.from_env(fake.env(ca_file=str(other)))))
    await sink.check(make_delivery().integration, settings())

    assert len(errors) == 4
    ours = [r.getMessage() for r in caplog.records if not r.name.startswith("mail.log")]
    texts = [str(e) for e in errors] + [e.message for e in errors] + ours
    texts += [m.raw.decode("ascii") for m in fake.received()]
    for text in texts:
        assert PASSWORD not in text
    assert any("[REDACTED]" in e.message for e in errors)


# -- end to end on the broker -----------------------------------------------------------


@pytest.fixture(scope="module")
def e2e_worker(
    kafka_bootstrap: str, relay_server: FakeSmtp, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[WorkerProcess, TopicSet]]:
    topics = TopicSet()
    env = {**relay_server.env(), "ALERTRELAY_RETRY_MAX_ATTEMPTS": "4"}
    worker = WorkerProcess(kafka_bootstrap, topics, tmp_path_factory.mktemp("email-worker"), env)
    worker.start()
    yield worker, topics
    worker.stop()


def test_end_to_end_through_the_worker(
    kafka_bootstrap: str, e2e_worker: tuple[WorkerProcess, TopicSet], relay_server: FakeSmtp
) -> None:
    worker, topics = e2e_worker
    fake = relay_server
    fake.reset()
    tenant, iid = "t-email", "soc-mail"
    config = {
        "integration_id": iid,
        "tenant_id": tenant,
        "type": "email",
        "name": "SOC mailbox",
        "min_risk_level": "medium",
        "settings": {"emails": ["soc@example.com", "SOC@example.com", "oncall@example.org"]},
    }
    put_configs(kafka_bootstrap, topics, worker, config)

    fake.fail_next("data", "451 4.3.0 Temporary failure, try again")  # one retry on the way
    alerts = [make_alert(n, tenant, alert_id=f"mail-{n}") for n in range(1, 5)]  # medium..low
    produce(kafka_bootstrap, topics.alerts, [(tenant, a) for a in alerts])

    wanted = {a["alert_id"] for a in alerts if a["risk_level"] != "low"}
    mails = fake.wait_for(len(wanted), timeout=45)
    time.sleep(1)  # nothing more may arrive
    mails = fake.received()
    assert {m.message["X-Alertrelay-Alert-Id"] for m in mails} == wanted
    assert len(mails) == len(wanted)
    for mail in mails:
        alert_id = mail.message["X-Alertrelay-Alert-Id"]
        assert mail.rcpt_tos == ["soc@example.com", "oncall@example.org"]
        assert mail.tls and mail.auth_user == FakeSmtp.USERNAME
        assert mail.message["Message-ID"].strip() == (
            f"<{idempotency_key(alert_id, iid)}@alertrelay.example.com>"
        )
        assert mail.message["Subject"].endswith(f"New script detected #{alert_id[5:]}")

    statuses = consume(
        kafka_bootstrap,
        topics.status,
        min_count=len(wanted) + 1,
        until=lambda rs: sum(r["outcome"] == "delivered" for r in rs) >= len(wanted),
    )
    retried = [r for r in statuses if r["outcome"] == "retrying"]
    assert len(retried) == 1 and "451 4.3.0" in (retried[0]["error"] or "")
    for text in (json.dumps(statuses), worker.log_tail(400)):
        assert PASSWORD not in text
