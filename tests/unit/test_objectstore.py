"""Codecs, object naming and JSON Lines for the object-store sinks."""

from __future__ import annotations

import datetime
import gzip
from typing import Any

import orjson
import pytest
import zstandard

from sinks.objectstore import (
    CODEC_NAMES,
    JSONL_CONTENT_TYPE,
    Codec,
    GzipCodec,
    NoneCodec,
    ZstdCodec,
    decode_jsonl,
    encode_jsonl,
    get_codec,
    object_key,
    safe_component,
)

PAYLOAD = b'{"alert_id":"a-1","title":"caf\xc3\xa9"}\n' * 500

# -- compression ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "extension", "content_encoding"),
    [("none", "", None), ("gzip", ".gz", "gzip"), ("zstd", ".zst", "zstd")],
)
def test_codec_attributes_and_round_trip(
    name: str, extension: str, content_encoding: str | None
) -> None:
    codec = get_codec(name)
    assert isinstance(codec, Codec)
    assert (codec.name, codec.extension, codec.content_encoding) == (
        name,
        extension,
        content_encoding,
    )
    compressed = codec.compress(PAYLOAD)
    assert codec.decompress(compressed) == PAYLOAD
    assert codec.decompress(codec.compress(b"")) == b""
    if name != "none":
        assert len(compressed) < len(PAYLOAD)


def test_codec_names_and_none() -> None:
    assert CODEC_NAMES == ("none", "gzip", "zstd")
    assert get_codec(None) == NoneCodec()
    assert get_codec("none").compress(b"abc") == b"abc"


def test_unknown_codec_names_the_allowed_values() -> None:
    with pytest.raises(ValueError) as info:
        get_codec("brotli")
    message = str(info.value)
    assert "brotli" in message
    for allowed in CODEC_NAMES:
        assert repr(allowed) in message


def test_gzip_is_deterministic_and_standard() -> None:
    codec = get_codec("gzip")
    first = codec.compress(PAYLOAD)
    assert first == codec.compress(PAYLOAD) == GzipCodec(level=6).compress(PAYLOAD)
    assert first[4:8] == b"\x00\x00\x00\x00"  # MTIME field is zero
    assert gzip.decompress(first) == PAYLOAD  # any gzip reader can read it
    assert GzipCodec(level=9).compress(PAYLOAD) != GzipCodec(level=1).compress(PAYLOAD)


def test_zstd_level_is_configurable_and_deterministic() -> None:
    default = get_codec("zstd")
    assert isinstance(default, ZstdCodec) and default.level == 3
    strong = get_codec("zstd", zstd_level=19)
    assert isinstance(strong, ZstdCodec) and strong.level == 19
    assert strong.compress(PAYLOAD) == strong.compress(PAYLOAD)
    assert zstandard.ZstdDecompressor().decompress(strong.compress(PAYLOAD)) == PAYLOAD


def test_zstd_reads_frames_without_size_and_concatenated_frames() -> None:
    chunks = [b"one\n", b"two\n"]
    frames = b"".join(
        zstandard.ZstdCompressor(write_content_size=False).compress(c) for c in chunks
    )
    assert get_codec("zstd").decompress(frames) == b"one\ntwo\n"


@pytest.mark.parametrize("level", [0, 23, -1])
def test_zstd_rejects_bad_levels(level: int) -> None:
    with pytest.raises(ValueError, match="zstd level"):
        get_codec("zstd", zstd_level=level)


def test_gzip_rejects_bad_levels() -> None:
    with pytest.raises(ValueError, match="gzip level"):
        GzipCodec(level=10)


@pytest.mark.parametrize("name", ["gzip", "zstd"])
def test_decompress_garbage_is_value_error(name: str) -> None:
    with pytest.raises(ValueError):
        get_codec(name).decompress(b"definitely not compressed")


def test_codecs_are_immutable() -> None:
    codec = get_codec("gzip")
    with pytest.raises(AttributeError):
        codec.name = "zstd"  # type: ignore[misc]


# -- naming --------------------------------------------------------------------

DAY = datetime.date(2025, 3, 7)


def _key(**overrides: object) -> str:
    args: dict[str, object] = {
        "prefix": "alerts",
        "tenant_id": "tenant-1",
        "integration_id": "int_9",
        "day": DAY,
        "topic": "alertrelay-s3",
        "partition": 4,
        "first_offset": 1234,
        "codec": get_codec("gzip"),
    }
    args.update(overrides)
    return object_key(**args)  # type: ignore[arg-type]


def test_object_key_layout() -> None:
    assert _key() == (
        "alerts/tenant-1/int_9/dt=2025-03-07/alertrelay-s3+4+00000000000000001234.jsonl.gz"
    )
    assert _key() == _key()  # deterministic


@pytest.mark.parametrize(("codec", "suffix"), [("none", ".jsonl"), ("zstd", ".jsonl.zst")])
def test_object_key_extension_follows_codec(codec: str, suffix: str) -> None:
    assert _key(codec=get_codec(codec)).endswith("+00000000000000001234" + suffix)


def test_empty_prefix_has_no_leading_slash() -> None:
    key = _key(prefix="")
    assert key.startswith("tenant-1/int_9/dt=2025-03-07/")
    assert _key(prefix="/") == key


