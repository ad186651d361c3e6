"""Settings of the AWS S3 integration (INTEGRATIONS-SPEC: S3 bucket)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

__all__ = ["S3Settings"]

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d$")


class S3Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    access_key_id: str = Field(pattern=r"^[A-Z0-9]{16,128}$")
    secret_access_key: SecretStr
    region: str
    bucket: str
    compression: Literal["none", "gzip", "zstd"] = "gzip"
    zstd_level: int = Field(default=3, ge=1, le=22)  # higher: smaller objects, more CPU
    prefix: str = Field(default="alertrelay", max_length=256, pattern=r"^[A-Za-z0-9!_.*'()/-]*$")

    @field_validator("secret_access_key")
    @classmethod
    def _secret_shape(cls, value: SecretStr) -> SecretStr:
        if not re.fullmatch(r"[A-Za-z0-9/+=]{16,128}", value.get_secret_value()):
            raise ValueError("secret access key must be 16-128 characters of A-Z a-z 0-9 / + =")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not _REGION.fullmatch(value):
            raise ValueError("region must be an AWS region such as us-east-1 or eu-west-1")
        return value

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        ip_like = re.fullmatch(r"\d+\.\d+\.\d+\.\d+", value)
        if not _BUCKET.fullmatch(value) or ".." in value or ip_like:
            raise ValueError(
                "bucket name must be 3-63 lowercase letters, digits, dots and hyphens, "
                "starting and ending with a letter or digit"
            )
        return value

    @field_validator("compression", mode="before")
    @classmethod
    def _none_is_none(cls, value: object) -> object:
        return "none" if value in (None, "") else value
