"""The worker freezes what it has built and collects young objects seldom, and every
collection's pause is measured (streams/gc_tuning.py)."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from typing import Any

# In a child: the collector's settings are process-wide.
TUNED = """
import gc, json
from streams import metrics
from streams.gc_tuning import tune_gc
built = [[i] for i in range(5000)]  # the app, as far as the collector can tell
before = gc.get_freeze_count()
tune_gc()
tune_gc()  # twice: one callback all the same
a = []; b = [a]; a.append(b)  # a cycle made afterwards
del a, b
collected = gc.collect()
samples = {
    s.name + str(sorted(s.labels.items())): s.value
    for m in metrics.REGISTRY.collect() if m.name == "alertrelay_gc_pause_seconds"
    for s in m.samples if s.name.endswith("_count")
}
print(json.dumps({
    "threshold": gc.get_threshold(),
    "frozen": gc.get_freeze_count() - before,
    "collected": collected,
    "callbacks": len(gc.callbacks),
    "counts": samples,
}))
"""


def _tuned() -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", TUNED], capture_output=True, text=True, check=True)
    tuned: dict[str, Any] = json.loads(done.stdout)
    return tuned


def test_young_collections_are_rare_and_the_built_process_is_frozen() -> None:
    from streams.gc_tuning import OLDER_THRESHOLDS, YOUNG_THRESHOLD

    tuned = _tuned()
    assert tuned["threshold"] == [YOUNG_THRESHOLD, *OLDER_THRESHOLDS]
    assert tuned["frozen"] >= 5000  # what existed is left out of later collections


def test_cycles_made_later_are_still_collected_and_each_pause_is_counted() -> None:
    tuned = _tuned()
    assert tuned["collected"] >= 2
    assert tuned["callbacks"] == 1
    # The second tune_gc's full collection and the one above (the first ran unobserved).
    assert tuned["counts"] == {"alertrelay_gc_pause_seconds_count[('generation', '2')]": 2.0}


def test_the_worker_tunes_it_once_built() -> None:
    from streams import cli

    source = inspect.getsource(cli.worker.callback)  # type: ignore[arg-type]
    assert source.index("build_pipeline(") < source.index("tune_gc()") < source.index("Worker(")
