"""The one retry policy: backoff, jitter, retry-after and giving up."""

from __future__ import annotations

import random

import pytest

from sinks.errors import PermanentError, RetryableError
from sinks.retry import RetryPolicy


def policy(**overrides: float) -> RetryPolicy:
    fields: dict[str, float] = {
        "max_attempts": 6,
        "base_delay": 1.0,
        "max_delay": 8.0,
        "multiplier": 2.0,
        "jitter": 0.2,
        "max_retry_after": 60.0,
    }
    fields.update(overrides)
    return RetryPolicy(rng=random.Random(1234), **fields)  # type: ignore[arg-type]


RETRYABLE = RetryableError("503", status=503)


def test_permanent_error_is_never_retried() -> None:
    p = policy()
    for attempt in range(1, 4):
        assert p.delay(attempt, PermanentError("400", status=400)) is None
    # not even when the server named a retry-after
    assert p.delay(1, PermanentError("403", retry_after=1.0)) is None


def test_backoff_grows_exponentially_and_is_capped() -> None:
    p = policy(jitter=0.0, max_attempts=10)
    delays = [p.delay(n, RETRYABLE) for n in range(1, 7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_jitter_stays_within_bounds() -> None:
    p = policy(jitter=0.25, max_attempts=100, max_delay=1000.0)
    for attempt in range(1, 8):
        backoff = min(1000.0, 1.0 * 2.0 ** (attempt - 1))
        for _ in range(200):
            wait = p.delay(attempt, RETRYABLE)
            assert wait is not None
            assert backoff * (1 - 0.25) <= wait <= backoff


def test_jitter_actually_varies_and_is_reproducible_with_a_seed() -> None:
    first, second = policy(), policy()
    a = [first.delay(n, RETRYABLE) for n in range(1, 6)]
    b = [second.delay(n, RETRYABLE) for n in range(1, 6)]
    assert a == b  # same seed, same delays
    p = policy()
    waits = {p.delay(3, RETRYABLE) for _ in range(50)}
    assert len(waits) > 1


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_retry_after_is_a_floor(attempt: int) -> None:
    p = policy(base_delay=0.01, max_delay=0.1)
    for _ in range(100):
        wait = p.delay(attempt, RetryableError("429", status=429, retry_after=5.0))
        assert wait is not None
        assert wait >= 5.0  # never shortened by jitter or by max_delay


def test_retry_after_shorter_than_backoff_does_not_shorten_backoff() -> None:
    p = policy(jitter=0.0)
    assert p.delay(4, RetryableError("429", retry_after=0.5)) == 8.0


def test_retry_after_is_capped_by_max_retry_after() -> None:
    p = policy(max_retry_after=60.0)
    assert p.delay(1, RetryableError("429", retry_after=3600.0)) == 60.0


def test_gives_up_at_max_attempts() -> None:
    p = policy(max_attempts=3)
    assert p.delay(1, RETRYABLE) is not None
    assert p.delay(2, RETRYABLE) is not None
    assert p.delay(3, RETRYABLE) is None
    assert p.delay(4, RETRYABLE) is None
    # a retry-after does not buy an extra attempt
    assert p.delay(3, RetryableError("429", retry_after=1.0)) is None


def test_single_attempt_policy_never_retries() -> None:
    assert policy(max_attempts=1).delay(1, RETRYABLE) is None
