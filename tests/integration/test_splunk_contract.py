"""SplunkSink against the local HEC fake (tests/fakes/splunk_hec.py), and end to end."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from schemas.models import Alert, Delivery, IntegrationConfig
from sinks.base import Batch
from sinks.errors import DeliveryError, PermanentError, RetryableError
from sinks.registry import SinkContext
from sinks.splunk import sink as splunk_sink
from sinks.splunk.config import SplunkSettings
from sinks.splunk.sink import ACK_RETRY_AFTER, MAX_REQUEST_BYTES, SplunkSink
from tests.fakes.splunk_hec import ACK_PATH, HecAnswer, SplunkHEC, Token, busy, hec_error
from tests.fakes.webhook_receiver import Answer, WebhookReceiver
from tests.harness import (
    TopicSet,
    WorkerProcess,
    batch_of,
    delivery_of,
    free_port,
    make_alert,
    produce,
    put_configs,
    sink_context,
)

pytestmark = pytest.mark.integration

TOKEN = "8a1f3c52-7d4e-4b9a-9c11-2f6e5d4c3b2a"
ACK_TOKEN = "0c0ffee0-1111-4222-8333-444455556666"
OTHER_TOKEN = "deadbeef-0000-4000-8000-000000000000"
URL = "https://acme.splunkcloud.com/services/collector"
COLLECTOR = "/services/collector"
TENANT = "tenant-a"
INTEGRATION = "siem"
TOPIC = "alerts"
PARTITION = 2
DETECTED = dt.datetime(2024, 5, 1, 11, 59, 30, 250000, tzinfo=dt.UTC)


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture
def hec() -> Iterator[SplunkHEC]:
    fake = SplunkHEC(
        [Token(TOKEN), Token(ACK_TOKEN, ack=True)], indexes={"main", "security", "locked"}
    )
    fake.tokens[TOKEN].allowed_indexes = frozenset({"main", "security"})
    with fake:
        yield fake


def context(hec_url: str) -> SinkContext:
    return sink_context(f"*.splunkcloud.com={hec_url}")


@pytest.fixture
async def sink(hec: SplunkHEC) -> AsyncIterator[SplunkSink]:
    made = SplunkSink(context(hec.url))
    yield made
    await made.aclose()


# -- factories -------------------------------------------------------------------------


def splunk_settings(**extra: Any) -> dict[str, Any]:
    return {"webhook_url": URL, "api_token": TOKEN, **extra}


def make_delivery(offset: int, settings: dict[str, Any], **alert: Any) -> Delivery:
    fields: dict[str, Any] = {
        "alert_id": f"alert-{offset}",
        "tenant_id": TENANT,
        "event_type": "pci_scope_change",
        "risk_level": "critical",
        "title": f"alert {offset}",
        "detected_at": DETECTED,
        "page_url": "https://shop.example.com/checkout",
        "details": {"script_hash": "abc123"},
    }
    fields.update(alert)
    integration = IntegrationConfig(
        integration_id=INTEGRATION,
        tenant_id=TENANT,
        type="splunk",
        name="SIEM",
        version=1,
        settings=settings,
    )
    return delivery_of(
        Alert(**fields),
        integration,
        offset=offset,
        topic=TOPIC,
        partition=PARTITION,
        produced_at=1714564800.0,
    )


def make_batch(offsets: range | list[int], settings: dict[str, Any], **alert: Any) -> Batch:
    records = [make_delivery(o, settings, **alert) for o in offsets]
    return batch_of(records, day=dt.date(2024, 5, 1), bytes_per_record=300)


async def write(sink: SplunkSink, batch: Batch) -> int | None:
    return await sink.write(batch, SplunkSettings.model_validate(batch.integration.settings))


async def check(sink: SplunkSink, **extra: Any) -> str:
    settings = splunk_settings(**extra)
    integration = make_batch(range(1), settings).integration
    return await sink.check(integration, SplunkSettings.model_validate(settings))


def ids(hec: SplunkHEC) -> list[str]:
    return hec.alert_ids()


def no_secret(error: DeliveryError) -> DeliveryError:
    for token in (TOKEN, ACK_TOKEN, OTHER_TOKEN):
        assert token not in error.message
    return error


def split_envelopes(body: bytes) -> list[dict[str, Any]]:
    """Concatenated objects, parsed strictly (what HEC does)."""
    decoder, text, out, at = json.JSONDecoder(), body.decode(), [], 0
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        value, at = decoder.raw_decode(text, at)
        out.append(value)
    return out


# -- the request -----------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "gzip"])
async def test_a_batch_is_one_request_of_concatenated_envelopes(
    sink: SplunkSink, hec: SplunkHEC, compression: str
) -> None:
    batch = make_batch(range(10, 13), splunk_settings(compression=compression, index="security"))
    assert await write(sink, batch) == 200

    [request] = hec.received(COLLECTOR)
    assert request.method == "POST" and request.status == 200 and request.code == 0
    assert request.headers["Authorization"] == f"Splunk {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Forwarded-Host"] == "acme.splunkcloud.com"
    assert "X-Splunk-Request-Channel" not in request.headers
    if compression == "gzip":
        assert request.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(request.raw) == request.body
    else:
        assert "Content-Encoding" not in request.headers
        assert request.raw == request.body
    # concatenated objects: no array, no commas between them
    assert request.body.startswith(b"{") and not request.body.startswith(b"[")
    assert b"}\n{" in request.body and b"},{" not in request.body

    envelopes = split_envelopes(request.body)
    assert envelopes == hec.events()
    assert [e["event"]["alert_id"] for e in envelopes] == ["alert-10", "alert-11", "alert-12"]
    first = envelopes[0]
    assert first == {
        "time": DETECTED.timestamp(),
        "host": "alertrelay",
        "source": "alertrelay",
        "sourcetype": "alertrelay:alert",
        "index": "security",
        "event": batch.records[0].alert().wire(),
        "fields": {
            "tenant_id": TENANT,
            "integration_id": INTEGRATION,
            "event_type": "pci_scope_change",
            "risk_level": "critical",
        },
    }
    assert isinstance(first["time"], float) and first["time"] == 1714564770.25


async def test_event_endpoint_and_default_index(sink: SplunkSink, hec: SplunkHEC) -> None:
    await write(sink, make_batch(range(2), splunk_settings(webhook_url=URL + "/event")))
    [request] = hec.received(COLLECTOR + "/event")
    assert all("index" not in e for e in split_envelopes(request.body))
    assert ids(hec) == ["alert-0", "alert-1"]


@pytest.mark.parametrize("compression", ["none", "gzip"])
async def test_large_batches_are_split_under_the_request_limit(
    sink: SplunkSink, hec: SplunkHEC, compression: str
) -> None:
    sink.max_request_bytes = 2_000
    batch = make_batch(range(30), splunk_settings(compression=compression))
    assert await write(sink, batch) == 200
    requests = hec.received(COLLECTOR)
    assert len(requests) > 3
    assert all(len(r.body) <= 2_000 for r in requests)
    assert ids(hec) == [f"alert-{o}" for o in range(30)]


async def test_default_limit_keeps_each_request_near_one_megabyte(
    sink: SplunkSink, hec: SplunkHEC
) -> None:
    """The fake refuses bodies over 1 MiB, like Splunk versions with the old default."""
    big = "x" * 4000
    batch = make_batch(range(600), splunk_settings(), description=big)  # ~2.5 MB of events
    assert await write(sink, batch) == 200
    requests = hec.received(COLLECTOR)
    assert len(requests) == 3
    assert all(len(r.body) <= MAX_REQUEST_BYTES for r in requests)
    assert sorted(ids(hec)) == sorted(f"alert-{o}" for o in range(600))


# -- no duplicates where it can be helped ----------------------------------------------


async def test_same_batch_again_sends_nothing(sink: SplunkSink, hec: SplunkHEC) -> None:
    batch = make_batch(range(5), splunk_settings())
    await write(sink, batch)
    assert await write(sink, batch) == 200
    assert len(hec.received(COLLECTOR)) == 1
    # a larger re-formed batch sends only what is new
    await write(sink, make_batch(range(8), splunk_settings()))
    assert ids(hec) == [f"alert-{o}" for o in range(8)]


async def test_retry_after_a_partial_failure_sends_only_the_rest(
    sink: SplunkSink, hec: SplunkHEC
) -> None:
    sink.max_request_bytes = 1_500
    batch = make_batch(range(12), splunk_settings(compression="gzip"))
    hec.script(None, busy("3"))  # the first request passes, the second is refused
    with pytest.raises(RetryableError) as info:
        await write(sink, batch)
    assert info.value.retry_after == 3.0
    assert "(request 2 of" in info.value.message
    accepted_first = len(ids(hec))
    assert 0 < accepted_first < 12
    assert await write(sink, batch) == 200
    assert ids(hec) == [f"alert-{o}" for o in range(12)]  # each exactly once, in order


async def test_another_destination_is_not_deduplicated(sink: SplunkSink, hec: SplunkHEC) -> None:
    await write(sink, make_batch(range(3), splunk_settings()))
    await write(sink, make_batch(range(3), splunk_settings(index="security")))
    assert len(ids(hec)) == 6


# -- error classes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "code", "status", "words"),
    [
        ({"api_token": OTHER_TOKEN}, 4, 403, ['"Invalid token"', "does not know this token"]),
        (
            {"index": "nosuch"},
            7,
            400,
            ['"Incorrect index"', "the index 'nosuch' does not exist or the token may not write"],
        ),
        ({"index": "locked"}, 7, 400, ["index 'locked'", "allowed indexes"]),
        ({"api_token": ACK_TOKEN}, 10, 400, ['"Data channel is missing"', "turn use_ack on"]),
    ],
)
async def test_refusals_of_the_real_checks_are_permanent(
    sink: SplunkSink,
    hec: SplunkHEC,
    settings: dict[str, Any],
    code: int,
    status: int,
    words: list[str],
) -> None:
    with pytest.raises(PermanentError) as info:
        await write(sink, make_batch(range(3), splunk_settings(**settings)))
    error = no_secret(info.value)
    assert error.status == status
    assert f"code {code}" in error.message
    for word in words:
        assert word in error.message
    assert hec.events() == []


async def test_disabled_token(sink: SplunkSink, hec: SplunkHEC) -> None:
    hec.tokens[TOKEN].enabled = False
    with pytest.raises(PermanentError) as info:
        await write(sink, make_batch(range(2), splunk_settings()))
    assert '403 code 1 "Token disabled"' in no_secret(info.value).message
    assert "enable the token in Splunk" in info.value.message


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (2, ["Token is required", "check api_token"]),
        (3, ["Invalid authorization", "must be an HEC token"]),
        (5, ["No data", "please report"]),
        (6, ["Invalid data format", "event 1 of the request"]),
        (11, ["Invalid data channel"]),
        (12, ["Event field is required"]),
        (13, ["Event field cannot be blank"]),
        (15, ["Error in handling indexed fields"]),
    ],
)
async def test_every_other_permanent_code(
    sink: SplunkSink, hec: SplunkHEC, code: int, words: list[str]
) -> None:
    hec.script(hec_error(code, event_number=1 if code in (6, 12, 13) else None))
    with pytest.raises(PermanentError) as info:
        await write(sink, make_batch(range(2), splunk_settings()))
    assert f"code {code}" in no_secret(info.value).message
    for word in words:
        assert word in info.value.message


@pytest.mark.parametrize(
    ("answer", "status", "retry_after", "words"),
    [
        (busy(), 503, None, ['503 code 9 "Server is busy"', "will retry"]),
        (busy("12"), 503, 12.0, ["Server is busy"]),
        (hec_error(8), 500, None, ["Internal server error"]),
        (HecAnswer(429, {"text": "Too many requests"}, {"Retry-After": "5"}), 429, 5.0, ["429"]),
        (HecAnswer(502, {}), 502, None, ["502"]),
    ],
)
async def test_busy_and_server_errors_are_retryable(
    sink: SplunkSink,
    hec: SplunkHEC,
    answer: HecAnswer,
    status: int,
    retry_after: float | None,
    words: list[str],
) -> None:
    hec.script(answer)
    with pytest.raises(RetryableError) as info:
        await write(sink, make_batch(range(2), splunk_settings()))
    error = no_secret(info.value)
    assert error.status == status
    assert error.retry_after == retry_after
    for word in words:
        assert word in error.message
    assert await write(sink, make_batch(range(2), splunk_settings())) == 200
    assert ids(hec) == ["alert-0", "alert-1"]


async def test_unreachable_collector_is_retryable() -> None:
    sink = SplunkSink(context(f"http://127.0.0.1:{free_port()}"))
    try:
        with pytest.raises(RetryableError) as info:
            await write(sink, make_batch(range(2), splunk_settings()))
        assert "could not be reached" in no_secret(info.value).message
    finally:
        await sink.aclose()


# -- indexer acknowledgement -----------------------------------------------------------


def ack_settings(**extra: Any) -> dict[str, Any]:
    return splunk_settings(api_token=ACK_TOKEN, use_ack=True, **extra)


@pytest.mark.parametrize("compression", ["none", "gzip"])
async def test_acknowledged_batch_in_one_attempt(
    sink: SplunkSink, hec: SplunkHEC, compression: str
) -> None:
    sink.max_request_bytes = 2_000
    assert await write(sink, make_batch(range(10), ack_settings(compression=compression))) == 200
    sends = hec.received(COLLECTOR)
    channel = sends[0].headers["X-Splunk-Request-Channel"]
    assert uuid.UUID(channel) and all(
        r.headers["X-Splunk-Request-Channel"] == channel for r in sends
    )
    [query] = hec.received(ACK_PATH)
    assert json.loads(query.body) == {"acks": list(range(len(sends)))}
    assert query.headers["X-Splunk-Request-Channel"] == channel
    assert query.headers["Authorization"] == f"Splunk {ACK_TOKEN}"
    assert "Content-Encoding" not in query.headers  # ack queries go plain
    assert all(("Content-Encoding" in r.headers) == (compression == "gzip") for r in sends)
    assert ids(hec) == [f"alert-{o}" for o in range(10)]


async def test_unconfirmed_acks_are_asked_again_not_resent(
    sink: SplunkSink, hec: SplunkHEC
) -> None:
    hec.hold_acks = True
    batch = make_batch(range(4), ack_settings())
    for _ in range(2):
        with pytest.raises(RetryableError) as info:
            await write(sink, batch)
        assert info.value.retry_after == ACK_RETRY_AFTER
        assert "has not confirmed indexing 4 of 4 events" in no_secret(info.value).message
    hec.release_acks()
    assert await write(sink, batch) == 200
    assert len(hec.received(COLLECTOR)) == 1  # sent once
    assert len(hec.received(ACK_PATH)) == 3
    assert ids(hec) == [f"alert-{o}" for o in range(4)]
    assert await write(sink, batch) == 200  # and confirmed stays confirmed
    assert len(hec.received(ACK_PATH)) == 3


async def test_an_ack_unconfirmed_for_too_long_is_resent(
    sink: SplunkSink, hec: SplunkHEC, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented cost of acks: Splunk cannot say "lost", so a re-send may duplicate."""
    hec.hold_acks = True
    batch = make_batch(range(3), ack_settings())
    with pytest.raises(RetryableError):
        await write(sink, batch)
    monkeypatch.setattr(splunk_sink, "ACK_GIVE_UP_AFTER", 0.0)
    hec.hold_acks = False
    assert await write(sink, batch) == 200
    assert len(hec.received(COLLECTOR)) == 2
    assert ids(hec) == [f"alert-{o}" for o in range(3)] * 2


