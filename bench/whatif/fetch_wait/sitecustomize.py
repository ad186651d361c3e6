"""What-if for the latency scenario: a shorter consumer fetch wait than faust's.

faust's aiokafka driver creates its consumer with a hard-coded `fetch_max_wait_ms=1500`
(faust/transport/drivers/aiokafka.py). Put this folder on the worker's PYTHONPATH to
replace that value, without touching the worker's code:

    .venv/bin/python bench/run.py --scenario latency \
        --worker-env PYTHONPATH=bench/whatif/fetch_wait \
        --worker-env BENCH_FETCH_MAX_WAIT_MS=100 --out bench/results/latency-runs/NAME

(the worker runs with the repo root as its working directory, so the relative path works).
"""

import os

import aiokafka

_original_init = aiokafka.AIOKafkaConsumer.__init__


def _init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
    if kwargs.get("fetch_max_wait_ms") == 1500:
        kwargs["fetch_max_wait_ms"] = int(os.environ.get("BENCH_FETCH_MAX_WAIT_MS", "100"))
    _original_init(self, *args, **kwargs)


aiokafka.AIOKafkaConsumer.__init__ = _init
