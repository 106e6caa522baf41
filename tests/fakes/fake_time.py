"""Time for one task at a time: a sleep moves the clock by its own delay, at once.

Right when one task sleeps at a time (the waits of one gate or one client); for several
sleepers at once, `virtual_time.VirtualTime`. Scheduled work (ledger appends) runs first.
"""

from __future__ import annotations

import asyncio


class FakeTime:
    def __init__(self, start: float) -> None:
        self.now = start
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        for _ in range(3):
            await asyncio.sleep(0)  # let what is already scheduled run first
        self.slept.append(seconds)
        self.now += seconds
