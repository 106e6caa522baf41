"""The quota gate every replica shares: it spends only budget leased through the ledger.

`acquire()` takes one unit of this replica's current lease. When the lease is spent, expired,
or there is none, it asks the ledger for a new one sized to its recent demand (at most its share
of what is free), waits until it has read its own request back, and learns from the replay rule
how many units it got. It spends nothing the ledger has not granted, so replicas cannot overshoot
between ledger reads. No budget, or a hold: it waits, and the pipeline's bounded buffer pauses
the partitions. Time is the injected `clock` (the caller's, for `hold`) plus a fixed offset to
wall time, the ledger's time.
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
from consumer.quota.ledger import LedgerState, QuotaRule
from consumer.quota.local import Clock, QuotaGate, QuotaSnapshot, Sleep
from consumer.quota.log import KafkaLedgerLog, LedgerLog, LogRecord
from consumer.quota.messages import (
    Hold,
    LeaseRequest,
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


@dataclass(slots=True)
class _Lease:
    key: str
    lease: int
    start: float
    granted: int
    spent: int = 0
    last: float | None = None


def replica_id() -> str:
    """Unique per process: the pod name (hostname), the pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


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
        super().__init__(rule.limit, rule.window, pacing, rule.burst, clock=clock, sleep=sleep)
        self.rule = rule
        self.replica = replica
        self.state = LedgerState(rule)
        self._ledger = ledger
        self._to_wall = wall() - clock()  # ledger time = clock() + this
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
        for offset, key, value in records:
            record = None
            if value is not None:
                try:
                    record = decode(value)
                except RecordError as exc:
                    log.warning(str(exc), extra={"event": "ledger_record_ignored"})
            self.state.apply(offset, key, record)
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    # --- the gate ---------------------------------------------------------------------------

    def now(self) -> float:
        """Ledger time (wall clock seconds)."""
        return self._clock() + self._to_wall

    def hold(self, until: float) -> None:
        """Nobody, on any replica, sends before `until` (this gate's clock)."""
        super().hold(until)
        wall_until = until + self._to_wall
        if wall_until > self.state.hold_until:
            hold = Hold(self.replica, wall_until)
            self._spawn(self._ledger.append(key_of(hold), encode(hold)))

    async def acquire(self) -> None:
        """Wait until this replica holds a granted unit, then spend it."""
        self._waiters += 1
        try:
            async with self._lock:
                await self._take_one()
        finally:
            self._waiters -= 1

    async def _take_one(self) -> None:
        while True:
            tick = self._tick
            now = self.now()
            delay = self._blocked_for(now)
            if delay <= 0 and self._lease is not None:
                self._spend(self._lease, now)
                return
            if delay <= 0:
                delay = await self._obtain(now)
            if delay > 0:
                await self._wait(delay, tick)

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

    def _spend(self, lease: _Lease, now: float) -> None:
        lease.spent += 1
        lease.last = now
        self._recent.append(now)
        if lease.spent >= lease.granted:
            self._retire(lease)  # at once: its units leave the window from the last send

    async def _obtain(self, now: float) -> float:
        """Ask the ledger for a lease; 0 once one was granted, else seconds to wait."""
        units = self._lease_size(now)
        ready = self.state.ready_at(self._worth_asking(units), now)
        if ready > now:
            return ready - now
        self._next_id += 1
        request = LeaseRequest(self.replica, self._next_id, units, now)
        key = key_of(request)
        await self._until_applied(await self._ledger.append(key, encode(request)))
        decided = self.state.decision(key)
        granted = decided.granted if decided is not None else 0
        start = decided.start if decided is not None else now
        if granted < units:
            # Everyone counts what was asked until this is in the log: spend only after it.
            settle = Settle(self.replica, request.lease, granted, start)
            await self._ledger.append(key, encode(settle))
        if granted > 0:
            self._lease = _Lease(key, request.lease, start, granted)
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
            now = self.now()
            lease = self._lease
            idle = lease is not None and not self._lock.locked()
            if idle and lease is not None and now >= lease.start + self.rule.ttl:
                self._retire(lease)
            self.state.expire(self.state.clock)
            for key in self._tombstones(now):
                await self._ledger.append(key, None)

    def _tombstones(self, now: float) -> list[str]:
        """Our own expired leases, and those of replicas gone for a window if we are the
        first live replica by name (so one replica, not all, cleans up after the dead)."""
        live = self.state.active_replicas(now - self.rule.window) | {self.replica}
        janitor = min(live) == self.replica
        keys, self.state.expired = self.state.expired, []
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
    return key.split(":")[1] if key.count(":") >= 2 else ""


def rule_from(settings: Settings) -> QuotaRule:
    q = settings.quota
    return QuotaRule(q.limit, q.window_seconds, q.pacing == "smooth", q.burst_allowance())


async def open_shared_gate(
    settings: Settings, kafka_config: dict[str, Any], clock: Clock
) -> SharedQuotaGate:
    """The App's gate: the ledger topic (created if missing) read from its beginning."""
    ledger = KafkaLedgerLog(kafka_config, settings.ledger_topic(), settings.quota.window_seconds)
    gate = SharedQuotaGate(rule_from(settings), ledger, replica_id(), clock)
    await gate.start()
    log.info(
        "quota ledger open",
        extra={"event": "ledger_open", "topic": settings.ledger_topic(), "replica": gate.replica},
    )
    return gate
