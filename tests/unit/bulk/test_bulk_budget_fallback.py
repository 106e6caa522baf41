"""An exhausted bulk row budget: auto mode falls back to single updates (the switch, and the
batches already built), pinned bulk waits for the budget."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from consumer.bulk.fallback import SingleFallback
from consumer.bulk.mode import BULK, SINGLE, Figures, ModeSwitch
from consumer.errors import PermanentDeliveryError
from consumer.quota.local import QuotaGate
from consumer.target.request import TargetRequest
from tests.unit.bulk.test_bulk_sender import Rig

pytestmark = pytest.mark.unit
T3 = "mbox3rdPartyId"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def mode_switch(transport: str = "auto") -> tuple[ModeSwitch, Clock]:
    clock = Clock()
    mode = ModeSwitch(
        transport=transport,
        switch_after_seconds=300.0,
        switch_back_ratio=0.5,
        headroom_threshold=0.05,
        min_dwell_seconds=60.0,
        clock=clock,
    )
    return mode, clock


def figures(waiting: int, rows_left: int | None, rows_needed: int = 0) -> Figures:
    return Figures(
        waiting=waiting,
        rate=10.0,
        remaining=900_000,
        limit=1_000_000,
        bulk_rows_remaining=rows_left,
        bulk_rows_needed=rows_needed,
    )


def test_an_exhausted_row_budget_switches_auto_back_to_single_at_once() -> None:
    mode, _ = mode_switch()
    assert mode.update(figures(10**6, rows_left=500)) is not None and mode.bulk
    # Within the dwell, the backlog still there: the budget cannot take the batch waiting.
    change = mode.update(figures(10**6, rows_left=500, rows_needed=501))
    assert change is not None and change.to == SINGLE and change.reason == "bulk_budget"
    assert mode.mode == SINGLE


def test_auto_does_not_switch_to_bulk_while_the_row_budget_is_spent() -> None:
    mode, clock = mode_switch()
    assert mode.update(figures(10**6, rows_left=0)) is None
    clock.now += 3600
    change = mode.update(figures(10**6, rows_left=1000))
    assert change is not None and change.to == BULK


def test_pinned_bulk_waits_for_the_row_budget() -> None:
    mode, clock = mode_switch("bulk")
    clock.now += 3600
    assert mode.update(figures(10**6, rows_left=0, rows_needed=10)) is None
    assert mode.bulk


class Delivered:
    def __init__(self, refuse: frozenset[str] = frozenset()) -> None:
        self.requests: list[TargetRequest] = []
        self.refuse = refuse

    async def __call__(self, request: TargetRequest) -> None:
        self.requests.append(request)
        if any(identity in request.url + request.body.decode() for identity in self.refuse):
            raise PermanentDeliveryError("http_400", "refused", 400, b"")


async def test_a_claim_reserves_rows_left_in_auto_and_always_grants_when_pinned() -> None:
    gate = QuotaGate(10, 60.0, "eager", clock=Clock())
    await gate.acquire(7)
    deliver = Delivered()
    auto = SingleFallback(
        mode=mode_switch()[0], rows=gate, deliver=deliver, endpoint_url="https://t/x"
    )
    pinned = SingleFallback(
        mode=mode_switch("bulk")[0], rows=gate, deliver=deliver, endpoint_url="https://t/x"
    )
    assert not auto.claim(4)  # 3 rows left
    assert auto.claim(2)
    assert not auto.claim(2)  # the first claim still holds 2 of the 3
    auto.release(2)
    assert auto.claim(3)
    assert pinned.claim(4)  # pinned bulk waits for the budget instead
    await auto.send(T3, "p1", {"a": "1"})
    assert len(deliver.requests) == 1 and "p1" in deliver.requests[0].url


class FakeSingles:
    def __init__(self, *, wanted: bool, refuse: frozenset[str] = frozenset()) -> None:
        self._wanted = wanted
        self.refuse = refuse
        self.sent: list[tuple[str, dict[str, str]]] = []
        self.claimed = 0

    def claim(self, rows: int) -> bool:
        if self._wanted:
            return False
        self.claimed += rows
        return True

    def release(self, rows: int) -> None:
        self.claimed -= rows

    async def send(self, identity_type: str, identity: str, attributes: dict[str, str]) -> None:
        self.sent.append((identity, attributes))
        if identity in self.refuse:
            raise PermanentDeliveryError("http_400", "refused", 400, b"")


def rig_with(singles: FakeSingles, **overrides: Any) -> Rig:
    return Rig(singles=singles, **overrides)


async def test_a_batch_the_row_budget_cannot_take_goes_as_single_updates() -> None:
    singles = FakeSingles(wanted=True, refuse=frozenset({"p2"}))
    rig = rig_with(singles)
    rig.take("p1", a="1")
    rig.take("p2", a="2")
    rig.take("p1", b="3")
    rig.sender.flush_all()
    await asyncio.wait_for(rig.settle(), 5)
    assert rig.client.bodies == []  # no submit: nothing waited for the rows budget
    assert singles.sent == [("p1", {"a": "1", "b": "3"}), ("p2", {"a": "2"})]
    assert [(r.offset, e.reason) for r, e in rig.dlq.written] == [(1, "http_400")]
    assert rig.tracker.committable() == {("t", 0): 3}
    assert rig.count("sent_single") == 1


async def test_rows_sent_as_singles_carry_earlier_batches_and_end_the_caveat() -> None:
    singles = FakeSingles(wanted=False)
    rig = rig_with(singles)
    rig.take("p1", a="1")
    rig.sender.flush_all()
    await rig.settle()  # through bulk: the carry now holds a=1
    singles._wanted = True
    rig.take("p1", b="2")
    rig.sender.flush_all()
    await rig.settle()
    assert singles.sent == [("p1", {"a": "1", "b": "2"})]
    singles._wanted = False
    rig.take("p1", c="3")
    rig.sender.flush_all()
    await rig.settle()
    assert rig.client.rows[-1] == [("p1", {"c": "3"})]  # the single update ended the caveat
    assert singles.claimed == 0  # every claim released once its submit returned
