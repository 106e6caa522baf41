"""The oracles themselves: hand-written histories they must reject, and ones they must accept;
the reference interpreter agrees with the product's mapper on the example rules."""

from __future__ import annotations

from typing import Any

import pytest

from consumer.errors import MappingError
from consumer.mapping import Mapper, load_rules
from devtools.samples import sample_events
from tests.conftest import ROOT, SCHEMA_PATH
from tests.oracles import (
    assert_no_stale_overwrite,
    assert_regressions_corrected,
    stale_overwrites,
    uncorrected_regressions,
)
from tests.reference import expected_profiles, reference_update

pytestmark = pytest.mark.unit

P = ("mbox3rdPartyId", "p")
Q = ("mboxPC", "1-2.3_4")
# Three events of P set x to a, b, c in that order; one of Q sets x to a.
UPDATES = [(P, {"x": "a"}), (P, {"x": "b", "y": "1"}), (Q, {"x": "a"}), (P, {"x": "c"})]


def write(at: float, key: tuple[str, str], accepted: bool = True, **attributes: str) -> Any:
    identity_type, identity = key
    return {
        "at": at,
        "identity_type": identity_type,
        "identity": identity,
        "attributes": attributes,
        "accepted": accepted,
    }


def test_a_history_in_order_passes() -> None:
    history = [
        write(1, P, x="a"),
        write(2, P, x="b", y="1"),
        write(3, Q, x="a"),
        write(4, P, x="c"),
    ]
    assert stale_overwrites(history, UPDATES) == []
    assert uncorrected_regressions(history, UPDATES) == []


def test_coalesced_and_repeated_writes_pass() -> None:
    # One request for events 1-3 (coalesced), then the same request again (a retry).
    history = [write(1, P, x="c", y="1"), write(2, P, x="c", y="1")]
    assert_no_stale_overwrite(history, UPDATES)


def test_an_older_value_after_a_newer_one_fails() -> None:
    history = [write(1, P, x="c"), write(2, P, x="b")]
    [problem] = stale_overwrites(history, UPDATES)
    assert "went back to value #1 after value #2" in problem
    with pytest.raises(AssertionError, match="stale overwrite"):
        assert_no_stale_overwrite(history, UPDATES)


def test_a_stale_overwrite_later_fixed_still_fails() -> None:
    # Final state is right (c): only the history shows that b overwrote c for a while.
    history = [write(1, P, x="c"), write(2, P, x="b"), write(3, P, x="c")]
    assert len(stale_overwrites(history, UPDATES)) == 1
    assert uncorrected_regressions(history, UPDATES) == []  # but replay corrected it


def test_arrival_time_orders_the_history_not_list_order() -> None:
    history = [write(2, P, x="b"), write(1, P, x="c")]
    assert len(stale_overwrites(history, UPDATES)) == 1


def test_rejected_requests_do_not_count() -> None:
    history = [write(1, P, x="c"), write(2, P, accepted=False, x="a")]
    assert stale_overwrites(history, UPDATES) == []


def test_a_value_no_event_produced_fails() -> None:
    history = [write(1, P, x="z")]
    [problem] = stale_overwrites(history, UPDATES)
    assert "no produced event" in problem
    assert uncorrected_regressions(history, UPDATES) == [problem]


def test_profiles_are_judged_apart() -> None:
    # Q's "a" is Q's own first value, not P's going back.
    history = [write(1, P, x="c"), write(2, Q, x="a")]
    assert stale_overwrites(history, UPDATES) == []


def test_a_repeated_value_is_matched_leniently() -> None:
    updates = [(P, {"x": "a"}), (P, {"x": "b"}), (P, {"x": "a"})]
    assert stale_overwrites([write(1, P, x="b"), write(2, P, x="a")], updates) == []
    assert len(stale_overwrites([write(1, P, x="a"), write(2, P, x="b")], updates)) == 0
    # b, a, b: the second b cannot follow the third event's a.
    assert (
        len(stale_overwrites([write(1, P, x="b"), write(2, P, x="a"), write(3, P, x="b")], updates))
        == 1
    )


def test_a_replay_that_ends_behind_fails_the_crash_variant() -> None:
    history = [write(1, P, x="b"), write(2, P, x="c"), write(3, P, x="a"), write(4, P, x="b")]
    [problem] = uncorrected_regressions(history, UPDATES)
    assert "ends on value #1 although value #2 had been written" in problem
    with pytest.raises(AssertionError, match="uncorrected regression"):
        assert_regressions_corrected(history, UPDATES)


def test_a_replay_that_catches_up_passes_the_crash_variant() -> None:
    history = [write(1, P, x="b"), write(2, P, x="c"), write(3, P, x="a"), write(4, P, x="c")]
    assert_regressions_corrected(history, UPDATES)
    assert len(stale_overwrites(history, UPDATES)) == 1


def test_the_checkers_take_simulator_records_too() -> None:
    from devtools.simulator.state import ReceivedUpdate

    record = ReceivedUpdate(
        at=1.0,
        method="GET",
        identity_type=P[0],
        identity=P[1],
        attributes={"x": "b"},
        status=200,
        accepted=True,
    )
    later = ReceivedUpdate(**{**vars(record), "at": 0.5, "attributes": {"x": "c"}})
    assert len(stale_overwrites([record, later], UPDATES)) == 1


def test_the_reference_interpreter_agrees_with_the_product_on_the_example_rules() -> None:
    """Two independent statements of examples/mapping.yaml: if they differ, one is wrong."""
    import json

    from consumer.avro import load_schema

    mapper = Mapper(load_rules(ROOT / "examples/mapping.yaml", load_schema(SCHEMA_PATH)))
    events = sample_events(4000, profiles=300, seed=11)
    events[0]["customer"] = {"thirdPartyId": "  padded-1 ", "pcId": None}
    events[1]["attributes"] = {}
    events[3]["customer"] = {"thirdPartyId": None, "pcId": "not a visitor id"}
    events[7]["customer"] = {"thirdPartyId": None, "pcId": "x" * 129}
    for event in events:
        try:
            update = mapper.map(event)
        except MappingError:
            update = None  # refused: the reference must refuse it too
        got = (
            None if update is None else ((update.identity_type, update.identity), update.attributes)
        )
        assert reference_update(event) == got, json.dumps(event, default=str)
    assert expected_profiles(events[:1])[("mbox3rdPartyId", "padded-1")]
