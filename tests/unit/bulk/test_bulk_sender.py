"""BulkSender with fakes and a fake clock: acks held until final, row failures, stuck and
refused batches, order between batches, the carried attributes, revocation, bounds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from consumer.bulk.answers import BatchStatus, RowStatus, Submitted
from consumer.bulk.held import Carry
from consumer.bulk.rows import BatchBuilder
from consumer.bulk.sender import BulkSender, SenderSettings
from consumer.errors import EventError, PermanentBulkError
from consumer.kafka.offsets import OffsetTracker
from consumer.metrics import BulkMetrics
from consumer.record import SourceRecord

pytestmark = pytest.mark.unit
TP = ("t", 0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class FakeClient:
    """Records submitted batches; `answer(n)` says how the n-th submit's polls go."""

    def __init__(self) -> None:
        self.bodies: list[str] = []
        self.rows: list[list[tuple[str, dict[str, str]]]] = []
        self.answer: Callable[[int], str] = lambda n: "complete"
        self.failed_rows: dict[int, list[int]] = {}  # submit number -> failing row numbers
        self.refuse: set[int] = set()
        self.polls = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def submit(
        self,
        batch: BatchBuilder[Any] | bytes,
        identity_type: str,
        rows: int | None = None,
        before_post: Any = None,
    ) -> Submitted:
        assert isinstance(batch, BatchBuilder)
        n = len(self.bodies)
        self.bodies.append(batch.render().decode())
        self.rows.append([(r.identity, r.attributes) for r in batch.rows()])
        if n in self.refuse:
            raise PermanentBulkError("bulk_rejected", "refused", 400, b"<no/>")
        return Submitted(str(n), f"/status?batchId={n}")

    async def status(self, submitted: Submitted, *, details: bool = True) -> BatchStatus:
        await self.gate.wait()
        self.polls += 1
        n = int(submitted.batch_id)
        state = self.answer(n)
        failed = self.failed_rows.get(n, []) if details and state == "complete" else []
        rows = tuple(RowStatus(r, f"id{r}", "failed", "row rejected") for r in failed)
        return BatchStatus(str(n), state, state, None, rows, 0)


class FakeDLQ:
    def __init__(self) -> None:
        self.written: list[tuple[SourceRecord, EventError]] = []

    async def write(self, record: SourceRecord, error: EventError) -> None:
        self.written.append((record, error))


class FakeReread:
    async def fetch(self, wanted: list[tuple[str, int, int]]) -> dict[Any, SourceRecord]:
        return {w: SourceRecord(w[0], w[1], w[2], b"k", b"value", None, None) for w in wanted}


class Rig:
    def __init__(self, singles: Any = None, **overrides: Any) -> None:
        self.clock = Clock()
        self.client = FakeClient()
        self.tracker = OffsetTracker()
        self.tracker.assign([TP, ("t", 1)])
        self.dlq = FakeDLQ()
        self.metrics = BulkMetrics(CollectorRegistry())
        self.carry = Carry(horizon=100.0, max_profiles=1000, clock=self.clock)
        settings = {
            "max_rows": 1000,
            "max_bytes": 1_000_000,
            "max_batch_seconds": 5.0,
            "status_poll_seconds": 1.0,
            "status_timeout_seconds": 10.0,
            "max_resubmits": 2,
            "max_held_events": 1000,
            **overrides,
        }
        self.sender = BulkSender(
            client=self.client,
            tracker=self.tracker,
            dlq=self.dlq,
            reread=FakeReread(),
            metrics=self.metrics,
            settings=SenderSettings(**settings),
            carry=self.carry,
            carries=lambda identity_type: True,
            clock=self.clock,
            sleep=self.clock.sleep,
            singles=singles,
        )
        self.offset = {0: 0, 1: 0}

    def take(self, identity: str, partition: int = 0, **attributes: str) -> int:
        offset = self.offset[partition]
        self.offset[partition] += 1
        epoch = self.tracker.track(("t", partition), offset)
        self.sender.take(
            "mbox3rdPartyId",
            identity,
            dict(attributes),
            topic="t",
            partition=partition,
            offset=offset,
            epoch=epoch,
        )
        return offset

    async def settle(self) -> None:
        """Run the batches' tasks until nothing is held (bounded)."""
        for _ in range(10_000):
            if self.sender.held == 0:
                return
            await asyncio.sleep(0)
        raise AssertionError(f"still held: {self.sender.batches()}")

    def count(self, outcome: str) -> float:
        return self.metrics.batches.labels(outcome)._value.get()


async def test_offsets_wait_for_the_batch_to_be_complete() -> None:
    rig = Rig()
    rig.client.gate.clear()  # Target has not finished processing
    for i in range(3):
        rig.take(f"p{i}", a=str(i))
    rig.take("p0", a="later")
    assert rig.sender.held == 4
    rig.sender.flush_all()
    for _ in range(20):
        await asyncio.sleep(0)
    assert rig.client.bodies and rig.tracker.committable() == {}
    rig.client.gate.set()
    await rig.settle()
    assert rig.tracker.committable() == {TP: 4}
    assert rig.client.rows[0] == [("p0", {"a": "later"}), ("p1", {"a": "1"}), ("p2", {"a": "2"})]
    assert rig.count("complete") == 1 and rig.dlq.written == []


