"""Sampling the worker with py-spy, and summarising the samples for BENCHMARKS.md.

py-spy attaches to the running worker (`--nonblocking`: the worker is not paused per
sample), records collapsed stacks (`--format raw --threads --function`) and writes them
when it receives SIGINT. Only samples where a thread was on the CPU are recorded (no
`--idle`), so the shares below are shares of CPU time, not of wall time.

Each sample's leaf frame is put in a category by its file: our code (streams/, sinks/,
schemas/), the stream engine (faust, mode, aiokafka), pydantic, the HTTP client
(httpx/httpcore/h11/anyio), the S3 client (boto3/botocore/urllib3), the asyncio runtime,
and so on. Time spent inside a C extension (orjson, zstandard, pydantic-core's Rust)
shows up in the Python function that called it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("alertrelay (streams/, sinks/, schemas/)", ("streams/", "sinks/", "schemas/")),
    ("engine: faust / mode", ("faust/", "mode/")),
    ("engine: aiokafka (Kafka client)", ("aiokafka/", "kafka/")),
    ("pydantic", ("pydantic/", "pydantic_core/")),
    (
        "HTTP client: httpx / httpcore / h11 / anyio",
        ("httpx/", "httpcore/", "h11/", "anyio/", "sniffio/"),
    ),
    (
        "S3 client: boto3 / botocore / urllib3",
        ("botocore/", "boto3/", "urllib3/", "s3transfer/", "dateutil/"),
    ),
    ("faust web: aiohttp / yarl / multidict", ("aiohttp/", "yarl/", "multidict/")),
    ("prometheus_client", ("prometheus_client/",)),
    (
        "asyncio runtime / threads",
        ("asyncio/", "selectors.py", "threading.py", "concurrent/", "queue.py"),
    ),
    ("logging", ("logging/",)),
]


# The worker's entry frames: every sample is below them, they say nothing.
_ROOTS = {"<module> (streams/cli.py)", "worker (streams/cli.py)"}


def pyspy_path() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    if here.exists():
        return str(here)
    return shutil.which("py-spy")


def start(
    pid: int, output: Path, rate: int = 100, gil: bool = False
) -> subprocess.Popen[bytes] | None:
    """`gil`: keep only samples of the thread holding the GIL (py-spy `--gil`), i.e.
    where the one interpreter's time goes when the worker is bound by it."""
    exe = pyspy_path()
    if exe is None:
        return None
    log = output.with_suffix(".log").open("wb")
    return subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--output",
            str(output),
            "--nonblocking",
            "--threads",
            "--function",
            *(["--gil"] if gil else []),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 60.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _frame_file(frame: str) -> str:
    # "func (path/to/file.py:123)"
    if frame.endswith(")") and " (" in frame:
        return frame.rsplit(" (", 1)[1][:-1].rsplit(":", 1)[0]
    return ""


def _frame_func(frame: str) -> str:
    if " (" in frame:
        name, rest = frame.rsplit(" (", 1)
        return f"{name} ({rest[:-1].rsplit(':', 1)[0]})"
    return frame


def category(path: str) -> str:
    norm = path.replace(os.sep, "/")
    for name, needles in CATEGORIES:
        for needle in needles:
            if norm.startswith(needle) or f"/{needle}" in norm:
                return name
    return "other (stdlib, ...)"


def summarise(raw: Path, seconds: float | None = None, top: int = 25) -> dict[str, Any]:
    """Shares of CPU samples by category, thread, leaf function and (ours) inclusive."""
    total = 0
    by_cat: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    self_fn: Counter[str] = Counter()
    incl_ours: Counter[str] = Counter()
    incl_all: Counter[str] = Counter()
    cat_by_thread: dict[str, Counter[str]] = defaultdict(Counter)
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1] if frames and frames[0].startswith("thread") else "?"
        thread = (
            "event loop (MainThread)"
            if thread == "MainThread"
            else ("to_thread pool (asyncio_N)" if thread.startswith("asyncio_") else thread)
        )
        frames = frames[1:] if frames and frames[0].startswith("thread") else frames
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        cat = category(_frame_file(leaf))
        by_cat[cat] += count
        by_thread[thread] += count
        cat_by_thread[thread][cat] += count
        self_fn[_frame_func(leaf)] += count
        seen: set[str] = set()
        for frame in frames:
            fn = _frame_func(frame)
            if fn in seen:
                continue
            seen.add(fn)
            incl_all[fn] += count
            if category(_frame_file(frame)).startswith("alertrelay") and fn not in _ROOTS:
                incl_ours[fn] += count

    def pct(n: int) -> float:
        return round(100.0 * n / total, 1) if total else 0.0

    return {
        "file": raw.name,
        "samples": total,
        "seconds": seconds,
        "cpu_cores_sampled": round(total / 100.0 / seconds, 2) if seconds else None,
        "by_category": [(c, pct(n)) for c, n in by_cat.most_common()],
        "by_thread": [(t, pct(n)) for t, n in by_thread.most_common(8)],
        "by_thread_category": {
            t: [(c, pct(n)) for c, n in cats.most_common(6)]
            for t, cats in cat_by_thread.items()
            if by_thread[t] * 20 >= total
        },
        "top_self": [(f, pct(n)) for f, n in self_fn.most_common(top)],
        "top_inclusive_ours": [(f, pct(n)) for f, n in incl_ours.most_common(top)],
        "top_inclusive": [(f, pct(n)) for f, n in incl_all.most_common(top + 15)],
    }


if __name__ == "__main__":  # python bench/profiling.py FILE [seconds]
    import json

    secs = float(sys.argv[2]) if len(sys.argv) > 2 else None
    print(json.dumps(summarise(Path(sys.argv[1]), secs), indent=1))
