"""Shared pieces of the object-store sinks (S3, GCS): naming, format, compression."""

from __future__ import annotations

from sinks.objectstore.compression import (
    CODEC_NAMES,
    Codec,
    GzipCodec,
    NoneCodec,
    ZstdCodec,
    get_codec,
)
from sinks.objectstore.format import JSONL_CONTENT_TYPE, decode_jsonl, encode_jsonl
from sinks.objectstore.naming import object_key, safe_component

__all__ = [
    "CODEC_NAMES",
    "JSONL_CONTENT_TYPE",
    "Codec",
    "GzipCodec",
    "NoneCodec",
    "ZstdCodec",
    "decode_jsonl",
    "encode_jsonl",
    "get_codec",
    "object_key",
    "safe_component",
]
