"""event_from_json gives exactly the shape fastavro decodes, or a MappingError naming the field."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pytest

from consumer.errors import MappingError
from consumer.mapping import event_from_json

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
SCHEMA: dict[str, Any] = json.loads((ROOT / "schemas/offline_transaction.avsc").read_text())
PARSED = fastavro.parse_schema(SCHEMA)
AT = datetime(2026, 11, 28, 17, 2, 50, 123000, tzinfo=timezone.utc)

JSON_PAYLOADS: dict[str, dict[str, Any]] = {
    "CALL_CENTER": {"reason": "billing", "durationSeconds": 42, "resolved": True},
    "LOAN": {"loanId": "L1", "product": "mortgage", "amount": "1234.50", "currency": "EUR"},
    "LOYALTY_STORE": {"storeId": "S1", "tier": "GOLD", "pointsEarned": 12, "basketTotal": 150},
    "KIOSK": {"kioskId": "K1", "location": "Lyon", "action": "print"},
}


def json_event(kind: str = "LOAN", **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "eventId": "e1",
        "occurredAt": "2026-11-28T17:02:50.123Z",
        "channel": kind,
        "customer": {"thirdPartyId": "c1"},
        "payload": dict(JSON_PAYLOADS[kind]),
        "attributes": {"location_label": "Paris"},
    }
    base.update(changes)
    return base


def through_avro(event: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, PARSED, event)
    buffer.seek(0)
    decoded = fastavro.schemaless_reader(buffer, PARSED)
    assert isinstance(decoded, dict)
    return decoded


def invalid(obj: Any) -> str:
    with pytest.raises(MappingError) as info:
        event_from_json(obj, SCHEMA)
    assert info.value.reason == "invalid_event"
    return str(info.value)


@pytest.mark.parametrize("channel", list(JSON_PAYLOADS))
def test_same_shape_as_fastavro(channel: str) -> None:
    converted = event_from_json(json_event(channel), SCHEMA)
    decoded = through_avro(converted)
    assert converted == decoded
    assert _types(converted) == _types(decoded)


def _types(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    return type(value).__name__


def test_the_documented_example() -> None:
    converted = event_from_json(json_event("LOAN"), SCHEMA)
    assert converted == {
        "eventId": "e1",
        "occurredAt": AT,
        "channel": "LOAN",
        "customer": {"thirdPartyId": "c1", "pcId": None},
        "payload": {
            "loanId": "L1",
            "product": "mortgage",
            "amount": Decimal("1234.50"),
            "currency": "EUR",
        },
        "attributes": {"location_label": "Paris"},
    }
    assert str(converted["payload"]["amount"]) == "1234.50"
    assert converted["occurredAt"].tzinfo is timezone.utc


@pytest.mark.parametrize(
    "occurred",
    [
        1795885370123,
        "2026-11-28T17:02:50.123Z",
        "2026-11-28T17:02:50.123+00:00",
        "2026-11-28T18:02:50.123+01:00",
        "2026-11-28T17:02:50.123",  # no offset: UTC
        "2026-11-28T17:02:50.123999Z",  # sub-millisecond digits dropped, like Avro
    ],
)
def test_timestamps(occurred: Any) -> None:
    assert event_from_json(json_event(occurredAt=occurred), SCHEMA)["occurredAt"] == AT


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        ("1234.50", "1234.50"),
        ("1234.5", "1234.50"),
        (1234.5, "1234.50"),
        (12, "12.00"),
        (Decimal("0.1"), "0.10"),
        ("-0.01", "-0.01"),
        ("9999999999.99", "9999999999.99"),
    ],
)
def test_decimals(amount: Any, expected: str) -> None:
    payload = dict(JSON_PAYLOADS["LOAN"], amount=amount)
    converted = event_from_json(json_event(payload=payload), SCHEMA)["payload"]["amount"]
    assert str(converted) == expected


@pytest.mark.parametrize(
    "amount", ["1234.567", "abc", "NaN", "Infinity", True, None, "99999999999.00"]
)
def test_bad_decimals(amount: Any) -> None:
    payload = dict(JSON_PAYLOADS["LOAN"], amount=amount)
    assert invalid(json_event(payload=payload)).startswith("payload")


def test_union_branch_by_record_name() -> None:
    wrapped = {"com.profileconsumer.events.KioskVisit": JSON_PAYLOADS["KIOSK"]}
    assert (
        event_from_json(json_event("KIOSK", payload=wrapped), SCHEMA)["payload"]
        == (JSON_PAYLOADS["KIOSK"])
    )
    short = {"KioskVisit": JSON_PAYLOADS["KIOSK"]}
    assert (
        event_from_json(json_event("KIOSK", payload=short), SCHEMA)["payload"]["action"] == "print"
    )


def test_union_of_null_and_string_accepts_both_encodings() -> None:
    customer = {"thirdPartyId": {"string": "c1"}, "pcId": None}
    converted = event_from_json(json_event(customer=customer), SCHEMA)
    assert converted["customer"] == {"thirdPartyId": "c1", "pcId": None}


def test_defaults_fill_missing_fields() -> None:
    obj = json_event("CALL_CENTER")
    del obj["attributes"]
    converted = event_from_json(obj, SCHEMA)
    assert converted["attributes"] == {}
    assert converted["payload"]["agentTeam"] is None
    assert converted["customer"]["pcId"] is None


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        (json_event(channel="CALL_CENTRE"), "channel: expected one of CALL_CENTER, LOAN"),
        (json_event(eventId=5), "eventId: expected a string"),
        (json_event(eventId="\ud800"), "eventId: expected a string of valid Unicode text"),
        (json_event(occurredAt="yesterday"), "occurredAt: expected an ISO-8601 timestamp"),
        (json_event(occurredAt=1.5), "occurredAt: expected an ISO-8601 timestamp"),
        (json_event(customer={"thirdPartyId": 5}), "customer.thirdPartyId: expected a value of"),
        (json_event(customer={"thirdParty": "c"}), "customer.thirdParty: expected no such field"),
        (json_event(payload={"reason": "x"}), "payload: expected a value of one of the union's"),
        (json_event(payload={"loanId": "L1"}), "payload: expected a value of one of the union's"),
        (json_event(attributes={"a": 1}), "attributes.a: expected a string"),
        (json_event(attributes=[]), "attributes: expected an object"),
        ({"eventId": "e1"}, "occurredAt: expected a value (the field has no default)"),
        ([], "the event: expected an object"),
        (None, "the event: expected an object"),
    ],
)
def test_mismatches_name_the_field(obj: Any, fragment: str) -> None:
    assert fragment in invalid(obj)


def test_int_ranges_are_enforced() -> None:
    payload = dict(JSON_PAYLOADS["CALL_CENTER"], durationSeconds=2**31)
    assert "payload" in invalid(json_event("CALL_CENTER", payload=payload))
    payload = dict(JSON_PAYLOADS["CALL_CENTER"], durationSeconds=True)
    assert "payload" in invalid(json_event("CALL_CENTER", payload=payload))


def test_a_generic_schema() -> None:
    schema = {
        "type": "record",
        "name": "R",
        "namespace": "n",
        "fields": [
            {"name": "xs", "type": {"type": "array", "items": "long"}},
            {"name": "day", "type": {"type": "int", "logicalType": "date"}},
            {"name": "raw", "type": "bytes"},
            {"name": "fx", "type": {"type": "fixed", "name": "F", "size": 2}},
            {"name": "again", "type": ["null", "F"], "default": None},
            {"name": "d", "type": "double"},
        ],
    }
    obj = {
        "xs": [1, 2],
        "day": "2026-01-02",
        "raw": "\u00ff",
        "fx": "ab",
        "again": {"n.F": "cd"},
        "d": 1,
    }
    converted = event_from_json(obj, schema)
    assert converted == {
        "xs": [1, 2],
        "day": datetime(2026, 1, 2).date(),
        "raw": b"\xff",
        "fx": b"ab",
        "again": b"cd",
        "d": 1.0,
    }
    assert type(converted["d"]) is float
    with pytest.raises(MappingError):
        event_from_json(dict(obj, fx="abc"), schema)
    with pytest.raises(MappingError):
        event_from_json(dict(obj, raw="\u0100"), schema)
