"""Virtual time for several tasks at once: sleeps wake in deadline order, never in real time.

`FakeTime.sleep` in the quota tests moves time by the sleeper's own delay, which is right for
one task and wrong for several (each sleeper would push the clock for all). Here a sleep waits
for its deadline; `run_until` lets every runnable task go until all are blocked, then moves
the clock to the earliest deadline and wakes that sleeper. Deterministic: same tasks, same
schedule.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math


class VirtualTime:
    def __init__(self, start: float) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        deadline = self.now + max(0.0, seconds)
        if seconds > 0 and deadline == self.now:
            # A delay below the clock's resolution (a token bucket short by 1e-16) must still
            # move time, as a real sleep would: else its sleeper would loop at the same instant.
            deadline = math.nextafter(self.now, math.inf)
        heapq.heappush(self._sleepers, (deadline, next(self._order), wake))
        await wake  # a cancelled sleeper is skipped when its deadline comes

    async def run_until(self, until: float, settle_turns: int = 30) -> None:
        """Run the tasks in virtual time up to `until` (then leave the clock there)."""
        while True:
            for _ in range(settle_turns):  # let what is runnable run (ledger deliveries...)
                await asyncio.sleep(0)
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)
            if not self._sleepers or self._sleepers[0][0] > until:
                self.now = max(self.now, until)
                return
            when, _, wake = heapq.heappop(self._sleepers)
            self.now = max(self.now, when)
            wake.set_result(None)
