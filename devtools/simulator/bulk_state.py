"""What the simulator remembers of bulk batches: the call window, the batches, their outcome.

`BulkBook` holds no lock of its own: `SimulatorState` calls it under its lock, and hands it the
profile map and a record callback when a batch is applied, so single updates and bulk rows
share one profile state and one history.
"""

from __future__ import annotations

import heapq
import math
import random
import secrets
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from devtools.simulator.bulk import (
    ROW_REJECTED,
    ParsedBatch,
    RowOutcome,
    row_attributes,
    row_problems,
)

ProfileKey = tuple[str, str]  # (identity_type, identity), as in state.py
RecordRow = Callable[[ProfileKey, dict[str, str], int], None]  # key, attributes, row number


@dataclass
class Batch:
    """One accepted batch; its cells are dropped once applied (or known stuck)."""

    id: str
    version: str  # "v1" or "v2"
    parsed: ParsedBatch | None
    id_column: str
    ids: list[str]  # the first cell of every data row, for the per-row detail
    failures: dict[int, str]  # row index -> message; known at submit, reported once complete
    submitted_at: float
    due_at: float
    stuck: bool
    applied: bool = False

    def status(self, now: float) -> str:
        if self.applied:
            return "complete"
        if self.stuck and now >= self.due_at:
            return "stuck"
        return "incomplete"

    def outcomes(self) -> Iterator[RowOutcome]:
        for index, identity in enumerate(self.ids):
            yield RowOutcome(index + 1, identity, self.failures.get(index))


@dataclass(frozen=True)
class BulkBatch:
    """A batch as `TargetSimulator.bulk_batches()` and ``GET /_sim/bulk`` show it."""

    id: str
    version: str
    id_column: str
    rows: int
    failed_rows: int  # known at submit; Target reports them once the batch is complete
    status: str  # "incomplete", "complete" or "stuck"
    submitted_at: float


@dataclass
class BulkCounters:
    calls: int = 0  # batch calls inside the rate limit (whatever their answer)
    refused_by_status: dict[int, int] = field(default_factory=dict)  # 503s included
    batches_accepted: int = 0
    rows_applied: int = 0
    rows_failed: int = 0
    attributes_overridden: int = 0  # lost to the consecutive-batches caveat


class BulkBook:
    """Bulk batches and the rolling call window of one simulator."""

    def __init__(self) -> None:
        self.batches: dict[str, Batch] = {}
        self.counters = BulkCounters()
        self._pending: list[tuple[float, int, str]] = []  # heap of (due_at, seq, batch id)
        self._calls: deque[float] = deque()  # times of the calls inside the window
        self._seq = 0
        # thirdPartyId profile -> attributes the last v2 batch set, while no single update
        # has reached that profile since: the next v2 batch replaces exactly these.
        # The row's own attribute dict is kept (never mutated once recorded): no copy per row.
        self._batch_set: dict[ProfileKey, dict[str, str]] = {}

    def admit_call(self, now: float, limit: int, window: float) -> float | None:
        """None when the call fits the rolling window (it is counted), else the whole seconds
        until it would fit (the 503's Retry-After; the refused call is not counted)."""
        calls = self._calls
        while calls and calls[0] <= now - window:
            calls.popleft()
        if len(calls) >= limit:
            if limit > 0:  # one slot frees when enough of the oldest calls leave the window
                leaves_at = calls[len(calls) - limit] + window
                return float(max(1, math.ceil(leaves_at - now)))
            return float(max(1, math.ceil(window)))
        calls.append(now)
        self.counters.calls += 1
        return None

    def note_refusal(self, status: int) -> None:
        refused = self.counters.refused_by_status
        refused[status] = refused.get(status, 0) + 1

    def add(
        self,
        *,
        version: str,
        parsed: ParsedBatch,
        failures: dict[int, str],
        now: float,
        delay: float,
        stuck: bool,
    ) -> Batch:
        self._seq += 1
        batch = Batch(
            id=f"{self._seq}-{secrets.token_hex(5)}",  # unique across resets and restarts
            version=version,
            parsed=None if stuck else parsed,
            id_column=parsed.id_column,
            ids=[cells[0] for cells in parsed.rows],
            failures=failures,
            submitted_at=now,
            due_at=now + delay,
            stuck=stuck,
        )
        self.batches[batch.id] = batch
        self.counters.batches_accepted += 1
        if not stuck:
            heapq.heappush(self._pending, (batch.due_at, self._seq, batch.id))
        return batch

    def due(self, now: float) -> list[Batch]:
        """Batches whose processing time has come, in the order they became due."""
        ready: list[Batch] = []
        while self._pending and self._pending[0][0] <= now:
            ready.append(self.batches[heapq.heappop(self._pending)[2]])
        return ready

    def apply(
        self, batch: Batch, profiles: dict[ProfileKey, dict[str, str]], record: RecordRow
    ) -> None:
        """Apply a batch's rows to `profiles`, in row order, recording each applied row."""
        parsed = batch.parsed
        assert parsed is not None  # noqa: S101 - only unapplied, unstuck batches are due
        caveat = batch.version == "v2" and parsed.id_column == "thirdPartyId"
        identity_type, names, failures = parsed.identity_type, parsed.names, batch.failures
        for index, cells in enumerate(parsed.rows):
            if failures and index in failures:
                continue
            key = (identity_type, cells[0])
            attributes = row_attributes(names, cells)
            profile = profiles.get(key)
            if profile is None:
                profile = profiles[key] = {}
            if caveat:
                self._override(key, profile, attributes)
            profile.update(attributes)
            record(key, attributes, index + 1)
        self.counters.rows_applied += len(parsed.rows) - len(batch.failures)
        self.counters.rows_failed += len(batch.failures)
        batch.parsed = None
        batch.applied = True

    def _override(
        self, key: ProfileKey, profile: dict[str, str], attributes: dict[str, str]
    ) -> None:
        earlier = self._batch_set.get(key)
        if earlier is not None:
            for name in earlier.keys() - attributes.keys():
                if profile.pop(name, None) is not None:
                    self.counters.attributes_overridden += 1
        self._batch_set[key] = attributes

    def single_update_reached(self, key: ProfileKey) -> None:
        """An accepted single update (an mbox call) ends the override window of `key`."""
        self._batch_set.pop(key, None)

    def snapshot(self, now: float) -> list[BulkBatch]:
        return [
            BulkBatch(
                id=b.id,
                version=b.version,
                id_column=b.id_column,
                rows=len(b.ids),
                failed_rows=len(b.failures),
                status=b.status(now),
                submitted_at=b.submitted_at,
            )
            for b in self.batches.values()
        ]


def row_failures(
    batch: ParsedBatch, failure_ids: frozenset[str], ratio: float, rng: random.Random
) -> dict[int, str]:
    """Every failing row: its own problem first, else an injected failure.

    One die per row whatever the ratio, so a seed replays the same failures.
    """
    failures = row_problems(batch)
    draws = [rng.random() < ratio for _ in batch.rows]
    for index, cells in enumerate(batch.rows):
        if (draws[index] or (failure_ids and cells[0] in failure_ids)) and index not in failures:
            failures[index] = ROW_REJECTED
    return failures
