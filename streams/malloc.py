"""Fewer glibc malloc arenas for the worker process.

glibc gives threads their own heap arenas (up to 8 per core), and the worker has many
threads (librdkafka's, the lanes', the to-thread pool running boto3 and zstd). Memory
freed in an arena mostly stays with the process, so each arena keeps its own high-water
mark: tens of MB of RSS that never go back (bench/analysis.md, "Memory"). Two arenas
are what `MALLOC_ARENA_MAX=2` would give, set from inside so that `alertrelay worker`
needs no wrapper script; it must run before the threads start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["limit_arenas"]

M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_arenas(arenas: int = 2) -> bool:
    """True if glibc took the limit (False elsewhere: musl, macOS)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False
