"""S3Writer against a real (local) moto S3 server, plus error classification.

Tests marked ``integration`` talk HTTP to a local server: moto's S3 (and IAM, to
exercise real credential checks) or a tiny stand-in that always throttles. The
unmarked ones drive the classifier with botocore's Stubber, offline.
"""

from __future__ import annotations

import asyncio
import datetime
import http.server
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import (
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from botocore.stub import Stubber
from moto import settings as moto_settings
from moto.server import ThreadedMotoServer

from sinks.errors import DeliveryError, PermanentError, RetryableError
from sinks.objectstore import (
    JSONL_CONTENT_TYPE,
    decode_jsonl,
    encode_jsonl,
    get_codec,
    object_key,
)
from sinks.s3.client import S3Writer

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY1"
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
REGION = "us-east-1"


def _assert_secret_free(err: BaseException, secret: str = SECRET) -> None:
    """Neither the message nor anything chained to it may contain the secret."""
    seen: BaseException | None = err
    while seen is not None:
        assert secret not in str(seen)
        assert secret not in repr(seen)
        seen = seen.__cause__ or seen.__context__
    if isinstance(err, DeliveryError):
        assert secret not in err.message


# -- fixtures ------------------------------------------------------------------


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
def isolated_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the developer's own AWS config and credentials out of the tests."""
    for var in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT_URL_IAM",
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))


@pytest.fixture
def endpoint(moto_url: str, isolated_aws_env: None, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    return moto_url


def _admin(service: str) -> Any:
    """A plain boto3 client for arranging and inspecting server state."""
    session = boto3.session.Session(
        aws_access_key_id="admin", aws_secret_access_key="admin", region_name=REGION
    )
    config = Config(retries={"total_max_attempts": 1})
    return session.client(service, config=config)  # type: ignore[call-overload]


@pytest.fixture
def bucket(endpoint: str) -> str:
    name = f"alertrelay-{uuid.uuid4().hex[:12]}"
    _admin("s3").create_bucket(Bucket=name)
    return name


def _writer(
    bucket: str,
    *,
    access_key_id: str = ACCESS_KEY,
    secret_access_key: str = SECRET,
    region: str = REGION,
) -> S3Writer:
    return S3Writer(
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        region=region,
        bucket=bucket,
    )


# -- against moto --------------------------------------------------------------


@pytest.mark.integration
async def test_endpoint_comes_from_aws_endpoint_url(bucket: str, endpoint: str) -> None:
    writer = _writer(bucket)
    assert await writer.put_if_absent(
        "k", b"x", content_type="text/plain", content_encoding=None, metadata={}
    )
    assert writer._get_client().meta.endpoint_url == endpoint


@pytest.mark.integration
async def test_put_if_absent_creates_once(bucket: str) -> None:
    writer = _writer(bucket)
    kwargs: dict[str, Any] = {
        "content_type": JSONL_CONTENT_TYPE,
        "content_encoding": None,
        "metadata": {"batch": "1"},
    }
    assert await writer.put_if_absent("a/b.jsonl", b'{"n":1}\n', **kwargs) is True
    assert await writer.put_if_absent("a/b.jsonl", b'{"n":2}\n', **kwargs) is False
    body = _admin("s3").get_object(Bucket=bucket, Key="a/b.jsonl")["Body"].read()
    assert body == b'{"n":1}\n'  # the second write did not replace the first


@pytest.mark.integration
async def test_concurrent_puts_create_exactly_once(bucket: str) -> None:
    writer = _writer(bucket)
    results = await asyncio.gather(
        *(
            writer.put_if_absent(
                "race.jsonl", b"{}\n", content_type="x", content_encoding=None, metadata={}
            )
            for _ in range(8)
        ),
        return_exceptions=True,
    )
    created = [r for r in results if r is True]
    # A lost race answers 412 (False) or, on real S3, 409 (RetryableError): never a copy.
    assert len(created) == 1
    assert all(r is False or isinstance(r, RetryableError) for r in results if r is not True)


@pytest.mark.integration
async def test_metadata_round_trip(bucket: str) -> None:
    writer = _writer(bucket)
    metadata = {"alertrelay-records": "3", "alertrelay-first-offset": "42"}
    assert await writer.put_if_absent(
        "m.jsonl",
        b"{}\n",
        content_type=JSONL_CONTENT_TYPE,
        content_encoding=None,
        metadata=metadata,
    )
    assert await writer.head_metadata("m.jsonl") == metadata
    assert await writer.head_metadata("missing.jsonl") is None
    head = _admin("s3").head_object(Bucket=bucket, Key="m.jsonl")
    assert head["ContentType"] == JSONL_CONTENT_TYPE


@pytest.mark.integration
@pytest.mark.parametrize("codec_name", ["none", "gzip", "zstd"])
async def test_compressed_bodies_round_trip(bucket: str, codec_name: str) -> None:
    codec = get_codec(codec_name)
    records = [{"alert_id": f"a-{i}", "title": "Skimmer ✓"} for i in range(50)]
    key = object_key(
        prefix="exports",
        tenant_id="tenant/1",
        integration_id="s3-main",
        day=datetime.date(2025, 3, 7),
        topic="alertrelay-s3",
        partition=2,
        first_offset=77,
        codec=codec,
    )
    writer = _writer(bucket)
    created = await writer.put_if_absent(
        key,
        codec.compress(encode_jsonl(records)),
        content_type=JSONL_CONTENT_TYPE,
        content_encoding=codec.content_encoding,
        metadata={"codec": codec.name},
    )
    assert created
    got = _admin("s3").get_object(Bucket=bucket, Key=key)
    assert got.get("ContentEncoding") == codec.content_encoding
    assert decode_jsonl(codec.decompress(got["Body"].read())) == records
    listed = _admin("s3").list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in listed] == [key]
    assert key.startswith("exports/tenant%2F1/s3-main/dt=2025-03-07/")


