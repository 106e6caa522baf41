"""Coalescing and per-profile ordering, as a plain data structure (no I/O, no clock).

Updates for one profile that wait together merge into one batch (a later event wins per
attribute), so one quota unit carries many events. A profile with a request in flight gets no
second one: its new events wait in a fresh batch that becomes eligible when the first is done,
which keeps Target's final value equal to the last event's.

A batch holds the events of one `source` only (the pipeline's source is a partition in one
assignment epoch). Merging across sources would let a value of a partition this member no
longer owns ride in the request of one it still owns, over a newer value the next owner wrote;
so a profile whose events come from two sources gets a chain of batches, one per source, sent
one after the other, and `drop` removes a revoked source's batches whole.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Hashable
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
    seq: int = 0  # arrival order: ties on `due` go first come, first served
    source: Hashable = None  # where every one of `refs` came from (never mixed)
    next: Batch[Ref] | None = None  # the profile's batch of another source, waiting behind

    @property
    def identity_type(self) -> str:
        return self.key[0]

    @property
    def identity(self) -> str:
        return self.key[1]


_Entry = tuple[float, int, ProfileKey]  # (due, Batch.seq, profile): an entry of the heap


class Coalescer(Generic[Ref]):
    """Batches come due in (due, arrival) order, from two queues that act as one heap.

    A new batch is due `window` after `now`, and `now` comes from a monotonic clock, so the
    batch itself joins the end of a FIFO deque already in order, at O(1) and with no entry
    object. The entries that would break that order go into a heap of (due, seq, key)
    instead, which stays small: batches re-queued by done() (they keep the due of their first
    event) and any added with a `now` that went back. pop_ready and next_due take the lesser
    head of the two.
    """

    def __init__(self, window_seconds: float) -> None:
        self._window = window_seconds
        self._waiting: dict[ProfileKey, Batch[Ref]] = {}
        self._in_flight: set[ProfileKey] = set()
        self._fifo: deque[Batch[Ref]] = deque()
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._flushing = False

    def add(
        self,
        key: ProfileKey,
        attributes: dict[str, str],
        ref: Ref,
        now: float,
        source: Hashable = None,
    ) -> bool:
        """Queue an update from `source`; True when it merged into a waiting batch.

        `attributes` is taken over, not copied: a new batch keeps that very dict and later
        updates of the profile are merged into it, so the caller must not use it again.
        """
        batch = self._waiting.get(key)
        if batch is not None:
            while batch.source != source:
                if batch.next is None:  # rare: the profile's events come from two sources
                    due = now if self._flushing else now + self._window
                    batch.next = Batch(key, attributes, [ref], due, next(self._seq), source)
                    return False
                batch = batch.next
            batch.attributes.update(attributes)
            batch.refs.append(ref)
            return True
        due = now if self._flushing else now + self._window
        batch = self._waiting[key] = Batch(key, attributes, [ref], due, next(self._seq), source)
        if key not in self._in_flight:
            fifo = self._fifo
            if fifo and due < fifo[-1].due:
                heapq.heappush(self._heap, (due, batch.seq, key))
            else:
                fifo.append(batch)
        return False

    def pop_ready(self, now: float, limit: int) -> list[Batch[Ref]]:
        """Up to `limit` batches whose window has passed and whose profile is idle."""
        ready: list[Batch[Ref]] = []
        waiting, in_flight, fifo, heap = self._waiting, self._in_flight, self._fifo, self._heap
        while len(ready) < limit:
            if heap and (not fifo or heap[0] < (fifo[0].due, fifo[0].seq)):
                if heap[0][0] > now:
                    break
                key = heapq.heappop(heap)[2]
                batch = None if key in in_flight else waiting.get(key)
                if batch is None:
                    continue  # stale entry: its batch went with another entry of the profile
            elif fifo and fifo[0].due <= now:
                batch = fifo.popleft()
                if waiting.get(batch.key) is not batch:
                    continue  # it went with a heap entry of the profile, or was dropped
            else:
                break
            # The next source's batch, if any, heads the profile now; done() queues it.
            if batch.next is None:
                del waiting[batch.key]
            else:
                waiting[batch.key], batch.next = batch.next, None
            in_flight.add(batch.key)
            ready.append(batch)
        return ready

    def done(self, key: ProfileKey) -> None:
        """The profile's request finished: its next batch (if any) may go."""
        self._in_flight.discard(key)
        batch = self._waiting.get(key)
        if batch is not None:
            heapq.heappush(self._heap, (batch.due, next(self._seq), key))

    def next_due(self) -> float | None:
        heads = [self._fifo[0].due] if self._fifo else []
        if self._heap:
            heads.append(self._heap[0][0])
        due = min(heads, default=math.inf)
        return None if due == math.inf else due  # held back (reschedule): no timer

    def flush(self) -> None:
        """Shutting down: stop waiting for more events, everything is due now."""
        self._flushing = True
        # The FIFO's batches too: one that left with a heap entry is no longer waiting, and
        # with its old due it would hold up the batches behind it.
        self.expedite()

    def expedite(self) -> None:
        """Everything waiting now is due now (partitions are being handed over: what they hold
        is sent before they go); unlike `flush`, later events wait their window again."""
        for batch in itertools.chain(self._chained(), self._fifo):
            batch.due = float("-inf")
        self._heap = [(float("-inf"), s, k) for _, s, k in self._heap]
        heapq.heapify(self._heap)

    def reschedule(self, due_of: Callable[[Batch[Ref]], float | None]) -> None:
        """Give each waiting batch the due `due_of` returns for it (None: unchanged); `-inf`
        sends it first, `inf` holds it back. For hand-overs and shutdowns, which pick the
        batches that must go before a final commit: the queues are rebuilt, O(waiting)."""
        for batch in self._chained():
            due = due_of(batch)
            if due is not None:
                batch.due = due
        self._fifo.clear()
        self._heap = [
            (batch.due, batch.seq, key)
            for key, batch in self._waiting.items()
            if key not in self._in_flight
        ]
        heapq.heapify(self._heap)

    def holds(self, source_matches: Callable[[Hashable], bool]) -> bool:
        """Whether a waiting batch comes from a source for which `source_matches` is true."""
        return any(source_matches(batch.source) for batch in self._chained())

    def drop(self, dropped: Callable[[Hashable], bool]) -> list[Ref]:
        """Remove the waiting batches of every source for which `dropped` is true (their
        partitions were revoked: the next owner re-reads those events); returns their refs.

        A batch in flight is not touched: the pipeline's handover deals with sends.
        """
        refs: list[Ref] = []
        for key, head in list(self._waiting.items()):
            kept: list[Batch[Ref]] = []
            batch: Batch[Ref] | None = head
            while batch is not None:
                if dropped(batch.source):
                    refs.extend(batch.refs)
                else:
                    kept.append(batch)
                batch = batch.next
            if len(kept) == _chain_length(head):
                continue
            for earlier, later in itertools.pairwise(kept):
                earlier.next = later
            if not kept:
                del self._waiting[key]  # its FIFO or heap entry goes stale and is skipped
                continue
            kept[-1].next = None
            self._waiting[key] = kept[0]
            if kept[0] is not head and key not in self._in_flight:
                heapq.heappush(self._heap, (kept[0].due, next(self._seq), key))
        return refs

    def _chained(self) -> list[Batch[Ref]]:
        out: list[Batch[Ref]] = []
        for head in self._waiting.values():
            batch: Batch[Ref] | None = head
            while batch is not None:
                out.append(batch)
                batch = batch.next
        return out

    def waiting(self) -> int:
        return len(self._waiting)

    def in_flight(self) -> int:
        return len(self._in_flight)


def _chain_length(batch: Batch[Ref] | None) -> int:
    length = 0
    while batch is not None:
        length += 1
        batch = batch.next
    return length
