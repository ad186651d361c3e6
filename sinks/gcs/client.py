"""A thin async GCS writer for one integration, with error classification.

google-cloud-storage is blocking, so every call (building the client, which parses the
key, included) runs in a worker thread via ``asyncio.to_thread``. The library's own
retries are switched off on every call (``retry=None``): the shared retry policy
(``sinks.retry``) decides, from the ``RetryableError`` / ``PermanentError`` raised here.

Local endpoint: with the client's own ``STORAGE_EMULATOR_HOST`` set, the client talks to
the emulator with anonymous credentials, as the library does for emulators; the key is
still loaded, so a broken key fails the same way with or without an emulator.

Messages never contain the private key: every text that leaves this module goes
through a ``Redactor`` that knows the key file, the key and each of its lines.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
from typing import Any

import requests
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.oauth2 import service_account

from sinks.errors import DeliveryError, PermanentError, RetryableError
from sinks.http import Redactor
from sinks.objectstore.exactly_once import Body, body_bytes
from sinks.objectstore.naming import safe_component

__all__ = ["EMULATOR_ENV", "GCSWriter"]

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"

_CHECK_MARKER_BODY = b"alertrelay write check; safe to delete\n"
_RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_MAX_ECHO = 300
# What each operation needs, for the 403 message (roles/storage.objectAdmin has them all;
# roles/storage.objectCreator alone cannot read back the high-water mark).
_PERMISSION = {
    "upload": "storage.objects.create",
    "get": "storage.objects.get",
    "list": "storage.objects.list",
    "delete": "storage.objects.delete",
}


class GCSWriter:
    """Writes batch objects to one bucket as one service account."""

    def __init__(
        self,
        *,
        info: dict[str, Any],
        bucket: str,
        secrets: list[str],
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
    ) -> None:
        self.bucket = bucket
        self.client_email = str(info.get("client_email", ""))
        self.project_id = str(info.get("project_id", ""))
        self._info = info
        self._redact = Redactor(secrets)
        self._timeout = (connect_timeout, read_timeout)
        self._client_lock = threading.Lock()
        self._client: storage.Client | None = None

    def __repr__(self) -> str:
        return f"GCSWriter(bucket={self.bucket!r}, account={self.client_email!r})"

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
        """Create ``key`` only if no live object has that name; False if one did.

        ``if_generation_match=0`` makes the re-delivery of a batch after a crash a no-op
        (412) instead of a second copy.
        """
        return await asyncio.to_thread(
            self._put_if_absent_sync, key, body, content_type, content_encoding, metadata
        )

    async def head_metadata(self, key: str) -> dict[str, str] | None:
        """Custom metadata of ``key`` ({} when it has none), or None if it does not exist."""
        return await asyncio.to_thread(self._head_metadata_sync, key)

    async def newest_key(self, prefix: str) -> str | None:
        """The greatest name under `prefix` (names carry zero-padded offsets, so the
        greatest is the newest batch), or None when there is none."""
        return await asyncio.to_thread(self._newest_key_sync, prefix)

    async def check(self, *, prefix: str = "") -> str:
        """Test connection: write a marker object under ``prefix`` and delete it.

        Writing is the honest test: it needs exactly the permission delivery needs,
        where a bucket get would need ``storage.buckets.get``, which writers often lack.
        """
        return await asyncio.to_thread(self._check_sync, prefix)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- blocking implementations (worker threads only) ----------------------

    def _get_client(self) -> storage.Client:
        client = self._client
        if client is not None:
            return client
        with self._client_lock:
            if self._client is None:
                self._client = self._build_client()
            return self._client

    def _build_client(self) -> storage.Client:
        try:
            if os.environ.get(EMULATOR_ENV):
                # Load the key all the same, so a bad key fails here as it would for real.
                service_account.Credentials.from_service_account_info(self._info)  # type: ignore[no-untyped-call]
                anonymous = AnonymousCredentials()  # type: ignore[no-untyped-call]
                return storage.Client(project=self.project_id, credentials=anonymous)
            client: storage.Client = storage.Client.from_service_account_info(self._info)  # type: ignore[no-untyped-call]
            return client
        except (ValueError, auth_exceptions.GoogleAuthError) as exc:
            # Never chain or echo the parser's error: it may quote key material.
            raise PermanentError(
                f"GCS credentials for gs://{self.bucket}: the service account key of "
                f"{self.client_email!r} could not be loaded ({type(exc).__name__}): "
                "download a new JSON key for the service account"
            ) from None

    def _put_if_absent_sync(
        self,
        key: str,
        body: Body,
        content_type: str,
        content_encoding: str | None,
        metadata: dict[str, str],
    ) -> bool:
        data = body_bytes(body)
        blob = self._get_client().bucket(self.bucket).blob(key)
        blob.metadata = dict(metadata)
        if content_encoding:
            blob.content_encoding = content_encoding
        try:
            blob.upload_from_string(
                data,
                content_type=content_type,
                if_generation_match=0,
                retry=None,
                timeout=self._timeout,
            )
        except api_exceptions.PreconditionFailed:
            return False
        except Exception as exc:
            raise self._classify(exc, "upload", key) from None
        return True

    def _head_metadata_sync(self, key: str) -> dict[str, str] | None:
        bucket = self._get_client().bucket(self.bucket)
        try:
            blob = bucket.get_blob(key, retry=None, timeout=self._timeout)
        except Exception as exc:
            raise self._classify(exc, "get", key) from None
        if blob is None:
            return None
        return {str(k): str(v) for k, v in (blob.metadata or {}).items()}

    def _newest_key_sync(self, prefix: str) -> str | None:
        client = self._get_client()
        newest: str | None = None
        try:
            for blob in client.list_blobs(
                self.bucket,
                prefix=prefix,
                fields="items(name),nextPageToken",
                retry=None,
                timeout=self._timeout,
            ):
                if newest is None or blob.name > newest:
                    newest = blob.name
        except Exception as exc:
            raise self._classify(exc, "list", prefix) from None
        return newest

    def _check_sync(self, prefix: str) -> str:
        # Same sanitising as object names, so a prefix-scoped IAM condition is tested on
        # exactly the names the sink will write.
        segments = [safe_component(s, what="prefix segment") for s in prefix.split("/") if s]
        marker = "/".join([*segments, f".alertrelay-check-{uuid.uuid4().hex}"])
        blob = self._get_client().bucket(self.bucket).blob(marker)
        try:
            blob.upload_from_string(
                _CHECK_MARKER_BODY,
                content_type="text/plain",
                if_generation_match=0,
                retry=None,
                timeout=self._timeout,
            )
        except Exception as exc:
            raise self._classify(exc, "upload", marker, checking=True) from None
        notes = [f"marker object written as {self.client_email}"]
        try:
            blob.delete(retry=None, timeout=self._timeout)
        except Exception as exc:
            # Writing works, which is what delivery needs; say what is left behind.
            reason = self._classify(exc, "delete", marker).message
            notes.append(f"marker {marker!r} left in place ({reason})")
        else:
            notes.append("and deleted")
        return f"gs://{self.bucket}: " + " ".join(notes)

    # -- error classification ------------------------------------------------

    def _classify(
        self, exc: BaseException, operation: str, key: str | None, *, checking: bool = False
    ) -> DeliveryError:
        """Map a library exception to Retryable/PermanentError with an actionable message."""
        where = f"gs://{self.bucket}/{key}" if key else f"gs://{self.bucket}"
        head = f"GCS {operation} {where}"
        if isinstance(exc, DeliveryError):
            return exc
        if isinstance(exc, api_exceptions.GoogleAPICallError):
            return self._classify_api_error(exc, operation, head)
        if isinstance(exc, auth_exceptions.RefreshError) and not exc.retryable:
            # Google refused to issue a token: deleted or disabled key, deleted account.
            return PermanentError(
                f"{head}: Google refused the service account credentials of "
                f"{self.client_email!r} ({self._reason(exc)}): the key may be deleted or "
                "disabled, or the account removed; upload a current JSON key"
            )
        if isinstance(exc, auth_exceptions.InvalidOperation) and self._anonymous():
            # The session answers a 401 by refreshing its token; anonymous (emulator)
            # credentials cannot, so this is how a 401 surfaces against an emulator.
            return self._unauthorized(head)
        if isinstance(exc, auth_exceptions.GoogleAuthError):
            if exc.retryable or isinstance(exc, auth_exceptions.TransportError):
                return RetryableError(
                    f"{head}: could not reach Google's token service: {self._reason(exc)}"
                )
            return PermanentError(f"{head}: authentication failed: {self._reason(exc)}")
        if isinstance(exc, requests.Timeout | TimeoutError):
            return RetryableError(f"{head}: timed out talking to GCS")
        if isinstance(exc, requests.RequestException | OSError):
            # Refused or dropped connections, DNS failures, broken chunked reads.
            return RetryableError(
                f"{head}: could not reach GCS ({type(exc).__name__}): {self._reason(exc)}"
            )
        # An answer the library could not make sense of (e.g. a checksum mismatch):
        # trying again is the safe choice; it ends in the DLQ if it persists.
        return RetryableError(f"{head}: {type(exc).__name__}: {self._reason(exc)}")

    def _classify_api_error(
        self, exc: api_exceptions.GoogleAPICallError, operation: str, head: str
    ) -> DeliveryError:
        status = int(exc.code) if exc.code is not None else None
        server = self._server_message(exc)
        detail = f": {server}" if server else ""
        if status in _RETRYABLE_STATUSES or (status is not None and status >= 500):
            what = "conflicting concurrent write" if status == 409 else "unavailable or throttling"
            return RetryableError(
                f"{head}: GCS is {what} (HTTP {status}){detail}",
                status=status,
                retry_after=_retry_after(exc),
            )
        if status == 401:
            return self._unauthorized(head)
        if status == 403:
            permission = _PERMISSION.get(operation, operation)
            return PermanentError(
                f"{head}: access denied (HTTP 403): service account {self.client_email!r} "
                f"lacks {permission} on bucket {self.bucket!r} (grant it "
                f"roles/storage.objectAdmin on the bucket){detail}",
                status=status,
            )
        if status == 404:
            return PermanentError(
                f"{head}: bucket {self.bucket!r} does not exist (HTTP 404): check the bucket name",
                status=status,
            )
        return PermanentError(f"{head}: rejected with HTTP {status}{detail}", status=status)

    def _unauthorized(self, head: str) -> PermanentError:
        return PermanentError(
            f"{head}: GCS rejected the credentials of {self.client_email!r} (HTTP 401): "
            "the service account key is invalid, deleted or disabled; upload a current key",
            status=401,
        )

    def _anonymous(self) -> bool:
        client = self._client
        return client is not None and isinstance(
            getattr(client, "_credentials", None), AnonymousCredentials
        )

    def _reason(self, exc: BaseException) -> str:
        args = getattr(exc, "args", ())
        text = args[0] if args and isinstance(args[0], str) else str(exc)
        return " ".join(self._redact(text).split())[:_MAX_ECHO] or type(exc).__name__

    def _server_message(self, exc: api_exceptions.GoogleAPICallError) -> str:
        """GCS's own error text (its JSON ``error.message``), without the request URL.

        The library words it as ``"<METHOD> <url>: <message or JSON body>"``.
        """
        message = ""
        for item in getattr(exc, "errors", None) or []:
            if isinstance(item, dict) and item.get("message"):
                message = str(item["message"])
                break
        if not message:
            text = str(getattr(exc, "message", "") or "")
            _, sep, tail = text.partition(": ")
            tail = tail.strip() if sep else text.strip()
            if tail.startswith("{"):
                try:
                    body, _ = json.JSONDecoder().raw_decode(tail)
                    error = body.get("error", {}) if isinstance(body, dict) else {}
                    message = str(error.get("message", "")) if isinstance(error, dict) else ""
                except ValueError:
                    message = ""
            else:
                message = tail.split("\n")[0]
        return " ".join(self._redact(message).split())[:_MAX_ECHO]


def _retry_after(exc: api_exceptions.GoogleAPICallError) -> float | None:
    """Seconds from a Retry-After header (GCS rarely sends one; dates are ignored)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
