"""Running answers to what `snapshot()` asks the ledger once a second, kept as records arrive.

Scanning every lease in the window costs time in proportion to the window (a day at 1M
updates is ~259,000 leases) on the event loop, every second. Instead the view keeps totals of
the leases that still occupy the window at the latest observation time, and of those that
started after the latest rate horizon, and drops a lease from them once, when the observation
time passes its end (a heap) or the horizon passes its start (starts arrive in order). Both
times only move forward; a caller asking about an earlier time gets None and scans instead.
Starts older than `keep` seconds before the newest are dropped as leases arrive (the rate looks
back a minute at most), so catching up after replaying a day of ledger costs nothing.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from consumer.quota.ledger import Lease


class WindowView:
    """Totals of counted units at a forward-moving observation time, kept incrementally."""

    def __init__(self, keep: float = 120.0) -> None:
        self.keep = keep
        self.now = -math.inf
        self.since = -math.inf
        self.total = 0
        self.recent = 0
        self.by_replica: dict[str, int] = {}
        self._in: dict[str, Lease] = {}  # leases counted by `total`
        self._ends: list[tuple[float, str]] = []  # heap; stale entries skipped when popped
        self._recent_in: dict[str, Lease] = {}  # leases counted by `recent`
        self._starts: deque[tuple[float, str, Lease]] = deque()  # in start order

    # --- what the ledger tells it ---------------------------------------------------------

    def added(self, key: str, lease: Lease) -> None:
        if lease.end > self.now:
            self._in[key] = lease
            self._count(lease, lease.counted)
            heapq.heappush(self._ends, (lease.end, key))
        # Starts are monotone in log order; a lease restored with an older start (its
        # request was compacted away) is left out of the rate rather than breaking the order.
        newest = self._starts[-1][0] if self._starts else -math.inf
        if lease.start > self.since and lease.start >= newest:
            self._recent_in[key] = lease
            self.recent += lease.counted
            self._starts.append((lease.start, key, lease))
            self._drop_starts(max(self.since, lease.start - self.keep))

    def recounted(self, key: str, lease: Lease, freed: int) -> None:
        if self._in.get(key) is lease:
            self._count(lease, -freed)
        if self._recent_in.get(key) is lease:
            self.recent -= freed

    def end_lowered(self, key: str, lease: Lease) -> None:
        if self._in.get(key) is lease:
            heapq.heappush(self._ends, (lease.end, key))

    def removed(self, key: str, lease: Lease) -> None:
        if self._in.get(key) is lease:
            del self._in[key]
            self._count(lease, -lease.counted)
        if self._recent_in.get(key) is lease:
            del self._recent_in[key]
            self.recent -= lease.counted

    # --- questions ------------------------------------------------------------------------

    def observe(self, now: float) -> bool:
        """Move the observation time to `now`; False if `now` is earlier (scan instead)."""
        if now < self.now:
            return False
        self.now = now
        while self._ends and self._ends[0][0] <= now:
            end, key = heapq.heappop(self._ends)
            lease = self._in.get(key)
            if lease is not None and lease.end == end:
                del self._in[key]
                self._count(lease, -lease.counted)
        return True

    def granted_since(self, since: float) -> int | None:
        """Units counted by leases that started after `since`; None if `since` went back."""
        if since < self.since:
            return None
        self._drop_starts(since)
        return self.recent

    def _drop_starts(self, since: float) -> None:
        self.since = since
        while self._starts and self._starts[0][0] <= since:
            _, key, lease = self._starts.popleft()
            if self._recent_in.get(key) is lease:
                del self._recent_in[key]
                self.recent -= lease.counted

    def frees_at(self) -> float | None:
        """When the earliest lease counted at the observation time leaves the window."""
        while self._ends:
            end, key = self._ends[0]
            lease = self._in.get(key)
            if lease is not None and lease.end == end:
                return end
            heapq.heappop(self._ends)
        return None

    def _count(self, lease: Lease, units: int) -> None:
        self.total += units
        left = self.by_replica.get(lease.replica, 0) + units
        if left:
            self.by_replica[lease.replica] = left
        else:
            self.by_replica.pop(lease.replica, None)