async def test_use_ack_with_a_token_without_it_still_delivers(
    sink: SplunkSink, hec: SplunkHEC
) -> None:
    assert await write(sink, make_batch(range(2), splunk_settings(use_ack=True))) == 200
    assert hec.received(ACK_PATH) == []
    assert ids(hec) == ["alert-0", "alert-1"]


async def test_a_refused_ack_query_is_classified(sink: SplunkSink, hec: SplunkHEC) -> None:
    hec.hold_acks = True
    batch = make_batch(range(2), ack_settings())
    with pytest.raises(RetryableError):
        await write(sink, batch)
    hec.tokens[ACK_TOKEN].ack = False  # an admin turned acknowledgement off meanwhile
    with pytest.raises(PermanentError) as info:
        await write(sink, batch)
    assert 'code 14 "ACK is disabled"' in no_secret(info.value).message
    assert "turn use_ack off" in info.value.message


# -- test connection -------------------------------------------------------------------


async def test_check_success(sink: SplunkSink, hec: SplunkHEC) -> None:
    detail = await check(sink, index="security")
    assert detail == (
        "Splunk HEC https://acme.splunkcloud.com: HEC is healthy; the token is accepted; "
        "events go to index 'security' (checked by Splunk at the first delivery)"
    )
    health, probe = hec.requests
    assert (health.method, health.path) == ("GET", "/services/collector/health")
    assert "Authorization" not in health.headers
    assert (probe.method, probe.path, probe.raw) == ("POST", COLLECTOR, b"")
    assert probe.headers["Authorization"] == f"Splunk {TOKEN}"
    assert (probe.status, probe.code) == (400, 5)
    assert hec.events() == []


