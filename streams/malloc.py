"""glibc malloc settings for the worker process: fewer arenas, big blocks given back.

glibc gives threads their own heap arenas (up to 8 per core), and the worker has many
threads (librdkafka's, the lanes', the to-thread pool running boto3 and zstd). Memory
freed in an arena mostly stays with the process, so each arena keeps its own high-water
mark: tens of MB of RSS that never go back (bench/analysis.md, "Memory"). Two arenas
are what `MALLOC_ARENA_MAX=2` would give.

Blocks of a few MiB (a batch's joined lines, its compressed object, librdkafka's fetch
buffers) are mmap-ed by default only until the first one is freed: glibc then raises
its mmap threshold up to 32 MiB, and later blocks of that size come from the heap,
where fragmentation keeps them. A fixed 4 MiB threshold hands every such block back to
the kernel when it is freed (`MALLOC_MMAP_THRESHOLD_=4194304`); measured in the
benchmark: peak RSS about 20 MB lower, batching rate unchanged (1 MiB cost ~5 % of it,
256 KiB ~20 %).

Both are set from inside so that `alertrelay worker` needs no wrapper script; they must
be set before the threads start. glibc's own environment variables, where given, win.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["MMAP_THRESHOLD", "tune_malloc"]

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters
M_ARENA_MAX = -8
MMAP_THRESHOLD = 4 * 1024 * 1024


def tune_malloc(arenas: int = 2, mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """True if glibc took both settings (False elsewhere: musl, macOS)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        taken = True
        if "MALLOC_ARENA_MAX" not in os.environ:
            taken = bool(libc.mallopt(M_ARENA_MAX, arenas))
        if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
            taken = bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and taken
        return taken
    except (OSError, AttributeError):
        return False
