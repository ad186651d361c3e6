"""The Slack sink against a local Slack (tests/fakes/slack.py) and, once, the whole pipeline.

The fake checks every request as VENDORS.md states Slack does, so passing here means the
sink meets Slack's contract, not merely its own expectations.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.models import Alert, DeadLetter, Delivery, DeliveryStatus, IntegrationConfig
from sinks.errors import DeliveryError, PermanentError, RetryableError
from sinks.retry import RetryPolicy
from sinks.secretbox import SecretBox
from sinks.slack.config import SlackSettings
from sinks.slack.sink import SECTION_TEXT_MAX, SlackSink, WebhookPacer, build_message
from streams.delivery import DeliveryRunner
from tests.fakes.slack import Answer, FakeSlack
from tests.harness import (
    TEST_SECRET_KEYS,
    TopicSet,
    WorkerProcess,
    delivery_of,
    free_port,
    make_alert,
    produce,
    put_configs,
    sample_alert,
    sink_context,
    utf16_units,
)

pytestmark = pytest.mark.integration

CHANNEL = "#security-alerts"
_ids = itertools.count(1)


# -- helpers ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def alert(**overrides: Any) -> Alert:
    return sample_alert(
        **{"page_url": "https://shop.example.com/checkout?step=pay&x=1", **overrides}
    )


def delivery(url: str, channel: str = CHANNEL, **alert_fields: Any) -> Delivery:
    a = alert(**alert_fields)
    integration = IntegrationConfig(
        integration_id="slack-1",
        tenant_id=a.tenant_id,
        type="slack",
        name="SOC Slack",
        version=1,
        settings={"webhook_url": url, "channel": channel},
    )
    return delivery_of(a, integration, offset=next(_ids))


def settings_of(d: Delivery) -> SlackSettings:
    return SlackSettings.model_validate(d.integration.settings)


def assert_clean(error: DeliveryError, url: str) -> None:
    """No part of the webhook URL's secret path in the message."""
    token = url.rsplit("/", 1)[1]
    assert token not in error.message and token not in str(error)
    assert url.split("hooks.slack.com")[1] not in error.message


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeSlack]:
    with FakeSlack() as server:
        yield server


@pytest.fixture
def webhook(fake: FakeSlack) -> str:
    n = next(_ids)
    return fake.add_webhook(f"T{n:08d}", f"B{n:08d}", f"tok{n:021d}")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def sink(fake: FakeSlack, clock: Clock) -> AsyncIterator[SlackSink]:
    s = SlackSink(sink_context(fake.override), pacer=WebhookPacer(clock=clock))
    yield s
    await s.aclose()


# -- success: the exact request ------------------------------------------------------


async def test_posts_one_block_kit_message_with_everything_the_alert_has(
    sink: SlackSink, fake: FakeSlack, webhook: str
) -> None:
    d = delivery(webhook)
    assert await sink.send(d, settings_of(d)) == 200

    request = fake.requests[-1]
    assert request.method == "POST"
    assert request.path == webhook.split("hooks.slack.com")[1]
    assert request.headers["content-type"] == "application/json"
    assert "authorization" not in request.headers  # the URL is the credential
    body = request.json()
    assert set(body) == {"text", "blocks"}  # no channel override: app webhooks ignore it
    assert body["text"].startswith(":red_circle: HIGH risk (Client-side risk): New script")
    assert "on shop.example.com" in body["text"]
    assert "<https://console.example.com/alerts/1|Open in console>" in body["text"]

    blocks = body["blocks"]
    assert [b["type"] for b in blocks] == [
        "header",
        "section",
        "section",
        "section",
        "actions",
        "context",
    ]
    assert blocks[0]["text"] == {
        "type": "plain_text",
        "text": ":red_circle: HIGH risk: New script reads the payment form",
        "emoji": True,
    }
    fields = [f["text"] for f in blocks[1]["fields"]]
    assert fields[0] == "*Risk*\n:red_circle: HIGH"
    assert fields[1] == "*Event*\nClient-side risk"
    assert fields[2] == "*Domain*\nshop.example.com"
    epoch = int(d.alert.detected_at.timestamp())
    assert fields[3] == (
        f"*Detected*\n<!date^{epoch}^{{date_short_pretty}} {{time_secs}}|2024-05-01T12:00:01Z>"
    )
    page = "https://shop.example.com/checkout?step=pay&amp;x=1"
    assert fields[4] == f"*Page*\n<{page}|{page}>"
    assert (
        fields[5] == "*Script*\n<https://cdn.tracker.example/x.js|https://cdn.tracker.example/x.js>"
    )
    assert blocks[2]["text"]["text"] == "cdn.tracker.example/x.js started reading card fields."
    assert blocks[3]["text"]["text"] == "*Details*\n• *pci_scope*: in\n• *script_hash*: abc123"
    button = blocks[4]["elements"][0]
    assert button["url"] == "https://console.example.com/alerts/1"
    assert button["text"]["text"] == "Open in console"
    context_text = blocks[5]["elements"][0]["text"]
    assert f"*{CHANNEL}*" in context_text and "SOC Slack" in context_text
    assert "`alert-1`" in context_text
    assert fake.messages_for(webhook)[-1].ignored_overrides == {}


