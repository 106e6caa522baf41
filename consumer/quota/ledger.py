"""The replay rule: what the ledger's records, read in log order, say about the budget.

Pure and deterministic (no I/O, no clock of its own): every replica feeds it the same records in
the same order and so reaches the same decisions; a starting replica rebuilds the window by
replaying the topic from its beginning. docs/quota.md explains why it can never overshoot.

A lease occupies the window from `start - skew` (its first send can reach Target no earlier)
until `end`: its last possible send, plus skew and transit, plus the window. It counts the units
the log proves it may spend: those asked for until the owner settles for fewer, then those
granted, then those actually spent once released. `start` is the request's clock time, clamped
so that starts never go backwards in log order; hence every lease still counted started before
a new one, and the new one fits if the units counted at its own start leave room for it.

When the log carries the broker's timestamp of a record (`LogAppendTime`), every time a writer
put in it is first bounded by that stamp (within `skew`): a writer's clock, however wrong, can
move nobody's lease start, nor its own lease's end, further than the margin. A hold is clamped
to at most `hold_max` after it was written, and expires.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from consumer.quota.messages import Hold, LeaseRequest, Marker, Record, Release, Settle, key_of
from consumer.quota.view import WindowView

# Replicas' clocks are assumed within this of each other's reference (NTP does milliseconds).
SKEW_SECONDS = 0.1
# From the gate letting a send go to Target recording it: event loop, connection, network.
TRANSIT_SECONDS = 0.5
# A lease must be spent within this (owner's clock) from its start; the rest is given back.
LEASE_TTL_SECONDS = 2.0
# A hold (Target's Retry-After) never lasts longer than this after it was written.
HOLD_MAX_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class QuotaRule:
    """The parameters of the replay rule (every replica must use the same)."""

    limit: int
    window: float
    smooth: bool = False
    burst: int = 1
    skew: float = SKEW_SECONDS
    transit: float = TRANSIT_SECONDS
    ttl: float = LEASE_TTL_SECONDS
    hold_max: float = HOLD_MAX_SECONDS

    @property
    def rate(self) -> float:
        return self.limit / self.window

    def end(self, last_send: float) -> float:
        """When a send at `last_send` (owner's clock) can no longer be in Target's window."""
        return last_send + self.skew + self.transit + self.window


@dataclass(slots=True)
class Lease:
    replica: str
    lease: int
    start: float
    asked: int
    granted: int  # the rule's decision at the request's place in the log
    counted: int  # what the log proves may be spent (see the module docstring)
    end: float
    released: bool = False
    offset: int = -1  # its request's place in the log: tells an owner its lease from another's


@dataclass(slots=True)
class Bucket:
    """Smooth pacing: `rate` tokens a second, at most `burst`; a lease takes what it may spend."""

    rate: float
    burst: float
    tokens: float
    at: float = -math.inf

    def refill(self, now: float) -> None:
        if now > self.at:
            elapsed = now - self.at if self.at > -math.inf else math.inf
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.at = now

    def ready_at(self, units: int) -> float:
        """Ledger time at which `units` tokens will be there (no new lease meanwhile)."""
        missing = units - self.tokens
        return self.at if missing <= 0 else self.at + missing / self.rate

    def give_back(self, units: int) -> None:
        self.tokens = min(self.burst, self.tokens + units)


@dataclass(slots=True)
class ReplicaSeen:
    last_at: float = -math.inf  # clock time of its latest lease request
    requests: int = 0
    last_lease: int = 0  # the highest lease id it used


@dataclass
class LedgerState:
    """Applies ledger records in log order; answers what is used, free, and when."""

    rule: QuotaRule
    clock: float = -math.inf  # the latest (clamped) lease start seen
    offset: int = -1  # the last log offset applied
    total: int = 0  # units counted by the leases in `_leases`
    _leases: dict[str, Lease] = field(default_factory=dict)
    _ends: list[tuple[float, str]] = field(default_factory=list)  # heap; stale entries skipped
    replicas: dict[str, ReplicaSeen] = field(default_factory=dict)
    markers: set[str] = field(default_factory=set)
    expired: list[str] = field(default_factory=list)  # keys that left the window, to tombstone
    holds: dict[str, float] = field(default_factory=dict)  # hold key -> until (clamped)

    def __post_init__(self) -> None:
        burst = float(self.rule.burst)
        self.bucket = Bucket(self.rule.rate, burst, burst)
        self.view = WindowView()

    # --- applying records ---------------------------------------------------------------

    def apply(
        self,
        offset: int,
        key: str,
        record: Record | None,
        stamp: float | None = None,
        received: float | None = None,
    ) -> None:
        """One record at `offset`; None is a tombstone (it ends a hold; the rest is
        compaction's business). `stamp`: the broker's timestamp of the record, if the log has
        one; `received`: the reader's clock when it arrived (bounds a hold without a stamp)."""
        self.offset = max(self.offset, offset)
        if record is None:
            self.holds.pop(key, None)
            return
        if stamp is not None:
            record = bounded(record, stamp, self.rule.skew)
        if isinstance(record, LeaseRequest):
            self._request(key, record)
        elif isinstance(record, Settle):
            self._settle(key, record)
        elif isinstance(record, Release):
            self._release(key, record)
        elif isinstance(record, Hold):
            self._hold(key, record, stamp if stamp is not None else received)
        elif isinstance(record, Marker):
            self.markers.add(record.marker)

    def _request(self, key: str, req: LeaseRequest) -> None:
        if key in self._leases or key != key_of(req):
            return  # a producer retry of a request already decided (or an id reused)
        start = max(req.at, self.clock)
        self.clock = start
        seen = self.replicas.setdefault(req.replica, ReplicaSeen())
        seen.last_at, seen.requests = max(seen.last_at, req.at), seen.requests + 1
        seen.last_lease = max(seen.last_lease, req.lease)
        granted = self._grant(start, req.units)
        end = self.rule.end(start + self.rule.ttl)
        lease = Lease(req.replica, req.lease, start, req.units, granted, req.units, end)
        lease.offset = self.offset
        self._add(lease)
        if self.rule.smooth:
            self.bucket.tokens -= req.units  # the owner may spend them all until it settles

    def _grant(self, start: float, units: int) -> int:
        """The rule: as many of `units` as the window (and the pacing) leave at `start`."""
        self.expire(start)
        granted = min(units, self.rule.limit - self.total)
        if self.rule.smooth:
            self.bucket.refill(start)
            granted = min(granted, math.floor(self.bucket.tokens))
        return max(0, granted)

    def _settle(self, key: str, settle: Settle) -> None:
        lease = self._leases.get(key)
        if lease is None:
            # Its request was compacted away: the settle alone carries the facts.
            self._restore(
                key,
                settle.replica,
                settle.lease,
                settle.start,
                settle.units,
                self.rule.end(settle.start + self.rule.ttl),
            )
            return
        self._recount(key, lease, min(lease.counted, settle.units))

    def _release(self, key: str, release: Release) -> None:
        lease = self._leases.get(key)
        end = self.rule.end(release.last)
        if lease is None:
            self._restore(key, release.replica, release.lease, release.start, release.spent, end)
            return
        lease.released = True
        if end < lease.end:
            lease.end = end
            heapq.heappush(self._ends, (end, key))
            self.view.end_lowered(key, lease)
        self._recount(key, lease, min(lease.counted, release.spent))

    def _hold(self, key: str, hold: Hold, written: float | None) -> None:
        """Keep the latest instant per key, never more than `hold_max` after it was written."""
        reference = written if written is not None and math.isfinite(written) else self.clock
        until = hold.until
        if math.isfinite(reference):
            until = min(until, reference + self.rule.hold_max)
        if math.isfinite(until):
            self.holds[key] = max(self.holds.get(key, -math.inf), until)

    @property
    def hold_until(self) -> float:
        """The latest hold in force (0.0: none was ever seen)."""
        return max(self.holds.values(), default=0.0)

    def expired_holds(self, now: float) -> list[str]:
        """Forget holds that have passed at `now`; their keys, to tombstone."""
        keys = [key for key, until in self.holds.items() if until <= now]
        for key in keys:
            del self.holds[key]
        return keys

    def _restore(
        self, key: str, replica: str, lease: int, start: float, units: int, end: float
    ) -> None:
        """A lease known only from a later record (compaction dropped its request)."""
        if units > 0 and end > self.clock - self.rule.skew:
            self._add(Lease(replica, lease, start, units, units, units, end))

    def _add(self, lease: Lease) -> None:
        key = key_of_lease(lease)
        self._leases[key] = lease
        self.total += lease.counted
        heapq.heappush(self._ends, (lease.end, key))
        self.view.added(key, lease)

    def _recount(self, key: str, lease: Lease, counted: int) -> None:
        """Lower what a lease counts; the units it gives back return to the pacing bucket."""
        freed = lease.counted - counted
        lease.counted = counted
        self.total -= freed
        self.view.recounted(key, lease, freed)
        if self.rule.smooth and freed > 0:
            self.bucket.give_back(freed)
        if counted == 0:
            del self._leases[key]
            self.view.removed(key, lease)
            self.expired.append(key)

    def expire(self, start: float) -> None:
        """Forget leases that end before a lease starting at `start` could overlap them.

        Only ever called with a start >= every earlier one, so nothing forgotten could matter
        to a later decision.
        """
        threshold = start - self.rule.skew
        while self._ends and self._ends[0][0] <= threshold:
            end, key = heapq.heappop(self._ends)
            lease = self._leases.get(key)
            if lease is not None and lease.end == end:
                del self._leases[key]
                self.total -= lease.counted
                self.view.removed(key, lease)
                self.expired.append(key)

    # --- questions ------------------------------------------------------------------------

    def decision(self, key: str) -> Lease | None:
        """The lease under `key` as decided (None once it no longer counts)."""
        return self._leases.get(key)

    def free(self) -> int:
        """Units a lease starting now-ish could get from the window (ignores pacing)."""
        self.expire(self.clock)
        return max(0, self.rule.limit - self.total)

    def ready_at(self, units: int, now: float) -> float:
        """Earliest ledger time >= now when `units` would be granted, were nobody else asking."""
        start = max(now, self.clock)
        self.expire(self.clock)
        need = self.total + units - self.rule.limit
        if need > 0:
            start = max(start, self._frees(need) + self.rule.skew)
        if self.rule.smooth:
            start = max(start, self.bucket.ready_at(min(units, self.rule.burst)))
        return start

    def _frees(self, need: int) -> float:
        """When leases counting at least `need` units will have left the window."""
        freed = 0
        for end, lease in self._by_end():
            freed += lease.counted
            if freed >= need:
                return end
        return math.inf  # more than the limit is asked: never (callers cap `units`)

    def _by_end(self) -> Iterator[tuple[float, Lease]]:
        """Counted leases, earliest end first: a best-first walk of the heap (no full sort)."""
        heap = self._ends
        frontier = [(heap[0], 0)] if heap else []
        while frontier:
            (end, key), index = heapq.heappop(frontier)
            lease = self._leases.get(key)
            if lease is not None and lease.end == end:
                yield end, lease
            for child in (2 * index + 1, 2 * index + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child], child))

    def live(self, now: float) -> Iterator[Lease]:
        """Leases that still occupy Target's window at ledger time `now`."""
        return (lease for lease in self._leases.values() if lease.end > now)

    def used(self, now: float, replica: str | None = None) -> int:
        """Units counted at `now`: kept incrementally while `now` moves forward."""
        if self.view.observe(now):
            return self.view.total if replica is None else self.view.by_replica.get(replica, 0)
        return sum(
            lease.counted for lease in self.live(now) if replica is None or lease.replica == replica
        )

    def frees_at(self, now: float) -> float | None:
        """When the earliest lease still counted at `now` leaves the window."""
        if self.view.observe(now):
            return self.view.frees_at()
        return next((end for end, _ in self._by_end() if end > now), None)

    def granted_since(self, since: float) -> int:
        recent = self.view.granted_since(since)
        if recent is not None:
            return recent
        return sum(lease.counted for lease in self._leases.values() if lease.start > since)

    def active_replicas(self, since: float) -> set[str]:
        return {name for name, seen in self.replicas.items() if seen.last_at > since}


def key_of_lease(lease: Lease) -> str:
    return f"lease:{lease.replica}:{lease.lease}"


def bounded(record: Record, stamp: float, margin: float) -> Record:
    """The record with every time its writer put in it bounded by the broker's stamp.

    A request is appended at its `at`, so with a clock within `margin` its `at` lies within
    `margin` of the stamp: clamping it there moves nothing of a healthy writer and keeps a
    wrong clock from moving everyone's starts. A release is appended after its last send:
    its `last` is taken no earlier than `stamp - margin`, so `last + skew` still covers the
    true last send (at most the stamp) whatever the writer's clock said.
    """
    early, late = stamp - margin, stamp + margin
    if isinstance(record, LeaseRequest):
        return replace(record, at=min(max(record.at, early), late))
    if isinstance(record, Settle):
        return replace(record, start=min(record.start, late))
    if isinstance(record, Release):
        start = min(record.start, late)
        return replace(record, start=start, last=min(max(record.last, early, start), late))
    return record
