"""The bulk transport on a real broker and the simulator: batches, row failures, stuck batches,
the calls limit, and the switch from single updates to bulk and back."""

from __future__ import annotations

from typing import Any

import pytest

from consumer.bulk.bodies import BodyBudget
from devtools.samples import sample_events
from tests.bulk_helpers import bulk_done, bulk_settings
from tests.helpers import (
    assert_history_clean,
    committed,
    encoder,
    event_key,
    expected_profiles,
    headers_of,
    produce,
    read_all,
    running,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("processes", [0, 1], ids=["in-process", "decode-process"])
async def test_pinned_bulk_sends_every_profile_in_batches_and_commits(
    broker, simulator, topics, make_settings, processes
) -> None:
    other = {"pipeline__decode_processes": processes}
    settings = bulk_settings(make_settings, transport="bulk", other=other)
    enc = encoder(settings)
    events = sample_events(400, profiles=60, seed=11)
    ends = produce(
        broker.bootstrap, topics["topic"], ((event_key(e), enc.encode(e)) for e in events)
    )
    async with running(settings) as app:
        await wait_until(lambda: bulk_done(app, len(events), topics["topic"]), 45)
        batches = app.metrics.bulk.batches.labels("complete")._value.get()
    assert batches >= 1
    assert simulator.profiles() == expected_profiles(events)
    assert_history_clean(simulator, events)
    assert all(r.batch_id for r in simulator.received())  # nothing went through single updates
    assert committed(broker.bootstrap, topics["group"], topics["topic"]) == ends
    assert read_all(broker.bootstrap, topics["dlq"]) == []


async def test_bodies_are_held_within_the_body_budget_and_larger_ones_alone(
    broker, simulator, topics, make_settings, monkeypatch
) -> None:
    """bulk.max_rendered_bytes at its least (1 KiB, under most bodies): every batch still
    goes, and a body is taken only when nothing is held or when it fits (a spy on the real
    budget notes what was held whenever a body was taken)."""
    takes: list[tuple[int, int]] = []  # (bytes held then, body size)
    take = BodyBudget._take

    def spy(self: BodyBudget, size: int) -> None:
        takes.append((self.held, size))
        take(self, size)

    monkeypatch.setattr(BodyBudget, "_take", spy)
    settings = bulk_settings(make_settings, transport="bulk", max_rendered_bytes=1024)
    enc = encoder(settings)
    events = sample_events(400, profiles=60, seed=12)
    produce(broker.bootstrap, topics["topic"], ((event_key(e), enc.encode(e)) for e in events))
    async with running(settings) as app:
        await wait_until(lambda: bulk_done(app, len(events), topics["topic"]), 45)
        submitted = app.metrics.bulk.batches.labels("accepted")._value.get()
    assert submitted >= 2 and len(takes) == submitted
    assert any(size > 1024 for _, size in takes)  # the alone rule was exercised
    assert all(held == 0 or held + size <= 1024 for held, size in takes)
    assert simulator.profiles() == expected_profiles(events)
    assert_history_clean(simulator, events)


async def test_failed_rows_reach_the_dlq_with_their_row_status(
    broker, simulator, topics, make_settings
) -> None:
    settings = bulk_settings(make_settings, transport="bulk")
    enc = encoder(settings)
    events = sample_events(200, profiles=30, seed=4)
    failing = {e["customer"]["thirdPartyId"] for e in events[:5] if e["customer"]["thirdPartyId"]}
    assert failing
    simulator.configure(bulk_row_failure_ids=frozenset(failing))
    produce(broker.bootstrap, topics["topic"], ((event_key(e), enc.encode(e)) for e in events))
    doomed = [e for e in events if e["customer"]["thirdPartyId"] in failing]
    async with running(settings) as app:
        await wait_until(lambda: bulk_done(app, len(events), topics["topic"]), 45)
    dlq = read_all(broker.bootstrap, topics["dlq"], expected=len(doomed))
    assert len(dlq) >= len(doomed)
    originals = {bytes(m.value()) for m in dlq}
    assert {enc.encode(e) for e in doomed} <= originals  # the records as they came
    for message in dlq:
        h = headers_of(message)
        assert h["error.reason"] == "bulk_row_failed", h
        assert h["error.stage"] == "send"
        assert "row rejected" in h["error.message"] and "status=failed" in h["error.http_body"]


async def test_a_stuck_batch_is_resubmitted_then_dead_lettered(
    broker, simulator, topics, make_settings
) -> None:
    settings = bulk_settings(
        make_settings, transport="bulk", status_timeout_seconds=1.0, max_resubmits=1
    )
    enc = encoder(settings)
    events = sample_events(50, profiles=10, seed=8)
    simulator.configure(bulk_stuck_batches=100)
    ends = produce(
        broker.bootstrap, topics["topic"], ((event_key(e), enc.encode(e)) for e in events)
    )
    async with running(settings) as app:
        await wait_until(lambda: bulk_done(app, len(events), topics["topic"]), 45)
        resubmitted = app.metrics.bulk.batches.labels("resubmitted")._value.get()
        stuck = app.metrics.bulk.batches.labels("stuck")._value.get()
    assert resubmitted >= 1 and stuck >= 1
    dlq = read_all(broker.bootstrap, topics["dlq"], expected=len(events))
    assert len(dlq) == len(events)
    assert {headers_of(m)["error.reason"] for m in dlq} == {"bulk_stuck"}
    assert committed(broker.bootstrap, topics["group"], topics["topic"]) == ends
    assert simulator.profiles() == {}


async def test_auto_switches_to_bulk_under_a_burst_and_back_once_drained(
    broker, simulator, topics, make_settings
) -> None:
    # 10 single updates a second: a burst of 600 would need a minute, far over 3 s.
    settings = bulk_settings(
        make_settings,
        transport="auto",
        switch_after_seconds=3.0,
        other={"quota__limit": 600, "quota__window_seconds": 60.0},
    )
    enc = encoder(settings)
    burst = sample_events(600, profiles=80, seed=21)
    later = sample_events(20, profiles=80, seed=22)
    produce(broker.bootstrap, topics["topic"], ((event_key(e), enc.encode(e)) for e in burst))
    async with running(settings) as app:
        assert app is not None
        await wait_until(lambda: app.bulk is not None and app.bulk.mode.bulk, 20)
        await wait_until(lambda: bulk_done(app, len(burst), topics["topic"]), 45)
        await wait_until(lambda: not app.bulk.mode.bulk, 20)  # type: ignore[union-attr]
        produce(broker.bootstrap, topics["topic"], ((event_key(e), enc.encode(e)) for e in later))
        total = len(burst) + len(later)
        await wait_until(lambda: bulk_done(app, total, topics["topic"]), 30)
        switches = app.metrics.bulk.transport_switches
        assert switches.labels("bulk")._value.get() >= 1
        assert switches.labels("single")._value.get() >= 1
        assert [s.reason for s in app.bulk.mode.switches][:2] == ["backlog", "drained"]  # type: ignore[union-attr]
    received = simulator.received()
    assert any(r.batch_id for r in received) and not all(r.batch_id for r in received)
    assert simulator.profiles() == expected_profiles(burst + later)
    assert_history_clean(simulator, burst + later)


async def test_503_at_the_calls_limit_is_retried_and_never_dead_lettered(
    broker, simulator, topics, make_settings
) -> None:
    # Target's own limit far under ours: every call past 2 a second is answered 503.
    simulator.configure(bulk_calls_per_minute=2, bulk_calls_window_seconds=1.0)
    # Our own budget counts every attempt, 503s included: kept out of the way here.
    settings = bulk_settings(
        make_settings,
        transport="bulk",
        max_rows=10,
        max_batch_seconds=0.2,
        calls_per_minute=1000,
    )
    enc = encoder(settings)
    events = sample_events(300, profiles=90, seed=31)
    ends = produce(
        broker.bootstrap, topics["topic"], ((event_key(e), enc.encode(e)) for e in events)
    )
    async with running(settings) as app:
        await wait_until(lambda: bulk_done(app, len(events), topics["topic"]), 50)
        retried = app.metrics.bulk.retries.labels("submit", "http_503")._value.get()
    assert simulator.stats()["bulk_503s"] >= 1 and retried >= 1
    assert read_all(broker.bootstrap, topics["dlq"]) == []
    assert simulator.profiles() == expected_profiles(events)
    assert committed(broker.bootstrap, topics["group"], topics["topic"]) == ends


@pytest.mark.parametrize(
    ("calls", "rows", "budget"),
    [(4, 10_000, "calls"), (50, 22, "rows")],
    ids=["calls-a-minute", "rows-a-day"],
)
async def test_three_replicas_share_the_bulk_limits(
    broker, simulator, topics, make_settings, calls: int, rows: int, budget: str
) -> None:
    settings = bulk_settings(
        make_settings,
        transport="bulk",
        max_rows=5,
        max_batch_seconds=0.2,
        calls_per_minute=calls,
        daily_rows=rows,
    )
    enc = encoder(settings)
    events = sample_events(600, profiles=200, seed=41)  # far more than the budgets allow
    produce(broker.bootstrap, topics["topic"], ((event_key(e), enc.encode(e)) for e in events))
    async with running(settings) as a, running(settings) as b, running(settings) as c:
        apps = (a, b, c)
        await wait_until(lambda: all(app.source and app.source.joined for app in apps), 20)

        def waiting_on_budget(app: Any) -> bool:  # a submit has waited 2 s for the budget
            return any(
                b["state"] == "submitted" and not b["batch_id"] and b["age"] > 2.0
                for b in app.bulk.sender.batches()
            )

        # Each replica in turn: one that got its partition a rebalance later (a few seconds
        # on Tansu) is still filling when the first already waits.
        await wait_until(lambda: all(waiting_on_budget(app) for app in apps), 40)
        stats = simulator.stats()
        applied_rows = sum(batch.rows for batch in simulator.bulk_batches())
        # Every replica still has batches it may not send: alone, each would have spent the
        # whole budget; together they stayed within it.
        waiting = [app for app in apps if app.bulk is not None and app.bulk.sender.batches()]
    assert stats["bulk_503s"] == 0
    if budget == "calls":
        assert stats["bulk_calls"] == calls  # within one minute: exactly the budget, no more
    else:
        assert rows - 5 < applied_rows <= rows
    assert len(waiting) == 3
