"""The quota at its edges: clocks off, ids reused, bad ledger records, absurd holds, a full day.

Several replicas run as tasks in virtual time (`tests/fakes/virtual_time.py`) over a ledger that
delivers late and in different batches to each reader (`tests/fakes/lagging_log.py`), stamped
by the "broker" with true time. Sends are judged on true time: the count in every window of the
configured length, never more than the limit.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re

import pytest
from prometheus_client import CollectorRegistry

from consumer.metrics import Metrics
from consumer.quota.ledger import LedgerState, QuotaRule
from consumer.quota.log import MemoryLog
from consumer.quota.messages import (
    Hold,
    LeaseRequest,
    Record,
    RecordError,
    Release,
    Settle,
    decode,
    encode,
    key_of,
)
from consumer.quota.publisher import publish_forever
from consumer.quota.shared import SharedQuotaGate, replica_id
from tests.fakes.lagging_log import LaggingLog
from tests.fakes.virtual_time import VirtualTime

pytestmark = pytest.mark.unit
T0 = 1_800_000_000.0


def max_in_window(times: list[float], window: float) -> int:
    """The most sends in any window (t - window, t] of true time."""
    times, best, lo = sorted(times), 0, 0
    for hi, at in enumerate(times):
        while times[lo] <= at - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def frozen(_: float) -> None:
    """A sleep that never ends: a gate that must wait for the ledger, never for time."""
    await asyncio.get_running_loop().create_future()


async def started(
    t: VirtualTime, ledger: LaggingLog | MemoryLog, rule: QuotaRule, name: str, skew: float = 0.0
) -> SharedQuotaGate:
    gate = SharedQuotaGate(
        rule, ledger, name, clock=t.clock, wall=lambda: t.now + skew, sleep=t.sleep
    )
    await gate.start()
    return gate


async def sender(gate: SharedQuotaGate, t: VirtualTime, sends: list[float]) -> None:
    """Unbounded demand: every unit granted is sent at once (true time recorded)."""
    while True:
        await gate.acquire()
        sends.append(t.now)


# --- 4: clock skew -------------------------------------------------------------------------


@pytest.mark.parametrize("ahead", [3.0, 120.0])
async def test_a_replica_whose_clock_is_ahead_sends_nothing_and_stalls_nobody(
    ahead: float,
) -> None:
    t = VirtualTime(T0)
    ledger = LaggingLog(t.clock, lags=(0, 3, 7))
    rule = QuotaRule(limit=10, window=60.0)
    fast = await started(t, ledger, rule, "fast", skew=ahead)
    good = [await started(t, ledger, rule, name, skew=s) for name, s in (("a", 0.0), ("b", 0.05))]
    sends: dict[str, list[float]] = {"fast": [], "a": [], "b": []}
    tasks = [asyncio.ensure_future(sender(g, t, sends[g.replica])) for g in (fast, *good)]
    await t.run_until(T0 + 600.0)
    for task in tasks:
        task.cancel()
    ledger.stop()
    everyone = [at for times in sends.values() for at in times]
    # Target's record (true time) never holds more than the limit...
    assert max_in_window(everyone, rule.window) <= rule.limit
    # ...the skewed replica sent nothing, says why, and the others were not held back by it.
    assert sends["fast"] == []
    ok, reason = fast.health()
    assert not ok and f"+{ahead:.1f}" in reason
    assert fast.skew_seconds == pytest.approx(ahead, abs=0.01)
    assert min(sends["a"] + sends["b"]) < T0 + 1.0
    assert len(sends["a"]) + len(sends["b"]) >= 0.9 * rule.limit * 600.0 / rule.window
    assert all(g.health() == (True, "ok") for g in good)


def test_no_clock_moves_anothers_lease_start_beyond_the_margin() -> None:
    rule = QuotaRule(limit=100, window=60.0)
    state = LedgerState(rule)
    # "fast" stamps its request 120 s ahead of the broker; "b" asks a second later, honestly.
    state.apply(0, "lease:fast:1", LeaseRequest("fast", 1, 10, T0 + 120.0), stamp=T0)
    state.apply(1, "lease:b:1", LeaseRequest("b", 1, 10, T0 + 1.0), stamp=T0 + 1.0)
    fast, b = state.decision("lease:fast:1"), state.decision("lease:b:1")
    assert fast is not None and fast.start <= T0 + rule.skew
    assert b is not None and b.start == pytest.approx(T0 + 1.0)
    # A clock far behind cannot end its own lease early either: `last` is bounded below.
    state.apply(2, "lease:slow:1", LeaseRequest("slow", 1, 10, T0 - 300.0), stamp=T0 + 2.0)
    state.apply(3, "lease:slow:1", Release("slow", 1, T0 - 300.0, 10, T0 - 299.0), stamp=T0 + 2.5)
    slow = state.decision("lease:slow:1")
    assert slow is not None and slow.end >= rule.end(T0 + 2.5 - rule.skew)


async def test_a_clock_put_right_makes_the_replica_ready_and_send_again() -> None:
    t = VirtualTime(T0)
    ledger = LaggingLog(t.clock, lags=(2,))
    rule = QuotaRule(limit=10, window=60.0)
    skew = [5.0]
    gate = SharedQuotaGate(
        rule, ledger, "r", clock=t.clock, wall=lambda: t.now + skew[0], sleep=t.sleep
    )
    await gate.start()
    waiting = asyncio.ensure_future(gate.acquire())
    await t.run_until(T0 + 10.0)
    assert not waiting.done() and not gate.health()[0]
    skew[0] = 0.0
    gate._to_wall = 0.0  # what housekeeping does once NTP stepped the clock back
    await t.run_until(T0 + 20.0)
    assert waiting.done() and gate.health() == (True, "ok")
    ledger.stop()


# --- 5 (the ledger's part): holds expire ---------------------------------------------------


@pytest.mark.parametrize("until", [math.inf, 1e12, 253_402_300_799.0])  # year 9999
async def test_an_absurd_hold_lasts_at_most_the_cap_then_is_tombstoned(until: float) -> None:
    t = VirtualTime(T0)
    ledger = LaggingLog(t.clock, lags=(1,))
    rule = QuotaRule(limit=100, window=60.0, hold_max=3600.0)
    gate = await started(t, ledger, rule, "b")
    await ledger.append("hold:x", encode(Hold("x", until)))  # another replica's, or a foreign one
    await t.run_until(T0)
    assert gate.state.hold_until == T0 + 3600.0
    sent = asyncio.ensure_future(gate.acquire())
    await t.run_until(T0 + 3601.0)
    assert sent.done()
    assert t.now >= T0 + 3600.0
    # Expired holds leave the state, and the first live replica tombstones a departed one's.
    assert "hold:x" in gate._tombstones(t.now) and gate.state.holds == {}
    ledger.stop()


async def test_a_local_hold_is_capped_too() -> None:
    t = VirtualTime(T0)
    rule = QuotaRule(limit=100, window=60.0, hold_max=3600.0)
    gate = await started(t, MemoryLog(), rule, "a")
    gate.hold(math.inf)
    await asyncio.sleep(0)
    assert gate._hold_until == T0 + 3600.0 and gate.state.hold_until == T0 + 3600.0


# --- 6: ids unique per incarnation ------------------------------------------------------------


def test_replica_ids_carry_128_random_bits() -> None:
    first, second = replica_id(), replica_id()
    assert first != second
    assert re.fullmatch(r".+-\d+-[0-9a-f]{32}", first)


async def test_a_restart_under_the_same_name_never_spends_the_dead_ones_lease() -> None:
    t = VirtualTime(T0)
    ledger = MemoryLog(t.clock)
    rule = QuotaRule(limit=100, window=600.0)
    dead = await started(t, ledger, rule, "pod-7-beef")
    dead._waiters = 59  # one lease of 60, as a burst of waiting sends gets
    for _ in range(59):
        await dead.acquire()
    ledger.detach(dead._on_records)  # kill -9 before the last unit: no release
    again = await started(t, ledger, rule, "pod-7-beef")  # the same name (a collision)
    sends: list[float] = []
    task = asyncio.ensure_future(sender(again, t, sends))
    await t.run_until(T0 + 300.0)
    task.cancel()
    # Within one window: the dead one's 59 sends, and only what was left (40) for the new one.
    assert 59 + len(sends) <= rule.limit
    assert len(sends) >= 35  # and it did get the rest


# --- 9: one bad record costs only itself --------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "lease", "replica": "x", "lease": 1, "units": "5", "at": T0},
        {"kind": "lease", "replica": "x", "lease": 1, "units": 5, "at": None},
        {"kind": "lease", "replica": "x", "lease": True, "units": 5, "at": T0},
        {"kind": "lease", "replica": "x", "lease": 1, "units": -5, "at": T0},
        {"kind": "release", "replica": "x", "lease": 1, "start": T0, "spent": 1, "last": "later"},
        {"kind": "settle", "replica": 7, "lease": 1, "units": 1, "start": T0},
        {"kind": "hold", "replica": "x", "until": "soon"},
        {"kind": "hold", "replica": "x", "until": math.nan},
    ],
)
def test_invalid_records_are_refused_by_decode(body: dict[str, object]) -> None:
    with pytest.raises(RecordError):
        decode(json.dumps(body).encode())


async def test_a_bad_record_in_a_batch_is_skipped_and_counted_and_the_rest_applied() -> None:
    t = VirtualTime(T0)
    gate = await started(t, MemoryLog(), QuotaRule(limit=100, window=60.0), "me")
    good: list[Record] = [LeaseRequest("a", 1, 10, T0), LeaseRequest("b", 1, 20, T0 + 1)]
    bad = json.dumps({"kind": "lease", "replica": "x", "lease": 1, "units": "9", "at": T0})
    batch = [
        (10, key_of(good[0]), encode(good[0]), None),
        (11, "lease:x:1", bad.encode(), None),
        (12, "lease:x:2", b"\xff not json", None),
        (13, key_of(good[1]), encode(good[1]), None),
    ]
    gate._on_records(batch)
    assert gate.ledger_bad_records == 2
    assert gate.state.offset == 13
    assert gate.state.used(T0 + 2) == 30
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    publishing = asyncio.ensure_future(publish_forever(gate, metrics))
    await asyncio.sleep(0)
    publishing.cancel()
    bad_total = registry.get_sample_value("profile_consumer_quota_ledger_bad_records_total")
    assert bad_total == 2
    assert registry.get_sample_value("profile_consumer_clock_skew_seconds") == 0.0


# --- 10: snapshot() is incremental ----------------------------------------------------------


def random_ledger(seed: int, leases: int) -> list[tuple[Record, float]]:
    """Requests, settles and releases from three replicas in log order, with broker stamps."""
    rng = random.Random(seed)
    out: list[tuple[Record, float]] = []
    now = T0
    for i in range(leases):
        now += rng.expovariate(2.0)
        who = f"r{i % 3}"
        asked = rng.randint(1, 40)
        out.append((LeaseRequest(who, i, asked, now + rng.uniform(-0.05, 0.05)), now))
        kind = rng.random()
        if kind < 0.3:
            out.append((Settle(who, i, rng.randint(0, asked), now), now + 0.01))
        elif kind < 0.8:
            out.append((Release(who, i, now, rng.randint(0, asked), now + 0.3), now + 0.4))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_the_incremental_view_agrees_with_a_full_scan_at_every_second(seed: int) -> None:
    rule = QuotaRule(limit=400, window=30.0)
    state = LedgerState(rule)
    records = random_ledger(seed, 600)
    observed = records[0][1]
    for offset, (record, stamp) in enumerate(records):
        state.apply(offset, key_of(record), record, stamp)
        while observed + 1.0 <= stamp:  # the publisher's once-a-second look
            observed += 1.0
            live = [lease for lease in state._leases.values() if lease.end > observed]
            assert state.used(observed) == sum(lease.counted for lease in live)
            assert state.used(observed, "r1") == sum(
                lease.counted for lease in live if lease.replica == "r1"
            )
            assert state.frees_at(observed) == min((x.end for x in live), default=None)
            since = observed - 20.0
            recent = [x for x in state._leases.values() if x.start > since]
            assert state.granted_since(since) == sum(x.counted for x in recent)


async def test_snapshot_never_walks_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    t = VirtualTime(T0)
    rule = QuotaRule(limit=1_000_000, window=86_400.0)
    gate = await started(t, MemoryLog(), rule, "observer")
    for offset, (record, stamp) in enumerate(random_ledger(7, 3000)):
        gate.state.apply(offset, key_of(record), record, stamp)
    t.now = gate.state.clock
    expected = gate.snapshot()

    def scan(*_: object) -> object:
        raise AssertionError("snapshot() scanned every lease")

    monkeypatch.setattr(gate.state, "live", scan)
    monkeypatch.setattr(gate.state, "_by_end", scan)
    monkeypatch.setattr(gate.state, "_leases", _NoScan(gate.state._leases))
    for _ in range(3):
        t.now += 1.0
        snap = gate.snapshot()
    assert snap.used == expected.used and snap.limit == rule.limit


class _NoScan(dict[str, object]):
    """The lease table, with iteration over it forbidden."""

    def values(self) -> object:  # type: ignore[override]
        raise AssertionError("snapshot() scanned every lease")

    def __iter__(self) -> object:  # type: ignore[override]
        raise AssertionError("snapshot() scanned every lease")