async def test_a_batch_goes_when_older_than_max_batch_seconds() -> None:
    rig = Rig()
    rig.take("p1", a="1")
    assert rig.sender.flush_due() == 5.0
    rig.clock.now = 5.0
    assert rig.sender.flush_due() is None
    await rig.settle()
    assert len(rig.client.bodies) == 1


async def test_failed_rows_send_every_event_they_carry_to_the_dlq() -> None:
    rig = Rig()
    rig.client.failed_rows[0] = [2]
    rig.take("p1", a="1")
    rig.take("p2", a="2")
    rig.take("p2", a="3")
    rig.take("p3", a="4")
    rig.sender.flush_all()
    await rig.settle()
    assert [(r.offset, e.reason) for r, e in rig.dlq.written] == [
        (1, "bulk_row_failed"),
        (2, "bulk_row_failed"),
    ]
    error = rig.dlq.written[0][1]
    assert "row rejected" in str(error) and error.stage == "send"
    assert rig.tracker.committable() == {TP: 4}
    assert rig.metrics.rows.labels("failed")._value.get() == 1


async def test_a_stuck_batch_is_resubmitted_then_dead_lettered() -> None:
    rig = Rig(max_resubmits=2)
    rig.client.answer = lambda n: "stuck"
    rig.take("p1", a="1")
    rig.take("p2", a="2")
    rig.sender.flush_all()
    await rig.settle()
    assert len(rig.client.bodies) == 3  # the first submit and two resubmits, same rows
    assert len(set(rig.client.bodies)) == 1
    assert {e.reason for _, e in rig.dlq.written} == {"bulk_stuck"}
    assert len(rig.dlq.written) == 2 and rig.tracker.committable() == {TP: 2}
    assert rig.count("resubmitted") == 2 and rig.count("stuck") == 1


async def test_a_batch_incomplete_past_the_timeout_counts_as_stuck() -> None:
    rig = Rig(max_resubmits=1, status_timeout_seconds=3.0)
    rig.client.answer = lambda n: "complete" if n == 1 else "incomplete"
    rig.take("p1", a="1")
    rig.sender.flush_all()
    await rig.settle()
    assert len(rig.client.bodies) == 2 and rig.dlq.written == []
    assert rig.count("complete") == 1 and rig.count("resubmitted") == 1


async def test_a_refused_batch_is_dead_lettered_as_rejected() -> None:
    rig = Rig()
    rig.client.refuse = {0}
    rig.take("p1", a="1")
    rig.sender.flush_all()
    await rig.settle()
    assert [e.reason for _, e in rig.dlq.written] == ["bulk_rejected"]
    assert rig.count("rejected") == 1


async def test_a_batch_waits_for_an_earlier_one_holding_the_same_profile() -> None:
    rig = Rig()
    rig.client.gate.clear()
    rig.take("p1", partition=0, a="old")
    rig.sender.flush_all()
    rig.take("p1", partition=1, a="new")  # another partition: its own batch
    rig.take("p9", partition=1, b="x")
    rig.sender.flush_all()
    for _ in range(50):
        await asyncio.sleep(0)
    assert len(rig.client.bodies) == 1  # the second waits while the first is not final
    rig.client.gate.set()
    await rig.settle()
    assert len(rig.client.bodies) == 2


async def test_rows_carry_what_bulk_sent_the_profile_before_until_a_single_update() -> None:
    rig = Rig()
    rig.take("p1", a="1", b="1")
    rig.sender.flush_all()
    await rig.settle()
    rig.take("p1", b="2")
    rig.take("p2", c="3")
    rig.sender.flush_all()
    await rig.settle()
    assert rig.client.rows[1] == [("p1", {"a": "1", "b": "2"}), ("p2", {"c": "3"})]
    rig.sender.single_started("mbox3rdPartyId", "p1")  # ends the override caveat
    rig.take("p1", d="4")
    rig.sender.flush_all()
    await rig.settle()
    assert rig.client.rows[2] == [("p1", {"d": "4"})]


async def test_carried_values_expire_after_the_horizon() -> None:
    rig = Rig()
    rig.take("p1", a="1")
    rig.sender.flush_all()
    await rig.settle()
    rig.clock.now += 101
    rig.take("p1", b="2")
    rig.sender.flush_all()
    await rig.settle()
    assert rig.client.rows[1] == [("p1", {"b": "2"})]


