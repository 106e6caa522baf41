"""Another member's batch not final (a revoked partition's, a dead process's) holds back single
updates and batches of its partitions until it is final or past the horizon."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from consumer.bulk.foreign import ForeignBatches, parse_partition
from consumer.bulk.mode import ModeSwitch
from consumer.bulk.transport import BulkTransport
from consumer.mapping import ProfileUpdate
from consumer.record import SourceRecord
from tests.unit.bulk.test_bulk_sender import Rig

pytestmark = pytest.mark.unit
DAY = 86_400.0


class Wall:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def entry(state: str, *, key: str = "old-7", replica: str = "old", **extra: Any) -> dict[str, Any]:
    return {
        "key": key,
        "replica": replica,
        "batch_id": "99",
        "status_url": "/status?batchId=99",
        "state": state,
        "partitions": ["t[0]"],
        "submitted_at": 1_800_000_000.0,
        **extra,
    }


def view(wall: Wall | None = None) -> ForeignBatches:
    return ForeignBatches(replica="me", horizon=DAY, wall_clock=wall or Wall())


def test_partitions_are_read_as_the_manifest_writes_them() -> None:
    assert parse_partition("orders.v1[12]") == ("orders.v1", 12)
    assert parse_partition("a[b]") is None and parse_partition("plain") is None


def test_a_submitted_batch_of_another_member_blocks_its_partitions_until_final() -> None:
    foreign = view()
    foreign.apply([entry("submitted")])
    assert foreign.blocks(("t", 0)) and not foreign.blocks(("t", 1))
    foreign.apply([entry("complete")])
    assert not foreign.blocks(("t", 0))


def test_our_own_batches_and_those_past_the_horizon_block_nothing() -> None:
    wall = Wall()
    foreign = view(wall)
    foreign.apply([entry("submitted", replica="me")])
    assert not foreign.blocks(("t", 0))
    foreign.apply([entry("submitted")])
    wall.now += DAY + 1
    assert not foreign.blocks(("t", 0)) and len(foreign) == 0


def test_a_batch_found_complete_by_our_poll_stays_final_whatever_comes_later() -> None:
    foreign = view()
    foreign.apply([entry("submitted")])
    foreign.final("old-7")
    foreign.apply([entry("submitted")])  # a stale record read late
    assert not foreign.blocks(("t", 0))


def rig_with_foreign() -> tuple[Rig, ForeignBatches]:
    rig = Rig()
    foreign = view()
    rig.sender._foreign = foreign  # noqa: SLF001 - set as the wiring does at construction
    foreign.on_change = rig.sender._changed.set  # noqa: SLF001
    return rig, foreign


async def test_our_batch_of_that_partition_waits_for_the_foreign_one_to_be_complete() -> None:
    rig, foreign = rig_with_foreign()
    foreign.apply([entry("submitted")])
    done = {"foreign": False}  # Target has not finished the other member's batch yet
    rig.client.answer = lambda n: "complete" if n != 99 or done["foreign"] else "incomplete"
    rig.take("p1", partition=0, a="new")
    rig.take("p2", partition=1, a="other")  # partition 1 is not held back
    rig.sender.flush_all()
    running = asyncio.ensure_future(rig.sender.run())
    try:
        for _ in range(200):
            await asyncio.sleep(0)
        assert [rows[0][0] for rows in rig.client.rows] == ["p2"]
        assert rig.client.polls >= 3  # we ask Target ourselves (its member may be gone)
        done["foreign"] = True
        await asyncio.wait_for(rig.settle(), 5)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert [rows[0][0] for rows in rig.client.rows] == ["p2", "p1"]


async def test_events_of_a_held_back_partition_go_to_bulk_even_in_single_mode() -> None:
    rig, foreign = rig_with_foreign()
    mode = ModeSwitch(
        transport="auto",
        switch_after_seconds=300.0,
        switch_back_ratio=0.5,
        headroom_threshold=0.05,
        min_dwell_seconds=60.0,
        clock=rig.clock,
    )
    transport = BulkTransport(
        mode=mode,
        sender=rig.sender,
        limits=None,  # type: ignore[arg-type] - route needs neither limits nor gate
        gate=None,  # type: ignore[arg-type]
        metrics=rig.metrics,
        lag=dict,
    )

    def route(partition: int, offset: int) -> bool:
        epoch = rig.tracker.track(("t", partition), offset)
        record = SourceRecord("t", partition, offset, b"k", b"v", None, None)
        update = ProfileUpdate("mbox3rdPartyId", f"p{partition}", {"a": "1"}, ())
        return transport.route(update, record, epoch)

    assert not route(0, 0)  # nothing held back: single updates as usual
    foreign.apply([entry("submitted")])
    assert route(0, 1)  # held back: bulk takes it
    assert not route(1, 0)