@pytest.mark.parametrize(
    ("risk", "shown"),
    [
        ("critical", ":rotating_light: CRITICAL"),
        ("high", ":red_circle: HIGH"),
        ("medium", ":large_orange_circle: MEDIUM"),
        ("low", ":large_blue_circle: LOW"),
    ],
)
def test_risk_is_the_first_thing_in_header_and_fallback(risk: str, shown: str) -> None:
    d = delivery(
        "https://hooks.slack.com/services/T00000000/B00000000/" + "x" * 24, risk_level=risk
    )
    message = build_message(d, settings_of(d))
    assert message["text"].startswith(shown)
    assert message["blocks"][0]["text"]["text"].startswith(shown)


def test_header_is_one_line() -> None:
    d = delivery(
        "https://hooks.slack.com/services/T00000000/B00000000/" + "x" * 24,
        title="Line one\n\nline two ",
    )
    header = build_message(d, settings_of(d))["blocks"][0]["text"]["text"]
    assert header == ":red_circle: HIGH risk: Line one line two"


def test_optional_fields_missing_give_a_smaller_valid_message() -> None:
    d = delivery(
        "https://hooks.slack.com/services/T00000000/B00000000/" + "x" * 24,
        description=None,
        page_url=None,
        script_url=None,
        domain=None,
        console_url=None,
        details=None,
        event_type="pci_scope_change",
    )
    message = build_message(d, settings_of(d))
    assert [b["type"] for b in message["blocks"]] == ["header", "section", "context"]
    assert [f["text"].split("\n")[0] for f in message["blocks"][1]["fields"]] == [
        "*Risk*",
        "*Event*",
        "*Detected*",
    ]
    assert "PCI scope change" in message["text"]


async def test_alert_text_cannot_mention_or_forge_links(
    sink: SlackSink, fake: FakeSlack, webhook: str
) -> None:
    d = delivery(
        webhook,
        title="<!channel> pay here <https://evil.example|bank> & more",
        domain="<!here>",
        description="<@U123> <!subteam^S1>",
        page_url="javascript:alert(1)",
        script_url="https://cdn.example/a|b>c.js",
        details={"<!everyone>": "<https://evil.example|x>"},
    )
    await sink.send(d, settings_of(d))
    body = fake.requests[-1].json()
    mrkdwn = [body["text"]]  # everything Slack parses for mentions and links
    for block in body["blocks"]:
        for obj in [block.get("text"), *block.get("fields", []), *block.get("elements", [])]:
            if isinstance(obj, dict) and obj.get("type") == "mrkdwn":
                mrkdwn.append(obj["text"])
    assert len(mrkdwn) == 1 + 6 + 2 + 1  # fallback, fields, description, details, context
    for forbidden in (
        "<!channel>",
        "<!here>",
        "<@U123>",
        "<!subteam",
        "<!everyone>",
        "<https://evil",
    ):
        assert all(forbidden not in text for text in mrkdwn)
    assert "&lt;!channel&gt; pay here" in body["text"]
    fields = {f["text"].split("\n")[0]: f["text"] for f in body["blocks"][1]["fields"]}
    assert fields["*Page*"] == "*Page*\njavascript:alert(1)"  # shown, never linked
    assert fields["*Script*"].startswith("*Script*\n<https://cdn.example/a%7Cb&gt;c.js|")
    # plain_text is not parsed for mentions: the header keeps the title as is
    assert body["blocks"][0]["text"]["text"].endswith(
        "<!channel> pay here <https://evil.example|bank> & more"
    )


