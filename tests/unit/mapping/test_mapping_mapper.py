"""Mapper.map: matching, attribute merging, identity choice and the MappingError reasons."""

from __future__ import annotations

import hashlib
import json
import textwrap
from copy import deepcopy
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from consumer.errors import MappingError
from consumer.mapping import Mapper, ProfileUpdate, load_rules

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
SCHEMA: dict[str, Any] = json.loads((ROOT / "schemas/offline_transaction.avsc").read_text())
AT = datetime(2026, 11, 28, 17, 2, 50, 123000, tzinfo=timezone.utc)

PAYLOADS: dict[str, dict[str, Any]] = {
    "CALL_CENTER": {
        "reason": "billing",
        "durationSeconds": 42,
        "resolved": True,
        "agentTeam": None,
    },
    "LOAN": {
        "loanId": "L1",
        "product": "mortgage",
        "amount": Decimal("1234.50"),
        "currency": "EUR",
    },
    "LOYALTY_STORE": {"storeId": "S1", "tier": "GOLD", "pointsEarned": 12, "basketTotal": 150.25},
    "KIOSK": {"kioskId": "K1", "location": "Lyon", "action": "print-statement"},
}


def event(channel: str = "LOAN", **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "eventId": "e1",
        "occurredAt": AT,
        "channel": channel,
        "customer": {"thirdPartyId": "c1", "pcId": "1368007744041-575948.01_00"},
        "payload": deepcopy(PAYLOADS[channel]),
        "attributes": {"location_label": "Paris"},
    }
    base.update(changes)
    return base


def mapper_for(tmp_path: Path, rules: str, identity: str | None = None) -> Mapper:
    identity = identity or "  - mbox3rdPartyId: customer.thirdPartyId\n  - mboxPC: customer.pcId\n"
    path = tmp_path / "rules.yaml"
    path.write_text("identity:\n" + identity + "rules:\n" + textwrap.dedent(rules))
    return Mapper(load_rules(path, SCHEMA))


@pytest.fixture(scope="module")
def example() -> Mapper:
    return Mapper(load_rules(ROOT / "examples/mapping.yaml", SCHEMA))


def reason_of(mapper: Mapper, evt: dict[str, Any]) -> str:
    with pytest.raises(MappingError) as info:
        mapper.map(evt)
    return info.value.reason


# --- the example rules ---------------------------------------------------------------------


def test_loan_event(example: Mapper) -> None:
    update = example.map(event("LOAN"))
    assert update == ProfileUpdate(
        identity_type="mbox3rdPartyId",
        identity="c1",
        attributes={
            "lastLoanProduct": "mortgage",
            "lastLoanAmount": "1234.50",
            "lastLoanCurrency": "EUR",
            "lastLoanSummary": "mortgage 1234.50 EUR",
            "lastLoanFundedAt": "2026-11-28T17:02:50.123Z",
            "lastContactChannel": "loan",
        },
        rules=("loan-funded", "loan-funded-details"),
    )


def test_call_centre_event(example: Mapper) -> None:
    update = example.map(event("CALL_CENTER"))
    assert update is not None
    assert update.attributes == {
        "lastCallCentreAt": "2026-11-28T17:02:50.123Z",
        "lastCallCentreReason": "billing",
        "callCentreResolved": "true",
        "lastCallCentreDurationSeconds": "42",
        "lastContactChannel": "call-centre",
    }  # agentTeam is null: lastCallCentreTeam is left out


def test_big_basket_only_above_100(example: Mapper) -> None:
    big = example.map(event("LOYALTY_STORE"))
    assert big is not None
    assert big.rules == ("big-basket", "loyalty-store")
    assert big.attributes["bigBasketShopper"] == "true"
    assert big.attributes["loyaltyTier"] == "gold"
    assert big.attributes["lastBasketTotal"] == "150.25"
    small = event("LOYALTY_STORE")
    small["payload"]["basketTotal"] = 100.0
    update = example.map(small)
    assert update is not None
    assert update.rules == ("loyalty-store",)
    assert "bigBasketShopper" not in update.attributes


