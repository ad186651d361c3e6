"""The worker tunes glibc's malloc before its threads start (streams/malloc.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")

# Allocates a 6 MiB block twice and says whether the second one was mmap-ed (the
# IS_MMAPPED bit of glibc's chunk header): freeing the first raises glibc's own
# threshold above 6 MiB, so the second comes from the heap unless the threshold is fixed.
SECOND_BLOCK_MAPPED = """
import ctypes, sys
from streams.malloc import tune_malloc
if sys.argv[1] == "tuned" and not tune_malloc():
    raise SystemExit("glibc refused the settings")
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(6 << 20))
second = libc.malloc(6 << 20)
header = ctypes.c_size_t.from_address(second - ctypes.sizeof(ctypes.c_size_t)).value
print("mapped" if header & 2 else "heap")
"""


def _second_block(mode: str, **env: str) -> str:
    # In a child: the settings are process-wide and this test process has threads already.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run(
        [sys.executable, "-c", SECOND_BLOCK_MAPPED, mode],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


@glibc_only
def test_big_blocks_go_back_to_the_kernel_once_tuned() -> None:
    assert _second_block("untuned") == "heap"
    assert _second_block("tuned") == "mapped"


@glibc_only
def test_glibc_s_own_environment_variable_wins() -> None:
    assert _second_block("tuned", MALLOC_MMAP_THRESHOLD_=str(16 << 20)) == "heap"


def test_the_worker_sets_it_before_anything_else() -> None:
    import inspect

    from streams import cli

    source = inspect.getsource(cli.worker.callback)  # type: ignore[arg-type]
    assert source.index("tune_malloc()") < source.index("import faust")
