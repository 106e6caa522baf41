"""The rolling window with a fake clock: a full 24 h in milliseconds."""

import math

import pytest

from consumer.quota import QuotaGate, WindowCounter

pytestmark = pytest.mark.unit
DAY = 86_400.0


class FakeTime:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def gate(t: FakeTime, limit: int, window: float = DAY, pacing: str = "eager", burst=None):  # type: ignore[no-untyped-def]
    return QuotaGate(limit, window, pacing, burst, clock=t.clock, sleep=t.sleep)


async def test_eager_spends_the_limit_then_waits_for_the_window_edge() -> None:
    t = FakeTime()
    g = gate(t, limit=1000)
    for _ in range(1000):
        await g.acquire()
    assert t.slept == [] and g.snapshot().remaining == 0
    started = t.now
    await g.acquire()
    # The first second's sends leave the window a full day (plus the bucket) later.
    assert started + DAY <= t.now <= started + DAY + 1
    assert g.snapshot().used == 1


async def test_never_more_than_limit_in_any_window_over_two_days() -> None:
    t = FakeTime()
    g = gate(t, limit=50, window=3600.0)
    sends: list[float] = []
    while t.now < 1_000_000.0 + 2 * 86_400:
        await g.acquire()
        sends.append(t.now)
        t.now += 7.3  # steady demand well above the limit
    lo = 0
    for hi, at in enumerate(sends):
        while sends[lo] <= at - 3600.0:
            lo += 1
        assert hi - lo + 1 <= 50


async def test_smooth_pacing_allows_the_burst_then_the_steady_rate() -> None:
    t = FakeTime()
    g = gate(t, limit=86_400, pacing="smooth", burst=100)  # 1 update/s steady
    for _ in range(100):
        await g.acquire()
    assert t.slept == []
    start = t.now
    for _ in range(10):
        await g.acquire()
    assert t.now - start == pytest.approx(10.0)


async def test_a_hold_stops_every_send_until_it_passes() -> None:
    t = FakeTime()
    g = gate(t, limit=10)
    g.hold(t.now + 30)
    await g.acquire()
    assert t.now == pytest.approx(1_000_030.0)


def test_restart_edge_counts_a_bucket_until_it_fully_left() -> None:
    w = WindowCounter(10.0)
    w.add(100.9)
    w.expire(110.5)
    assert w.total == 1  # 100.9 + 10 > 110.5, conservatively counted to 111
    w.expire(111.0)
    assert w.total == 0


def test_snapshot_eta_is_infinite_when_idle() -> None:
    t = FakeTime()
    g = gate(t, limit=10)
    assert math.isinf(g.snapshot().exhaustion_eta_seconds)