async def test_check_with_acknowledgement(sink: SplunkSink, hec: SplunkHEC) -> None:
    detail = await check(sink, api_token=ACK_TOKEN, use_ack=True)
    assert "indexer acknowledgement is enabled" in detail
    assert [r.path for r in hec.requests][-1] == ACK_PATH


@pytest.mark.parametrize(
    ("arrange", "settings", "kind", "words"),
    [
        (lambda h: None, {"api_token": OTHER_TOKEN}, PermanentError, ["code 4", "does not know"]),
        (
            lambda h: setattr(h.tokens[TOKEN], "enabled", False),
            {},
            PermanentError,
            ["code 1", "Token disabled"],
        ),
        (
            lambda h: setattr(h, "unhealthy", True),
            {},
            RetryableError,
            ["health check", "code 18", "queues are full"],
        ),
        (lambda h: None, {"api_token": ACK_TOKEN}, PermanentError, ["code 10", "use_ack on"]),
        (lambda h: None, {"use_ack": True}, PermanentError, ["code 14", "use_ack off"]),
    ],
)
async def test_check_failures_are_distinct(
    sink: SplunkSink,
    hec: SplunkHEC,
    arrange: Any,
    settings: dict[str, Any],
    kind: type[DeliveryError],
    words: list[str],
) -> None:
    arrange(hec)
    with pytest.raises(DeliveryError) as info:
        await check(sink, **settings)
    assert type(info.value) is kind
    for word in words:
        assert word in no_secret(info.value).message


