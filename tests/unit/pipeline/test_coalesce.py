import heapq
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.coalesce import Batch, Coalescer, ProfileKey

pytestmark = pytest.mark.unit
A = ("mbox3rdPartyId", "a")
B = ("mbox3rdPartyId", "b")


def test_updates_waiting_together_merge_and_the_later_wins() -> None:
    c: Coalescer[int] = Coalescer(0.5)
    assert c.add(A, {"x": "1", "y": "1"}, 1, now=0.0) is False
    assert c.add(A, {"x": "2"}, 2, now=0.1) is True
    assert c.pop_ready(0.4, 10) == []
    (batch,) = c.pop_ready(0.5, 10)
    assert batch.attributes == {"x": "2", "y": "1"}
    assert batch.refs == [1, 2]


def test_a_profile_in_flight_gets_no_second_request_until_done() -> None:
    c: Coalescer[int] = Coalescer(0.0)
    c.add(A, {"x": "1"}, 1, now=0.0)
    (first,) = c.pop_ready(0.0, 10)
    c.add(A, {"x": "2"}, 2, now=0.0)
    c.add(B, {"x": "9"}, 3, now=0.0)
    ready = c.pop_ready(1.0, 10)
    assert [b.key for b in ready] == [B]
    c.done(A)
    (second,) = c.pop_ready(1.0, 10)
    assert second.attributes == {"x": "2"} and second.refs == [2]


def test_pop_respects_the_limit_and_due_order() -> None:
    c: Coalescer[int] = Coalescer(1.0)
    c.add(B, {}, 1, now=0.0)
    c.add(A, {}, 2, now=0.5)
    assert [b.key for b in c.pop_ready(5.0, 1)] == [B]
    assert c.next_due() == 1.5


def test_flush_makes_everything_due_at_once() -> None:
    c: Coalescer[int] = Coalescer(60.0)
    c.add(A, {}, 1, now=0.0)
    c.flush()
    c.add(B, {}, 2, now=0.0)
    assert {b.key for b in c.pop_ready(0.0, 10)} == {A, B}
    assert c.waiting() == 0 and c.in_flight() == 2


def test_a_new_batch_takes_the_attributes_over() -> None:
    c: Coalescer[int] = Coalescer(0.0)
    attributes = {"x": "1"}
    c.add(A, attributes, 1, now=0.0)
    c.add(A, {"x": "2"}, 2, now=0.0)
    (batch,) = c.pop_ready(0.0, 10)
    assert batch.attributes is attributes and attributes == {"x": "2"}


def test_a_batch_requeued_by_done_goes_in_due_order_with_new_ones() -> None:
    c: Coalescer[int] = Coalescer(1.0)
    c.add(A, {}, 1, now=0.0)
    assert [b.key for b in c.pop_ready(1.0, 10)] == [A]
    c.add(A, {}, 2, now=1.0)  # waits behind the request in flight; due at 2.0
    c.add(B, {}, 3, now=1.5)  # due at 2.5
    c.done(A)
    assert c.next_due() == 2.0
    assert [b.key for b in c.pop_ready(3.0, 10)] == [A, B]


def test_a_clock_that_goes_back_still_gives_due_order() -> None:
    c: Coalescer[int] = Coalescer(1.0)
    c.add(A, {}, 1, now=5.0)
    c.add(B, {}, 2, now=1.0)
    assert c.next_due() == 2.0
    assert [b.key for b in c.pop_ready(2.0, 10)] == [B]
    assert [b.key for b in c.pop_ready(6.0, 10)] == [A]