@pytest.mark.integration
async def test_a_body_to_make_is_made_in_the_writers_thread(bucket: str) -> None:
    made_in: list[threading.Thread] = []

    def body() -> bytes:
        made_in.append(threading.current_thread())
        return b'{"n":1}\n'

    writer = _writer(bucket)
    created = await writer.put_if_absent(
        "made/later.jsonl",
        body,
        content_type=JSONL_CONTENT_TYPE,
        content_encoding=None,
        metadata={},
    )
    assert created and made_in and made_in[0] is not threading.main_thread()
    got = _admin("s3").get_object(Bucket=bucket, Key="made/later.jsonl")
    assert got["Body"].read() == b'{"n":1}\n'


@pytest.mark.integration
async def test_check_succeeds_and_leaves_nothing_behind(bucket: str) -> None:
    writer = _writer(bucket)
    detail = await writer.check()
    assert bucket in detail and "written and deleted" in detail
    assert await writer.check(prefix="/exports/alerts/")
    assert _admin("s3").list_objects_v2(Bucket=bucket).get("KeyCount") == 0


@pytest.mark.integration
async def test_check_missing_bucket(endpoint: str) -> None:
    writer = _writer("alertrelay-no-such-bucket")
    with pytest.raises(PermanentError, match="does not exist") as info:
        await writer.check()
    assert info.value.status == 404
    _assert_secret_free(info.value)


@pytest.mark.integration
async def test_put_to_missing_bucket_is_permanent(endpoint: str) -> None:
    writer = _writer("alertrelay-no-such-bucket")
    with pytest.raises(PermanentError, match="does not exist") as info:
        await writer.put_if_absent(
            "k", b"x", content_type="text/plain", content_encoding=None, metadata={}
        )
    _assert_secret_free(info.value)


@pytest.mark.integration
async def test_check_wrong_region(endpoint: str) -> None:
    name = f"alertrelay-eu-{uuid.uuid4().hex[:8]}"
    _admin("s3").create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    with pytest.raises(PermanentError, match="region") as info:
        await _writer(name, region="us-east-1").check()
    assert "'eu-west-1'" in info.value.message
    assert "eu-west-1" in await _writer(name, region="eu-west-1").check()


