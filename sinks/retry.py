"""The one retry policy: exponential backoff with jitter that honours retry-after.

Sinks only classify errors; this module alone decides whether and when to try again.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from sinks.errors import DeliveryError

__all__ = ["RetryPolicy", "tier_for"]


def tier_for(delay: float, tiers: tuple[int, ...]) -> int:
    """The delay topic for a wait: the shortest tier that is not shorter than it.

    A record waits in its tier until its own `not_before`, so a tier only needs to be at
    least as long as the delay (the longest tier takes anything longer).
    """
    for tier in tiers:
        if delay <= tier:
            return tier
    return tiers[-1]


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2
    max_retry_after: float = 600.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay(self, attempt: int, error: DeliveryError) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to give up.

        `attempt` counts from 1. A vendor's retry-after is a floor, never shortened by
        jitter: sending earlier would only earn another 429.
        """
        if not error.retryable or attempt >= self.max_attempts:
            return None
        backoff = min(self.max_delay, self.base_delay * self.multiplier ** (attempt - 1))
        wait = backoff * (1.0 - self.jitter * self.rng.random())
        if error.retry_after is not None:
            wait = max(wait, min(error.retry_after, self.max_retry_after))
        return wait