def test_kiosk_rule_overrides_the_identity(example: Mapper) -> None:
    update = example.map(event("KIOSK"))
    assert update is not None
    assert (update.identity_type, update.identity) == ("mboxPC", "1368007744041-575948.01_00")
    assert update.attributes["kioskLocation"] == "Paris"  # the later rule's coalesce agrees
    assert update.attributes["lastKioskAction"] == "print-statement"


def test_kiosk_without_location_label_falls_back(example: Mapper) -> None:
    update = example.map(event("KIOSK", attributes={}))
    assert update is not None
    assert update.attributes["kioskLocation"] == "Lyon"


def test_kiosk_without_pc_id_has_no_identity(example: Mapper) -> None:
    evt = event("KIOSK")
    evt["customer"]["pcId"] = None
    assert reason_of(example, evt) == "no_identity"


# --- semantics -----------------------------------------------------------------------------


def test_no_rule_matches_gives_none(tmp_path: Path) -> None:
    mapper = mapper_for(
        tmp_path, "- name: r\n  when: \"channel == 'KIOSK'\"\n  attributes: {a: eventId}\n"
    )
    assert mapper.map(event("LOAN")) is None


def test_rules_apply_in_file_order_and_later_wins(tmp_path: Path) -> None:
    mapper = mapper_for(
        tmp_path,
        """\
        - name: first
          attributes: {a: "'one'", b: "'first'"}
        - name: never
          when: "channel == 'KIOSK'"
          attributes: {a: "'never'"}
        - name: second
          attributes: {a: "'two'", c: "'second'"}
        """,
    )
    update = mapper.map(event())
    assert update is not None
    assert update.rules == ("first", "second")
    assert update.attributes == {"a": "two", "b": "first", "c": "second"}
    assert list(update.attributes) == ["a", "b", "c"]


def test_a_later_null_does_not_erase_an_earlier_value(tmp_path: Path) -> None:
    mapper = mapper_for(
        tmp_path,
        """\
        - name: first
          attributes: {team: "'none'"}
        - name: second
          attributes: {team: customer.thirdPartyId}
        """,
    )
    evt = event()
    evt["customer"]["thirdPartyId"] = None
    update = mapper.map(evt)
    assert update is not None and update.attributes == {"team": "none"}


def test_when_omitted_is_always_true(tmp_path: Path) -> None:
    mapper = mapper_for(tmp_path, "- name: r\n  attributes: {id: eventId}\n")
    for channel in PAYLOADS:
        update = mapper.map(event(channel))
        assert update is not None and update.attributes == {"id": "e1"}


@pytest.mark.parametrize(
    ("when", "matches"),
    [
        ("payload.amount > `1000`", True),
        ("payload.amount > `1234.5`", False),
        ("payload.amount == `1234.5`", True),
        ("payload.amount >= `1234.50`", True),
        ("payload.amount < `2000`", True),
        ("abs(payload.amount) > `1000`", True),
        ("to_number(payload.amount) == `1234.5`", True),
        ("iso8601(occurredAt) >= '2026-11-28T00:00:00.000Z'", True),
        ("iso8601(occurredAt) < '2026-11-28T00:00:00.000Z'", False),
        ("millis(occurredAt) == `1795885370123`", True),
        ("attributes.location_label == 'Paris'", True),
        ("attributes.other == 'Paris'", False),
        ("customer.pcId != `null`", True),
        ("`0`", True),  # JMESPath: 0 is true
        ("''", False),
        ("eventId", True),
        ("attributes.missing", False),
        ("!(channel == 'LOAN')", False),
        ("channel == 'LOAN' || channel == 'KIOSK'", True),
    ],
)
def test_when_expressions(tmp_path: Path, when: str, matches: bool) -> None:
    mapper = mapper_for(
        tmp_path, f"- name: r\n  when: {json.dumps(when)}\n  attributes: {{a: eventId}}\n"
    )
    assert (mapper.map(event("LOAN")) is not None) is matches