def test_nested_prefix_is_kept_and_slashes_trimmed() -> None:
    assert _key(prefix="/exports//alerts/").startswith("exports/alerts/tenant-1/")


def test_offsets_sort_lexically() -> None:
    keys = [_key(first_offset=o) for o in (10, 9, 100, 0)]
    assert sorted(keys) == [_key(first_offset=o) for o in (0, 9, 10, 100)]
    assert _key(first_offset=2**63 - 1).count("+09223372036854775807.") == 1


@pytest.mark.parametrize(
    ("tenant", "expected"),
    [
        ("a/b", "a%2Fb"),
        ("..", "%2E%2E"),
        (".", "%2E"),
        ("../../etc", "..%2F..%2Fetc"),
        ("50%", "50%25"),
        ("a b+c", "a%20b%2Bc"),
        ("café", "caf%C3%A9"),
        ("x\ny", "x%0Ay"),
    ],
)
def test_tenant_cannot_inject_path_segments(tenant: str, expected: str) -> None:
    key = _key(tenant_id=tenant, integration_id=tenant)
    parts = key.split("/")
    assert parts[:3] == ["alerts", expected, expected]
    assert len(parts) == 5
    assert ".." not in parts and "." not in parts


def test_sanitisation_is_injective() -> None:
    ids = ["a/b", "a%2Fb", "a_b", "a-b", "a.b", "a+b", "a%2Bb"]
    assert len({safe_component(i) for i in ids}) == len(ids)


def test_topic_cannot_break_the_separator() -> None:
    key = _key(topic="t+1/x")
    assert key.endswith("/t%2B1%2Fx+4+00000000000000001234.jsonl.gz")
    assert key.rsplit("/", 1)[1].count("+") == 2


def test_s3_safe_characters_are_kept() -> None:
    assert _key(prefix="exports(v2)/a!b*'c").startswith("exports(v2)/a!b*'c/tenant-1/")


def test_prefix_dot_dot_is_neutralised() -> None:
    assert _key(prefix="../x").startswith("%2E%2E/x/tenant-1/")


def test_aware_datetime_is_filed_under_its_utc_day() -> None:
    late = datetime.datetime(
        2025, 3, 7, 23, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=-2))
    )
    assert "/dt=2025-03-08/" in _key(day=late)
    assert "/dt=2025-03-07/" in _key(day=datetime.datetime(2025, 3, 7, 23, 30))


@pytest.mark.parametrize(
    "overrides",
    [
        {"tenant_id": ""},
        {"integration_id": ""},
        {"topic": ""},
        {"partition": -1},
        {"first_offset": -5},
        {"prefix": "p" * 1100},
    ],
)
def test_invalid_inputs_are_rejected(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _key(**overrides)


# -- JSON Lines ----------------------------------------------------------------


def test_encode_jsonl_one_object_per_line() -> None:
    records: list[dict[str, Any]] = [{"a": 1}, {"b": "x\ny"}, {"c": [1, 2]}]
    data = encode_jsonl(records)
    assert data == b'{"a":1}\n{"b":"x\\ny"}\n{"c":[1,2]}\n'
    assert decode_jsonl(data) == records


def test_encode_jsonl_bytes_are_taken_as_encoded() -> None:
    data = encode_jsonl([b'{"pre":"encoded"}', {"k": "v"}, b'{"t":1}\n'])
    assert data == b'{"pre":"encoded"}\n{"k":"v"}\n{"t":1}\n'


def test_encode_jsonl_reframes_pretty_printed_bytes() -> None:
    pretty = orjson.dumps({"a": {"b": "line\nbreak"}}, option=orjson.OPT_INDENT_2)
    data = encode_jsonl([pretty, {"z": 0}])
    assert data.count(b"\n") == 2
    assert decode_jsonl(data) == [{"a": {"b": "line\nbreak"}}, {"z": 0}]


def test_encode_jsonl_accepts_mappings_and_generators() -> None:
    from types import MappingProxyType

    data = encode_jsonl(MappingProxyType({"n": i}) for i in range(3))
    assert decode_jsonl(data) == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_encode_jsonl_empty() -> None:
    assert encode_jsonl([]) == b""
    assert decode_jsonl(b"") == []
    with pytest.raises(ValueError):
        encode_jsonl([b"  "])


def test_encode_jsonl_keeps_unicode_as_utf8() -> None:
    data = encode_jsonl([{"title": "café ✓"}])
    assert "café ✓".encode() in data


def test_decode_jsonl_skips_blank_lines_and_handles_crlf() -> None:
    assert decode_jsonl(b'{"a":1}\r\n\r\n{"b":2}') == [{"a": 1}, {"b": 2}]


@pytest.mark.parametrize("data", [b"[1,2]\n", b'{"a":1}\nnot json\n'])
def test_decode_jsonl_rejects_non_objects(data: bytes) -> None:
    with pytest.raises(ValueError, match="line"):
        decode_jsonl(data)


def test_round_trip_through_every_codec() -> None:
    records = [{"alert_id": f"a-{i}", "risk_level": "high"} for i in range(100)]
    for name in CODEC_NAMES:
        codec = get_codec(name)
        assert decode_jsonl(codec.decompress(codec.compress(encode_jsonl(records)))) == records
    assert JSONL_CONTENT_TYPE == "application/x-ndjson"
