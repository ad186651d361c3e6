"""Settings of the Splunk HTTP Event Collector integration (INTEGRATIONS-SPEC: Splunk).

Rules chosen (each refused with its own message):

* ``webhook_url``: ``https://<customer-identifier>.splunkcloud.com/services/collector``
  as the spec says, or ``.../services/collector/event`` (the same JSON endpoint). The
  identifier is one DNS label (``acme``, ``http-inputs-acme``) or two
  (``http-inputs.acme`` on Google Cloud stacks); an explicit port may only be 443 or
  8088 (trial stacks serve HEC on 8088). No query, fragment or credentials. The URL
  carries no secret, so it is shown in messages.
* ``api_token``: an HEC token, which Splunk issues as a GUID. A pasted ``Splunk <token>``
  is accepted and stored without the scheme word.
* ``index``: Splunk's index naming rule: lowercase letters, digits, ``_`` and ``-``, not
  starting with ``_`` or ``-`` (those are internal indexes HEC tokens cannot target),
  not containing ``kvstore``; at most 80 characters (our bound: Splunk documents none,
  and index names become directory names). Empty means the token's default index.
* ``compression``: ``none`` or ``gzip``. HEC decodes ``Content-Encoding: gzip`` only, so
  ``zstd`` is refused rather than mapped: a silent switch to gzip would make the stored
  config say one thing and the wire another.
* ``use_ack``: indexer acknowledgement (off by default: Splunk Cloud offers it only for
  Firehose-style tokens, and a token without it answers code 14 to ack queries).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator

__all__ = ["SplunkSettings"]

_URL = re.compile(
    r"https://(?P<host>(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.){1,2}splunkcloud\.com)"
    r"(?::(?P<port>443|8088))?"
    r"(?P<path>/services/collector(?:/event)?)/?",
    re.IGNORECASE,
)
_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_INDEX = re.compile(r"[a-z0-9][a-z0-9_-]{0,79}")


class SplunkSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    webhook_url: str
    api_token: SecretStr
    index: str | None = None
    compression: Literal["none", "gzip"] = "none"
    use_ack: bool = False

    @field_validator("webhook_url")
    @classmethod
    def _collector_url(cls, value: str) -> str:
        match = _URL.fullmatch(value.strip())
        if match is None:
            raise ValueError(
                "Splunk webhook URL must be in the form "
                "https://<customer-identifier>.splunkcloud.com/services/collector"
            )
        port = f":{match['port']}" if match["port"] else ""
        return f"https://{match['host'].lower()}{port}{match['path'].lower()}"

    @field_validator("api_token")
    @classmethod
    def _guid(cls, value: SecretStr) -> SecretStr:
        token = value.get_secret_value().strip()
        if token[:7].lower() == "splunk ":
            token = token[7:].strip()
        if not _GUID.fullmatch(token):
            raise ValueError(
                "API token must be a Splunk HEC token: a GUID such as "
                "12345678-9abc-def0-1234-56789abcdef0"
            )
        return SecretStr(token)

    @field_validator("index", mode="before")
    @classmethod
    def _empty_is_default(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("index")
    @classmethod
    def _index_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _INDEX.fullmatch(value):
            raise ValueError(
                "index must be 1-80 lowercase letters, digits, underscores and hyphens, "
                "not starting with an underscore or hyphen"
            )
        if "kvstore" in value:
            raise ValueError("index name must not contain 'kvstore'")
        return value

    @field_validator("compression", mode="before")
    @classmethod
    def _codec(cls, value: object) -> object:
        if value in (None, ""):
            return "none"
        if value == "zstd":
            raise ValueError(
                "Splunk HEC accepts only gzip compression (Content-Encoding: gzip): "
                "choose gzip or none"
            )
        if value not in ("none", "gzip"):
            raise ValueError("compression must be none or gzip")
        return value
