"""The bulk transport's promises at their edges, on a real broker and the simulator: an
exhausted row budget in auto mode, one profile's events on two partitions."""

from __future__ import annotations

import pytest

from devtools.samples import sample_events
from tests.bulk_helpers import bulk_done, bulk_settings
from tests.helpers import (
    assert_history_clean,
    committed,
    encoder,
    event_key,
    expected_profiles,
    produce,
    read_all,
    running,
    wait_until,
)

pytestmark = pytest.mark.integration


async def test_auto_falls_back_to_single_updates_when_the_row_budget_is_spent(
    broker, simulator, topics, make_settings
) -> None:
    # 10 single updates a second: the burst switches to bulk; 15 rows a day cannot take it.
    settings = bulk_settings(
        make_settings,
        transport="auto",
        switch_after_seconds=3.0,
        max_rows=5,
        daily_rows=15,
        other={"quota__limit": 600, "quota__window_seconds": 60.0},
    )
    enc = encoder(settings)
    events = sample_events(600, profiles=80, seed=51)
    ends = produce(
        broker.bootstrap, topics["topic"], ((event_key(e), enc.encode(e)) for e in events)
    )
    async with running(settings) as app:
        await wait_until(lambda: app.bulk is not None and app.bulk.mode.bulk, 20)
        await wait_until(lambda: bulk_done(app, len(events), topics["topic"]), 60)
        assert app.bulk is not None
        reasons = [s.reason for s in app.bulk.mode.switches]
        switched = app.metrics.bulk.transport_switches.labels("single")._value.get()
    assert "bulk_budget" in reasons and switched >= 1
    applied_rows = sum(batch.rows for batch in simulator.bulk_batches())
    assert 0 < applied_rows <= 15
    received = simulator.received()
    assert any(r.batch_id for r in received) and not all(r.batch_id for r in received)
    assert simulator.profiles() == expected_profiles(events)
    assert_history_clean(simulator, events)
    assert committed(broker.bootstrap, topics["group"], topics["topic"]) == ends
    assert read_all(broker.bootstrap, topics["dlq"]) == []


async def test_the_next_owner_sends_no_single_update_before_the_old_batch_is_final(
    broker, simulator, topics, make_settings
) -> None:
    # Target takes 6 s per batch; the first member leaves 0.5 s after submitting (its handover
    # and shutdown wait run out), so its batch is still being processed when the next member
    # reads the same partitions again, newer events included, in single-update mode.
    simulator.configure(bulk_processing_seconds=6.0)
    first = bulk_settings(
        make_settings,
        transport="bulk",
        max_batch_seconds=0.2,
        other={"pipeline__shutdown_timeout_seconds": 0.5},
    )
    enc = encoder(first)
    old = sample_events(120, profiles=30, seed=61)
    new = sample_events(120, profiles=30, seed=62)
    produce(broker.bootstrap, topics["topic"], ((event_key(e), enc.encode(e)) for e in old))
    async with running(first):
        await wait_until(lambda: bool(simulator.bulk_batches()), 30)
    assert not committed(broker.bootstrap, topics["group"], topics["topic"])  # not final
    ends = produce(broker.bootstrap, topics["topic"], ((event_key(e), enc.encode(e)) for e in new))
    second = bulk_settings(make_settings, transport="auto")
    async with running(second) as app:
        await wait_until(lambda: bulk_done(app, len(old) + len(new), topics["topic"]), 60)
    assert simulator.profiles() == expected_profiles(old + new)
    assert_history_clean(simulator, old + new)  # the old batch never landed after newer values
    assert committed(broker.bootstrap, topics["group"], topics["topic"]) == ends
