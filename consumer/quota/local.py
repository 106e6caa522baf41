"""Quota gate: no update leaves unless the rolling window and the pacing allow it.

The window is counted in one-second buckets; a send in bucket [b, b+1) is treated as leaving
the window at b + 1 + window, never earlier, so the count can only over-estimate use (safe).
`smooth` pacing adds a token bucket refilled at limit / window per second holding at most
`burst` tokens, so a backlog cannot spend the day's budget in an hour. A `hold` (a 429's
Retry-After) stops every send until it passes. Clock and sleep are injected: tests run a 24 h
window in milliseconds.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class QuotaSnapshot:
    limit: int
    window_seconds: float
    used: int
    used_by_this_replica: int
    rate_per_second: float
    frees_at: float | None  # when the oldest counted update leaves the window

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)

    @property
    def exhaustion_eta_seconds(self) -> float:
        """At the current rate, seconds until nothing remains (+inf when the rate is zero)."""
        if self.remaining == 0:
            return 0.0
        if self.rate_per_second <= 0:
            return math.inf
        return self.remaining / self.rate_per_second


class WindowCounter:
    """Updates counted per one-second bucket over a rolling window."""

    def __init__(self, window_seconds: float) -> None:
        self.window = window_seconds
        self._buckets: deque[list[int]] = deque()  # [second, count], oldest first
        self.total = 0

    def add(self, now: float, count: int = 1) -> None:
        second = int(now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += count
        else:
            self._buckets.append([second, count])
        self.total += count

    def expire(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] + 1 + self.window <= now:
            self.total -= self._buckets.popleft()[1]

    def frees_at(self) -> float | None:
        return self._buckets[0][0] + 1 + self.window if self._buckets else None

    def frees_at_for(self, needed: int) -> float | None:
        """When at least `needed` counted updates have left the window."""
        freed = 0
        for second, count in self._buckets:
            freed += count
            if freed >= needed:
                return second + 1 + self.window
        return None

    def used_since(self, since: float) -> int:
        return sum(count for second, count in self._buckets if second >= since)


class QuotaGate:
    """Grants one update at a time, FIFO, within limit, pacing and holds."""

    def __init__(
        self,
        limit: int,
        window_seconds: float,
        pacing: str = "smooth",
        burst: int | None = None,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
        hold_max_seconds: float = 3600.0,
    ) -> None:
        self.limit = limit
        self.window = window_seconds
        self._clock: Clock = clock or asyncio.get_running_loop().time
        self._sleep = sleep
        self._counter = WindowCounter(window_seconds)
        self._mine = WindowCounter(window_seconds)
        self._smooth = pacing == "smooth"
        self._rate = limit / window_seconds
        self._burst = float(burst if burst is not None else max(1, limit // 100))
        self._tokens = self._burst
        self._refilled_at = self._clock()
        self._hold_until = 0.0
        self._hold_max = hold_max_seconds
        self._lock = asyncio.Lock()
        self.waited_seconds = 0.0
        self.ledger_bad_records = 0  # ledger records skipped as unreadable (shared gate only)
        self.skew_seconds = 0.0  # this clock against the ledger broker's (shared gate only)

    def health(self) -> tuple[bool, str]:
        """Whether this gate can send at all (a clock it cannot trust says no, and why)."""
        return True, "ok"

    def hold(self, until: float) -> None:
        """Send nothing before `until` (clock time): Target asked us to back off. A hold is
        never forever: at most `hold_max_seconds` from now, whatever the server said."""
        until = min(until, self._clock() + self._hold_max)
        self._hold_until = max(self._hold_until, until)

    async def wait_hold(self) -> None:
        """Return once no Retry-After hold of this replica is in force."""
        while (delay := self._hold_until - self._clock()) > 0:
            await self._sleep(delay)

    async def acquire(self, units: int = 1) -> None:
        """Wait until `units` more are allowed at once, then count them all.

        FIFO: a caller waiting for many units is not overtaken by later callers asking for
        few (the lock), so a large request cannot starve. Smooth pacing waits for at most
        `burst` tokens and may leave the bucket in debt, which later callers wait out.
        """
        check_units(units, self.limit)
        async with self._lock:
            while True:
                delay = self._delay(self._clock(), units)
                if delay <= 0:
                    break
                self.waited_seconds += delay
                await self._sleep(delay)
            now = self._clock()
            self._counter.add(now, units)
            self._mine.add(now, units)
            if self._smooth:
                self._tokens -= units

    def _delay(self, now: float, units: int = 1) -> float:
        if now < self._hold_until:
            return self._hold_until - now
        self._counter.expire(now)
        self._mine.expire(now)
        if self._counter.total + units > self.limit:
            frees = self._counter.frees_at_for(self._counter.total - self.limit + units)
            return max((frees or now) - now, 1e-3)
        if self._smooth:
            self._tokens = min(self._burst, self._tokens + (now - self._refilled_at) * self._rate)
            self._refilled_at = now
            needed = min(float(units), self._burst)
            if self._tokens < needed:
                return (needed - self._tokens) / self._rate
        return 0.0

    def snapshot(self) -> QuotaSnapshot:
        now = self._clock()
        self._counter.expire(now)
        self._mine.expire(now)
        # The rate over the last minute (or the window, if shorter) drives the ETA.
        span = min(60.0, self.window)
        recent = self._counter.used_since(now - span)
        return QuotaSnapshot(
            limit=self.limit,
            window_seconds=self.window,
            used=self._counter.total,
            used_by_this_replica=self._mine.total,
            rate_per_second=recent / span,
            frees_at=self._counter.frees_at(),
        )


def check_units(units: int, limit: int) -> None:
    """More than the limit could never be granted: refuse at once rather than wait forever."""
    if not 1 <= units <= limit:
        raise ValueError(f"cannot acquire {units} units under a limit of {limit}")
