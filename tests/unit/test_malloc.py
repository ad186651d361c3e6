"""The worker limits glibc's malloc arenas (streams/malloc.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_glibc_takes_the_arena_limit() -> None:
    # In a child: the limit is process-wide and this test process has threads already.
    code = "from streams.malloc import limit_arenas; raise SystemExit(0 if limit_arenas() else 1)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_the_worker_sets_it_before_anything_else() -> None:
    import inspect

    from streams import cli

    source = inspect.getsource(cli.worker.callback)  # type: ignore[arg-type]
    assert source.index("limit_arenas()") < source.index("import faust")
