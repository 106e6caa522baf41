"""The override caveat's carry at its edges: a single update refused for good, and one profile
whose events come from two partitions at once."""

from __future__ import annotations

import asyncio

import pytest

from consumer.bulk.held import Carry
from tests.unit.bulk.test_bulk_sender import Rig

pytestmark = pytest.mark.unit
T3 = "mbox3rdPartyId"


async def sent_once(rig: Rig, identity: str, **attributes: str) -> None:
    rig.take(identity, **attributes)
    rig.sender.flush_all()
    await rig.settle()


async def test_a_single_update_refused_for_good_leaves_the_carry_in_place() -> None:
    rig = Rig()
    await sent_once(rig, "p1", a="1")
    rig.sender.single_started(T3, "p1")
    rig.sender.single_done(T3, "p1", accepted=False)  # Target refused it: no mbox call
    await sent_once(rig, "p1", b="2")
    assert rig.client.rows[1] == [("p1", {"a": "1", "b": "2"})]


async def test_an_accepted_single_update_ends_the_carry() -> None:
    rig = Rig()
    await sent_once(rig, "p1", a="1")
    rig.sender.single_started(T3, "p1")
    rig.sender.single_done(T3, "p1", accepted=True)
    await sent_once(rig, "p1", b="2")
    assert rig.client.rows[1] == [("p1", {"b": "2"})]


async def test_no_row_carries_for_a_profile_while_its_single_update_is_in_flight() -> None:
    # The single update may land before the batch: an older carried value must not follow it.
    rig = Rig()
    await sent_once(rig, "p1", a="1", c="1")
    rig.sender.single_started(T3, "p1")
    await sent_once(rig, "p1", b="2")
    assert rig.client.rows[1] == [("p1", {"b": "2"})]
    # That batch's row is what the caveat now joins to the next batch, whatever the single's
    # fate: accepted, it does not take the row away.
    rig.sender.single_done(T3, "p1", accepted=True)
    await sent_once(rig, "p1", d="3")
    assert rig.client.rows[2] == [("p1", {"b": "2", "d": "3"})]


def test_carry_suspend_and_settle_without_an_entry_change_nothing() -> None:
    carry = Carry(horizon=10.0, max_profiles=10, clock=lambda: 0.0)
    carry.suspend(T3, "p1")
    carry.settle(T3, "p1", accepted=True)
    assert len(carry) == 0 and carry.take(T3, "p1") is None


async def test_a_profile_on_two_partitions_keeps_both_partitions_attributes() -> None:
    rig = Rig()
    rig.take("p1", partition=0, a="1")
    rig.take("p1", partition=1, b="2")  # the same profile, filling in another batch
    rig.take("p1", partition=0, c="3")
    rig.sender.flush_all()
    await rig.settle()
    # Each later batch carries everything the earlier ones set: under the override caveat
    # Target keeps only the last row, and it must hold a, b and c.
    assert len(rig.client.rows) == 3
    assert rig.client.rows[-1] == [("p1", {"a": "1", "b": "2", "c": "3"})]
    assert rig.tracker.committable() == {("t", 0): 2, ("t", 1): 1}


async def test_profiles_on_one_partition_each_share_batches_as_before() -> None:
    rig = Rig()
    rig.take("p1", partition=0, a="1")
    rig.take("p2", partition=1, b="2")
    rig.take("p1", partition=0, c="3")
    assert len(rig.sender.batches()) == 2  # nothing was queued early
    rig.sender.flush_all()
    await rig.settle()
    assert sorted(len(rows) for rows in rig.client.rows) == [1, 1]


async def test_the_later_batch_of_a_shared_profile_waits_for_the_earlier() -> None:
    rig = Rig()
    rig.client.gate.clear()
    rig.take("p1", partition=0, a="1")
    rig.take("p1", partition=1, b="2")
    rig.sender.flush_all()
    for _ in range(50):
        await asyncio.sleep(0)
    assert len(rig.client.bodies) == 1
    rig.client.gate.set()
    await rig.settle()
    assert rig.client.rows == [[("p1", {"a": "1"})], [("p1", {"a": "1", "b": "2"})]]
