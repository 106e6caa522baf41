import pytest

from consumer.coalesce import Coalescer

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
