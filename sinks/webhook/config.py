"""Settings of the HTTP webhook integration (INTEGRATIONS-SPEC: HTTP Webhook).

Everything is checked at save time, so a config that validates can be delivered: the
body pattern compiles in the sandbox and renders a sample alert, the client certificate
loads, has not expired, is meant for client authentication and matches its key.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from sinks.webhook.template import MAX_TEMPLATE_BYTES, validate_template

__all__ = [
    "METHODS",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Header",
    "WebhookSettings",
    "check_client_certificate",
]

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 field-name
_RESERVED = {"host", "content-length", "transfer-encoding", "connection"}

METHODS = ("POST", "PUT", "PATCH")
"""The alert travels in the request body: GET, HEAD and DELETE have no defined body
semantics (RFC 9110 9.3.1, 9.3.2, 9.3.5), so servers and proxies may drop it."""

TIMESTAMP_HEADER = "X-Alertrelay-Timestamp"
SIGNATURE_HEADER = "X-Alertrelay-Signature"
_CLOCK_SKEW = dt.timedelta(minutes=5)
_CLIENT_AUTH_OID = "1.3.6.1.5.5.7.3.2"
_ANY_EKU_OID = "2.5.29.37.0"


def check_client_certificate(pem: str, now: dt.datetime | None = None) -> None:
    """Raise ValueError (never quoting the PEM) when the certificate cannot authenticate
    us: unreadable, expired or not yet valid, not for client authentication, encrypted
    key, or a key that does not belong to the certificate."""
    data = pem.encode("utf-8", "replace")
    if b"CERTIFICATE-----" not in data:
        raise ValueError("client certificate PEM contains no certificate")
    if b"PRIVATE KEY-----" not in data:
        raise ValueError("client certificate PEM contains no private key")
    try:
        leaf = x509.load_pem_x509_certificates(data)[0]
    except ValueError:
        raise ValueError("client certificate PEM: the certificate could not be read") from None
    now = now or dt.datetime.now(dt.UTC)
    if leaf.not_valid_after_utc <= now:
        raise ValueError(
            f"client certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )
    if leaf.not_valid_before_utc > now + _CLOCK_SKEW:
        raise ValueError(
            f"client certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    try:
        usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        pass
    else:
        if not {oid.dotted_string for oid in usage} & {_CLIENT_AUTH_OID, _ANY_EKU_OID}:
            raise ValueError(
                "client certificate is not for client authentication (its extended key "
                "usage lacks clientAuth)"
            )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError(
            "client certificate private key is encrypted: provide it without a passphrase"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("client certificate PEM: the private key could not be read") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise ValueError("client certificate and private key do not belong together")


class Header(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=256)
    value: SecretStr

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        if not _TOKEN.fullmatch(name):
            raise ValueError("header name may only contain letters, digits and !#$%&'*+-.^_`|~")
        if name.lower() in _RESERVED:
            raise ValueError(f"header {name!r} is set by alertrelay and cannot be overridden")
        return name

    @field_validator("value")
    @classmethod
    def _no_crlf(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        if "\r" in text or "\n" in text or "\x00" in text:
            raise ValueError("header value must not contain CR, LF or NUL")
        if len(text) > 8192:
            raise ValueError("header value is longer than 8192 characters")
        return value


class WebhookSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    """`signing_secret` (optional, not in the spec) turns on the HMAC signature headers
    (see sinks.webhook.sink)."""

    webhook_url: SecretStr
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    protocol: Literal["tcp", "tls"] = "tcp"
    client_certificate: SecretStr | None = None
    body_pattern: str | None = Field(default=None, max_length=MAX_TEMPLATE_BYTES)
    headers: list[Header] = Field(default_factory=list, max_length=50)
    signing_secret: SecretStr | None = None

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        method = value.strip().upper()
        if method not in METHODS and re.fullmatch(r"[A-Z]{1,16}", method):
            raise ValueError(
                f"method {method} is not supported: use POST, PUT or PATCH (the alert is "
                "sent as the request body, which GET, HEAD and DELETE requests do not carry)"
            )
        return method

    @field_validator("protocol", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value().strip()
        if not re.fullmatch(r"https?://[^/\s?#]+(/[^\s]*)?", url, re.IGNORECASE):
            raise ValueError("webhook URL must be an absolute http:// or https:// URL")
        if len(url) > 4096:
            raise ValueError("webhook URL is longer than 4096 characters")
        return SecretStr(url)

    @field_validator("client_certificate")
    @classmethod
    def _loadable_pem(cls, value: SecretStr | None) -> SecretStr | None:
        """The checks a server would make, then loading it into OpenSSL: the only honest
        proof that the context we will build works."""
        if value is None or not value.get_secret_value().strip():
            return None  # a form's empty field: no certificate
        from sinks.http import mtls_ssl_context

        check_client_certificate(value.get_secret_value())
        mtls_ssl_context(value.get_secret_value())
        return value

    @field_validator("body_pattern")
    @classmethod
    def _sandboxed_template(cls, value: str | None) -> str | None:
        """Compiled in the sandbox and rendered against a sample alert, so a pattern that
        is saved renders (blank means the default JSON body)."""
        if value is None or not value.strip():
            return None
        if len(value.encode("utf-8", "surrogatepass")) > MAX_TEMPLATE_BYTES:
            raise ValueError(f"body pattern is larger than {MAX_TEMPLATE_BYTES // 1024} KiB")
        validate_template(value)
        return value

    @field_validator("signing_secret")
    @classmethod
    def _strong_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        secret = value.get_secret_value()
        if len(secret) < 16:
            raise ValueError("signing secret must be at least 16 characters")
        if len(secret) > 1024:
            raise ValueError("signing secret must be at most 1024 characters")
        return value

    @field_validator("headers")
    @classmethod
    def _last_wins(cls, headers: list[Header]) -> list[Header]:
        """The spec: a repeated header name keeps only the latest value."""
        latest: dict[str, Header] = {}
        for header in headers:
            latest.pop(header.name.lower(), None)
            latest[header.name.lower()] = header
        return list(latest.values())

    @model_validator(mode="after")
    def _tls_needs_certificate(self) -> WebhookSettings:
        if self.protocol == "tls" and not self.client_certificate:
            raise ValueError("client_certificate is required when protocol is tls")
        if self.protocol == "tls" and not self.webhook_url.get_secret_value().lower().startswith(
            "https://"
        ):
            raise ValueError("protocol tls needs an https:// webhook URL")
        if self.signing_secret is not None:
            for header in self.headers:
                if header.name.lower() in (TIMESTAMP_HEADER.lower(), SIGNATURE_HEADER.lower()):
                    raise ValueError(
                        f"header {header.name!r} is set by alertrelay when signing_secret is set"
                    )
        return self
