"""A circuit breaker per integration: stop calling a destination that keeps failing.

After `threshold` consecutive retryable failures the circuit opens: deliveries skip the
destination and are parked for the cool-down. When it has passed, one delivery goes
through as a probe (half open); its success closes the circuit, its failure opens it
again. Permanent errors (a rejected payload, bad credentials) say nothing about the
destination's health and do not count. State is per worker process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["Breakers", "Circuit"]

State = Literal["closed", "open", "half_open"]


@dataclass
class Circuit:
    state: State = "closed"
    failures: int = 0
    open_until: float = 0.0
    probing: bool = False


class Breakers:
    def __init__(
        self,
        threshold: int = 5,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._circuits: dict[str, Circuit] = {}

    def get(self, key: str) -> Circuit:
        circuit = self._circuits.get(key)
        if circuit is None:
            circuit = self._circuits[key] = Circuit()
        return circuit

    def admit(self, key: str) -> float | None:
        """None to go ahead (closed, or this is the probe), else seconds to wait."""
        circuit = self.get(key)
        if circuit.state == "closed":
            return None
        now = self._clock()
        if circuit.state == "open" and now < circuit.open_until:
            return circuit.open_until - now
        if circuit.probing:
            return min(1.0, self.cooldown)  # a probe is out: wait for its answer
        circuit.state = "half_open"
        circuit.probing = True
        return None

    def success(self, key: str) -> State:
        circuit = self.get(key)
        circuit.state, circuit.failures, circuit.probing = "closed", 0, False
        return circuit.state

    def failure(self, key: str, retryable: bool) -> State:
        circuit = self.get(key)
        if circuit.probing:
            circuit.probing = False
            if retryable:
                circuit.state, circuit.open_until = "open", self._clock() + self.cooldown
                return circuit.state
            circuit.state = "closed"  # the destination answered: it is up
        if not retryable:
            return circuit.state
        circuit.failures += 1
        if circuit.failures >= self.threshold:
            circuit.state, circuit.open_until = "open", self._clock() + self.cooldown
        return circuit.state

    def open_count(self) -> int:
        return sum(1 for c in self._circuits.values() if c.state != "closed")
