"""Settings of the HTTP webhook integration (INTEGRATIONS-SPEC: HTTP Webhook)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

__all__ = ["Header", "WebhookSettings"]

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 field-name
_RESERVED = {"host", "content-length", "transfer-encoding", "connection"}


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

    webhook_url: SecretStr
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    protocol: Literal["tcp", "tls"] = "tcp"
    client_certificate: SecretStr | None = None
    body_pattern: str | None = Field(default=None, max_length=65536)
    headers: list[Header] = Field(default_factory=list, max_length=50)

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

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
        """Loading it is the only honest check that certificate and key belong together."""
        if value is not None:
            from sinks.http import mtls_ssl_context

            mtls_ssl_context(value.get_secret_value())
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
        return self
