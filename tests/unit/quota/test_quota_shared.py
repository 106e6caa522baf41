"""Replicas sharing a ledger in memory, on a fake clock: a day of quota in milliseconds."""

from __future__ import annotations

import asyncio
import math

import pytest

from consumer.quota.ledger import QuotaRule
from consumer.quota.log import MemoryLog
from consumer.quota.shared import SharedQuotaGate

pytestmark = pytest.mark.unit
DAY = 86_400.0
T0 = 1_800_000_000.0


class FakeTime:
    """True time; each replica's clock may be skewed from it."""

    def __init__(self) -> None:
        self.now = T0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        # Let what is already scheduled run first (ledger appends): a real sleep would be
        # cut short by them; this one is cancelled before time moves.
        for _ in range(3):
            await asyncio.sleep(0)
        self.now += seconds


async def replica(
    t: FakeTime, ledger: MemoryLog, rule: QuotaRule, name: str, skew: float = 0.0
) -> SharedQuotaGate:
    """A gate whose wall clock is `skew` seconds off true time."""
    gate = SharedQuotaGate(
        rule, ledger, name, clock=t.clock, wall=lambda: t.now + skew, sleep=t.sleep
    )
    await gate.start()
    return gate


def max_in_window(times: list[float], window: float) -> int:
    times, best, lo = sorted(times), 0, 0
    for hi, at in enumerate(times):
        while times[lo] <= at - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def test_a_full_day_spends_the_limit_then_waits_for_the_window_edge() -> None:
    t = FakeTime()
    gate = await replica(t, MemoryLog(), QuotaRule(limit=1000, window=DAY), "a")
    for _ in range(1000):
        await gate.acquire()
    assert t.now == T0 and gate.snapshot().remaining == 0
    await gate.acquire()
    # The day's first sends leave Target's window a day later (plus transit and skew margins).
    assert T0 + DAY <= t.now <= T0 + DAY + 1
    assert gate.waited_seconds == pytest.approx(t.now - T0)
    await gate.close()


async def test_three_replicas_never_exceed_the_limit_in_any_window() -> None:
    t = FakeTime()
    ledger = MemoryLog()
    rule = QuotaRule(limit=50, window=3600.0)
    gates = [
        await replica(t, ledger, rule, f"r{i}", skew=s) for i, s in enumerate((0, 0.05, -0.05))
    ]
    sends: list[float] = []
    turn = 0
    while t.now < T0 + 2 * DAY:
        await gates[turn % 3].acquire()
        sends.append(t.now)
        turn += 1
        t.now += 7.3  # steady demand well above the limit
    assert max_in_window(sends, 3600.0) <= 50
    # Leases are given back as soon as spent: the budget is nearly all used.
    assert len(sends) >= 0.95 * 50 * (2 * DAY / 3600.0)


async def test_a_restarted_replica_restores_the_window_from_the_ledger() -> None:
    t = FakeTime()
    ledger = MemoryLog()
    rule = QuotaRule(limit=100, window=600.0)
    first = await replica(t, ledger, rule, "first")
    for _ in range(100):
        await first.acquire()
    ledger.detach(first._on_records)  # kill -9: no release, no close
    t.now += 5
    second = await replica(t, ledger, rule, "second")
    snap = second.snapshot()
    assert (snap.used, snap.used_by_this_replica) == (100, 0)
    await second.acquire()
    # Only once the dead replica's last lease (it never said how much it spent) has left.
    assert t.now >= T0 + 600.0
    assert second.snapshot().used_by_this_replica == 1


async def test_skewed_clocks_within_the_bound_cannot_overshoot() -> None:
    t = FakeTime()
    ledger = MemoryLog()
    rule = QuotaRule(limit=20, window=10.0)
    fast = await replica(t, ledger, rule, "fast", skew=+rule.skew)
    slow = await replica(t, ledger, rule, "slow", skew=-rule.skew)
    sends: list[float] = []
    for i in range(400):
        await (fast if i % 2 else slow).acquire()
        sends.append(t.now)
        t.now += 0.05
    # Target's clock is true time: the record it keeps never has more than the limit.
    assert max_in_window(sends, 10.0) <= 20


async def test_a_replica_whose_clock_is_ahead_delays_the_others_instead_of_overshooting() -> None:
    t = FakeTime()
    ledger = MemoryLog()
    rule = QuotaRule(limit=10, window=60.0)
    ahead = await replica(t, ledger, rule, "ahead", skew=+3.0)
    behind = await replica(t, ledger, rule, "behind")
    await ahead.acquire()
    await behind.acquire()
    # behind's lease starts at ahead's (later) clock time: it waited for its own clock to get there.
    assert t.now == pytest.approx(T0 + 3.0)


async def test_a_hold_written_by_one_replica_stops_the_others() -> None:
    t = FakeTime()
    ledger = MemoryLog()
    rule = QuotaRule(limit=100, window=60.0)
    a, b = await replica(t, ledger, rule, "a"), await replica(t, ledger, rule, "b")
    a.hold(t.now + 30)  # a 429 with Retry-After: 30
    for _ in range(10):
        await ledger_settled()
    await b.acquire()
    assert t.now == pytest.approx(T0 + 30)


async def test_smooth_pacing_is_shared_by_all_replicas() -> None:
    t = FakeTime()
    ledger = MemoryLog()
    rule = QuotaRule(limit=86_400, window=DAY, smooth=True, burst=100)  # 1 unit a second
    a, b = await replica(t, ledger, rule, "a"), await replica(t, ledger, rule, "b")
    for i in range(100):
        await (a if i % 2 else b).acquire()
    # The burst, less what the two open leases hold until they are given back.
    assert t.now - T0 <= 5
    for i in range(400):
        await (a if i % 2 else b).acquire()
    # Together, the steady rate: 500 units = the burst + 400 s at 1 a second.
    assert 400 <= t.now - T0 <= 410


async def test_snapshot_reports_all_replicas_and_this_one() -> None:
    t = FakeTime()
    ledger = MemoryLog()
    rule = QuotaRule(limit=100, window=60.0)
    a, b = await replica(t, ledger, rule, "a"), await replica(t, ledger, rule, "b")
    for _ in range(30):
        await a.acquire()
    for _ in range(10):
        await b.acquire()
    # Granted units count from the lease's start, spent or not, until the lease is released.
    snap = b.snapshot()
    assert snap.used == snap.used_by_this_replica + a.snapshot().used_by_this_replica
    assert snap.used_by_this_replica >= 10 and snap.used >= 40
    await a.close()
    await b.close()
    snap = b.snapshot()
    assert (snap.used, snap.used_by_this_replica, snap.remaining) == (40, 10, 60)
    assert snap.rate_per_second == pytest.approx(40 / 60.0)
    assert snap.frees_at is not None and T0 + 60 < snap.frees_at < T0 + 61
    assert math.isinf(
        SharedQuotaGate(rule, MemoryLog(), "c", t.clock).snapshot().exhaustion_eta_seconds
    )


async def test_close_gives_back_what_was_not_spent() -> None:
    t = FakeTime()
    ledger = MemoryLog()
    rule = QuotaRule(limit=100, window=60.0)
    a = await replica(t, ledger, rule, "a")
    a._waiters = 49  # as if 50 sends were waiting: the lease is sized for them
    await a.acquire()
    assert a.snapshot().used == 50
    await a.close()
    b = await replica(t, ledger, rule, "b")
    assert b.snapshot().used == 1


async def ledger_settled() -> None:
    """Let spawned appends (holds, releases) run."""
    await asyncio.sleep(0)