def test_values_are_rendered_for_target(tmp_path: Path) -> None:
    mapper = mapper_for(
        tmp_path,
        """\
        - name: r
          attributes:
            string: payload.product
            decimal: payload.amount
            timestamp: occurredAt
            integer: "`12`"
            double: "`0.1`"
            big: "`1e16`"
            "yes": "`true`"
            empty: "''"
            missing: attributes.nothing
            "null": "`null`"
        """,
    )
    update = mapper.map(event("LOAN"))
    assert update is not None
    assert update.attributes == {
        "string": "mortgage",
        "decimal": "1234.50",
        "timestamp": "2026-11-28T17:02:50.123Z",
        "integer": "12",
        "double": "0.1",
        "big": "10000000000000000",
        "yes": "true",
        "empty": "",
    }


@pytest.mark.parametrize("expression", ["attributes", "[eventId]", "keys(attributes)", "`[1]`"])
def test_lists_and_maps_are_invalid_values(tmp_path: Path, expression: str) -> None:
    mapper = mapper_for(tmp_path, f"- name: r\n  attributes: {{a: {json.dumps(expression)}}}\n")
    with pytest.raises(MappingError) as info:
        mapper.map(event())
    assert info.value.reason == "invalid_value"
    assert "rule 'r': attribute 'a'" in str(info.value)


def test_a_function_error_at_run_time_is_an_invalid_value(tmp_path: Path) -> None:
    mapper = mapper_for(tmp_path, "- name: r\n  attributes: {a: lower(payload.durationSeconds)}\n")
    with pytest.raises(MappingError) as info:
        mapper.map(event("CALL_CENTER"))
    assert info.value.reason == "invalid_value"
    assert str(info.value) == (
        "rule 'r': attribute 'a': function lower() expected string or null, got number"
    )
    assert "42" not in str(info.value)  # values never reach messages


def test_a_failing_when_is_an_invalid_value(tmp_path: Path) -> None:
    mapper = mapper_for(
        tmp_path, "- name: r\n  when: upper(payload.resolved)\n  attributes: {a: eventId}\n"
    )
    with pytest.raises(MappingError) as info:
        mapper.map(event("CALL_CENTER"))
    assert info.value.reason == "invalid_value"
    assert str(info.value).startswith("rule 'r': when: function upper()")


def test_non_finite_doubles_are_invalid_values(tmp_path: Path) -> None:
    mapper = mapper_for(tmp_path, "- name: r\n  attributes: {a: payload.basketTotal}\n")
    evt = event("LOYALTY_STORE")
    evt["payload"]["basketTotal"] = float("nan")
    assert reason_of(mapper, evt) == "invalid_value"


def test_every_value_null_is_no_attributes(tmp_path: Path) -> None:
    mapper = mapper_for(
        tmp_path, "- name: r\n  attributes: {a: payload.agentTeam, b: attributes.x}\n"
    )
    with pytest.raises(MappingError) as info:
        mapper.map(event("CALL_CENTER"))
    assert info.value.reason == "no_attributes"
    assert "r" in str(info.value)


# --- identity ------------------------------------------------------------------------------


def identity_update(mapper: Mapper, third: Any, pc: Any) -> ProfileUpdate | None:
    evt = event()
    evt["customer"] = {"thirdPartyId": third, "pcId": pc}
    return mapper.map(evt)


