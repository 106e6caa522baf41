import pytest

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
