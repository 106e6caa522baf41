"""Deterministic reproductions of the pipeline's defects at the edges of a rebalance, each with
the invariant it breaks: a fake clock, sends answered by the test, no sleeps."""

from __future__ import annotations

import pytest

from tests.oracles import assert_no_stale_overwrite
from tests.pipeline_rig import TOPIC, Rig

pytestmark = pytest.mark.unit

P = ("mbox3rdPartyId", "p")
TP0 = (TOPIC, 0)


async def test_a_batch_waiting_at_revocation_is_never_sent_when_the_partition_comes_back() -> None:
    """Invariant: no request carries a value from an event whose partition this member no
    longer owns in that assignment epoch (so no stale overwrite at Target)."""
    async with Rig(window=1.0) as rig:
        rig.assign(0)
        rig.submit(0, P, x="v1")  # offset 0
        await rig.advance(1.0)
        [first] = rig.target.open_calls()
        rig.submit(0, P, x="v2")  # offset 1: waits, due at 2.0
        rig.target.accept(first)
        await rig.settle()
        assert await rig.revoke(0) == {TP0: 1}  # offset 1 is the next owner's to read
        # The next owner reads offsets 1 and 2, writes v3, commits 3; then gives 0 back.
        rig.target.write(P, {"x": "v3"})
        rig.assign(0, at={0: 3})
        rig.submit(0, P, y="w")  # offset 3, another attribute
        await rig.advance(2.0)
        for call in rig.target.open_calls():
            rig.target.accept(call)
        await rig.settle()
        assert all("v2" not in c.attributes.values() for c in rig.target.calls)
        updates = [(P, {"x": "v1"}), (P, {"x": "v2"}), (P, {"x": "v3"}), (P, {"y": "w"})]
        assert_no_stale_overwrite(rig.target.history, updates)
        assert rig.pipeline.buffered == 0
        assert rig.tracker.committable() == {TP0: 4}


async def test_one_batch_never_mixes_a_revoked_partition_with_an_owned_one() -> None:
    """Same invariant, one profile read from two partitions: revoking one of them must not let
    its value ride in the other's request."""
    async with Rig(window=1.0) as rig:
        rig.assign(0, 1)
        rig.submit(0, P, x="from-0")
        rig.submit(1, P, y="from-1")
        await rig.revoke(0)
        await rig.advance(1.0)
        [call] = rig.target.open_calls()
        assert call.attributes == {"y": "from-1"}
        rig.target.accept(call)
        await rig.settle()
        assert rig.pipeline.buffered == 0
        assert rig.tracker.committable() == {(TOPIC, 1): 1}


async def test_a_send_cancelled_while_dead_lettering_releases_its_events() -> None:
    """Invariant: `buffered` counts exactly the unfinished events, whatever ends a send; a leak
    shrank the buffer at each rebalance until the partitions stayed paused for good."""
    async with Rig(window=0.0) as rig:
        rig.assign(0)
        rig.submit(0, P, x="bad")
        rig.submit(0, ("mbox3rdPartyId", "q"), x="bad")
        await rig.settle()
        rig.dlq.hold()  # the DLQ is slow: the send waits in dlq.write()
        for call in rig.target.open_calls():
            rig.target.refuse(call)
        await rig.settle()
        assert rig.pipeline.buffered == 2
        await rig.revoke(0)  # handover cancels the sends, inside their dead-lettering
        assert rig.pipeline.buffered == 0
        rig.dlq.release()
        await rig.settle()
        assert rig.dlq.written == []  # the next owner re-reads and dead-letters them


async def test_an_unexpected_error_while_sending_dead_letters_instead_of_freezing() -> None:
    """Decision: a bug below the pipeline (not Target's answer) dead-letters the batch with
    reason internal_error and logs it; before, the events stayed unfinished and the
    partition's commit froze with no signal."""
    async with Rig(window=0.0) as rig:
        rig.assign(0)
        rig.submit(0, P, x="1")
        await rig.settle()
        [call] = rig.target.open_calls()
        rig.target.crash(call)
        await rig.settle()
        [(record, error)] = rig.dlq.written
        assert (record.offset, error.stage, error.reason) == (0, "send", "internal_error")
        assert rig.pipeline.buffered == 0
        assert rig.tracker.committable() == {TP0: 1}
        assert rig.metrics.updates_sent.labels("error")._value.get() == 1
