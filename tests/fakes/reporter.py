"""A Reporter (streams/delivery.py) that keeps every status and dead letter it is given."""

from __future__ import annotations

from typing import Any


class Recorder:
    def __init__(self) -> None:
        self.statuses: list[Any] = []
        self.dead: list[Any] = []

    async def status(self, record: Any) -> None:
        self.statuses.append(record)

    async def dead_letter(self, record: Any) -> None:
        self.dead.append(record)
