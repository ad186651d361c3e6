"""Events are acked as an unbroken prefix of their partition, whatever order work ends in:
faust would otherwise commit past an event still in flight."""

from __future__ import annotations

from typing import Any


class Event:
    def __init__(self, tp: Any, offset: int, log: list[tuple[Any, int]]) -> None:
        self.message = type("M", (), {"tp": tp, "offset": offset})()
        self._log = log

    def ack(self) -> None:
        self._log.append((self.message.tp, self.message.offset))


def test_acks_follow_offset_order_per_partition() -> None:
    from streams.acks import OrderedAcks

    log: list[tuple[Any, int]] = []
    acks = OrderedAcks()
    slots = {(tp, o): acks.track(Event(tp, o, log)) for o in range(3) for tp in ("a", "b")}
    acks.done(slots["a", 2])
    acks.done(slots["a", 1])
    assert log == []  # offset 0 of "a" still in flight: nothing may be committed
    acks.done(slots["b", 0])
    assert log == [("b", 0)]
    acks.done(slots["a", 0])
    assert log == [("b", 0), ("a", 0), ("a", 1), ("a", 2)]
    assert acks.waiting() == 2
    acks.forget(["b"])
    assert acks.waiting() == 0
