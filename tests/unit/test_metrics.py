"""`observe_many` adds to a histogram exactly what one `observe` per amount would."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram

from streams.metrics import observe_many


def _samples(histogram: Histogram, registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def test_observing_many_at_once_equals_observing_each() -> None:
    rng = random.Random(3)
    amounts = [rng.choice((0.0, 0.01, 1, 300, 1e6)) for _ in range(50)]
    amounts += [rng.uniform(0, 400) for _ in range(500)]
    buckets = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
    one, many = CollectorRegistry(), CollectorRegistry()
    by_one = Histogram("h", "h", ["type"], buckets=buckets, registry=one)
    by_many = Histogram("h", "h", ["type"], buckets=buckets, registry=many)
    for amount in amounts:
        by_one.labels("s3").observe(amount)
    observe_many(by_many.labels("s3"), amounts)
    expected = _samples(by_one, one)
    got = _samples(by_many, many)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(got[key] - value) < 1e-6 * max(1.0, abs(value)), key
