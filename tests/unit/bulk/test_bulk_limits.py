"""The bulk limits: many units at once from the gates, shared by replicas, apart from single."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from consumer.bulk.limits import (
    BulkLimits,
    calls_rule,
    ledger_topics,
    local_limits,
    rows_rule,
)
from consumer.config import Settings
from consumer.metrics import Metrics
from consumer.quota import QuotaGate
from consumer.quota.ledger import QuotaRule
from consumer.quota.log import MemoryLog
from consumer.quota.shared import SharedQuotaGate
from tests.fakes.fake_time import FakeTime
from tests.fakes.lagging_log import LaggingLog

pytestmark = pytest.mark.unit
T0 = 1_800_000_000.0
DAY = 86_400.0


async def shared(
    t: FakeTime, ledger: MemoryLog | LaggingLog, rule: QuotaRule, name: str
) -> SharedQuotaGate:
    gate = SharedQuotaGate(rule, ledger, name, clock=t.clock, wall=t.clock, sleep=t.sleep)
    await gate.start()
    return gate


def test_rules_and_topics_follow_the_settings() -> None:
    settings = Settings.model_validate(
        {"kafka": {"group_id": "g"}, "bulk": {"calls_per_minute": 7, "daily_rows": 900}}
    )
    assert (calls_rule(settings).limit, calls_rule(settings).window) == (7, 60.0)
    assert (rows_rule(settings).limit, rows_rule(settings).window) == (900, DAY)
    assert not calls_rule(settings).smooth and not rows_rule(settings).smooth
    assert ledger_topics(settings) == {"calls": "g.quota.bulk-calls", "rows": "g.quota.bulk-rows"}


async def test_local_gate_takes_many_units_at_once_and_waits_for_room() -> None:
    t = FakeTime(T0)
    gate = QuotaGate(1000, DAY, "eager", clock=t.clock, sleep=t.sleep)
    await gate.acquire(600)
    t.now += 10
    await gate.acquire(400)
    assert gate.snapshot().used == 1000 and t.now == T0 + 10
    await gate.acquire(300)  # waits until the first 600 leave the window
    assert t.now >= T0 + DAY
    assert gate.snapshot().used == 700
    with pytest.raises(ValueError):
        await gate.acquire(1001)
    with pytest.raises(ValueError):
        await gate.acquire(0)


async def test_local_smooth_gate_waits_for_at_most_burst_tokens() -> None:
    t = FakeTime(T0)
    gate = QuotaGate(8640, DAY, "smooth", burst=10, clock=t.clock, sleep=t.sleep)  # 0.1/s
    await gate.acquire(10)
    started = t.now
    await gate.acquire(50)  # more than burst: waits for a full bucket, then goes into debt
    assert t.now - started == pytest.approx(100.0)
    await gate.acquire()  # pays the debt back first
    assert t.now - started >= 100.0 + 400.0


async def test_shared_gates_grant_whole_batches_within_the_day() -> None:
    t = FakeTime(T0)
    ledger = MemoryLog(clock=t.clock)
    rule = QuotaRule(limit=1000, window=DAY)
    a, b = await shared(t, ledger, rule, "a"), await shared(t, ledger, rule, "b")
    taken: list[tuple[str, float]] = []

    async def take(gate: SharedQuotaGate, name: str) -> None:
        for _ in range(3):
            await gate.acquire(300)
            taken.append((name, t.now))

    await asyncio.gather(take(a, "a"), take(b, "b"))
    # 6 batches of 300 over a 1000-row day: 3 in the first window, the rest a day later.
    first_day = [at for _, at in taken if at < T0 + DAY]
    assert len(first_day) == 3 and len(taken) == 6
    assert a.snapshot().used == b.snapshot().used
    for gate in (a, b):
        await gate.close()


async def test_a_partial_grant_is_given_back_whole() -> None:
    """Two replicas ask for 70 of 100 at once: one gets 70, the other's partial grant of 30
    is settled to nothing, and it waits for the window rather than sit on 30."""
    t = FakeTime(T0)
    ledger = LaggingLog(t.clock, lags=(3, 3))  # neither has read the other's request
    rule = QuotaRule(limit=100, window=60.0)
    a, b = await shared(t, ledger, rule, "a"), await shared(t, ledger, rule, "b")
    done: list[float] = []

    async def take(gate: SharedQuotaGate) -> None:
        await gate.acquire(70)
        done.append(t.now)

    await asyncio.gather(take(a), take(b))
    assert done[0] == T0 and done[1] >= T0 + 60.0
    settles = [v for _, _, v, _ in ledger.records if v is not None and b'"settle"' in v]
    assert settles and all(b'"units":0' in v for v in settles)
    for gate in (a, b):
        await gate.close()
    ledger.stop()


async def test_single_unit_shared_behaviour_is_unchanged() -> None:
    t = FakeTime(T0)
    gate = await shared(t, MemoryLog(clock=t.clock), QuotaRule(limit=5, window=60.0), "a")
    for _ in range(5):
        await gate.acquire()
    assert gate.snapshot().used == 5 and t.now == T0
    await gate.acquire()
    assert t.now > T0 + 60.0
    await gate.close()


async def test_limits_publish_both_budgets() -> None:
    t = FakeTime(T0)
    settings = Settings.model_validate({"bulk": {"calls_per_minute": 5, "daily_rows": 1000}})
    limits: BulkLimits = local_limits(settings, clock=t.clock, sleep=t.sleep)
    await limits.rows.acquire(400)
    await limits.calls.acquire()
    metrics = Metrics(CollectorRegistry())
    limits.publish(metrics.bulk, {})
    sample = metrics.registry.get_sample_value
    assert sample("profile_consumer_bulk_budget_remaining", {"budget": "rows"}) == 600
    assert sample("profile_consumer_bulk_budget_remaining", {"budget": "calls"}) == 4
    assert sample("profile_consumer_bulk_budget_limit", {"budget": "calls"}) == 5
    assert limits.health() == (True, "ok")
