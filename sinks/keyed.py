"""Per-key state of sinks that create one item per alert at a vendor without an
idempotency key (Jira issues, Datadog incidents).

Such a sink searches for the alert's item before creating it. Two deliveries of the same
alert in one process must not both search and then both create, and a re-delivery soon
after a create must not depend on the vendor's search having indexed the new item. So the
sink serialises deliveries per dedup key (`KeyedLocks`) and remembers the items it
created (`RecentlyCreated`). Both sinks had this code written out; it lives here once.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

__all__ = ["KeyedLocks", "RecentlyCreated"]

K = TypeVar("K", bound=Hashable)


class KeyedLocks:
    """One asyncio.Lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class RecentlyCreated(Generic[K]):
    """The items this process created, by key: the last `limit` of them, oldest dropped
    first (remembering an item again makes it the newest)."""

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._items: OrderedDict[K, str] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def remember(self, key: K, item: str) -> None:
        self._items[key] = item
        self._items.move_to_end(key)
        while len(self._items) > self._limit:
            self._items.popitem(last=False)
