"""S3Sink.write against a real local S3 (moto's server): names, bodies, and no duplicates."""

from __future__ import annotations

import datetime as dt
import gzip
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import zstandard
from botocore.config import Config
from moto.server import ThreadedMotoServer

from schemas.models import Alert, Delivery, IntegrationConfig
from sinks.base import Batch, BatchLimits
from sinks.errors import PermanentError
from sinks.http import EgressGuard, HostOverrides
from sinks.objectstore import decode_jsonl
from sinks.registry import SinkContext
from sinks.s3.config import S3Settings
from sinks.s3.sink import S3Sink
from tests.harness import batch_of, delivery_of

pytestmark = pytest.mark.integration

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
REGION = "us-east-1"
TENANT = "tenant-a"
INTEGRATION = "s3-archive"
TOPIC = "alerts"
PARTITION = 3
PRODUCED_AT = 1714564800.0  # 2024-05-01T12:00:00Z
DAY = "2024-05-01"
EXTENSIONS = {"none": "", "gzip": ".gz", "zstd": ".zst"}


# -- fixtures (as in test_s3_writer.py) ------------------------------------------------


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def endpoint(moto_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Point boto3 at moto and keep the developer's own AWS config out of the tests."""
    for var in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL_S3",
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    return moto_url


def admin() -> Any:
    """A plain boto3 client for arranging and inspecting the bucket."""
    session = boto3.session.Session(
        aws_access_key_id="admin", aws_secret_access_key="admin", region_name=REGION
    )
    return session.client("s3", config=Config(retries={"total_max_attempts": 1}))


@pytest.fixture
def bucket(endpoint: str) -> str:
    name = f"alertrelay-sink-{uuid.uuid4().hex[:12]}"
    admin().create_bucket(Bucket=name)
    return name


@pytest.fixture
def sink() -> S3Sink:
    return S3Sink(SinkContext(HostOverrides(), EgressGuard.parse(""), BatchLimits()))


# -- factories -------------------------------------------------------------------------


def s3_settings(bucket: str, compression: str = "gzip") -> dict[str, Any]:
    return {
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET,
        "region": REGION,
        "bucket": bucket,
        "compression": compression,
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
        type="s3",
        name="Archive",
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


def make_batch(offsets: range, settings: dict[str, Any]) -> Batch:
    records = [make_delivery(f"alert-{o}", o, settings) for o in offsets]
    return batch_of(records, day=dt.date(2024, 5, 1), bytes_per_record=200)


def expected_key(first_offset: int, compression: str) -> str:
    return (
        f"alertrelay/{TENANT}/{INTEGRATION}/dt={DAY}/"
        f"{TOPIC}+{PARTITION}+{first_offset:020d}.jsonl{EXTENSIONS[compression]}"
    )


def objects(bucket: str) -> dict[str, str]:
    """key -> ETag of every object in the bucket."""
    listing = admin().list_objects_v2(Bucket=bucket)
    return {o["Key"]: o["ETag"] for o in listing.get("Contents", [])}


def alert_ids(bucket: str, key: str) -> list[str]:
    raw = admin().get_object(Bucket=bucket, Key=key)["Body"].read()
    if key.endswith(".gz"):
        raw = gzip.decompress(raw)
    elif key.endswith(".zst"):
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    return [record["alert_id"] for record in decode_jsonl(raw)]


async def write(sink: S3Sink, batch: Batch) -> int | None:
    return await sink.write(batch, S3Settings.model_validate(batch.integration.settings))


# -- tests -----------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
async def test_batch_becomes_one_named_object(sink: S3Sink, bucket: str, compression: str) -> None:
    batch = make_batch(range(40, 45), s3_settings(bucket, compression))
    assert await write(sink, batch) == 200

    key = expected_key(40, compression)
    assert list(objects(bucket)) == [key]
    assert alert_ids(bucket, key) == [f"alert-{o}" for o in range(40, 45)]
    head = admin().head_object(Bucket=bucket, Key=key)
    if compression == "none":
        assert not head.get("ContentEncoding")
    else:
        assert head["ContentEncoding"] == compression


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
async def test_writing_the_same_batch_again_changes_nothing(
    sink: S3Sink, bucket: str, compression: str
) -> None:
    batch = make_batch(range(5), s3_settings(bucket, compression))
    await write(sink, batch)
    before = objects(bucket)
    assert await write(sink, batch) == 200
    # a fresh sink (a restarted worker) as well
    again = S3Sink(SinkContext(HostOverrides(), EgressGuard.parse(""), BatchLimits()))
    assert await write(again, make_batch(range(5), s3_settings(bucket, compression))) == 200
    assert objects(bucket) == before


async def test_larger_batch_writes_only_the_new_alerts(sink: S3Sink, bucket: str) -> None:
    settings = s3_settings(bucket, "gzip")
    await write(sink, make_batch(range(5), settings))
    assert await write(sink, make_batch(range(10), settings)) == 200

    first, second = expected_key(0, "gzip"), expected_key(5, "gzip")
    assert sorted(objects(bucket)) == [first, second]
    assert alert_ids(bucket, first) == [f"alert-{o}" for o in range(5)]
    assert alert_ids(bucket, second) == [f"alert-{o}" for o in range(5, 10)]

    # and repeating the larger batch is a no-op too
    before = objects(bucket)
    await write(sink, make_batch(range(10), settings))
    assert objects(bucket) == before


async def test_batch_starting_inside_an_existing_object_stores_nothing_twice(
    sink: S3Sink, bucket: str
) -> None:
    settings = s3_settings(bucket, "gzip")
    await write(sink, make_batch(range(5), settings))
    await write(sink, make_batch(range(2, 10), settings))
    stored = [i for key in objects(bucket) for i in alert_ids(bucket, key)]
    assert sorted(stored) == sorted(f"alert-{o}" for o in range(10))


async def test_foreign_object_at_the_key_is_not_overwritten(sink: S3Sink, bucket: str) -> None:
    key = expected_key(0, "gzip")
    admin().put_object(Bucket=bucket, Key=key, Body=b"someone else's data")
    with pytest.raises(PermanentError) as info:
        await write(sink, make_batch(range(5), s3_settings(bucket, "gzip")))
    assert "not written by alertrelay" in info.value.message
    assert SECRET not in info.value.message
    body = admin().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert body == b"someone else's data"
    assert list(objects(bucket)) == [key]


async def test_check_succeeds_on_an_existing_bucket(sink: S3Sink, bucket: str) -> None:
    settings = S3Settings.model_validate(s3_settings(bucket))
    integration = make_batch(range(1), s3_settings(bucket)).integration
    detail = await sink.check(integration, settings)
    assert bucket in detail
    assert SECRET not in detail
    assert objects(bucket) == {}  # the marker is cleaned up


async def test_a_redriven_record_is_written_although_the_mark_is_past_it(
    sink: S3Sink, bucket: str
) -> None:
    """Its batch went to the DLQ while a later one was stored: the redrive must land."""
    settings = s3_settings(bucket, "gzip")
    await write(sink, make_batch(range(10, 20), settings))
    redriven = make_batch(range(3, 4), settings)
    for record in redriven.records:
        record.redrive = True
    await write(sink, redriven)
    stored = [i for key in objects(bucket) for i in alert_ids(bucket, key)]
    assert sorted(stored) == sorted([f"alert-{o}" for o in range(10, 20)] + ["alert-3"])
