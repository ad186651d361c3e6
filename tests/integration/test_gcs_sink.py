"""GCSSink against a real local GCS (fake-gcs-server): names, bodies, no duplicates, errors.

The error classes are driven over a real socket too: `STORAGE_EMULATOR_HOST` pointed at a
scripted HTTP receiver answering GCS's own JSON error bodies, so the library's own
exception mapping is part of what is tested.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard
from google.auth import exceptions as auth_exceptions
from pydantic import SecretStr

from schemas.models import Alert, Delivery, IntegrationConfig
from sinks.base import Batch, BatchLimits
from sinks.errors import DeliveryError, PermanentError, RetryableError
from sinks.gcs.client import GCSWriter
from sinks.gcs.config import GCSSettings
from sinks.gcs.sink import GCSSink, key_secrets
from sinks.http import EgressGuard, HostOverrides
from sinks.objectstore import decode_jsonl
from sinks.registry import SinkContext
from streams.agents.router import tenant_partition
from tests.fakes.gcs_server import FakeGCS, private_key_pem, service_account_json
from tests.fakes.webhook_receiver import Answer, WebhookReceiver
from tests.harness import (
    TopicSet,
    WorkerProcess,
    batch_of,
    delivery_of,
    make_alert,
    produce,
)

pytestmark = pytest.mark.integration

TENANT = "tenant-a"
INTEGRATION = "gcs-lake"
TOPIC = "alerts"
PARTITION = 3
PRODUCED_AT = 1714564800.0  # 2024-05-01T12:00:00Z
DAY = "2024-05-01"
EXTENSIONS = {"none": "", "gzip": ".gz", "zstd": ".zst"}
KEY_JSON = service_account_json()
EMAIL = "writer@alertrelay-test.iam.gserviceaccount.com"
KEY_LINES = [line for line in private_key_pem().splitlines() if "-----" not in line]


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_gcs() -> Iterator[FakeGCS]:
    with FakeGCS() as server:
        yield server


@pytest.fixture
def emulator(fake_gcs: FakeGCS, monkeypatch: pytest.MonkeyPatch) -> FakeGCS:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs.url)
    return fake_gcs


@pytest.fixture
def bucket(emulator: FakeGCS) -> str:
    name = f"alertrelay-{uuid.uuid4().hex[:12]}"
    emulator.admin().create_bucket(name)
    return name


def new_sink() -> GCSSink:
    return GCSSink(SinkContext(HostOverrides(), EgressGuard.parse(""), BatchLimits()))


@pytest.fixture
def sink() -> GCSSink:
    return new_sink()


# -- factories -------------------------------------------------------------------------


def gcs_settings(bucket: str, compression: str = "gzip", **extra: Any) -> dict[str, Any]:
    return {
        "bucket": bucket,
        "service_account_json": KEY_JSON,
        "compression": compression,
        **extra,
    }


def make_delivery(alert_id: str, offset: int, settings: dict[str, Any]) -> Delivery:
    alert = Alert(
        alert_id=alert_id,
        tenant_id=TENANT,
        event_type="client_side_risk",
        risk_level="high",
        title=f"alert {alert_id}",
        detected_at=dt.datetime(2024, 5, 1, 11, 59, tzinfo=dt.UTC),
    )
    integration = IntegrationConfig(
        integration_id=INTEGRATION,
        tenant_id=TENANT,
        type="gcs",
        name="Lake",
        version=1,
        settings=settings,
    )
    return delivery_of(
        alert,
        integration,
        offset=offset,
        topic=TOPIC,
        partition=PARTITION,
        produced_at=PRODUCED_AT,
    )


def make_batch(offsets: range | list[int], settings: dict[str, Any]) -> Batch:
    records = [make_delivery(f"alert-{o}", o, settings) for o in offsets]
    return batch_of(records, day=dt.date(2024, 5, 1), bytes_per_record=200)


def expected_key(first_offset: int, compression: str) -> str:
    return (
        f"alertrelay/{TENANT}/{INTEGRATION}/dt={DAY}/"
        f"{TOPIC}+{PARTITION}+{first_offset:020d}.jsonl{EXTENSIONS[compression]}"
    )


def objects(server: FakeGCS, bucket: str) -> dict[str, int]:
    """name -> generation of every object in the bucket."""
    return {b.name: b.generation for b in server.admin().list_blobs(bucket)}


def stored_bytes(server: FakeGCS, bucket: str, key: str) -> bytes:
    """The object's bytes as stored (no transcoding), decompressed by its extension."""
    raw: bytes = server.admin().bucket(bucket).blob(key).download_as_bytes(raw_download=True)
    if key.endswith(".gz"):
        return gzip.decompress(raw)
    if key.endswith(".zst"):
        with zstandard.ZstdDecompressor().stream_reader(raw) as reader:
            return bytes(reader.read())
    return raw


