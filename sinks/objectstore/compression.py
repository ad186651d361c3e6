"""Compression codecs for batch objects.

Each codec knows its file extension and its HTTP ``Content-Encoding`` so that the
object name, the upload headers and the bytes always agree. Output is
deterministic (same input, same level → same bytes) so that re-delivering a batch
after a crash produces the very same object.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import zstandard

__all__ = [
    "CODEC_NAMES",
    "Codec",
    "GzipCodec",
    "NoneCodec",
    "ZstdCodec",
    "get_codec",
]

CODEC_NAMES: tuple[str, ...] = ("none", "gzip", "zstd")

_ZSTD_MIN_LEVEL = 1
_ZSTD_MAX_LEVEL: int = zstandard.MAX_COMPRESSION_LEVEL


@runtime_checkable
class Codec(Protocol):
    """What a sink needs from a compression scheme."""

    @property
    def name(self) -> str: ...

    @property
    def extension(self) -> str: ...

    @property
    def content_encoding(self) -> str | None: ...

    def compress(self, data: bytes) -> bytes: ...

    def decompress(self, data: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class NoneCodec:
    """No compression: plain ``.jsonl`` objects."""

    name: str = field(default="none", init=False)
    extension: str = field(default="", init=False)
    content_encoding: str | None = field(default=None, init=False)

    def compress(self, data: bytes) -> bytes:
        return bytes(data)

    def decompress(self, data: bytes) -> bytes:
        return bytes(data)


@dataclass(frozen=True, slots=True)
class GzipCodec:
    """Gzip with ``mtime=0`` and no file name, so the header does not vary per call."""

    level: int = 6
    name: str = field(default="gzip", init=False)
    extension: str = field(default=".gz", init=False)
    content_encoding: str | None = field(default="gzip", init=False)

    def __post_init__(self) -> None:
        if not 0 <= self.level <= 9:
            raise ValueError(f"gzip level must be 0..9, got {self.level}")

    def compress(self, data: bytes) -> bytes:
        return gzip.compress(data, compresslevel=self.level, mtime=0)

    def decompress(self, data: bytes) -> bytes:
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"not valid gzip data: {exc}") from exc


@dataclass(frozen=True, slots=True)
class ZstdCodec:
    """Zstandard; the frame records the content size so readers can size buffers."""

    level: int = 3
    name: str = field(default="zstd", init=False)
    extension: str = field(default=".zst", init=False)
    content_encoding: str | None = field(default="zstd", init=False)

    def __post_init__(self) -> None:
        if not _ZSTD_MIN_LEVEL <= self.level <= _ZSTD_MAX_LEVEL:
            raise ValueError(
                f"zstd level must be {_ZSTD_MIN_LEVEL}..{_ZSTD_MAX_LEVEL}, got {self.level}"
            )

    def compress(self, data: bytes) -> bytes:
        # A compressor object is not thread-safe: make one per call (cheap), since
        # compression runs in worker threads.
        compressor = zstandard.ZstdCompressor(level=self.level, write_content_size=True)
        return compressor.compress(data)

    def decompress(self, data: bytes) -> bytes:
        # stream_reader copes with frames that lack a content size and with
        # concatenated frames (as written by other tools), unlike decompress().
        try:
            with zstandard.ZstdDecompressor().stream_reader(
                data, read_across_frames=True
            ) as reader:
                return reader.read()
        except zstandard.ZstdError as exc:
            raise ValueError(f"not valid zstd data: {exc}") from exc


_NONE = NoneCodec()
_GZIP = GzipCodec()


def get_codec(name: str | None, *, zstd_level: int = 3) -> Codec:
    """Return the codec for a config's ``compression`` value (``None`` → no compression)."""
    if name is None or name == "none":
        return _NONE
    if name == "gzip":
        return _GZIP
    if name == "zstd":
        return ZstdCodec(level=zstd_level)
    allowed = ", ".join(repr(n) for n in CODEC_NAMES)
    raise ValueError(f"unknown compression {name!r}: allowed values are {allowed} (or null)")