async def test_revocation_drops_unsent_rows_and_their_carried_values() -> None:
    rig = Rig()
    rig.take("p1", partition=1, a="1")
    rig.sender.flush_all()
    await rig.settle()
    rig.take("p2", partition=0, a="2")
    rig.take("p3", partition=1, a="3")
    rig.tracker.seal([("t", 1)])
    await rig.sender.revoke({("t", 1)}, wait=0.0)
    assert rig.sender.held == 1
    assert not rig.sender.holds("mbox3rdPartyId", "p3")
    rig.take("p1", partition=0, b="4")  # p1's carried value came from the revoked partition
    rig.sender.flush_all()
    await rig.settle()
    assert rig.client.rows[1] == [("p2", {"a": "2"}), ("p1", {"b": "4"})]


async def test_holds_sees_profiles_of_batches_not_final() -> None:
    rig = Rig()
    rig.client.gate.clear()
    assert not rig.sender.holds("mbox3rdPartyId", "p1")
    rig.take("p1", a="1")
    assert rig.sender.holds("mbox3rdPartyId", "p1")
    assert not rig.sender.holds("mboxPC", "p1")
    rig.sender.flush_all()
    await asyncio.sleep(0)
    assert rig.sender.holds("mbox3rdPartyId", "p1")
    rig.client.gate.set()
    await rig.settle()
    assert not rig.sender.holds("mbox3rdPartyId", "p1")


async def test_the_held_bound_sends_what_fills_and_reports_full() -> None:
    rig = Rig(max_held_events=3)
    rig.client.gate.clear()
    for i in range(3):
        rig.take(f"p{i}", a="1")
    assert rig.sender.full
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(rig.client.bodies) == 1  # queued at once, not after max_batch_seconds
    rig.client.gate.set()
    await rig.settle()
    assert not rig.sender.full


async def test_a_full_builder_starts_the_next_batch() -> None:
    rig = Rig(max_rows=2)
    for i in range(5):
        rig.take(f"p{i}", a="1")
    rig.sender.flush_all()
    await rig.settle()
    assert [len(rows) for rows in rig.client.rows] == [2, 2, 1]
    assert rig.tracker.committable() == {TP: 5}


async def test_acks_of_a_revoked_partition_are_not_dead_lettered_here() -> None:
    rig = Rig()
    rig.client.failed_rows[0] = [1]
    rig.client.gate.clear()
    rig.take("p1", a="1")
    rig.sender.flush_all()
    await asyncio.sleep(0)
    rig.tracker.seal([TP])
    rig.client.gate.set()
    await rig.settle()
    assert rig.dlq.written == []  # the next owner reads it again and reports it


async def test_a_drained_backlog_goes_without_waiting_out_max_batch_seconds() -> None:
    rig = Rig(max_batch_seconds=60.0)
    rig.take("p1", a="1")
    rig.clock.now = 0.5
    assert rig.sender.flush_caught_up(idle_seconds=1.0, min_age_seconds=6.0) == 0  # busy
    rig.clock.now = 5.0
    assert rig.sender.flush_caught_up(idle_seconds=1.0, min_age_seconds=6.0) == 0  # too young
    rig.clock.now = 6.0
    assert rig.sender.flush_caught_up(idle_seconds=1.0, min_age_seconds=6.0) == 1
    await rig.settle()
    assert len(rig.client.bodies) == 1


async def test_a_partition_read_to_its_end_goes_while_another_is_still_read() -> None:
    rig = Rig(max_batch_seconds=60.0)
    rig.take("p1", partition=0, a="1")
    rig.take("p2", partition=1, a="2")
    drained = {("t", 0)}  # partition 1 still has records waiting in Kafka
    rig.clock.now = 6.0
    assert (
        rig.sender.flush_caught_up(idle_seconds=0.5, min_age_seconds=6.0, partitions=drained) == 0
    )
    rig.clock.now = 6.5
    assert (
        rig.sender.flush_caught_up(idle_seconds=0.5, min_age_seconds=6.0, partitions=drained) == 1
    )
    rig.clock.now = 7.0
    assert (
        rig.sender.flush_caught_up(idle_seconds=0.5, min_age_seconds=6.0, partitions=drained) == 0
    )
    filling = [b for b in rig.sender.batches() if b["state"] == "filling"]
    assert [b["events"] for b in filling] == [1]  # p2's event still fills partition 1's batch
    rig.sender.flush_all()
    await rig.settle()
    assert rig.client.rows == [[("p1", {"a": "1"})], [("p2", {"a": "2"})]]


async def test_no_batch_goes_before_the_singles_in_flight_at_the_switch_are_done() -> None:
    rig = Rig()
    single_done = asyncio.Event()
    single = asyncio.ensure_future(single_done.wait())
    rig.sender.barrier([single])  # type: ignore[list-item]
    rig.take("p1", a="new")
    rig.sender.flush_all()
    for _ in range(50):
        await asyncio.sleep(0)
    assert rig.client.bodies == []  # the single update sent before the switch is still out
    single_done.set()
    await rig.settle()
    assert len(rig.client.bodies) == 1
