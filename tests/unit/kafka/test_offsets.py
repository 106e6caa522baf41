import itertools
import random
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.kafka import offsets as offsets_module
from consumer.kafka.offsets import OffsetTracker

pytestmark = pytest.mark.unit
TP = ("t", 0)


def test_commits_only_the_contiguous_prefix_of_done_offsets() -> None:
    tracker = OffsetTracker()
    tracker.assign([TP])
    epoch = [tracker.track(TP, o) for o in (10, 11, 12)][0]
    tracker.ack(TP, 12, epoch)
    tracker.ack(TP, 10, epoch)
    assert tracker.committable() == {TP: 11}
    tracker.ack(TP, 11, epoch)
    assert tracker.committable() == {TP: 13}
    assert tracker.outstanding() == 0


def test_committed_offsets_are_not_offered_again() -> None:
    tracker = OffsetTracker()
    tracker.assign([TP])
    epoch = tracker.track(TP, 0)
    tracker.ack(TP, 0, epoch)
    tracker.mark_committed({TP: 1})
    assert tracker.committable() == {}


def test_gaps_in_offsets_do_not_block_commits() -> None:
    # Compacted topics and transaction markers leave holes: only read offsets count.
    tracker = OffsetTracker()
    tracker.assign([TP])
    epoch = tracker.track(TP, 5)
    tracker.track(TP, 9)
    tracker.ack(TP, 9, epoch)
    tracker.ack(TP, 5, epoch)
    assert tracker.committable() == {TP: 10}


def test_acks_from_before_a_revocation_are_ignored() -> None:
    tracker = OffsetTracker()
    tracker.assign([TP])
    old = tracker.track(TP, 0)
    assert tracker.revoke([TP]) == {}
    tracker.assign([TP])
    new = tracker.track(TP, 0)
    tracker.ack(TP, 0, old)
    assert tracker.committable() == {}
    tracker.ack(TP, 0, new)
    assert tracker.committable() == {TP: 1}


def test_revoke_returns_what_is_still_committable() -> None:
    tracker = OffsetTracker()
    tracker.assign([TP, ("t", 1)])
    epoch = tracker.track(TP, 3)
    tracker.track(TP, 4)
    tracker.ack(TP, 3, epoch)
    assert tracker.revoke([TP]) == {TP: 4}
    assert tracker.assigned() == [("t", 1)]


def test_records_of_unassigned_partitions_are_not_tracked() -> None:
    tracker = OffsetTracker()
    assert tracker.track(TP, 0) == -1
    assert tracker.outstanding() == 0


@given(
    st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=300),
    st.randoms(use_true_random=False),
)
@settings(max_examples=200, deadline=None)
def test_committable_is_the_first_unacked_offset_whatever_the_ack_order(
    gaps: list[int], rng: random.Random
) -> None:
    # A small compaction threshold so the array drops its head many times in one example.
    tracker = OffsetTracker()
    tracker.assign([TP])
    offsets = list(itertools.accumulate(gaps))
    epoch = 0
    for offset in offsets:
        epoch = tracker.track(TP, offset)
    order = offsets[:]
    rng.shuffle(order)
    acked: set[int] = set()
    with patch.object(offsets_module, "COMPACT_AFTER", 4):
        for offset in order:
            tracker.ack(TP, offset, epoch)
            acked.add(offset)
            # Independent reference: the read offsets up to the first one not acked.
            prefix = list(itertools.takewhile(lambda o: o in acked, offsets))
            expected = {TP: prefix[-1] + 1} if prefix else {}
            assert tracker.committable() == expected
            assert tracker.outstanding() == len(offsets) - len(prefix)