@pytest.fixture
def iam_keys(endpoint: str) -> Iterator[dict[str, dict[str, str]]]:
    """IAM users on moto, then moto's credential checks switched on for the test."""
    iam = _admin("iam")
    keys: dict[str, dict[str, str]] = {}
    suffix = uuid.uuid4().hex[:6]
    for role, actions in (("none", None), ("writer", ["s3:PutObject", "s3:DeleteObject"])):
        user = f"{role}-{suffix}"
        iam.create_user(UserName=user)
        key = iam.create_access_key(UserName=user)["AccessKey"]
        keys[role] = {"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
        if actions:
            iam.put_user_policy(
                UserName=user,
                PolicyName="alertrelay",
                PolicyDocument=(
                    '{"Version":"2012-10-17","Statement":[{"Effect":"Allow",'
                    f'"Action":{actions!r},"Resource":"*"}}]}}'.replace("'", '"')
                ),
            )
    previous = moto_settings.INITIAL_NO_AUTH_ACTION_COUNT
    moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    try:
        yield keys
    finally:
        moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = previous


@pytest.mark.integration
async def test_check_reports_bad_credentials_distinctly(
    bucket: str, iam_keys: dict[str, dict[str, str]]
) -> None:
    unknown = _writer(bucket, access_key_id="AKIAUNKNOWNKEY000000")
    with pytest.raises(PermanentError, match="access key id") as info:
        await unknown.check()
    assert "check access_key_id" in info.value.message
    _assert_secret_free(info.value)

    real_id = iam_keys["none"]["id"]
    wrong_secret = _writer(bucket, access_key_id=real_id, secret_access_key=SECRET)
    with pytest.raises(PermanentError, match="secret access key does not match") as info:
        await wrong_secret.check()
    assert real_id not in info.value.message  # only its last 4 characters
    assert real_id[-4:] in info.value.message
    _assert_secret_free(info.value)


@pytest.mark.integration
async def test_check_reports_access_denied(
    bucket: str, iam_keys: dict[str, dict[str, str]]
) -> None:
    key = iam_keys["none"]
    writer = _writer(bucket, access_key_id=key["id"], secret_access_key=key["secret"])
    with pytest.raises(PermanentError, match="access denied") as info:
        await writer.check()
    assert info.value.status == 403
    assert "s3:PutObject" in info.value.message
    _assert_secret_free(info.value, key["secret"])
    with pytest.raises(PermanentError, match="access denied") as info:
        await writer.put_if_absent(
            "k", b"x", content_type="text/plain", content_encoding=None, metadata={}
        )
    _assert_secret_free(info.value, key["secret"])


@pytest.mark.integration
async def test_check_passes_for_a_write_only_key(
    bucket: str, iam_keys: dict[str, dict[str, str]]
) -> None:
    key = iam_keys["writer"]
    writer = _writer(bucket, access_key_id=key["id"], secret_access_key=key["secret"])
    detail = await writer.check()
    assert "s3:ListBucket" in detail and "written and deleted" in detail


@pytest.mark.integration
async def test_unreachable_endpoint_is_retryable(
    isolated_aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    writer = _writer("any-bucket")
    with pytest.raises(RetryableError, match="could not reach S3") as info:
        await writer.put_if_absent(
            "k", b"x", content_type="text/plain", content_encoding=None, metadata={}
        )
    _assert_secret_free(info.value)


class _Throttling(http.server.BaseHTTPRequestHandler):
    """Answers every request like an overloaded S3 and counts the requests."""

    protocol_version = "HTTP/1.1"
    requests = 0
    lock = threading.Lock()

    def _answer(self) -> None:
        with self.lock:
            type(self).requests += 1
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = (
            b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>"
        )
        self.send_response(503)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Retry-After", "3")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_PUT = do_GET = do_HEAD = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.integration
async def test_throttling_is_retryable_and_boto_does_not_retry(
    isolated_aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Throttling)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_port}")
        _Throttling.requests = 0
        writer = _writer("throttled-bucket")
        with pytest.raises(RetryableError) as info:
            await writer.put_if_absent(
                "k", b"x" * 100, content_type="text/plain", content_encoding=None, metadata={}
            )
        assert info.value.status == 503
        assert info.value.retry_after == 3.0
        assert "SlowDown" in info.value.message
        assert _Throttling.requests == 1  # our retry policy retries, not boto
        _assert_secret_free(info.value)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- offline: classification via Stubber -----------------------------------------


@pytest.fixture
def stubbed(
    isolated_aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[S3Writer, Stubber]]:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    writer = _writer("stub-bucket")
    with Stubber(writer._get_client()) as stubber:
        yield writer, stubber


async def _put(writer: S3Writer) -> bool:
    return await writer.put_if_absent(
        "k", b"x", content_type="text/plain", content_encoding="gzip", metadata={"a": "b"}
    )


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("SlowDown", 503),
        ("InternalError", 500),
        ("RequestTimeout", 400),
        ("ConditionalRequestConflict", 409),
        ("ServiceUnavailable", 503),
        ("BadGateway", 502),
    ],
)
async def test_transient_errors_are_retryable(
    stubbed: tuple[S3Writer, Stubber], code: str, status: int
) -> None:
    writer, stubber = stubbed
    stubber.add_client_error("put_object", code, "msg", status)
    with pytest.raises(RetryableError) as info:
        await _put(writer)
    assert info.value.status == status


async def test_put_sends_conditional_headers(stubbed: tuple[S3Writer, Stubber]) -> None:
    writer, stubber = stubbed
    stubber.add_response(
        "put_object",
        {},
        expected_params={
            "Bucket": "stub-bucket",
            "Key": "k",
            "Body": b"x",
            "ContentType": "text/plain",
            "ContentEncoding": "gzip",
            "Metadata": {"a": "b"},
            "IfNoneMatch": "*",
        },
    )
    assert await _put(writer) is True
    stubber.assert_no_pending_responses()


