"""Python's cyclic garbage collector for the worker: rare young collections, and the
process's long-lived objects never walked again.

With Python's defaults (a young collection every 700 net container allocations, older
ones every 10 of those) the batching benchmark spent 1.2-2 s of a 9-10 s run in ~1 600
collections, on the event loop, the full ones (12 a run) pausing it ~100 ms each: every
full collection walks every tracked object of the process, the imported modules and
faust's app included, and batch buffers add survivors fast enough to trigger them. Alerts
make almost no reference cycles (they are freed by reference counting; the collector
finds a few thousand cycles a run, asyncio's), so collecting seldom costs little memory.

`tune_gc` is called once the worker is built, before it starts: it freezes what exists
then (modules, the app: never garbage, left out of every later collection) and makes
young collections rare. Measured in the same run: 0.3-0.45 s in ~65 collections,
~6 ms each on average (bench/analysis.md; a threshold of 50 000 took less time in all
but paused ~30 ms at a time). `alertrelay_gc_pause_seconds` shows the pauses in production.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from streams import metrics

__all__ = ["YOUNG_THRESHOLD", "tune_gc"]

YOUNG_THRESHOLD = 10_000  # net container allocations between young collections
OLDER_THRESHOLDS = (20, 20)  # young (then middle) collections between older ones


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
    if _time_collections not in gc.callbacks:
        gc.callbacks.append(_time_collections)


_started: list[float] = [0.0]


def _time_collections(phase: str, info: dict[str, Any]) -> None:
    """Each collection's pause (the GIL is held throughout: nothing else runs)."""
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        pause = time.perf_counter() - _started[0]
        metrics.GC_PAUSE.labels(str(info["generation"])).observe(pause)
