"""Settings of the Google Cloud Storage integration (INTEGRATIONS-SPEC: GCS Bucket).

The service-account key is checked here as far as it can be without calling Google: it
must be a service-account JSON key whose private key loads (with the same parser the
client uses), so a broken upload fails when the config is saved, not at the first batch.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

__all__ = ["GOOGLE_TOKEN_URIS", "GCSSettings", "service_account_info"]

# Lowercase letters, digits, '-', '_', '.'; first and last a letter or digit.
_BUCKET = re.compile(r"[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
# "google" and the close misspellings Google names as refused (g00gle and the like).
_GOOGLE_LIKE = re.compile(r"g[o0][o0]g[l1]e")
_PEM = re.compile(
    r"-----BEGIN (?P<kind>(?:RSA )?PRIVATE KEY)-----\s*"
    r"[A-Za-z0-9+/=\s]+"
    r"-----END (?P=kind)-----\s*"
)
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.gserviceaccount\.com")

GOOGLE_TOKEN_URIS = frozenset(
    {"https://oauth2.googleapis.com/token", "https://accounts.google.com/o/oauth2/token"}
)
"""Where google-auth may send the signed JWT. The key file names its own token_uri;
any other value would make the worker POST a signed assertion to a tenant-chosen URL
(outside the egress guard), so it is refused."""

_REQUIRED = ("type", "project_id", "private_key", "client_email")


def service_account_info(value: SecretStr) -> dict[str, Any]:
    """The parsed key file of validated settings (a fresh dict on every call)."""
    info = json.loads(value.get_secret_value())
    if not isinstance(info, dict):  # validated already; keeps mypy and callers honest
        raise ValueError("service account JSON must be an object")
    return info


def _check_private_key(key: object) -> None:
    if not isinstance(key, str) or not key.strip():
        raise ValueError("service account JSON: private_key must be a non-empty string")
    if not _PEM.fullmatch(key.strip() + "\n"):
        raise ValueError(
            "service account JSON: private_key must be a PEM private key "
            "('-----BEGIN PRIVATE KEY----- ... -----END PRIVATE KEY-----')"
        )
    from google.auth.crypt import RSASigner

    try:
        RSASigner.from_string(key)  # type: ignore[no-untyped-call]
    except Exception:  # the parser's message may quote key material: never echo it
        raise ValueError(
            "service account JSON: private_key could not be loaded as an RSA private key; "
            "download a new key for the service account"
        ) from None


class GCSSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bucket: str
    service_account_json: SecretStr
    compression: Literal["none", "gzip", "zstd"] = "gzip"
    zstd_level: int = Field(default=3, ge=1, le=22)  # higher: smaller objects, more CPU
    prefix: str = Field(default="alertrelay", max_length=256, pattern=r"^[A-Za-z0-9!_.*'()/-]*$")

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        """Google's bucket naming rules, each refused with its own reason."""
        if not 3 <= len(value) <= 222:
            raise ValueError(
                "bucket name must be 3-63 characters (up to 222 when it contains dots)"
            )
        if not _BUCKET.fullmatch(value):
            raise ValueError(
                "bucket name may contain only lowercase letters, digits, dashes, underscores "
                "and dots, and must start and end with a letter or digit"
            )
        parts = value.split(".")
        if "." not in value and len(value) > 63:
            raise ValueError("bucket name must be 3-63 characters (up to 222 with dots)")
        if any(not part for part in parts):
            raise ValueError("bucket name must not contain consecutive dots")
        if any(len(part) > 63 for part in parts):
            raise ValueError("each dot-separated part of a bucket name must be at most 63 chars")
        if _IPV4.fullmatch(value):
            raise ValueError("bucket name must not look like an IP address")
        if value.startswith("goog"):
            raise ValueError("bucket name must not start with 'goog'")
        if _GOOGLE_LIKE.search(value):
            raise ValueError("bucket name must not contain 'google' or a misspelling of it")
        return value

    @field_validator("service_account_json", mode="before")
    @classmethod
    def _object_as_text(cls, value: object) -> object:
        """Accept the key file as an object too (an API client may send it parsed)."""
        if isinstance(value, dict):
            return json.dumps(value)
        return value

    @field_validator("service_account_json")
    @classmethod
    def _service_account(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value().strip()
        if not text:
            raise ValueError("service account JSON is required")
        try:
            info = json.loads(text)
        except ValueError:
            # The decoder's message quotes the document: say where, not what.
            raise ValueError(
                "service account JSON is not valid JSON: upload the key file as downloaded"
            ) from None
        if not isinstance(info, dict):
            raise ValueError("service account JSON must be a JSON object (the key file)")
        missing = [name for name in _REQUIRED if not info.get(name)]
        if missing:
            raise ValueError(f"service account JSON is missing {', '.join(missing)}")
        if info["type"] != "service_account":
            raise ValueError(
                "service account JSON must have type 'service_account' "
                "(a user or external-account credential cannot be used)"
            )
        for name in ("project_id", "client_email"):
            if not isinstance(info[name], str):
                raise ValueError(f"service account JSON: {name} must be a string")
        if not _EMAIL.fullmatch(info["client_email"]):
            raise ValueError(
                "service account JSON: client_email must be a service account address "
                "(…@….iam.gserviceaccount.com)"
            )
        token_uri = info.get("token_uri")
        if token_uri is not None and token_uri not in GOOGLE_TOKEN_URIS:
            raise ValueError(
                "service account JSON: token_uri must be https://oauth2.googleapis.com/token"
            )
        universe = info.get("universe_domain")
        if universe is not None and universe != "googleapis.com":
            raise ValueError("service account JSON: only the googleapis.com universe is supported")
        _check_private_key(info["private_key"])
        return SecretStr(text)

    @field_validator("compression", mode="before")
    @classmethod
    def _none_is_none(cls, value: object) -> object:
        return "none" if value in (None, "") else value