def alert_ids(server: FakeGCS, bucket: str, key: str) -> list[str]:
    return [record["alert_id"] for record in decode_jsonl(stored_bytes(server, bucket, key))]


def all_stored_ids(server: FakeGCS, bucket: str) -> list[str]:
    return [i for key in objects(server, bucket) for i in alert_ids(server, bucket, key)]


async def write(sink: GCSSink, batch: Batch) -> int | None:
    return await sink.write(batch, GCSSettings.model_validate(batch.integration.settings))


def assert_no_key_material(text: str) -> None:
    assert "PRIVATE KEY" not in text
    for line in KEY_LINES:
        assert line not in text


# -- writing ---------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
async def test_batch_becomes_one_named_object(
    sink: GCSSink, emulator: FakeGCS, bucket: str, compression: str
) -> None:
    batch = make_batch(range(40, 45), gcs_settings(bucket, compression))
    assert await write(sink, batch) == 200

    key = expected_key(40, compression)
    assert list(objects(emulator, bucket)) == [key]
    assert alert_ids(emulator, bucket, key) == [f"alert-{o}" for o in range(40, 45)]
    blob = emulator.admin().bucket(bucket).get_blob(key)
    assert blob.content_type == "application/x-ndjson"
    assert blob.content_encoding == (None if compression == "none" else compression)
    assert blob.metadata == {
        "alertrelay-first-offset": "40",
        "alertrelay-last-offset": "44",
        "alertrelay-count": "5",
    }


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
async def test_writing_the_same_batch_again_changes_nothing(
    sink: GCSSink, emulator: FakeGCS, bucket: str, compression: str
) -> None:
    batch = make_batch(range(5), gcs_settings(bucket, compression))
    await write(sink, batch)
    before = objects(emulator, bucket)
    assert await write(sink, batch) == 200
    # a fresh sink (a restarted worker) as well: it learns the mark from the bucket
    again = new_sink()
    assert await write(again, make_batch(range(5), gcs_settings(bucket, compression))) == 200
    assert objects(emulator, bucket) == before  # same names, same generations


async def test_a_fresh_sink_hitting_an_existing_name_writes_only_the_rest(
    emulator: FakeGCS, bucket: str
) -> None:
    """The 412 path: the mark is not known yet, the name is taken, metadata says how far."""
    settings = gcs_settings(bucket, "zstd")
    await write(new_sink(), make_batch(range(5), settings))
    fresh = new_sink()
    fresh._once._stored[(f"{TENANT}/{INTEGRATION}", TOPIC, PARTITION, DAY)] = -1  # forgets
    assert await write(fresh, make_batch(range(8), settings)) == 200
    assert sorted(objects(emulator, bucket)) == [expected_key(0, "zstd"), expected_key(5, "zstd")]
    assert alert_ids(emulator, bucket, expected_key(5, "zstd")) == ["alert-5", "alert-6", "alert-7"]


async def test_larger_batch_writes_only_the_new_alerts(
    sink: GCSSink, emulator: FakeGCS, bucket: str
) -> None:
    settings = gcs_settings(bucket, "gzip")
    await write(sink, make_batch(range(5), settings))
    assert await write(sink, make_batch(range(10), settings)) == 200

    first, second = expected_key(0, "gzip"), expected_key(5, "gzip")
    assert sorted(objects(emulator, bucket)) == [first, second]
    assert alert_ids(emulator, bucket, first) == [f"alert-{o}" for o in range(5)]
    assert alert_ids(emulator, bucket, second) == [f"alert-{o}" for o in range(5, 10)]

    before = objects(emulator, bucket)
    await write(new_sink(), make_batch(range(10), settings))
    assert objects(emulator, bucket) == before


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
async def test_batch_starting_inside_an_existing_object_stores_nothing_twice(
    emulator: FakeGCS, bucket: str, compression: str
) -> None:
    settings = gcs_settings(bucket, compression)
    await write(new_sink(), make_batch(range(5), settings))
    await write(new_sink(), make_batch(range(2, 10), settings))  # a restarted worker
    assert sorted(all_stored_ids(emulator, bucket)) == sorted(f"alert-{o}" for o in range(10))


async def test_foreign_object_at_the_key_is_not_overwritten(
    sink: GCSSink, emulator: FakeGCS, bucket: str
) -> None:
    key = expected_key(0, "gzip")
    emulator.admin().bucket(bucket).blob(key).upload_from_string(b"someone else's data")
    with pytest.raises(PermanentError) as info:
        await write(sink, make_batch(range(5), gcs_settings(bucket, "gzip")))
    assert "not written by alertrelay" in info.value.message
    assert emulator.admin().bucket(bucket).blob(key).download_as_bytes() == b"someone else's data"
    assert list(objects(emulator, bucket)) == [key]


