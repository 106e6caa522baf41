"""A final commit (hand-over or SIGTERM) never stops below an event already delivered.

The next owner re-sends from the commit: an event left unfinished below a delivered one is
re-sent after it, and a profile with two events in that range is set back to the older value
(the strict no-stale-overwrite check of tests/reliability/test_rebalance_storm.py). Driven on
the real Pipeline, OffsetTracker and Coalescer (tests/pipeline_rig.py), with the fake Target
answered by the test and a fake clock that never reaches a deadline.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.pipeline_rig import TOPIC, Rig

pytestmark = pytest.mark.unit

Q = ("mbox3rdPartyId", "q")
P = ("mbox3rdPartyId", "p")
TP0 = (TOPIC, 0)


async def _delivered_ahead(rig: Rig) -> None:
    """Q@0 in flight (unanswered), Q@1 waiting behind it, P@2+P@3 delivered in one request,
    three more profiles waiting above them: offsets 2 and 3 are done above the contiguous 0."""
    rig.assign(0)
    rig.submit(0, Q, y="1")
    await rig.advance(1.0)
    rig.submit(0, Q, y="2")
    rig.submit(0, P, x="1")
    rig.submit(0, P, x="2")
    await rig.advance(1.0)
    [q0, p23] = rig.target.open_calls()
    assert (q0.key, p23.key, p23.attributes) == (Q, P, {"x": "2"})
    rig.target.accept(p23)
    for index in range(3):
        rig.submit(0, ("mbox3rdPartyId", f"later-{index}"), z=str(index))
    await rig.settle()
    assert rig.tracker.highest_finished(TP0) == 3


async def _answer_until(rig: Rig, done: asyncio.Task[object]) -> list[tuple[str, str]]:
    """Accept every request as it comes until `done` finishes; returns their profiles."""
    answered = []
    while not done.done():
        for call in rig.target.open_calls():
            answered.append(call.key)
            rig.target.accept(call)
        await asyncio.wait({done}, timeout=0.01)
    return answered


async def test_a_handover_finishes_what_lies_below_the_highest_delivered_and_no_more() -> None:
    async with Rig(window=1.0) as rig:
        await _delivered_ahead(rig)
        # As the Kafka source does it: hand over (still owned), seal, then commit.
        handover = asyncio.create_task(rig.pipeline.handover({TP0}, timeout=30.0))
        answered = await _answer_until(rig, handover)
        rig.tracker.seal([TP0])
        final = rig.tracker.revoke([TP0])

        # Q@0 answered (never cancelled), Q@1 sent because it lies below P@3; the profiles
        # above offset 3 left for the next owner, unsent.
        assert answered == [Q, Q]
        assert final == {TP0: 4}
        assert rig.pipeline.buffered == 0
        assert [w["attributes"] for w in rig.target.history if w["identity"] == "q"] == [
            {"y": "1"},
            {"y": "2"},
        ]


async def test_a_sigterm_drain_cut_at_its_timeout_still_lets_sends_in_flight_end() -> None:
    async with Rig(window=1.0) as rig:
        await _delivered_ahead(rig)
        rig.pipeline._wake.set()
        # The first phase (send everything) is cut after 50 ms of real time with Q@0 open;
        # the second must not give up on it (the fake clock never reaches its deadline).
        drain = asyncio.create_task(rig.pipeline.drain(0.05))
        await asyncio.sleep(0.1)
        assert not drain.done(), "the drain returned with a request on the wire"
        answered = await _answer_until(rig, drain)
        assert drain.result() is False  # the rest is abandoned, as before
        await rig.pipeline.abandon()
        assert not rig.target.open_calls()
        assert Q in answered
        # Everything below the highest delivered offset is finished: the commit passes it.
        assert rig.tracker.finished_above_commit([TP0]) == {}
