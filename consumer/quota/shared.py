"""The quota gate every replica shares: it spends only budget leased through the ledger.

`acquire()` takes one unit of this replica's current lease. When the lease is spent, expired,
or there is none, it asks the ledger for a new one sized to its recent demand (at most its share
of what is free), waits until it has read its own request back, and learns from the replay rule
how many units it got. It spends nothing the ledger has not granted, so replicas cannot overshoot
between ledger reads. No budget, or a hold: it waits, and the pipeline's bounded buffer pauses
the partitions. Time is the injected `clock` (the caller's, for `hold`) plus an offset to
wall time, the ledger's time, taken again every housekeeping turn (so a clock NTP steps back
into line is followed).

Where the ledger carries the broker's timestamps, every record of ours it reads back is a
measure of our clock against the broker's: appended at our `at`, stamped at `stamp`, read at
our `now`, so a healthy clock has at <= stamp <= now. A clock off by more than the rule's skew
margin stops this replica's sends (the replay could not trust its times), makes it not ready
and is logged with the skew; a probe record measures it again until it is back in line.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from consumer.config import Settings
from consumer.quota.ledger import Lease, LedgerState, QuotaRule
from consumer.quota.local import Clock, QuotaGate, QuotaSnapshot, Sleep, check_units
from consumer.quota.log import KafkaLedgerLog, LedgerLog, LogRecord
from consumer.quota.messages import (
    Hold,
    LeaseRequest,
    Marker,
    Record,
    RecordError,
    Release,
    Settle,
    decode,
    encode,
    key_of,
)

log = logging.getLogger(__name__)

DEMAND_SECONDS = 1.0  # a lease covers about this much of the replica's recent demand
HOUSEKEEPING_SECONDS = 0.5
PROBE = "clock"  # the marker that measures this replica's clock while it is not sending


@dataclass(slots=True)
class _Lease:
    key: str
    lease: int
    start: float
    granted: int
    spent: int = 0
    last: float | None = None


def replica_id() -> str:
    """Unique per incarnation: the pod name and pid for people, then 128 random bits, so a
    restarted pod with the same name and pid never takes a dead process's leases for its own."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(16)}"


