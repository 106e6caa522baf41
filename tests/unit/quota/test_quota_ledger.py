"""The ledger's replay rule, fed records directly: no Kafka, no clock, no sleep."""

from __future__ import annotations

import math

import pytest

from consumer.quota.ledger import LedgerState, QuotaRule
from consumer.quota.messages import (
    Hold,
    LeaseRequest,
    Marker,
    Record,
    RecordError,
    Release,
    Settle,
    decode,
    encode,
    key_of,
)

pytestmark = pytest.mark.unit
T0 = 1_800_000_000.0
RULE = QuotaRule(limit=100, window=60.0)


def replay(records: list[Record], rule: QuotaRule = RULE) -> LedgerState:
    state = LedgerState(rule)
    for offset, record in enumerate(records):
        state.apply(offset, key_of(record), record)
    return state


def granted(state: LedgerState, replica: str, lease: int) -> int:
    decided = state.decision(f"lease:{replica}:{lease}")
    return decided.granted if decided is not None else 0


def test_records_round_trip_and_unknown_ones_are_refused() -> None:
    records: list[Record] = [
        LeaseRequest("a", 1, 5, T0),
        Settle("a", 1, 3, T0),
        Release("a", 1, T0, 2, T0 + 1),
        Hold("a", T0 + 9),
        Marker("obs", "m1"),
    ]
    for record in records:
        assert decode(encode(record)) == record
    with pytest.raises(RecordError):
        decode(b'{"kind":"teleport"}')
    with pytest.raises(RecordError):
        decode(b"not json")


def test_a_request_gets_what_the_window_leaves_and_no_more() -> None:
    state = replay([LeaseRequest("a", 1, 70, T0), LeaseRequest("b", 1, 70, T0 + 1)])
    assert granted(state, "a", 1) == 70
    assert granted(state, "b", 1) == 30  # partial: what is left
    # Until b settles for 30, everyone counts the 70 it asked for (it could spend them).
    assert state.total == 140 and state.free() == 0
    state.apply(2, "lease:b:1", Settle("b", 1, 30, T0 + 1))
    assert state.total == 100


def test_two_replicas_replaying_the_same_log_agree_on_every_decision() -> None:
    log: list[Record] = []
    for i in range(200):
        who = "ab"[i % 2]
        log.append(LeaseRequest(who, i, 1 + i % 7, T0 + i * 0.7 + (0.05 if who == "b" else 0)))
        if i % 3 == 0:
            log.append(Release(who, i, T0 + i * 0.7, i % 2, T0 + i * 0.7 + 0.1))
    first, second = replay(log), replay(log)
    decisions = [
        (granted(first, "ab"[i % 2], i), granted(second, "ab"[i % 2], i)) for i in range(200)
    ]
    assert all(x == y for x, y in decisions)
    assert first.total == second.total and first.clock == second.clock


def test_the_window_edge_frees_a_lease_exactly_when_it_can_no_longer_count() -> None:
    state = replay([LeaseRequest("a", 1, 100, T0), Release("a", 1, T0, 100, T0 + 0.5)])
    # The last send at T0 + 0.5 may reach Target transit (and skew) later; it then counts for
    # one window; a new lease may start skew before its own clock says so.
    edge = RULE.end(T0 + 0.5) + RULE.skew
    assert state.ready_at(1, T0 + 1) == pytest.approx(edge)
    state.apply(2, "lease:b:1", LeaseRequest("b", 1, 10, edge - 0.001))
    assert granted(state, "b", 1) == 0
    state.apply(3, "lease:b:2", LeaseRequest("b", 2, 10, edge))
    assert granted(state, "b", 2) == 10


def test_an_unreleased_lease_counts_until_its_ttl_plus_the_window() -> None:
    # The owner was killed (-9) before releasing: it may have spent all, until start + ttl.
    state = replay([LeaseRequest("dead", 1, 100, T0)])
    assert state.ready_at(1, T0) == pytest.approx(RULE.end(T0 + RULE.ttl) + RULE.skew)


def test_releasing_unspent_units_gives_them_back() -> None:
    state = replay([LeaseRequest("a", 1, 100, T0), Release("a", 1, T0, 40, T0 + 0.2)])
    assert state.free() == 60
    assert state.used(T0 + 10) == 40 and state.used(T0 + 10, "b") == 0


def test_starts_never_go_back_in_log_order_whatever_the_clocks_say() -> None:
    # b's clock is 5 s behind: its lease is treated as starting when a's did, so nothing that
    # was counted at a's start can be forgotten when b's request is decided.
    state = replay([LeaseRequest("a", 1, 60, T0 + 5), LeaseRequest("b", 1, 60, T0)])
    decided = state.decision("lease:b:1")
    assert decided is not None and decided.start == T0 + 5 and decided.granted == 40


def test_a_lease_known_only_from_its_release_is_still_counted() -> None:
    # Compaction kept only the last record of a lease key: it carries the facts.
    state = replay([LeaseRequest("b", 9, 1, T0 + 1), Release("a", 1, T0, 30, T0 + 0.5)])
    assert state.used(T0 + 2) == 31
    assert state.frees_at(T0 + 2) == pytest.approx(RULE.end(T0 + 0.5))


def test_decisions_do_not_depend_on_records_that_left_the_window() -> None:
    old: list[Record] = [LeaseRequest("a", i, 50, T0 + i) for i in range(1, 5)]
    old += [Release("a", i, T0 + i, 50, T0 + i) for i in range(1, 5)]
    later = T0 + 1000
    new: list[Record] = [LeaseRequest("b", 1, 80, later), LeaseRequest("c", 1, 80, later + 1)]
    full = replay(old + new)
    compacted = replay(new)  # what a replica sees once the old keys were tombstoned
    for who in ("b", "c"):
        assert granted(full, who, 1) == granted(compacted, who, 1)
    assert sorted(full.expired) == sorted(key_of(r) for r in old[:4])


def test_holds_keep_the_latest_instant() -> None:
    state = replay([Hold("a", T0 + 30), Hold("b", T0 + 10)])
    assert state.hold_until == T0 + 30


def test_smooth_pacing_grants_the_burst_then_the_steady_rate() -> None:
    rule = QuotaRule(limit=3600, window=3600.0, smooth=True, burst=10)  # 1 unit a second
    state = replay([LeaseRequest("a", 1, 50, T0)], rule)
    assert granted(state, "a", 1) == 10
    state.apply(1, "lease:a:1", Settle("a", 1, 10, T0))
    assert state.ready_at(5, T0) == pytest.approx(T0 + 5)
    state.apply(2, "lease:b:1", LeaseRequest("b", 1, 50, T0 + 5))
    assert granted(state, "b", 1) == 5


def test_nothing_counted_means_an_infinite_eta_and_no_frees_at() -> None:
    state = LedgerState(RULE)
    assert state.used(T0) == 0 and state.frees_at(T0) is None
    assert state.ready_at(1, T0) == T0
    assert not math.isinf(state.ready_at(RULE.limit, T0))