# -- test connection -------------------------------------------------------------------


async def test_check_writes_and_removes_a_marker(
    sink: GCSSink, emulator: FakeGCS, bucket: str
) -> None:
    settings = GCSSettings.model_validate(gcs_settings(bucket))
    integration = make_batch(range(1), gcs_settings(bucket)).integration
    detail = await sink.check(integration, settings)
    assert detail == f"gs://{bucket}: marker object written as {EMAIL} and deleted"
    assert objects(emulator, bucket) == {}


async def test_check_names_a_missing_bucket(sink: GCSSink, emulator: FakeGCS) -> None:
    settings = GCSSettings.model_validate(gcs_settings("no-such-bucket-here"))
    integration = make_batch(range(1), gcs_settings("no-such-bucket-here")).integration
    with pytest.raises(PermanentError) as info:
        await sink.check(integration, settings)
    assert info.value.status == 404
    assert "bucket 'no-such-bucket-here' does not exist" in info.value.message


# -- error classes over a real socket --------------------------------------------------

UPLOAD = "/upload/storage/v1/b/locked-bucket/o"
LIST = "/storage/v1/b/locked-bucket/o"


def gcs_error(status: int, message: str, reason: str, **headers: str) -> Answer:
    body = {
        "error": {
            "code": status,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": reason}],
        }
    }
    return Answer(
        status, json.dumps(body).encode(), {"Content-Type": "application/json", **headers}
    )


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", receiver.url)
        receiver.script(
            LIST,
            default=Answer(
                200, b'{"kind": "storage#objects"}', {"Content-Type": "application/json"}
            ),
        )
        yield receiver


DENIED = (
    f"{EMAIL} does not have storage.objects.create access to the Google Cloud Storage object. "
    "Permission 'storage.objects.create' denied on resource (or it may not exist)."
)


@pytest.mark.parametrize(
    ("answer", "kind", "status", "words"),
    [
        (
            gcs_error(401, "Invalid Credentials", "authError"),
            PermanentError,
            401,
            ["rejected the credentials", EMAIL, "upload a current key"],
        ),
        (
            gcs_error(403, DENIED, "forbidden"),
            PermanentError,
            403,
            ["access denied", "lacks storage.objects.create", "roles/storage.objectAdmin", DENIED],
        ),
        (
            gcs_error(404, "The specified bucket does not exist.", "notFound"),
            PermanentError,
            404,
            ["bucket 'locked-bucket' does not exist"],
        ),
        (
            gcs_error(400, "Invalid argument.", "invalid"),
            PermanentError,
            400,
            ["rejected with HTTP 400", "Invalid argument."],
        ),
        (
            gcs_error(
                429, "The rate of change requests exceeds the rate limit.", "rateLimitExceeded"
            ),
            RetryableError,
            429,
            ["throttling (HTTP 429)"],
        ),
        (
            gcs_error(503, "Backend Error", "backendError"),
            RetryableError,
            503,
            ["unavailable", "Backend Error"],
        ),
    ],
)
async def test_answers_are_classified(
    scripted: WebhookReceiver,
    answer: Answer,
    kind: type[DeliveryError],
    status: int,
    words: list[str],
) -> None:
    scripted.script(UPLOAD, answer)
    with pytest.raises(DeliveryError) as info:
        await write(new_sink(), make_batch(range(3), gcs_settings("locked-bucket")))
    error = info.value
    assert type(error) is kind
    assert error.status == status
    for word in words:
        assert word in error.message
    assert_no_key_material(error.message)
    upload = scripted.received(UPLOAD)[0]
    assert "ifGenerationMatch=0" in upload.path


async def test_retry_after_is_passed_on(scripted: WebhookReceiver) -> None:
    scripted.script(
        UPLOAD, gcs_error(429, "Slow down.", "rateLimitExceeded", **{"Retry-After": "7"})
    )
    with pytest.raises(RetryableError) as info:
        await write(new_sink(), make_batch(range(3), gcs_settings("locked-bucket")))
    assert info.value.retry_after == 7.0


async def test_check_failures_have_distinct_messages(scripted: WebhookReceiver) -> None:
    settings = GCSSettings.model_validate(gcs_settings("locked-bucket"))
    integration = make_batch(range(1), gcs_settings("locked-bucket")).integration
    messages = []
    for answer in (
        gcs_error(404, "The specified bucket does not exist.", "notFound"),
        gcs_error(403, DENIED, "forbidden"),
        gcs_error(401, "Invalid Credentials", "authError"),
    ):
        scripted.script(UPLOAD, answer)
        with pytest.raises(PermanentError) as info:
            await new_sink().check(integration, settings)
        messages.append(info.value.message)
        assert_no_key_material(info.value.message)
    assert "does not exist" in messages[0]
    assert "access denied" in messages[1]
    assert "rejected the credentials" in messages[2]