async def test_precondition_failed_means_already_there(
    stubbed: tuple[S3Writer, Stubber],
) -> None:
    writer, stubber = stubbed
    stubber.add_client_error("put_object", "PreconditionFailed", "exists", 412)
    assert await _put(writer) is False


@pytest.mark.parametrize(
    ("code", "status", "meta", "expected"),
    [
        ("AccessDenied", 403, None, "access denied"),
        ("InvalidAccessKeyId", 403, None, "check access_key_id"),
        ("SignatureDoesNotMatch", 403, None, "check secret_access_key"),
        ("NoSuchBucket", 404, None, "does not exist"),
        ("PermanentRedirect", 301, None, "not in the configured region"),
        (
            "AuthorizationHeaderMalformed",
            400,
            {"Region": "ap-southeast-2"},
            "it is in 'ap-southeast-2'",
        ),
        ("ExpiredToken", 400, None, "expired"),
        ("InvalidBucketName", 400, None, "not a valid bucket name"),
        ("EntityTooLarge", 400, None, "EntityTooLarge"),
    ],
)
async def test_permanent_errors_have_actionable_messages(
    stubbed: tuple[S3Writer, Stubber],
    code: str,
    status: int,
    meta: dict[str, str] | None,
    expected: str,
) -> None:
    writer, stubber = stubbed
    stubber.add_client_error(
        "put_object", code, f"server said {SECRET}", status, service_error_meta=meta
    )
    with pytest.raises(PermanentError, match=expected) as info:
        await _put(writer)
    assert info.value.status == status
    assert SECRET not in info.value.message


async def test_head_metadata_missing_and_denied(stubbed: tuple[S3Writer, Stubber]) -> None:
    writer, stubber = stubbed
    stubber.add_client_error("head_object", "404", "Not Found", 404)
    assert await writer.head_metadata("k") is None
    stubber.add_client_error("head_object", "403", "Forbidden", 403)
    with pytest.raises(PermanentError, match="s3:GetObject"):
        await writer.head_metadata("k")


@pytest.mark.parametrize(
    "exc",
    [
        ReadTimeoutError(endpoint_url="https://s3.amazonaws.com/b/k"),
        ConnectTimeoutError(endpoint_url="https://s3.amazonaws.com/b/k"),
        EndpointConnectionError(endpoint_url="https://s3.amazonaws.com/b/k"),
    ],
)
def test_transport_errors_are_retryable(exc: Exception) -> None:
    err = _writer("b")._classify(exc, "PutObject", "k")
    assert isinstance(err, RetryableError)


async def test_non_ascii_metadata_is_rejected_before_sending() -> None:
    writer = _writer("b")
    with pytest.raises(PermanentError, match="ASCII"):
        await writer.put_if_absent(
            "k", b"x", content_type="t", content_encoding=None, metadata={"t": "café"}
        )


async def test_blocking_calls_run_off_the_event_loop(
    stubbed: tuple[S3Writer, Stubber], monkeypatch: pytest.MonkeyPatch
) -> None:
    writer, stubber = stubbed
    loop_thread = threading.get_ident()
    seen: list[int] = []
    original = writer._put_if_absent_sync

    def spy(*args: Any) -> bool:
        seen.append(threading.get_ident())
        return original(*args)

    monkeypatch.setattr(writer, "_put_if_absent_sync", spy)
    stubber.add_response("put_object", {})
    assert await _put(writer)
    assert seen and seen[0] != loop_thread


def test_secret_not_in_repr_and_boto_retries_off() -> None:
    writer = _writer("b")
    assert SECRET not in repr(writer)
    assert getattr(writer._config, "retries", None) == {"total_max_attempts": 1, "mode": "standard"}


def test_writers_share_one_session_but_sign_with_their_own_keys() -> None:
    """Clients come from one boto3 session (S3's service model is loaded once, not
    once per integration); credentials and region stay each integration's own."""
    a = _writer("a", access_key_id="AKIAFIRST", secret_access_key="first-secret")
    b = _writer(
        "b", access_key_id="AKIASECOND", secret_access_key="second-secret", region="eu-west-1"
    )
    client_a, client_b = a._get_client(), b._get_client()
    assert client_a is not client_b
    creds_a = client_a._request_signer._credentials  # type: ignore[attr-defined]
    creds_b = client_b._request_signer._credentials  # type: ignore[attr-defined]
    assert (creds_a.access_key, creds_a.secret_key) == ("AKIAFIRST", "first-secret")
    assert (creds_b.access_key, creds_b.secret_key) == ("AKIASECOND", "second-secret")
    assert (client_a.meta.region_name, client_b.meta.region_name) == (REGION, "eu-west-1")
    assert client_a._loader is client_b._loader  # type: ignore[attr-defined]
