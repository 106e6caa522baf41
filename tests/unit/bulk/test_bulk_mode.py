"""The auto switch between single updates and bulk: thresholds, hysteresis, dwell, pinning."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry

from consumer.bulk.mode import BULK, SINGLE, Figures, ModeSwitch
from consumer.metrics import BulkMetrics

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def switch(transport: str = "auto", dwell: float = 60.0, metrics: BulkMetrics | None = None):
    clock = Clock()
    mode = ModeSwitch(
        transport=transport,
        switch_after_seconds=300.0,
        switch_back_ratio=0.5,
        headroom_threshold=0.05,
        min_dwell_seconds=dwell,
        clock=clock,
        metrics=metrics,
    )
    return mode, clock


def figures(waiting: int, remaining: int = 900_000, rate: float = 10.0) -> Figures:
    return Figures(waiting=waiting, rate=rate, remaining=remaining, limit=1_000_000)


def test_drain_time_is_infinite_when_the_quota_cannot_carry_the_work() -> None:
    assert figures(0).drain_seconds == 0.0
    assert figures(100).drain_seconds == 10.0
    assert math.isinf(figures(100, remaining=99).drain_seconds)
    assert math.isinf(figures(1, rate=0.0).drain_seconds)


def test_a_backlog_over_the_threshold_switches_to_bulk() -> None:
    mode, _ = switch()
    assert mode.update(figures(3000)) is None  # exactly 300 s: not over
    change = mode.update(figures(3001))
    assert change is not None and change.to == BULK and change.reason == "backlog"
    assert mode.mode == BULK


def test_low_headroom_switches_to_bulk_even_without_a_backlog() -> None:
    mode, _ = switch()
    change = mode.update(figures(10, remaining=49_999))
    assert change is not None and change.reason == "low_headroom"


def test_back_to_single_only_under_the_lower_threshold_after_the_dwell() -> None:
    mode, clock = switch(dwell=60.0)
    mode.update(figures(10_000))
    clock.now += 59
    assert mode.update(figures(0)) is None  # dwell not over: no flapping
    clock.now += 1
    assert mode.update(figures(1500)) is None  # 150 s: not under 300 * 0.5 (hysteresis)
    assert mode.update(figures(1500, remaining=10)) is None
    change = mode.update(figures(1499))
    assert change is not None and change.to == SINGLE and change.reason == "drained"


def test_stays_in_bulk_while_headroom_is_low() -> None:
    mode, clock = switch(dwell=0.0)
    mode.update(figures(0, remaining=1000))
    clock.now += 3600
    assert mode.update(figures(0, remaining=1000)) is None
    assert mode.bulk


@pytest.mark.parametrize("transport", ["single", "bulk"])
def test_a_pinned_mode_never_changes(transport: str) -> None:
    mode, clock = switch(transport=transport, dwell=0.0)
    assert mode.mode == transport
    for waiting in (0, 10**9):
        clock.now += 1000
        assert mode.update(figures(waiting, remaining=0)) is None
    assert mode.mode == transport


def test_switches_are_counted_and_the_mode_is_a_gauge() -> None:
    metrics = BulkMetrics(CollectorRegistry())
    mode, clock = switch(dwell=0.0, metrics=metrics)
    assert metrics.transport_mode.labels("single")._value.get() == 1
    mode.update(figures(10**6))
    clock.now += 1
    mode.update(figures(0))
    clock.now += 1
    mode.update(figures(10**6))
    assert metrics.transport_switches.labels("bulk")._value.get() == 2
    assert metrics.transport_switches.labels("single")._value.get() == 1
    assert metrics.transport_mode.labels("bulk")._value.get() == 1
    assert metrics.transport_mode.labels("single")._value.get() == 0
    assert [s.to for s in mode.switches] == [BULK, SINGLE, BULK]


def test_unknown_transport_is_refused() -> None:
    with pytest.raises(ValueError):
        switch(transport="carrier-pigeon")