async def test_every_limit_holds_for_a_huge_alert(
    sink: SlackSink, fake: FakeSlack, webhook: str
) -> None:
    emoji = "\U0001f6a8"  # two UTF-16 units each
    d = delivery(
        webhook,
        title=("T&<" + emoji) * 16000,
        description=("d&" + emoji) * 16000,
        domain="x" * 1024,
        page_url="https://shop.example.com/" + "p" * 8000,
        script_url="https://cdn.example/" + "s" * 8000,
        console_url="https://console.example.com/" + "c" * 8000,  # too long for a button
        details={f"key{i}": ("v&" + emoji) * 2000 for i in range(300)},
    )
    assert await sink.send(d, settings_of(d)) == 200  # the fake enforces Slack's limits

    body = fake.requests[-1].json()
    assert len(body["blocks"]) <= 50
    assert utf16_units(body["text"]) <= 3000 and body["text"].count("…") >= 1
    assert "&am…" not in body["text"] and "&…" not in body["text"]
    header = body["blocks"][0]["text"]["text"]
    assert utf16_units(header) <= 150 and header.endswith("…")
    for block in body["blocks"]:
        if block["type"] == "section" and "text" in block:
            assert utf16_units(block["text"]["text"]) <= SECTION_TEXT_MAX
        for field in block.get("fields", []):
            assert utf16_units(field["text"]) <= 2000
    assert body["blocks"][-1]["type"] == "context"
    assert not any(b["type"] == "actions" for b in body["blocks"])
    details = body["blocks"][3]["text"]["text"]
    assert details.endswith("more in the console_")


# -- Slack's errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "kind", "status", "says"),
    [
        ("channel_not_found", PermanentError, 404, "the webhook's channel was deleted or archived"),
        ("channel_is_archived", PermanentError, 410, "unarchive it"),
        ("invalid_token", PermanentError, 403, "create a new webhook"),
        ("no_service", PermanentError, 404, "create a new one and update the URL"),
        ("action_prohibited", PermanentError, 403, "ask them to allow this app"),
        ("user_not_found", PermanentError, 400, "create a new webhook"),
        ("team_disabled", PermanentError, 403, "workspace was disabled"),
        ("no_active_hooks", PermanentError, 403, "turn Incoming Webhooks on"),
        ("rollup_error", RetryableError, 500, "internal error"),
    ],
)
async def test_slack_error_codes_are_classified_with_advice(
    sink: SlackSink,
    fake: FakeSlack,
    webhook: str,
    state: str,
    kind: type[DeliveryError],
    status: int,
    says: str,
) -> None:
    fake.set_state(webhook, state)
    d = delivery(webhook)
    with pytest.raises(DeliveryError) as info:
        await sink.send(d, settings_of(d))
    error = info.value
    assert type(error) is kind and error.status == status
    assert error.message.startswith(f"Slack says {state}: ")
    assert says in error.message and CHANNEL in error.message
    assert_clean(error, webhook)


async def test_wrong_token_and_unknown_workspace_are_permanent(
    sink: SlackSink, fake: FakeSlack, webhook: str
) -> None:
    for url, code in (
        (webhook[:-5] + "ZZZZZ", "invalid_token"),
        ("https://hooks.slack.com/services/T99999999/B99999999/" + "y" * 24, "no_team"),
    ):
        d = delivery(url)
        with pytest.raises(PermanentError) as info:
            await sink.send(d, settings_of(d))
        assert info.value.message.startswith(f"Slack says {code}:")
        assert_clean(info.value, url)


async def test_invalid_payload_is_reported_as_our_bug(
    sink: SlackSink, fake: FakeSlack, webhook: str
) -> None:
    fake.script(Answer(400, "invalid_payload"))
    d = delivery(webhook)
    with pytest.raises(PermanentError) as info:
        await sink.send(d, settings_of(d))
    assert "Slack says invalid_payload" in info.value.message and "bug" in info.value.message


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_errors_without_a_code_are_retryable(
    sink: SlackSink, fake: FakeSlack, webhook: str, status: int
) -> None:
    fake.script(Answer(status, "<html>Service Unavailable</html>"))
    d = delivery(webhook)
    with pytest.raises(RetryableError) as info:
        await sink.send(d, settings_of(d))
    assert info.value.status == status
    assert_clean(info.value, webhook)


