"""BodyBudget: how many bytes of rendered bodies are held at once, in arrival order."""

from __future__ import annotations

import asyncio

import pytest

from consumer.bulk.bodies import BodyBudget

pytestmark = pytest.mark.unit


class Holder:
    """A task that holds `size` bytes until told to let go; `granted` says when it got them."""

    def __init__(self, budget: BodyBudget, size: int) -> None:
        self.granted = asyncio.Event()
        self.done = asyncio.Event()
        self.task = asyncio.ensure_future(self._run(budget, size))

    async def _run(self, budget: BodyBudget, size: int) -> None:
        async with budget.hold(size):
            self.granted.set()
            await self.done.wait()

    async def release(self) -> None:
        self.done.set()
        await self.task


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def queued_behind(first: int, *sizes: int) -> tuple[BodyBudget, Holder, list[Holder]]:
    """A budget of 100 bytes, `first` bytes held, then holders of `sizes` asking in turn."""
    budget = BodyBudget(100)
    holder = Holder(budget, first)
    await turns()
    waiting = [Holder(budget, size) for size in sizes]
    await turns()
    return budget, holder, waiting


async def test_bodies_that_fit_together_are_held_at_once_and_the_next_waits() -> None:
    seen: list[int] = []
    budget = BodyBudget(100, seen.append)
    a, b, c = Holder(budget, 40), Holder(budget, 60), Holder(budget, 1)
    await turns()
    assert a.granted.is_set() and b.granted.is_set() and not c.granted.is_set()
    assert budget.held == 100
    await a.release()
    await c.granted.wait()
    assert budget.held == 61
    await b.release()
    await c.release()
    assert budget.held == 0 and seen == [40, 100, 60, 61, 1, 0]


async def test_a_body_larger_than_the_budget_goes_alone() -> None:
    budget = BodyBudget(100)
    small = Holder(budget, 10)
    await turns()
    large = Holder(budget, 250)
    await turns()
    assert not large.granted.is_set()  # not while anything else is held
    await small.release()
    await large.granted.wait()
    assert budget.held == 250
    after = Holder(budget, 1)
    await turns()
    assert not after.granted.is_set()  # nothing joins it
    await large.release()
    await after.granted.wait()
    await after.release()
    assert budget.held == 0


async def test_grants_go_in_arrival_order_so_a_large_body_is_not_starved() -> None:
    budget, first, (large, small) = await queued_behind(60, 60, 10)
    assert not large.granted.is_set()
    assert not small.granted.is_set()  # it would fit, but the large one came first
    await first.release()
    await large.granted.wait()
    await small.granted.wait()
    assert budget.held == 70
    await large.release()
    await small.release()


async def test_a_waiter_cancelled_lets_the_ones_behind_it_go() -> None:
    budget, first, (blocked, behind) = await queued_behind(60, 60, 30)
    blocked.task.cancel()
    await behind.granted.wait()  # 60 + 30 fit once the cancelled waiter is gone
    with pytest.raises(asyncio.CancelledError):
        await blocked.task
    assert budget.held == 90
    await first.release()
    await behind.release()
    assert budget.held == 0


async def test_a_holder_cancelled_just_after_its_grant_gives_the_bytes_back() -> None:
    budget = BodyBudget(100)
    first = budget.hold(100)
    await first.__aenter__()
    waiter = Holder(budget, 50)
    await turns()
    # Leaving `first` grants the waiter without a suspension: the waiter has not run yet when
    # its cancellation lands.
    await first.__aexit__(None, None, None)
    assert budget.held == 50
    waiter.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter.task
    assert not waiter.granted.is_set()
    assert budget.held == 0


def test_a_budget_under_one_byte_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1 byte"):
        BodyBudget(0)