class HeapCoalescer:
    """The Coalescer before the FIFO (one heap of every entry): the reference semantics."""

    def __init__(self, window_seconds: float) -> None:
        self._window = window_seconds
        self._waiting: dict[ProfileKey, Batch[int]] = {}
        self._in_flight: set[ProfileKey] = set()
        self._heap: list[tuple[float, int, ProfileKey]] = []
        self._seq = itertools.count()
        self._flushing = False

    def add(self, key: ProfileKey, attributes: dict[str, str], ref: int, now: float) -> bool:
        batch = self._waiting.get(key)
        if batch is not None:
            batch.attributes.update(attributes)
            batch.refs.append(ref)
            return True
        due = now if self._flushing else now + self._window
        self._waiting[key] = Batch(key, dict(attributes), [ref], due)
        if key not in self._in_flight:
            heapq.heappush(self._heap, (due, next(self._seq), key))
        return False

    def pop_ready(self, now: float, limit: int) -> list[Batch[int]]:
        ready: list[Batch[int]] = []
        while self._heap and len(ready) < limit and self._heap[0][0] <= now:
            _, _, key = heapq.heappop(self._heap)
            batch = self._waiting.get(key)
            if batch is None or key in self._in_flight:
                continue
            del self._waiting[key]
            self._in_flight.add(key)
            ready.append(batch)
        return ready

    def done(self, key: ProfileKey) -> None:
        self._in_flight.discard(key)
        batch = self._waiting.get(key)
        if batch is not None:
            heapq.heappush(self._heap, (batch.due, next(self._seq), key))

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def flush(self) -> None:
        self._flushing = True
        for batch in self._waiting.values():
            batch.due = float("-inf")
        self._heap = [(float("-inf"), s, k) for _, s, k in self._heap]
        heapq.heapify(self._heap)

    def waiting(self) -> int:
        return len(self._waiting)

    def in_flight(self) -> int:
        return len(self._in_flight)


KEYS = [("mbox3rdPartyId", name) for name in "abcde"] + [("mboxPC", "a")]
operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.sampled_from(KEYS),
            st.dictionaries(st.sampled_from("xyz"), st.sampled_from(["1", "2", "3"]), max_size=3),
            # Mostly a clock moving forward (often not at all), sometimes one going back.
            st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0, -0.3]),
        ),
        st.tuples(st.just("pop"), st.integers(0, 4), st.sampled_from([0.0, 0.5, 1.0, 3.0])),
        st.tuples(st.just("done"), st.sampled_from(KEYS)),  # also for profiles not in flight
        st.just(("flush",)),
    ),
    max_size=60,
)


@settings(max_examples=500, deadline=None)
@given(ops=operations, window=st.sampled_from([0.0, 0.5, 1.0]))
def test_same_batches_in_the_same_order_as_one_heap(
    ops: list[tuple[Any, ...]], window: float
) -> None:
    same_as_one_heap(ops, window)


def test_a_stale_heap_entry_takes_the_batch_the_fifo_holds() -> None:
    # done() for a profile not in flight leaves a heap entry that later takes the profile's
    # next batch, queued in the FIFO: the FIFO must then skip that batch.
    a = KEYS[0]
    ops = [
        ("add", a, {"x": "1"}, 0.0),
        ("done", a),
        ("pop", 1, 3.0),
        ("done", a),
        ("add", a, {"x": "2"}, 0.5),
        ("pop", 4, 3.0),
        ("add", a, {"x": "3"}, 0.5),
        ("done", a),
        ("pop", 4, 3.0),
    ]
    same_as_one_heap(ops, 0.5)


def test_flush_makes_a_stale_fifo_batch_due_too() -> None:
    # As the previous test, then a flush: the stale batch at the FIFO's head must not keep its
    # old due and hold up the batch behind it (found in review).
    a, b = KEYS[0], KEYS[1]
    ops = [
        ("add", a, {}, 0.0),
        ("done", a),
        ("pop", 1, 3.0),
        ("done", a),
        ("add", a, {}, 0.5),
        ("pop", 1, 0.0),
        ("add", b, {}, 0.0),
        ("flush",),
        ("pop", 4, 0.0),
    ]
    same_as_one_heap(ops, 0.5)


def same_as_one_heap(ops: list[tuple[Any, ...]], window: float) -> None:
    c: Coalescer[int] = Coalescer(window)
    reference = HeapCoalescer(window)
    now = 0.0
    for ref, op in enumerate(ops):
        if op[0] == "add":
            _, key, attributes, step = op
            now += step
            got = c.add(key, dict(attributes), ref, now)
            assert got == reference.add(key, dict(attributes), ref, now)
        elif op[0] == "pop":
            _, limit, ahead = op
            shown = [(b.key, b.attributes, b.refs, b.due) for b in c.pop_ready(now + ahead, limit)]
            expected = reference.pop_ready(now + ahead, limit)
            assert shown == [(b.key, b.attributes, b.refs, b.due) for b in expected]
        elif op[0] == "done":
            c.done(op[1])
            reference.done(op[1])
        else:
            c.flush()
            reference.flush()
        assert c.next_due() == reference.next_due()
        assert (c.waiting(), c.in_flight()) == (reference.waiting(), reference.in_flight())