async def test_429_honours_retry_after_and_holds_the_webhook(
    sink: SlackSink, fake: FakeSlack, webhook: str, clock: Clock
) -> None:
    fake.script(Answer(429, "rate_limited", {"Retry-After": "7"}))
    first = delivery(webhook, alert_id="limited-1")
    with pytest.raises(RetryableError) as info:
        await sink.send(first, settings_of(first))
    assert info.value.status == 429 and info.value.retry_after == 7
    assert "rate limiting" in info.value.message
    assert_clean(info.value, webhook)

    # Nothing more goes to Slack before the 7 s are over, and the refused alert goes first.
    sent = len(fake.requests)
    second = delivery(webhook, alert_id="limited-2")
    with pytest.raises(RetryableError) as waiting:
        await sink.send(second, settings_of(second))
    assert waiting.value.retry_after == pytest.approx(8.0)
    assert waiting.value.status is None
    assert len(fake.requests) == sent
    clock.now += 7
    assert await sink.send(first, settings_of(first)) == 200
    with pytest.raises(RetryableError):
        await sink.send(second, settings_of(second))
    clock.now += 1
    assert await sink.send(second, settings_of(second)) == 200


async def test_connection_refused_is_retryable_and_clean(webhook: str) -> None:
    closed = free_port()
    s = SlackSink(sink_context(f"hooks.slack.com=http://127.0.0.1:{closed}"))
    try:
        d = delivery(webhook)
        with pytest.raises(RetryableError) as info:
            await s.send(d, settings_of(d))
        assert "could not be reached" in info.value.message
        assert_clean(info.value, webhook)
    finally:
        await s.aclose()


# -- pacing: ~1 message/s per webhook without ever waiting ----------------------------


async def test_burst_of_three_then_one_reserved_slot_per_second(
    sink: SlackSink, fake: FakeSlack, webhook: str, clock: Clock
) -> None:
    ds = [delivery(webhook, alert_id=f"burst-{i}") for i in range(6)]
    settings = settings_of(ds[0])
    for d in ds[:3]:
        assert await sink.send(d, settings) == 200
    waits = []
    for d in ds[3:]:
        with pytest.raises(RetryableError) as info:
            await sink.send(d, settings)
        assert info.value.status is None and "1 message/s" in info.value.message
        waits.append(info.value.retry_after)
    assert waits == [pytest.approx(1.0), pytest.approx(2.0), pytest.approx(3.0)]
    assert len(fake.messages_for(webhook)) == 3  # the refused ones never reached Slack

    # A retry of delivery 5 at t+1 is still early: only delivery 4's slot has come.
    clock.now += 1
    with pytest.raises(RetryableError) as early:
        await sink.send(ds[4], settings)
    assert early.value.retry_after == pytest.approx(1.0)
    assert await sink.send(ds[3], settings) == 200
    clock.now += 2
    assert await sink.send(ds[4], settings) == 200
    assert await sink.send(ds[5], settings) == 200

    # Another webhook has its own budget.
    other = fake.add_webhook("T77777777", "B77777777", "o" * 24)
    assert await sink.send(delivery(other), settings_of(delivery(other))) == 200


class _Recorder:
    def __init__(self) -> None:
        self.statuses: list[DeliveryStatus] = []
        self.dead: list[DeadLetter] = []

    async def status(self, record: DeliveryStatus) -> None:
        self.statuses.append(record)

    async def dead_letter(self, record: DeadLetter) -> None:
        self.dead.append(record)


async def test_shared_retry_policy_delivers_a_burst_at_slacks_pace() -> None:
    """The real clock and retry policy: 6 alerts at once all arrive, none earns a 429."""
    with FakeSlack(rate_limit=(1.0, 4)) as limited:  # a little looser than ours: jitter
        url = limited.add_webhook("T55555555", "B55555555", "p" * 24)
        s = SlackSink(sink_context(limited.override))
        recorder = _Recorder()
        policy = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05)
        runner = DeliveryRunner(s, policy, recorder, SecretBox.parse(TEST_SECRET_KEYS))
        try:
            ds = [delivery(url, alert_id=f"paced-{i}") for i in range(6)]
            started = time.monotonic()
            outcomes = await runner.deliver_many(ds)
            elapsed = time.monotonic() - started
        finally:
            await s.aclose()
        assert [o.value for o in outcomes] == ["delivered"] * 6
        assert recorder.dead == []
        assert limited.rate_limited_count == 0
        assert len(limited.messages) == 6
        assert 2.5 <= elapsed < 6
        times = sorted(m.at for m in limited.messages)
        assert times[5] - times[3] >= 1.8  # 1/s after the burst of three


