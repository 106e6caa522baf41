"""BodyBudget: the bytes of rendered batch bodies this process holds at once.

A batch's body (up to 50 MB) exists from its render until its POST is over, and the POST may
wait a long time: 50 calls a minute for every replica, a 503's Retry-After, the manifest write,
retries. At the end of a drain every partition's batches are queued at once: with 60
partitions and two identity types, unbounded, 120 bodies of up to 49 MB each would be resident
together. So each submit takes its body's exact size (`BatchBuilder.size`) here before
rendering, and gives it back when the POST is over (accepted, refused or cancelled).

A body larger than the whole budget still goes, alone, once nothing else is held. Grants are
first come, first served: a large body is not starved by a stream of small ones.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class BodyBudget:
    """At most `limit` bytes held, or a single holder of any size."""

    def __init__(self, limit: int, on_change: Callable[[int], None] = lambda held: None) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1 byte")
        self.limit = limit
        self.held = 0
        self._on_change = on_change  # told the bytes held after every change (a gauge)
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        """`size` bytes held for the block; waits until they fit, in arrival order."""
        if self._waiting or not self._fits(size):
            await self._wait(size)
        else:
            self._take(size)
        try:
            yield
        finally:
            self._give_back(size)

    async def _wait(self, size: int) -> None:
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, granted)
        self._waiting.append(entry)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._give_back(size)  # granted just before the cancellation landed
            else:
                if entry in self._waiting:  # `_grant` may have dropped it already
                    self._waiting.remove(entry)
                self._grant()  # it may have been the one holding the others back
            raise

    def _fits(self, size: int) -> bool:
        return self.held == 0 or self.held + size <= self.limit

    def _take(self, size: int) -> None:
        self.held += size
        self._on_change(self.held)

    def _give_back(self, size: int) -> None:
        self.held -= size
        self._on_change(self.held)
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self._fits(self._waiting[0][0]):
            size, granted = self._waiting.popleft()
            if granted.done():  # cancelled: its waiter removes nothing more
                continue
            self._take(size)
            granted.set_result(None)
