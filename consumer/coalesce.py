"""Coalescing and per-profile ordering, as a plain data structure (no I/O, no clock).

Updates for one profile that wait together merge into one batch (a later event wins per
attribute), so one quota unit carries many events. A profile with a request in flight gets no
second one: its new events wait in a fresh batch that becomes eligible when the first is done,
which keeps Target's final value equal to the last event's.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Ref = TypeVar("Ref")
ProfileKey = tuple[str, str]  # (identity type, identity)


@dataclass(slots=True)
class Batch(Generic[Ref]):
    key: ProfileKey
    attributes: dict[str, str]
    refs: list[Ref] = field(default_factory=list)
    due: float = 0.0

    @property
    def identity_type(self) -> str:
        return self.key[0]

    @property
    def identity(self) -> str:
        return self.key[1]


class Coalescer(Generic[Ref]):
    def __init__(self, window_seconds: float) -> None:
        self._window = window_seconds
        self._waiting: dict[ProfileKey, Batch[Ref]] = {}
        self._in_flight: set[ProfileKey] = set()
        self._heap: list[tuple[float, int, ProfileKey]] = []
        self._seq = itertools.count()
        self._flushing = False

    def add(self, key: ProfileKey, attributes: dict[str, str], ref: Ref, now: float) -> bool:
        """Queue an update; True when it merged into a waiting batch."""
        batch = self._waiting.get(key)
        if batch is not None:
            batch.attributes.update(attributes)
            batch.refs.append(ref)
            return True
        due = now if self._flushing else now + self._window
        self._waiting[key] = Batch(key, dict(attributes), [ref], due)
        if key not in self._in_flight:
            heapq.heappush(self._heap, (due, next(self._seq), key))
        return False

    def pop_ready(self, now: float, limit: int) -> list[Batch[Ref]]:
        """Up to `limit` batches whose window has passed and whose profile is idle."""
        ready: list[Batch[Ref]] = []
        while self._heap and len(ready) < limit and self._heap[0][0] <= now:
            _, _, key = heapq.heappop(self._heap)
            batch = self._waiting.get(key)
            if batch is None or key in self._in_flight:
                continue  # stale entry: re-queued by done()
            del self._waiting[key]
            self._in_flight.add(key)
            ready.append(batch)
        return ready

    def done(self, key: ProfileKey) -> None:
        """The profile's request finished: its next batch (if any) may go."""
        self._in_flight.discard(key)
        batch = self._waiting.get(key)
        if batch is not None:
            heapq.heappush(self._heap, (batch.due, next(self._seq), key))

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def flush(self) -> None:
        """Shutting down: stop waiting for more events, everything is due now."""
        self._flushing = True
        for batch in self._waiting.values():
            batch.due = float("-inf")
        self._heap = [(float("-inf"), s, k) for _, s, k in self._heap]
        heapq.heapify(self._heap)

    def waiting(self) -> int:
        return len(self._waiting)

    def in_flight(self) -> int:
        return len(self._in_flight)