# -- re-delivery and Test connection -------------------------------------------------


async def test_redelivery_posts_again_because_slack_has_no_idempotency(
    sink: SlackSink, fake: FakeSlack, webhook: str, clock: Clock
) -> None:
    """Documented limitation: Slack offers no dedup key, so the same delivery twice is two
    messages (PagerDuty and Opsgenie dedupe; Slack cannot)."""
    d = delivery(webhook)
    await sink.send(d, settings_of(d))
    clock.now += 5
    await sink.send(d, settings_of(d))
    texts = [m.text for m in fake.messages_for(webhook)]
    assert len(texts) == 2 and texts[0] == texts[1]


async def test_check_posts_a_labelled_test_message(
    sink: SlackSink, fake: FakeSlack, webhook: str
) -> None:
    d = delivery(webhook)
    detail = await sink.check(d.integration, settings_of(d))
    assert "HTTP 200" in detail and CHANNEL in detail
    message = fake.messages_for(webhook)[-1]
    assert "[TEST] alertrelay connection test" in message.text
    assert message.blocks[0]["text"]["text"].startswith(":large_blue_circle: LOW risk: [TEST]")


async def test_check_fails_with_slacks_reason(
    sink: SlackSink, fake: FakeSlack, webhook: str
) -> None:
    fake.set_state(webhook, "channel_is_archived")
    d = delivery(webhook)
    with pytest.raises(PermanentError) as info:
        await sink.check(d.integration, settings_of(d))
    assert "channel_is_archived" in info.value.message
    assert_clean(info.value, webhook)


async def test_check_does_not_push_past_the_pace(
    sink: SlackSink, webhook: str, clock: Clock
) -> None:
    d = delivery(webhook)
    for i in range(3):
        await sink.send(delivery(webhook, alert_id=f"fill-{i}"), settings_of(d))
    with pytest.raises(RetryableError) as info:
        await sink.check(d.integration, settings_of(d))
    assert "try again" in info.value.message


# -- end to end on a real broker -----------------------------------------------------


def test_worker_delivers_alerts_to_slack_end_to_end(kafka_bootstrap: str, tmp_path: Path) -> None:
    topics = TopicSet()
    with FakeSlack(rate_limit=(1.0, 4)) as slack:
        url = slack.add_webhook("T12121212", "B12121212", "e" * 24)
        worker = WorkerProcess(
            kafka_bootstrap, topics, tmp_path, {"ALERTRELAY_HOST_OVERRIDES": slack.override}
        )
        with worker:
            tenant = "t-slack-e2e"
            config = {
                "integration_id": "slack-e2e",
                "tenant_id": tenant,
                "type": "slack",
                "name": "SOC Slack",
                "min_risk_level": "medium",
                "settings": {"webhook_url": url, "channel": CHANNEL},
            }
            put_configs(kafka_bootstrap, topics, worker, config)
            alerts = [make_alert(i, tenant, alert_id=f"slack-e2e-{i}") for i in range(8)]
            produce(kafka_bootstrap, topics.alerts, [(tenant, a) for a in alerts])
            wanted = [a for a in alerts if a["risk_level"] != "low"]  # 6 of 8
            messages = slack.wait_for(len(wanted), timeout=45)
            time.sleep(1.0)
            log = worker.log_tail(400)
        assert len(slack.messages) == len(wanted)
        assert slack.rate_limited_count == 0  # paced before Slack had to say so
        times = sorted(m.at for m in messages)
        assert times[-1] - times[0] >= 1.8  # six at once leave as 3 + one per second
        titles = sorted(m.blocks[0]["text"]["text"].split(" risk: ", 1)[1] for m in messages)
        assert titles == sorted(a["title"] for a in wanted)
        for message in messages:
            assert f"*{CHANNEL}*" in json.dumps(message.blocks)
        assert url.rsplit("/", 1)[1] not in log


def test_pacer_never_sleeps() -> None:
    """The pacer only computes: a send over the rate is refused at once."""
    pacer = WebhookPacer()
    started = time.monotonic()
    results = [pacer.acquire("https://hooks.slack.com/x", f"k{i}") for i in range(100)]
    assert time.monotonic() - started < 0.5
    assert results[:3] == [None, None, None]
    assert results[99] == pytest.approx(97.0, abs=0.2)
    assert asyncio.iscoroutinefunction(SlackSink.send)