async def test_check_against_something_that_is_not_hec() -> None:
    with NotHEC(404, b"<html>not here</html>") as url:
        sink = SplunkSink(context(url))
        try:
            with pytest.raises(PermanentError) as info:
                await check(sink)
        finally:
            await sink.aclose()
    assert "health check" in info.value.message and "404" in info.value.message


class NotHEC:
    """A plain HTTP server answering every request the same way (not a collector)."""

    def __init__(self, status: int, body: bytes) -> None:
        self._receiver = WebhookReceiver()
        self._receiver.script("/services/collector/health", default=Answer(status, body))

    def __enter__(self) -> str:
        return self._receiver.start().url

    def __exit__(self, *exc: object) -> None:
        self._receiver.stop()


# -- end to end on the real broker -----------------------------------------------------


def test_worker_delivers_every_alert_to_hec_once(
    kafka_bootstrap: str, hec: SplunkHEC, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tenant = "t-splunk"
    topics = TopicSet()
    env = {
        "ALERTRELAY_HOST_OVERRIDES": f"*.splunkcloud.com={hec.url}",
        "ALERTRELAY_BATCH_MAX_EVENTS": "10",
        "ALERTRELAY_BATCH_MAX_AGE": "1",
    }
    hec.script(busy("0"))  # the first request is refused: the retry policy resends it
    worker = WorkerProcess(kafka_bootstrap, topics, tmp_path_factory.mktemp("splunk-worker"), env)
    with worker:
        config = {
            "integration_id": "siem",
            "tenant_id": tenant,
            "type": "splunk",
            "name": "SIEM",
            "settings": splunk_settings(index="security", compression="gzip"),
        }
        put_configs(kafka_bootstrap, topics, worker, config, timeout=30)
        alerts = [make_alert(i, tenant, alert_id=f"hec-{i}") for i in range(25)]
        produce(kafka_bootstrap, topics.alerts, [(tenant, a) for a in alerts])

        try:
            hec.wait_for_events(25, timeout=40)
        except AssertionError:
            raise AssertionError(worker.log_tail()) from None
        time.sleep(1.5)  # nothing more may arrive
    events = hec.events()
    assert sorted(e["event"]["alert_id"] for e in events) == sorted(a["alert_id"] for a in alerts)
    assert {e["index"] for e in events} == {"security"}
    assert {e["fields"]["tenant_id"] for e in events} == {tenant}
    sends = [r for r in hec.received(COLLECTOR) if r.code == 0]
    assert all(r.headers["Content-Encoding"] == "gzip" for r in sends)
    assert all(r.headers["X-Forwarded-Host"] == "acme.splunkcloud.com" for r in sends)
    assert all(len(split_envelopes(r.body)) <= 10 for r in sends)
    assert hec.received(COLLECTOR)[0].code == 9
