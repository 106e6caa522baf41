"""The carried rows' records: chunked writes, forget markers, other replicas' rows restored."""

from __future__ import annotations

import json
from typing import Any

import pytest

from consumer.bulk.carry_log import CHUNK_BYTES, FORGET, SEPARATOR, KafkaCarryStore, _chunks
from consumer.bulk.held import Carry

pytestmark = pytest.mark.unit


class Message:
    def __init__(self, key: str, value: bytes | None, replica: str) -> None:
        self._key, self._value, self._replica = key.encode(), value, replica

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes]]:
        return [("replica", self._replica.encode())]


def store(replica: str = "me") -> KafkaCarryStore:
    # Never started: only the record format is exercised (no broker is contacted).
    instance = KafkaCarryStore.__new__(KafkaCarryStore)
    instance._replica = replica
    instance._wall = lambda: 1000.0
    instance._names = {}
    return instance


def rows_record(identity_type: str, rows: list[list[str]], expires: float = 2000.0) -> bytes:
    return json.dumps({"t": identity_type, "e": expires, "n": ["a", "b"], "rows": rows}).encode()


def test_rows_are_chunked_by_bytes_in_order() -> None:
    rows = [(f"id{i}", b"x" * 1000) for i in range(600)]
    chunks = _chunks(rows)
    assert [r for chunk in chunks for r in chunk] == rows
    assert len(chunks) >= 3
    assert all(sum(len(i) + len(c) + 8 for i, c in chunk) <= CHUNK_BYTES for chunk in chunks)
    assert _chunks([("big", b"y" * (2 * CHUNK_BYTES))]) == [[("big", b"y" * (2 * CHUNK_BYTES))]]


def test_another_replicas_rows_and_forgets_apply_in_log_order() -> None:
    carry = Carry(horizon=100.0, max_profiles=10, clock=lambda: 0.0)
    s = store()
    record = rows_record("mbox3rdPartyId", [["p1", "1,x%20y"], ["p2", ",2"]])
    assert s._apply(Message("rows:other:1", record, "other"), carry) == 2
    assert carry.take("mbox3rdPartyId", "p1") == {"a": "1", "b": "x y"}
    assert carry.take("mbox3rdPartyId", "p2") == {"b": "2"}
    forget = Message(f"mbox3rdPartyId{SEPARATOR}p1", FORGET, "other")
    assert s._apply(forget, carry) == 1
    assert carry.take("mbox3rdPartyId", "p1") is None
    assert carry.take("mbox3rdPartyId", "p2") == {"b": "2"}


def test_own_expired_and_foreign_records_are_skipped() -> None:
    carry = Carry(horizon=100.0, max_profiles=10, clock=lambda: 0.0)
    s = store()
    own = rows_record("mbox3rdPartyId", [["p1", "1"]])
    assert s._apply(Message("rows:me:1", own, "me"), carry) == 0
    expired = rows_record("mbox3rdPartyId", [["p2", "1"]], expires=999.0)
    s._apply(Message("rows:other:2", expired, "other"), carry)
    assert s._apply(Message("rows:other:3", b"not json", "other"), carry) == 0
    assert s._apply(Message("something-else", b"{}", "other"), carry) == 0
    assert len(carry) == 0


def test_carry_writes_one_put_per_batch_and_a_forget_per_single_update() -> None:
    calls: list[tuple[str, Any]] = []

    class Store:
        def put(self, identity_type: str, rows: list[Any], expires_in: float, names: Any) -> None:
            calls.append(("put", (identity_type, len(rows), expires_in, names)))

        def delete(self, identity_type: str, identity: str) -> None:
            calls.append(("delete", (identity_type, identity)))

        async def flush(self) -> None:
            return None

    carry = Carry(horizon=50.0, max_profiles=10, clock=lambda: 0.0, store=Store())
    carry.remember("mbox3rdPartyId", [("p1", b"1"), ("p2", b"2")], ("a",), source=0)
    carry.forget("mbox3rdPartyId", "p1")
    carry.forget("mbox3rdPartyId", "nobody")  # nothing carried: nothing written
    assert calls == [
        ("put", ("mbox3rdPartyId", 2, 50.0, ("a",))),
        ("delete", ("mbox3rdPartyId", "p1")),
    ]