async def test_timeout_is_retryable(scripted: WebhookReceiver) -> None:
    scripted.script(UPLOAD, Answer(200, b"{}", delay=2.0))
    writer = GCSWriter(
        info=json.loads(KEY_JSON), bucket="locked-bucket", secrets=[KEY_JSON], read_timeout=0.5
    )
    with pytest.raises(RetryableError) as info:
        await writer.put_if_absent(
            "k", b"x", content_type="text/plain", content_encoding=None, metadata={}
        )
    assert "timed out" in info.value.message


async def test_unreachable_store_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.harness import free_port

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RetryableError) as info:
        await write(new_sink(), make_batch(range(3), gcs_settings("any-bucket")))
    assert "could not reach GCS" in info.value.message


async def test_a_key_that_does_not_load_is_permanent(emulator: FakeGCS) -> None:
    """Validation loads the key too; this guards settings that bypassed it."""
    lines = private_key_pem().splitlines()
    lines[3] = lines[3][::-1]
    broken = service_account_json(private_key="\n".join(lines) + "\n")
    settings = GCSSettings.model_construct(
        bucket="any-bucket",
        service_account_json=SecretStr(broken),
        compression="gzip",
        prefix="alertrelay",
    )
    batch = make_batch(range(2), gcs_settings("any-bucket"))
    with pytest.raises(PermanentError) as info:
        await new_sink().write(batch, settings)
    assert "could not be loaded" in info.value.message
    assert "download a new JSON key" in info.value.message
    assert_no_key_material(info.value.message)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_refused_token_is_permanent_and_token_service_trouble_retryable() -> None:
    writer = GCSWriter(
        info=json.loads(KEY_JSON),
        bucket="any-bucket",
        secrets=key_secrets(
            GCSSettings.model_validate(gcs_settings("any-bucket")).service_account_json
        ),
    )
    refused = auth_exceptions.RefreshError(
        "invalid_grant: Invalid JWT Signature.",
        {"error": "invalid_grant", "error_description": "Invalid JWT Signature."},
    )
    error = writer._classify(refused, "upload", "k")
    assert isinstance(error, PermanentError)
    assert "refused the service account credentials" in error.message
    assert "Invalid JWT Signature" in error.message
    flaky = auth_exceptions.TransportError("connection reset")
    assert isinstance(writer._classify(flaky, "upload", "k"), RetryableError)
    leaked = auth_exceptions.RefreshError(f"bad key {private_key_pem()}")
    assert_no_key_material(writer._classify(leaked, "upload", "k").message)


# -- end to end on the real broker ---------------------------------------------------


def test_worker_writes_every_alert_once_to_gcs(
    kafka_bootstrap: str, fake_gcs: FakeGCS, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tenant, bucket = "t-gcs", f"e2e-{uuid.uuid4().hex[:10]}"
    admin = fake_gcs.admin()
    admin.create_bucket(bucket)
    topics = TopicSet()
    env = {
        "STORAGE_EMULATOR_HOST": fake_gcs.url,
        "ALERTRELAY_BATCH_MAX_EVENTS": "10",
        "ALERTRELAY_BATCH_MAX_AGE": "1",
    }
    worker = WorkerProcess(kafka_bootstrap, topics, tmp_path_factory.mktemp("gcs-worker"), env)
    with worker:
        config = {
            "integration_id": "lake",
            "tenant_id": tenant,
            "type": "gcs",
            "name": "Lake",
            "settings": gcs_settings(bucket, "zstd"),
        }
        produce(kafka_bootstrap, topics.integrations, [(f"{tenant}/lake", config)])
        deadline = time.monotonic() + 30
        while (worker.health() or {}).get("integrations", 0) < 1:
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.1)
        alerts = [make_alert(i, tenant, alert_id=f"gcs-{i}") for i in range(25)]
        produce(kafka_bootstrap, topics.alerts, [(tenant, a) for a in alerts])

        expected = sorted(a["alert_id"] for a in alerts)
        got: list[str] = []
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            got = sorted(all_stored_ids(fake_gcs, bucket))
            if len(got) >= len(expected):
                break
            time.sleep(0.5)
        assert got == expected, f"every alert exactly once\n{worker.log_tail()}"
        partition = tenant_partition(tenant, 4)
        names = list(objects(fake_gcs, bucket))
        for key in names:
            name = Path(key).name
            assert key.startswith(f"alertrelay/{tenant}/lake/dt=")
            assert name.startswith(f"{topics.alerts}+{partition}+")
            assert name.endswith(".jsonl.zst")
        assert max(len(alert_ids(fake_gcs, bucket, k)) for k in names) <= 10