class SharedQuotaGate(QuotaGate):
    """A QuotaGate whose budget is leased from the ledger shared by every replica."""

    def __init__(
        self,
        rule: QuotaRule,
        ledger: LedgerLog,
        replica: str,
        clock: Clock,
        wall: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        pacing = "smooth" if rule.smooth else "eager"
        super().__init__(
            rule.limit,
            rule.window,
            pacing,
            rule.burst,
            clock=clock,
            sleep=sleep,
            hold_max_seconds=rule.hold_max,
        )
        self.rule = rule
        self.replica = replica
        self.state = LedgerState(rule)
        self._ledger = ledger
        self._wall = wall
        self._to_wall = wall() - clock()  # ledger time = clock() + this
        self._probing = False  # a clock probe of ours is on its way through the ledger
        self._probe_after = -math.inf  # no more than one probe per housekeeping period
        self._lease: _Lease | None = None
        self._next_id = 0
        self._waiters = 0
        self._recent: deque[float] = deque()  # when this replica spent its last units
        self._tick = asyncio.Event()  # replaced (and set) whenever records were applied
        self._tasks: set[asyncio.Task[Any]] = set()  # appends under way
        self._housekeeper: asyncio.Task[None] | None = None

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start reading the ledger from its beginning (this restores the window)."""
        await self._ledger.start(self._on_records)
        self._probe(self.now())  # readiness knows about the clock before the first lease
        self._housekeeper = asyncio.ensure_future(self._housekeeping())

    async def close(self) -> None:
        """Give back the unspent part of the lease, flush the ledger, stop reading."""
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            await asyncio.gather(self._housekeeper, return_exceptions=True)
        if self._lease is not None:
            self._retire(self._lease)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)
        await self._ledger.close()

    def _on_records(self, records: list[LogRecord]) -> None:
        received = self.now()
        for offset, key, value, stamp in records:
            try:
                record = decode(value) if value is not None else None
                self.state.apply(offset, key, record, stamp, received)
            except Exception as exc:  # one bad record must not cost the rest of the batch
                self._skipped(offset, exc)
                continue
            if stamp is not None and record is not None:
                self._measure(record, stamp, received)
            if isinstance(record, Marker) and key == key_of(Marker(self.replica, PROBE)):
                self._probe_read(key)
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    def _skipped(self, offset: int, exc: Exception) -> None:
        """Count and log a record the replay could not use; it still counts as read."""
        self.ledger_bad_records += 1
        self.state.offset = max(self.state.offset, offset)
        log.warning(
            f"ledger record skipped at offset {offset}: {exc}",
            exc_info=not isinstance(exc, RecordError),  # an unexpected one: where it came from
            extra={"event": "ledger_record_ignored", "offset": offset},
        )

    # --- the clock against the broker's --------------------------------------------------

    def _measure(self, record: Record, stamp: float, received: float) -> None:
        """Our clock's offset from the broker's, from a record of ours read back."""
        mine = isinstance(record, LeaseRequest | Marker) and record.replica == self.replica
        at = getattr(record, "at", None) if mine else None
        if at is None:
            return
        was_ok = self.health()[0]
        # Appended at `at`, stamped at `stamp`, read at `received`: only what lies outside
        # that interval is proven skew (the rest is transit).
        self.skew_seconds = at - stamp if stamp < at else min(0.0, received - stamp)
        ok, reason = self.health()
        if ok != was_ok:
            log.log(
                logging.INFO if ok else logging.ERROR,
                reason if not ok else f"clock back within {self.rule.skew}s of the broker's",
                extra={"event": "clock_skew", "skew_seconds": round(self.skew_seconds, 3)},
            )

    def _probe_read(self, key: str) -> None:
        """Our probe came back: tombstone it unless another is needed (same key, replaced)."""
        self._probing = False
        if self.health()[0]:
            self._spawn(self._ledger.append(key, None))

    def health(self) -> tuple[bool, str]:
        """Not healthy while our clock disagrees with the broker's by more than the margin."""
        if abs(self.skew_seconds) <= self.rule.skew:
            return True, "ok"
        return False, (
            f"clock skew {self.skew_seconds:+.3f}s against the quota ledger broker's "
            f"timestamps (margin {self.rule.skew}s): not sending"
        )

    def _probe(self, now: float) -> None:
        """Append a marker stamped with our clock; reading it back measures the skew."""
        if not self._probing and now >= self._probe_after:
            self._probing, self._probe_after = True, now + HOUSEKEEPING_SECONDS
            probe = Marker(self.replica, PROBE, at=now)
            self._spawn(self._ledger.append(key_of(probe), encode(probe)))

    # --- the gate ---------------------------------------------------------------------------

    def now(self) -> float:
        """Ledger time (wall clock seconds)."""
        return self._clock() + self._to_wall

    def hold(self, until: float) -> None:
        """Nobody, on any replica, sends before `until` (this gate's clock), at most
        `rule.hold_max` from now."""
        super().hold(until)
        wall_until = min(until, self._clock() + self.rule.hold_max) + self._to_wall
        if wall_until > self.state.hold_until:
            hold = Hold(self.replica, wall_until)
            self._spawn(self._ledger.append(key_of(hold), encode(hold)))

    async def acquire(self, units: int = 1) -> None:
        """Wait until this replica holds `units` granted units, then spend them all at once.

        Many units come from one lease of exactly that size (all or nothing: a partial grant is
        given back at once, then asked again once the window has room), so a replica never
        sits on part of a budget it cannot use while others wait for it.
        """
        check_units(units, self.limit)
        self._waiters += 1
        try:
            async with self._lock:
                await self._take(units)
        finally:
            self._waiters -= 1

    async def _take(self, units: int) -> None:
        while True:
            tick = self._tick
            now = self.now()
            if not self.health()[0]:
                self._probe(now)
                await self._wait(max(self._probe_after - now, 1e-3), tick)
                continue
            delay = self._blocked_for(now)
            lease = self._lease
            if delay <= 0 and lease is not None:
                if lease.granted - lease.spent >= units:
                    self._spend(lease, now, units)
                    return
                self._retire(lease)  # too small for many units: give the rest back
            if delay <= 0:
                delay = await (
                    self._obtain(now) if units == 1 else self._obtain_exactly(units, now)
                )
            if delay > 0:
                await self._wait(delay, tick)

    async def _obtain_exactly(self, units: int, now: float) -> float:
        """Ask the ledger for one lease of `units`; 0 once granted whole, else seconds to wait
        (a partial grant is settled to nothing: everyone counts it as free again)."""
        ready = self.state.ready_at(units, now)
        if ready > now:
            return ready - now
        request, key, offset, decided = await self._ask(units, now)
        if decided is None or decided.offset != offset or decided.granted < units:
            if decided is not None and decided.offset == offset:
                settle = Settle(self.replica, request.lease, 0, decided.start)
                await self._ledger.append(key, encode(settle))
            # Someone took part of the room between our look and our request: look again.
            return HOUSEKEEPING_SECONDS
        self._lease = _Lease(key, request.lease, decided.start, units)
        if not self.health()[0]:
            self._retire(self._lease)
        return 0.0

    def _blocked_for(self, now: float) -> float:
        """Seconds to wait for a hold, or for the lease's start; retires a used-up lease."""
        held = max(self._hold_until + self._to_wall, self.state.hold_until) - now
        lease = self._lease
        if lease is not None and (
            lease.spent >= lease.granted or now >= lease.start + self.rule.ttl
        ):
            self._retire(lease)
            lease = None
        early = lease.start - now if lease is not None else 0.0
        return max(held, early, 0.0)

    def _spend(self, lease: _Lease, now: float, units: int = 1) -> None:
        lease.spent += units
        lease.last = now
        if units == 1:  # single-unit demand sizes the next lease; a batch's rows do not
            self._recent.append(now)
        if lease.spent >= lease.granted:
            self._retire(lease)  # at once: its units leave the window from the last send

    async def _ask(self, units: int, now: float) -> tuple[LeaseRequest, str, int, Lease | None]:
        """Append a lease request under a fresh id, read it back: the rule's decision."""
        seen = self.state.replicas.get(self.replica)
        self._next_id = max(self._next_id, seen.last_lease if seen is not None else 0) + 1
        request = LeaseRequest(self.replica, self._next_id, units, now)
        key = key_of(request)
        offset = await self._ledger.append(key, encode(request))
        await self._until_applied(offset)
        return request, key, offset, self.state.decision(key)

    async def _obtain(self, now: float) -> float:
        """Ask the ledger for a lease; 0 once one was granted, else seconds to wait."""
        units = self._lease_size(now)
        ready = self.state.ready_at(self._worth_asking(units), now)
        if ready > now:
            return ready - now
        request, key, offset, decided = await self._ask(units, now)
        if decided is not None and decided.offset != offset:
            # Not our request's lease: the id was used before under this name. Never spend
            # another incarnation's lease; ask again under an id after every one seen.
            log.warning(
                "lease id already in the ledger, asking again",
                extra={"event": "lease_id_reused", "key": key},
            )
            return 0.0
        granted = decided.granted if decided is not None else 0
        start = decided.start if decided is not None else now
        if granted < units:
            # Everyone counts what was asked until this is in the log: spend only after it.
            settle = Settle(self.replica, request.lease, granted, start)
            await self._ledger.append(key, encode(settle))
        if granted > 0:
            self._lease = _Lease(key, request.lease, start, granted)
            if not self.health()[0]:
                self._retire(self._lease)  # our clock cannot be trusted to spend it
        return 0.0

    def _lease_size(self, now: float) -> int:
        """About DEMAND_SECONDS of recent demand, at most a fair share of the free budget."""
        while self._recent and self._recent[0] <= now - DEMAND_SECONDS:
            self._recent.popleft()
        demand = self._waiters + len(self._recent)
        sharers = self.state.active_replicas(now - 2 * self.rule.ttl) | {self.replica}
        share = math.ceil(self.state.free() / len(sharers))
        units = max(1, min(demand, share))
        return min(units, self.rule.burst) if self.rule.smooth else units

    def _worth_asking(self, units: int) -> int:
        """Smooth pacing waits for about a second of tokens rather than asking for one."""
        if not self.rule.smooth:
            return 1
        return min(units, max(1, math.ceil(self.rule.rate * DEMAND_SECONDS)))

    async def _until_applied(self, offset: int) -> None:
        while self.state.offset < offset:
            await self._tick.wait()

    async def _wait(self, delay: float, tick: asyncio.Event) -> None:
        """Sleep `delay`, or less if the ledger moved (budget may have been given back)."""
        started = self._clock()
        sleeper = asyncio.ensure_future(self._sleep(delay))
        moved = asyncio.ensure_future(tick.wait())
        try:
            await asyncio.wait({sleeper, moved}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            moved.cancel()
        self.waited_seconds += max(0.0, self._clock() - started)

    def _retire(self, lease: _Lease) -> None:
        """Tell everyone how much of the lease was spent and when: the rest is free again."""
        if self._lease is lease:
            self._lease = None
        last = lease.last if lease.last is not None else lease.start
        release = Release(self.replica, lease.lease, lease.start, lease.spent, last)
        self._spawn(self._ledger.append(lease.key, encode(release)))

    # --- housekeeping -----------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        """Give back an idle lease on time; tombstone leases that left the window."""
        while True:
            # Real time on purpose: a fake sleep that returns at once would spin here.
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            self._to_wall = self._wall() - self._clock()  # follow a clock NTP stepped
            now = self.now()
            lease = self._lease
            idle = lease is not None and not self._lock.locked()
            if idle and lease is not None and now >= lease.start + self.rule.ttl:
                self._retire(lease)
            if not self.health()[0]:
                self._probe(now)
            for key in self._tombstones(now):
                await self._ledger.append(key, None)

    def _tombstones(self, now: float) -> list[str]:
        """Our own expired leases and holds, and those of replicas gone for a window if we are
        the first live replica by name (so one replica, not all, cleans up after the dead)."""
        self.state.expire(self.state.clock)
        live = self.state.active_replicas(now - self.rule.window) | {self.replica}
        janitor = min(live) == self.replica
        keys, self.state.expired = self.state.expired, []
        keys += self.state.expired_holds(now)
        return [k for k in keys if _owner(k) == self.replica or (janitor and _owner(k) not in live)]

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- observation ------------------------------------------------------------------------

    def snapshot(self) -> QuotaSnapshot:
        """Used by all replicas and by this one, the recent rate, when the oldest lease leaves."""
        now = self.now()
        span = min(60.0, self.window)
        frees_at = self.state.frees_at(now)
        return QuotaSnapshot(
            limit=self.limit,
            window_seconds=self.window,
            used=self.state.used(now),
            used_by_this_replica=self.state.used(now, self.replica),
            rate_per_second=self.state.granted_since(now - span) / span,
            frees_at=frees_at - self._to_wall if frees_at is not None else None,
        )


def _owner(key: str) -> str:
    """The replica in `lease:<replica>:<id>` or `hold:<replica>`."""
    return key.split(":")[1] if ":" in key else ""


def rule_from(settings: Settings) -> QuotaRule:
    q = settings.quota
    return QuotaRule(
        q.limit,
        q.window_seconds,
        q.pacing == "smooth",
        q.burst_allowance(),
        hold_max=settings.target.retry_after_max_seconds,
    )


async def open_shared_gate(
    settings: Settings, kafka_config: dict[str, Any], clock: Clock
) -> SharedQuotaGate:
    """The App's gate: the ledger topic (created if missing) read from its beginning."""
    ledger = KafkaLedgerLog(
        kafka_config,
        settings.ledger_topic(),
        settings.quota.window_seconds,
        create_topic=settings.kafka.create_topics,
    )
    gate = SharedQuotaGate(rule_from(settings), ledger, replica_id(), clock)
    await gate.start()
    log.info(
        "quota ledger open",
        extra={"event": "ledger_open", "topic": settings.ledger_topic(), "replica": gate.replica},
    )
    return gate
