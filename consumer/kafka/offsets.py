"""Contiguous-ack offset tracking: commit an offset only when it and all before it are done.

Thread-safe: acks arrive on the event loop while rebalance callbacks run on the Kafka thread.
Each assignment of a partition gets a new epoch, so a late ack from before a revocation is
ignored instead of touching the new owner's bookkeeping.
"""

from __future__ import annotations

import threading
from array import array
from dataclasses import dataclass, field

TopicPartition = tuple[str, int]
# The array of outstanding offsets drops its finished head once it is this long and more than
# half of the array (amortised: each offset is moved at most once more).
COMPACT_AFTER = 4096


@dataclass(slots=True)
class _Partition:
    epoch: int
    # Offsets read and not yet committable, in the order read, from `head` on: 8 bytes each
    # in an array, where a deque of int objects took ~40 (a million held by bulk: 32 MB).
    outstanding: array[int] = field(default_factory=lambda: array("q"))
    head: int = 0
    done: set[int] = field(default_factory=set)
    next_commit: int | None = None  # offset to commit (last contiguous done + 1)
    committed: int | None = None
    sealed: bool = False  # being revoked: acks still count, nothing new may be sent


class OffsetTracker:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[TopicPartition, _Partition] = {}
        self._epochs = 0

    def assign(self, tps: list[TopicPartition]) -> None:
        with self._lock:
            for tp in tps:
                self._epochs += 1
                self._parts[tp] = _Partition(epoch=self._epochs)

    def seal(self, tps: list[TopicPartition]) -> None:
        """The partitions are being revoked: `owns` turns false, acks are still recorded."""
        with self._lock:
            for tp in tps:
                part = self._parts.get(tp)
                if part is not None:
                    part.sealed = True

    def owns(self, tp: TopicPartition, epoch: int) -> bool:
        """Whether an event read in `epoch` may still be sent: assigned then and not since
        revoked or sealed (another member is about to read it again)."""
        with self._lock:
            part = self._parts.get(tp)
            return part is not None and part.epoch == epoch and not part.sealed

    def revoke(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Forget these partitions; returns what may still be committed for them."""
        with self._lock:
            out = {}
            for tp in tps:
                part = self._parts.pop(tp, None)
                if part and part.next_commit is not None and part.next_commit != part.committed:
                    out[tp] = part.next_commit
            return out

    def track(self, tp: TopicPartition, offset: int) -> int:
        """Record a read offset; returns the epoch to hand back with its ack (-1: unassigned)."""
        with self._lock:
            part = self._parts.get(tp)
            if part is None:
                return -1
            part.outstanding.append(offset)
            return part.epoch

    def ack(self, tp: TopicPartition, offset: int, epoch: int) -> None:
        with self._lock:
            part = self._parts.get(tp)
            if part is None or part.epoch != epoch:
                return
            done = part.done
            done.add(offset)
            queue, head = part.outstanding, part.head
            end = len(queue)
            while head < end and queue[head] in done:
                first = queue[head]
                done.discard(first)
                part.next_commit = first + 1
                head += 1
            if head > COMPACT_AFTER and head * 2 > end:
                del queue[:head]  # what was popped goes, in one move
                head = 0
            part.head = head

    def highest_finished(self, tp: TopicPartition) -> int:
        """The highest offset of `tp` finished in this assignment (-1: none). A handover must
        finish everything below it before its final commit: the next owner re-sends from the
        commit, and an older event of a profile re-sent after a newer one was delivered sets
        Target back to the older value."""
        with self._lock:
            part = self._parts.get(tp)
            if part is None:
                return -1
            top = -1 if part.next_commit is None else part.next_commit - 1
            return max(top, max(part.done, default=-1))

    def finished_above_commit(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Per partition, how many events are finished above the offset it would commit now
        (only those with some): re-read by the next owner after a final commit."""
        with self._lock:
            return {tp: len(p.done) for tp in tps if (p := self._parts.get(tp)) and p.done}

    def committable(self) -> dict[TopicPartition, int]:
        with self._lock:
            return {
                tp: p.next_commit
                for tp, p in self._parts.items()
                if p.next_commit is not None and p.next_commit != p.committed
            }

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        with self._lock:
            for tp, offset in offsets.items():
                part = self._parts.get(tp)
                if part is not None:
                    part.committed = max(offset, part.committed or 0)

    def outstanding(self) -> int:
        with self._lock:
            return sum(len(p.outstanding) - p.head for p in self._parts.values())

    def assigned(self) -> list[TopicPartition]:
        with self._lock:
            return list(self._parts)
