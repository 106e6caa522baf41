"""What the simulator remembers: answered requests, per-profile state, quota window accounting.

One re-entrant lock guards it all, shared with a condition so tests can wait for an outcome:
`wait_for` evaluates predicates under the lock, and they call the getters.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import math
import random
import threading
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Self

from devtools.simulator.bulk import ParsedBatch, paused_gc, status_xml
from devtools.simulator.bulk_state import Batch, BulkBatch, BulkBook, row_failures
from devtools.simulator.config import SimulatorConfig, normalise_config, validate_config
from devtools.simulator.http import _Head, _Response
from devtools.simulator.rules import (
    _check_request,
    _Draws,
    _failure,
    _parse_update,
    _success,
    _too_many,
    _Update,
)

ProfileKey = tuple[str, str]  # (identity_type, identity)


@dataclass(frozen=True)
class ReceivedUpdate:
    """One update request the simulator answered (accepted or not), or one applied bulk row."""

    at: float  # clock() when handled
    method: str  # GET or POST (other methods are recorded as sent, with 405)
    identity_type: str  # "mbox3rdPartyId" or "mboxPC"; "" when the request had none
    identity: str
    attributes: dict[str, str]  # profile.X=v -> {"X": "v"}
    status: int  # HTTP status answered
    accepted: bool  # counted as an applied update (2xx with success true)
    # Set on a row of a bulk batch, applied when the batch completed (`at`); None: a single
    # update request.
    batch_id: str | None = None
    batch_row: int | None = None  # 1 = the batch's first data row


def _max_in_window(times: Sequence[float], window: float) -> int:
    """Largest number of sorted `times` inside any interval (t - window, t]."""
    if window <= 0:
        return 0
    best = 0
    start = 0
    for end, t in enumerate(times):
        while times[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


class SimulatorState:
    """The simulator's memory and decisions; every public method is thread-safe."""

    def __init__(self, config: SimulatorConfig | None, clock: Callable[[], float]) -> None:
        initial = dataclasses.replace(config) if config else SimulatorConfig()
        self._config = normalise_config(initial)
        validate_config(self._config)
        self._clock = clock
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._rng = random.Random(self._config.seed)  # noqa: S311 - fault dice, not crypto
        # Bulk dice apart, so bulk traffic never shifts the single-update fault sequence.
        self._bulk_rng = random.Random(self._config.seed)  # noqa: S311 - fault dice, not crypto
        self._clear_state()

    def _clear_state(self) -> None:
        self._records: deque[ReceivedUpdate] = deque(maxlen=self._config.max_records)
        self._profiles: dict[ProfileKey, dict[str, str]] = {}
        self._accepted_times: list[float] = []  # sorted; drives quota and window stats
        self._received = 0
        self._resets = 0
        self._rejected: Counter[int] = Counter()
        self._not_before = -math.inf
        self._told_at = -math.inf
        self._active: Counter[ProfileKey] = Counter()
        self._overlaps = 0
        self._early = 0
        self._bulk = BulkBook()

    # -- run-time control and inspection

    def configure(self, **changes: object) -> None:
        """Change `SimulatorConfig` fields at run time; unknown names or bad values raise."""
        self._apply_config(changes)

    def _apply_config(self, changes: dict[str, object]) -> SimulatorConfig:
        """Validate and apply `changes` atomically; returns the configuration now in force."""
        known = {f.name for f in dataclasses.fields(SimulatorConfig)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown simulator setting(s): {', '.join(unknown)}")
        with self._lock:
            updated = dataclasses.replace(self._config, **changes)  # type: ignore[arg-type]
            validate_config(normalise_config(updated))
            self._config = updated
            if "seed" in changes:
                self._rng.seed(updated.seed)
                self._bulk_rng.seed(updated.seed)
            if "max_records" in changes:
                self._records = deque(self._records, maxlen=updated.max_records)
            return updated

    def config(self) -> SimulatorConfig:
        """A copy of the current configuration."""
        with self._lock:
            return dataclasses.replace(self._config)

    def received(self) -> list[ReceivedUpdate]:
        """Snapshot of the recorded update requests and applied bulk rows, oldest first."""
        with self._lock:
            self._apply_due_bulk()
            return list(self._records)

    def profiles(self) -> dict[ProfileKey, dict[str, str]]:
        """(identity_type, identity) -> attributes merged from accepted updates and applied bulk
        rows, in order."""
        with self._lock:
            self._apply_due_bulk()
            return {key: dict(attrs) for key, attrs in self._profiles.items()}

    def accepted_count(self) -> int:
        """Number of accepted updates since start or the last `reset`."""
        with self._lock:
            return len(self._accepted_times)

    def max_accepted_in_window(self, window_seconds: float) -> int:
        """Most accepted updates in any interval (t - window_seconds, t]."""
        with self._lock:
            return _max_in_window(self._accepted_times, window_seconds)

    def early_requests(self) -> int:
        """Update requests that arrived before a Retry-After this server gave had passed."""
        with self._lock:
            return self._early

    def overlapping_requests(self) -> int:
        """Requests that arrived while another for the same profile was still being answered."""
        with self._lock:
            return self._overlaps

    def stats(self) -> dict[str, Any]:
        """The counters served by ``GET /_sim/stats``."""
        with self._lock:
            self._apply_due_bulk()
            bulk = self._bulk.counters
            return {
                "received": self._received,
                "accepted": len(self._accepted_times),
                "rejected_by_status": {str(k): v for k, v in sorted(self._rejected.items())},
                "max_accepted_in_window": _max_in_window(
                    self._accepted_times, self._config.quota_window_seconds
                ),
                "early_requests": self._early,
                "overlapping_requests": self._overlaps,
                "resets": self._resets,
                "bulk_calls": bulk.calls,
                "bulk_503s": bulk.refused_by_status.get(503, 0),
                "bulk_refused_by_status": {
                    str(k): v for k, v in sorted(bulk.refused_by_status.items())
                },
                "bulk_batches_accepted": bulk.batches_accepted,
                "bulk_rows_applied": bulk.rows_applied,
                "bulk_rows_failed": bulk.rows_failed,
                "bulk_attributes_overridden": bulk.attributes_overridden,
            }

    def wait_for(self, predicate: Callable[[Self], bool], timeout: float) -> bool:
        """Block until `predicate(self)` holds (re-checked on every request) or `timeout`."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    def reset(self) -> None:
        """Forget records, profiles, quota usage and counters (the configuration stays)."""
        with self._lock:
            self._clear_state()
            self._changed.notify_all()

    # -- one update request's life (called from the event-loop thread)

    def _arrive(self) -> tuple[float, SimulatorConfig, _Draws]:
        """Timestamp the request, count it early if it is, and throw the fault dice."""
        with self._lock:
            at = self._clock()
            if self._told_at + self._config.early_grace_seconds <= at < self._not_before:
                self._early += 1
            config = self._config
            rng = self._rng
            draws = _Draws(
                reset=rng.random() < config.reset_ratio,
                error_429=rng.random() < config.error_429_ratio,
                error_5xx=rng.random() < config.error_5xx_ratio,
                spike=rng.random() < config.latency_spike_ratio,
            )
            return at, config, draws

    def _note_reset(self) -> None:
        with self._lock:
            self._resets += 1
            self._changed.notify_all()

    def _note_retry_after(self, seconds: float) -> None:
        with self._lock:
            now = self._clock()
            self._told_at = now
            self._not_before = max(self._not_before, now + seconds)

    def _decide(
        self,
        head: _Head,
        body: bytes | None,
        at: float,
        *,
        config: SimulatorConfig,
        draws: _Draws,
        origin: str,
    ) -> tuple[_Response, ProfileKey]:
        """Answer one update request and record it, atomically with the quota check."""
        update = _parse_update(head.query, body if head.method == "POST" else None)
        with self._lock:
            self._apply_due_bulk()  # a batch that completed before this update comes first
            response = _check_request(head, body, update, config=config, draws=draws, origin=origin)
            if response is None:
                response = self._check_quota(at, config)
            accepted = response is None
            if response is None:
                response = _success(update)
            self._record(at, head.method, update, response.status, accepted)
            return response, (update.identity_type, update.identity)

    def _begin(self, key: ProfileKey) -> None:
        """Count a request for a profile that already has one being answered (an overlap)."""
        with self._lock:
            if self._active[key]:
                self._overlaps += 1
            self._active[key] += 1

    def _end(self, key: ProfileKey) -> None:
        with self._lock:
            self._active[key] -= 1
            if not self._active[key]:
                del self._active[key]

    def _check_quota(self, at: float, config: SimulatorConfig) -> _Response | None:
        """429 when the rolling window already holds `quota_limit` accepted updates."""
        limit = config.quota_limit
        if limit is None:
            return None
        times = self._accepted_times
        first_in_window = bisect.bisect_right(times, at - config.quota_window_seconds)
        in_window = len(times) - first_in_window
        if in_window < limit:
            return None
        # One slot frees when enough of the oldest in-window updates leave (limit may have
        # been lowered below the current usage, hence not always the very oldest).
        if limit > 0:
            leaves_at = times[first_in_window + in_window - limit] + config.quota_window_seconds
            seconds = float(max(1, math.ceil(leaves_at - at)))
        else:
            seconds = float(max(1, math.ceil(config.quota_window_seconds)))
        return _too_many("profile update quota exceeded", seconds)

    def _record(self, at: float, method: str, update: _Update, status: int, accepted: bool) -> None:
        """Store the record and wake waiters; the caller holds the lock."""
        record = ReceivedUpdate(
            at=at,
            method=method,
            identity_type=update.identity_type,
            identity=update.identity,
            attributes=dict(update.attributes),
            status=status,
            accepted=accepted,
        )
        self._records.append(record)
        self._received += 1
        if accepted:
            bisect.insort(self._accepted_times, at)
            key = (update.identity_type, update.identity)
            self._profiles.setdefault(key, {}).update(update.attributes)
            self._bulk.single_update_reached(key)
        else:
            self._rejected[status] += 1
        self._changed.notify_all()

    # -- bulk batches (the event-loop thread submits; any getter applies what became due)

    def bulk_batches(self) -> list[BulkBatch]:
        """Every batch accepted since start or the last `reset`, in submission order."""
        with self._lock:
            self._apply_due_bulk()
            return self._bulk.snapshot(self._clock())

    def _bulk_admit(self) -> _Response | None:
        """A 503 when the rolling window already holds its batch calls; else counts the call."""
        with self._lock:
            config = self._config
            seconds = self._bulk.admit_call(
                self._clock(), config.bulk_calls_per_minute, config.bulk_calls_window_seconds
            )
            if seconds is None:
                return None
            retry_after = {"Retry-After": str(int(seconds))}
            return _failure(503, "too many batch calls; retry later", **retry_after)

    def _note_bulk_refusal(self, status: int) -> None:
        with self._lock:
            self._bulk.note_refusal(status)

    def _bulk_accept(self, version: str, parsed: ParsedBatch) -> Batch:
        """Store a readable batch; its stuck and row-failure dice are thrown now."""
        with self._lock:
            config = self._config
            stuck = self._bulk_rng.random() < config.bulk_stuck_ratio
            if config.bulk_stuck_batches > 0:
                stuck = True
                remaining = config.bulk_stuck_batches - 1
                self._config = dataclasses.replace(config, bulk_stuck_batches=remaining)
            with paused_gc():
                failures = row_failures(
                    parsed,
                    config.bulk_row_failure_ids,
                    config.bulk_row_failure_ratio,
                    self._bulk_rng,
                )
            batch = self._bulk.add(
                version=version,
                parsed=parsed,
                failures=failures,
                now=self._clock(),
                delay=config.bulk_processing_seconds,
                stuck=stuck,
            )
            self._changed.notify_all()
            return batch

    def _bulk_status(self, batch_id: str, details: bool) -> _Response:
        """The batchStatus answer; per-row detail once complete, and only for v2."""
        with self._lock:
            self._apply_due_bulk()
            batch = self._bulk.batches.get(batch_id)
            if batch is None:
                return _failure(404, f"unknown batchId: {batch_id}")
            status = batch.status(self._clock())
            show = details and batch.version == "v2" and status == "complete"
            rows = batch.outcomes() if show else None
            return _Response(200, status_xml(batch.id, status, len(batch.ids), rows))

    def _bulk_tick(self, batch_id: str) -> float:
        """Apply what is due and wake waiters; the seconds `batch_id` still has to wait."""
        with self._lock:
            self._apply_due_bulk()
            self._changed.notify_all()  # a stuck batch turns `stuck` now, too
            batch = self._bulk.batches.get(batch_id)
            if batch is None or batch.applied or batch.stuck:
                return 0.0
            return batch.due_at - self._clock()

    def _apply_due_bulk(self) -> None:
        """Apply every batch whose processing time has come; the caller holds the lock."""
        now = self._clock()
        due = self._bulk.due(now)
        for batch in due:
            with paused_gc():
                record = functools.partial(self._record_row, batch, now)
                self._bulk.apply(batch, self._profiles, record)
        if due:
            self._changed.notify_all()

    def _record_row(
        self, batch: Batch, at: float, key: ProfileKey, attributes: dict[str, str], row: int
    ) -> None:
        """Record one applied bulk row in the history single updates feed."""
        self._records.append(
            ReceivedUpdate(
                at=at,
                method="POST",
                identity_type=key[0],
                identity=key[1],
                attributes=attributes,
                status=200,
                accepted=True,
                batch_id=batch.id,
                batch_row=row,
            )
        )