@pytest.mark.parametrize(
    ("third", "pc", "expected"),
    [
        ("c1", "pc1", ("mbox3rdPartyId", "c1")),
        (None, "pc1", ("mboxPC", "pc1")),
        ("", "pc1", ("mboxPC", "pc1")),
        ("   ", "pc1", ("mboxPC", "pc1")),
        ("c1", None, ("mbox3rdPartyId", "c1")),
        ("x" * 256, None, ("mbox3rdPartyId", "x" * 256)),
        ("a=b&c d%", None, ("mbox3rdPartyId", "a=b&c d%")),
        (None, "pc.1_-2", ("mboxPC", "pc.1_-2")),  # mboxPC: see test_pipeline_identities.py
    ],
)
def test_first_non_empty_identity_wins(tmp_path: Path, third: Any, pc: Any, expected: Any) -> None:
    mapper = mapper_for(tmp_path, "- name: r\n  attributes: {a: eventId}\n")
    update = identity_update(mapper, third, pc)
    assert update is not None and (update.identity_type, update.identity) == expected


@pytest.mark.parametrize(("third", "pc"), [(None, None), ("", ""), (None, " ")])
def test_no_identity(tmp_path: Path, third: Any, pc: Any) -> None:
    mapper = mapper_for(tmp_path, "- name: r\n  attributes: {a: eventId}\n")
    with pytest.raises(MappingError) as info:
        identity_update(mapper, third, pc)
    assert info.value.reason == "no_identity"
    assert "customer.thirdPartyId (mbox3rdPartyId), customer.pcId (mboxPC)" in str(info.value)


@pytest.mark.parametrize("third", ["x" * 257, "secret+id", "secret/id", "+secret", "secret/"])
def test_invalid_third_party_id(tmp_path: Path, third: str) -> None:
    mapper = mapper_for(tmp_path, "- name: r\n  attributes: {a: eventId}\n")
    with pytest.raises(MappingError) as info:
        identity_update(mapper, third, "pc1")  # no fallback to mboxPC
    assert info.value.reason == "invalid_identity"
    assert third not in str(info.value)  # the id stays out of DLQ headers


def test_identity_from_a_list_is_invalid(tmp_path: Path) -> None:
    mapper = mapper_for(
        tmp_path,
        "- name: r\n  attributes: {a: eventId}\n",
        identity="  - mboxPC: keys(attributes)\n",
    )
    assert reason_of(mapper, event()) == "invalid_identity"


def test_identity_may_be_computed(tmp_path: Path) -> None:
    mapper = mapper_for(
        tmp_path,
        "- name: r\n  attributes: {a: eventId}\n",
        identity="  - mbox3rdPartyId: sha256(customer.thirdPartyId)\n",
    )
    update = mapper.map(event())
    assert update is not None
    assert update.identity == hashlib.sha256(b"c1").hexdigest()


def test_the_last_matching_override_wins(tmp_path: Path) -> None:
    mapper = mapper_for(
        tmp_path,
        """\
        - name: a
          identity: [{mboxPC: customer.pcId}]
          attributes: {a: eventId}
        - name: b
          attributes: {b: eventId}
        - name: c
          when: "channel == 'KIOSK'"
          identity: [{mbox3rdPartyId: eventId}]
          attributes: {c: eventId}
        """,
    )
    loan = mapper.map(event("LOAN"))
    kiosk = mapper.map(event("KIOSK"))
    assert loan is not None and loan.identity_type == "mboxPC"
    assert kiosk is not None and (kiosk.identity_type, kiosk.identity) == ("mbox3rdPartyId", "e1")


def test_identity_is_not_needed_when_nothing_matches(tmp_path: Path) -> None:
    mapper = mapper_for(
        tmp_path, "- name: r\n  when: \"channel == 'KIOSK'\"\n  attributes: {a: eventId}\n"
    )
    assert identity_update(mapper, None, None) is None


def test_the_update_is_independent_of_the_event(example: Mapper) -> None:
    evt = event("LOAN")
    update = example.map(evt)
    evt["payload"]["product"] = "changed"
    assert update is not None and update.attributes["lastLoanProduct"] == "mortgage"
