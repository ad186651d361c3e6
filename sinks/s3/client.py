"""A thin async S3 writer for one integration, with error classification.

boto3 is blocking, so every call (including building the client, which reads the
service model from disk) runs in a worker thread via ``asyncio.to_thread``. boto's
own retries are switched off: the shared retry policy (``sinks.retry``) decides,
from the ``RetryableError`` / ``PermanentError`` raised here. The local endpoint
comes from boto3's own ``AWS_ENDPOINT_URL`` (honoured by botocore >= 1.31).

Messages never contain the secret access key (it never reaches the wire, and
anything we echo is scrubbed of it anyway).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
    InvalidRegionError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
    ProfileNotFound,
    ValidationError,
)

from sinks.errors import DeliveryError, PermanentError, RetryableError
from sinks.objectstore.exactly_once import Body, body_bytes
from sinks.objectstore.naming import safe_component

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

__all__ = ["S3Writer"]

_CHECK_MARKER_BODY = b"alertrelay write check; safe to delete\n"

# Codes worth another try later. ConditionalRequestConflict is S3's answer to two
# conditional writes racing on one key; RequestTimeTooSkewed heals once the host
# clock is fixed.
_RETRYABLE_CODES = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ConditionalRequestConflict",
        "OperationAborted",
        "RequestTimeTooSkewed",
        "BadDigest",
        "IncompleteBody",
    }
)
_RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_REGION_CODES = frozenset(
    {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}
)
_MAX_ECHO = 300

# One boto3 session for every writer: a session of its own per client loaded S3's
# service model again each time (~90 ms of the GIL per integration, bench/analysis.md);
# clients made from one session share its loader's cache. Each client still gets the
# integration's own credentials and region. Sessions are not thread-safe: one lock.
_SESSION_LOCK = threading.Lock()
_session: boto3.session.Session | None = None


def _new_client(
    access_key_id: str, secret_access_key: str, region: str, config: Config
) -> S3Client:
    global _session
    with _SESSION_LOCK:
        if _session is None:
            _session = boto3.session.Session()
        return _session.client(
            "s3",
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            region_name=region,
            config=config,
        )


class S3Writer:
    """Writes batch objects to one bucket with one set of credentials."""

    def __init__(
        self,
        *,
        access_key_id: str,
        secret_access_key: str,
        region: str,
        bucket: str,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
    ) -> None:
        self.bucket = bucket
        self.region = region
        self._access_key_id = access_key_id
        self._secret = secret_access_key
        self._config = Config(
            region_name=region,
            # total_max_attempts counts the first try; plain max_attempts=1 would
            # still let boto retry once on its own.
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
        self._client_lock = threading.Lock()
        self._client: S3Client | None = None

    def __repr__(self) -> str:
        return f"S3Writer(bucket={self.bucket!r}, region={self.region!r})"

    # -- public API ----------------------------------------------------------

    async def put_if_absent(
        self,
        key: str,
        body: Body,
        *,
        content_type: str,
        content_encoding: str | None,
        metadata: dict[str, str],
    ) -> bool:
        """Create ``key`` only if it does not exist; False if it already did.

        ``IfNoneMatch="*"`` makes the re-delivery of a batch after a crash a no-op
        instead of a second copy. S3 lowercases metadata keys; values must be ASCII.
        """
        _check_metadata(metadata)
        return await asyncio.to_thread(
            self._put_if_absent_sync, key, body, content_type, content_encoding, metadata
        )

    async def head_metadata(self, key: str) -> dict[str, str] | None:
        """User metadata of ``key``, or None if it does not exist.

        Without ``s3:ListBucket`` S3 answers 403 rather than 404 for a missing key;
        that surfaces as a PermanentError (access denied).
        """
        return await asyncio.to_thread(self._head_metadata_sync, key)

    async def newest_key(self, prefix: str) -> str | None:
        """The greatest key under `prefix` (keys carry zero-padded offsets, so the
        greatest is the newest batch), or None when there is none."""
        return await asyncio.to_thread(self._newest_key_sync, prefix)

    async def check(self, *, prefix: str = "") -> str:
        """Test connection: bucket reachable, region right, and a marker object written.

        Writing (and deleting) a marker is the honest test of write access; the
        marker lives under ``prefix`` so a prefix-scoped policy is tested as used.
        """
        return await asyncio.to_thread(self._check_sync, prefix)

    # -- blocking implementations (worker threads only) ----------------------

    def _get_client(self) -> S3Client:
        client = self._client
        if client is not None:
            return client
        with self._client_lock:
            if self._client is None:
                try:
                    self._client = _new_client(
                        self._access_key_id, self._secret, self.region, self._config
                    )
                except (BotoCoreError, ValueError) as exc:
                    raise PermanentError(
                        "cannot set up the S3 client: "
                        + self._redact(f"{type(exc).__name__}: {exc}")
                    ) from exc
            return self._client

    def _put_if_absent_sync(
        self,
        key: str,
        body: Body,
        content_type: str,
        content_encoding: str | None,
        metadata: dict[str, str],
    ) -> bool:
        client = self._get_client()
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": body_bytes(body),
            "ContentType": content_type,
            "Metadata": metadata,
            "IfNoneMatch": "*",
        }
        if content_encoding:
            kwargs["ContentEncoding"] = content_encoding
        try:
            client.put_object(**kwargs)
        except ClientError as exc:
            code, status = _code_status(exc)
            if code == "PreconditionFailed" or status == 412:
                return False
            raise self._classify(exc, "PutObject", key) from exc
        except BotoCoreError as exc:
            raise self._classify(exc, "PutObject", key) from exc
        return True

    def _head_metadata_sync(self, key: str) -> dict[str, str] | None:
        client = self._get_client()
        try:
            response = client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            code, status = _code_status(exc)
            if status == 404 and code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._classify(exc, "HeadObject", key) from exc
        except BotoCoreError as exc:
            raise self._classify(exc, "HeadObject", key) from exc
        return dict(response.get("Metadata", {}))

    def _newest_key_sync(self, prefix: str) -> str | None:
        client = self._get_client()
        newest: str | None = None
        try:
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            ):
                for item in page.get("Contents", []):
                    if newest is None or item["Key"] > newest:
                        newest = item["Key"]
        except ClientError as exc:
            raise self._classify(exc, "ListObjectsV2", prefix) from exc
        except BotoCoreError as exc:
            raise self._classify(exc, "ListObjectsV2", prefix) from exc
        return newest

    def _check_sync(self, prefix: str) -> str:
        client = self._get_client()
        notes: list[str] = []
        try:
            response = client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            _, status = _code_status(exc)
            if status != 403:
                raise self._classify(exc, "HeadBucket", None) from exc
            # HEAD errors carry no body, so 403 cannot tell a bad key from a missing
            # permission. The marker put below answers with a precise code; if it
            # succeeds, the key may simply lack s3:ListBucket, which writes do not need.
            notes.append("head_bucket denied (s3:ListBucket not granted)")
        except BotoCoreError as exc:
            raise self._classify(exc, "HeadBucket", None) from exc
        else:
            headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            bucket_region = response.get("BucketRegion") or headers.get("x-amz-bucket-region")
            if bucket_region and bucket_region != self.region:
                # boto would follow S3's redirect silently (one extra round trip
                # per client), hiding a config mistake; surface it here instead.
                raise PermanentError(
                    f"bucket {self.bucket!r} is in region {bucket_region!r}, not the "
                    f"configured {self.region!r}: set region to {bucket_region!r}"
                )

        # Same sanitising as object names, so a prefix-scoped policy is tested on
        # exactly the keys the sink will write.
        segments = [safe_component(s, what="prefix segment") for s in prefix.split("/") if s]
        marker = "/".join([*segments, f".alertrelay-check-{uuid.uuid4().hex}"])
        try:
            client.put_object(
                Bucket=self.bucket,
                Key=marker,
                Body=_CHECK_MARKER_BODY,
                ContentType="text/plain",
            )
        except ClientError as exc:
            raise self._classify(exc, "PutObject", marker) from exc
        except BotoCoreError as exc:
            raise self._classify(exc, "PutObject", marker) from exc

        try:
            client.delete_object(Bucket=self.bucket, Key=marker)
        except (ClientError, BotoCoreError) as exc:
            # Writing works, which is what delivery needs; say what is left behind.
            reason = self._classify(exc, "DeleteObject", marker).message
            notes.append(f"marker {marker!r} left in place ({reason})")
        else:
            notes.append("marker object written and deleted")
        return f"s3://{self.bucket} ({self.region}): " + "; ".join(notes)

    # -- error classification ------------------------------------------------

    def _redact(self, text: str) -> str:
        if self._secret:
            text = text.replace(self._secret, "[redacted]")
        return text

    def _classify(self, exc: Exception, operation: str, key: str | None) -> DeliveryError:
        """Map a boto exception to Retryable/PermanentError with an actionable message."""
        where = f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"
        if isinstance(exc, ClientError):
            return self._classify_client_error(exc, operation, where)
        if isinstance(exc, ConnectionError | HTTPClientError | IncompleteReadError):
            # Connect/read timeouts, refused or dropped connections, DNS failures.
            return RetryableError(
                f"S3 {operation} {where}: could not reach S3 ({type(exc).__name__}): "
                + self._redact(str(exc))[:_MAX_ECHO]
            )
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return PermanentError(
                f"S3 {operation} {where}: access_key_id and secret_access_key are required"
            )
        if isinstance(
            exc,
            NoRegionError
            | InvalidRegionError
            | ValidationError
            | ParamValidationError
            | ProfileNotFound
            | CredentialRetrievalError,
        ):
            return PermanentError(
                f"S3 {operation} {where}: invalid configuration ({type(exc).__name__}): "
                + self._redact(str(exc))[:_MAX_ECHO]
            )
        if isinstance(exc, BotoCoreError):
            return RetryableError(
                f"S3 {operation} {where}: {type(exc).__name__}: "
                + self._redact(str(exc))[:_MAX_ECHO]
            )
        return PermanentError(f"S3 {operation} {where}: unexpected {type(exc).__name__}")

    def _classify_client_error(self, exc: ClientError, operation: str, where: str) -> DeliveryError:
        code, status = _code_status(exc)
        error = exc.response.get("Error", {})
        headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        server_message = self._redact(str(error.get("Message", "")))[:_MAX_ECHO]
        label = f"{code} (HTTP {status})" if code != str(status) else f"HTTP {status}"
        head = f"S3 {operation} {where}"

        if code in _RETRYABLE_CODES or status in _RETRYABLE_STATUSES:
            return RetryableError(
                f"{head}: S3 is unavailable or throttling: {label}",
                status=status,
                retry_after=_retry_after(headers.get("retry-after")),
            )
        if code == "InvalidAccessKeyId":
            return PermanentError(
                f"{head}: the access key id {_mask(self._access_key_id)} is unknown to AWS "
                "(wrong, deleted or from another partition): check access_key_id",
                status=status,
            )
        if code == "SignatureDoesNotMatch":
            return PermanentError(
                f"{head}: the secret access key does not match the access key id "
                f"{_mask(self._access_key_id)}: check secret_access_key",
                status=status,
            )
        if code in ("InvalidToken", "ExpiredToken", "TokenRefreshRequired"):
            return PermanentError(
                f"{head}: the credentials are expired or not valid ({code}): "
                "use a long-lived access key",
                status=status,
            )
        bucket_region = str(error.get("Region") or headers.get("x-amz-bucket-region") or "")
        if code in _REGION_CODES or status == 301 or (status == 400 and bucket_region):
            hint = f" it is in {bucket_region!r}:" if bucket_region else ""
            return PermanentError(
                f"{head}: bucket {self.bucket!r} is not in the configured region "
                f"{self.region!r};{hint} set region to the bucket's region",
                status=status,
            )
        if code == "NoSuchBucket" or (status == 404 and operation == "HeadBucket"):
            return PermanentError(
                f"{head}: bucket {self.bucket!r} does not exist: check the bucket name",
                status=status,
            )
        if code == "AccessDenied" or status == 403:
            action = {
                "HeadBucket": "s3:ListBucket",
                "HeadObject": "s3:GetObject (and s3:ListBucket)",
                "PutObject": "s3:PutObject",
                "DeleteObject": "s3:DeleteObject",
            }.get(operation, operation)
            return PermanentError(
                f"{head}: access denied: the access key lacks {action} on bucket "
                f"{self.bucket!r}, or a bucket policy denies it",
                status=status,
            )
        if code == "InvalidBucketName":
            return PermanentError(
                f"{head}: {self.bucket!r} is not a valid bucket name", status=status
            )
        detail = f": {server_message}" if server_message else ""
        return PermanentError(f"{head}: rejected with {label}{detail}", status=status)


def _code_status(exc: ClientError) -> tuple[str, int | None]:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if status is None and code.isdigit():
        status = int(code)
    return code, status


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (S3 rarely sends one; dates are ignored)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _mask(access_key_id: str) -> str:
    """Show only the last 4 characters: enough to tell keys apart in a message."""
    return f"'…{access_key_id[-4:]}'" if len(access_key_id) > 4 else "'…'"


def _check_metadata(metadata: Mapping[str, str]) -> None:
    for name, value in metadata.items():
        if not (name.isascii() and value.isascii()):
            raise PermanentError(f"S3 metadata must be ASCII (entry {name!r})")
