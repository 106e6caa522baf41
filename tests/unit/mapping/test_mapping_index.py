"""The rule index of Mapper: rules picked by the value of the field most `when`s test first.

An indexed Mapper must give exactly what evaluating every rule gives: same attributes in the
same order, same matched rules, same identity, same MappingError reason and message. The
reference here is the same Mapper over the same rules with each `when` wrapped as
`` `true` && (when) ``: equal for JMESPath, but no longer starting with a test the index uses.
"""

from __future__ import annotations

import json
import textwrap
from copy import deepcopy
from decimal import Decimal
from pathlib import Path
from typing import Any

import jmespath
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.errors import MappingError
from consumer.mapping import Mapper, ProfileUpdate, RuleSet, load_rules
from consumer.mapping.compiler import discriminator

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
SCHEMA: dict[str, Any] = json.loads((ROOT / "schemas/offline_transaction.avsc").read_text())

RULES: dict[str, Any] = {
    "identity": [{"mbox3rdPartyId": "customer.thirdPartyId"}, {"mboxPC": "customer.pcId"}],
    "rules": [
        {"name": "everyone", "attributes": {"seen": "'yes'", "last": "eventId"}},
        {
            "name": "loan",
            "when": "channel == 'LOAN'",
            "attributes": {"product": "payload.product", "last": "'loan'"},
        },
        {
            "name": "loan-big",
            "when": "channel == 'LOAN' && payload.amount > `1000` && payload.currency",
            "attributes": {"big": "'true'", "amount": "payload.amount"},
        },
        {
            "name": "kiosk",
            "when": "'KIOSK' == channel",
            "identity": [{"mboxPC": "customer.pcId"}],
            "attributes": {"action": "payload.action", "last": "'kiosk'"},
        },
        {
            "name": "billing",  # a test on another field: not indexed, evaluated for every event
            "when": "payload.reason == 'billing'",
            "attributes": {"billing": "'yes'", "last": "'billing'"},
        },
        {"name": "not-loan", "when": "channel != 'LOAN'", "attributes": {"other": "channel"}},
        {
            "name": "loan-again",
            "when": "channel == 'LOAN'",
            "identity": [{"mboxPC": "customer.pcId"}],
            "attributes": {"product": "upper(payload.product)"},
        },
        {
            "name": "gold-store",  # the channel test comes second: not indexed
            "when": "lower(payload.tier) == 'gold' && channel == 'LOYALTY_STORE'",
            "attributes": {"tier": "payload.tier"},
        },
        {
            "name": "store",
            "when": "channel == 'LOYALTY_STORE'",
            "attributes": {"t": "payload.tier"},
        },
    ],
}


def ruleset(tmp_path: Path, rules: dict[str, Any], name: str = "rules.yaml") -> RuleSet:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return load_rules(path, SCHEMA)


def unindexed(rules: dict[str, Any]) -> dict[str, Any]:
    copy = deepcopy(rules)
    for rule in copy["rules"]:
        if "when" in rule:
            rule["when"] = f"`true` && ({rule['when']})"
    return copy


class Text(str):
    """A str subclass: equal to its literal for ==, but not of type str."""


def outcome(mapper: Mapper, event: dict[str, Any]) -> Any:
    try:
        update = mapper.map(event)
    except MappingError as exc:
        return ("error", exc.reason, str(exc))
    if update is None:
        return None
    return (update, list(update.attributes))


@pytest.fixture(scope="module")
def mappers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Mapper, Mapper]:
    tmp = tmp_path_factory.mktemp("rules")
    return Mapper(ruleset(tmp, RULES)), Mapper(ruleset(tmp, unindexed(RULES), "plain.yaml"))


def event(channel: Any = "LOAN", **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "eventId": "e1",
        "channel": channel,
        "customer": {"thirdPartyId": "c1", "pcId": "1368007744041-575948.01_00"},
        "payload": {"product": "mortgage", "amount": Decimal("1234.50"), "currency": "EUR"},
        "attributes": {},
    }
    base.update(changes)
    return base


# --- which `when`s the index can use -------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "path", "literal"),
    [
        ("channel == 'LOAN'", ("channel",), "LOAN"),
        ("'LOAN' == channel", ("channel",), "LOAN"),
        ('channel == `"LOAN"`', ("channel",), "LOAN"),
        ("payload.reason == 'billing'", ("payload", "reason"), "billing"),
        ("channel == 'LOAN' && payload.amount > `1`", ("channel",), "LOAN"),
        ("(channel == 'LOAN' && eventId) && payload.amount", ("channel",), "LOAN"),
    ],
)
def test_a_leading_string_equality_is_a_discriminator(
    when: str, path: tuple[str, ...], literal: str
) -> None:
    found = discriminator(jmespath.compile(when).parsed)
    assert found is not None and (found.path, found.literal) == (path, literal)


@pytest.mark.parametrize(
    "when",
    [
        "channel != 'LOAN'",
        "channel == `1`",
        "channel == eventId",
        "payload.amount > `1` && channel == 'LOAN'",  # the first operand could fail: it runs
        "channel == 'LOAN' || channel == 'KIOSK'",
        "!(channel == 'LOAN')",
        "lower(channel) == 'loan'",
    ],
)
def test_other_whens_are_not(when: str) -> None:
    assert discriminator(jmespath.compile(when).parsed) is None


@pytest.mark.parametrize(
    ("when", "rest"),
    [
        ("channel == 'LOAN'", None),
        ("channel == 'LOAN' && payload.amount", "payload.amount"),
        ("channel == 'LOAN' && eventId && payload.amount", "eventId && payload.amount"),
    ],
)
def test_the_rest_is_what_the_when_gives_once_the_test_passed(when: str, rest: str | None) -> None:
    found = discriminator(jmespath.compile(when).parsed)
    assert found is not None
    if rest is None:
        assert found.rest is None
        return
    assert found.rest is not None
    for payload in ({"amount": 0}, {"amount": None}, {}, {"amount": "x"}):
        data = {"channel": "LOAN", "eventId": "e", "payload": payload}
        assert found.rest(data) == jmespath.search(rest, data)


# --- the index gives what evaluating every rule gives ------------------------------------


def test_order_and_the_later_rule_win_across_indexed_and_other_rules(
    mappers: tuple[Mapper, Mapper],
) -> None:
    update = mappers[0].map(event("LOAN"))
    assert update == ProfileUpdate(
        "mboxPC",
        "1368007744041-575948.01_00",  # loan-again's override, the last matching rule's
        {
            "seen": "yes",
            "last": "loan",
            "product": "MORTGAGE",
            "big": "true",
            "amount": "1234.50",
        },
        ("everyone", "loan", "loan-big", "loan-again"),
    )
    assert list(update.attributes) == ["seen", "last", "product", "big", "amount"]


def test_a_rule_on_another_field_still_applies_in_order(mappers: tuple[Mapper, Mapper]) -> None:
    update = mappers[0].map(event("KIOSK", payload={"reason": "billing", "action": "print"}))
    assert update is not None
    assert update.rules == ("everyone", "kiosk", "billing", "not-loan")
    assert update.attributes["last"] == "billing"  # billing comes after kiosk in the file
    assert update.identity_type == "mboxPC"  # kiosk's override; later rules declare none


def test_the_rest_of_a_when_is_still_evaluated(mappers: tuple[Mapper, Mapper]) -> None:
    payload = {"product": "car", "amount": Decimal("10.00"), "currency": "EUR"}
    update = mappers[0].map(event("LOAN", payload=payload))
    assert update is not None and "loan-big" not in update.rules


def test_an_error_in_the_rest_names_the_rule_and_its_when(tmp_path: Path) -> None:
    rules = {
        "identity": RULES["identity"],
        "rules": [
            {
                "name": "r",
                "when": "channel == 'LOAN' && lower(payload.amount) == 'x'",
                "attributes": {"a": "eventId"},
            }
        ],
    }
    with pytest.raises(MappingError) as info:
        Mapper(ruleset(tmp_path, rules)).map(event("LOAN"))
    assert info.value.reason == "invalid_value"
    assert str(info.value).startswith("rule 'r': when: function lower() expected")
    assert Mapper(ruleset(tmp_path, rules)).map(event("KIOSK")) is None  # never evaluated


def test_a_failing_first_operand_fails_for_every_event(tmp_path: Path) -> None:
    rules = {
        "identity": RULES["identity"],
        "rules": [
            {
                "name": "r",
                "when": "lower(payload.amount) == 'x' && channel == 'LOAN'",
                "attributes": {"a": "eventId"},
            },
            {"name": "s", "when": "channel == 'LOAN'", "attributes": {"a": "eventId"}},
        ],
    }
    mapper = Mapper(ruleset(tmp_path, rules))
    for channel in ("LOAN", "KIOSK"):
        with pytest.raises(MappingError, match="rule 'r': when:"):
            mapper.map(event(channel))


@pytest.mark.parametrize(
    "channel",
    ["LOAN", "KIOSK", "LOYALTY_STORE", "OTHER", "", None, 7, 0, True, ["LOAN"], {"LOAN": 1}],
)
def test_any_discriminator_value_maps_as_every_rule_would(
    mappers: tuple[Mapper, Mapper], channel: Any
) -> None:
    indexed, plain = mappers
    evt = event(channel, payload={"reason": "billing", "tier": "Gold", "product": "car"})
    assert outcome(indexed, evt) == outcome(plain, evt)


def test_a_str_subclass_equal_to_the_literal_still_matches(mappers: tuple[Mapper, Mapper]) -> None:
    indexed, plain = mappers
    update = indexed.map(event(Text("LOAN")))
    assert update is not None and "loan" in update.rules
    assert outcome(indexed, event(Text("LOAN"))) == outcome(plain, event(Text("LOAN")))


def test_a_missing_discriminator_field_maps_as_every_rule_would(
    mappers: tuple[Mapper, Mapper],
) -> None:
    evt = event()
    del evt["channel"]
    assert outcome(mappers[0], evt) == outcome(mappers[1], evt)
    assert outcome(mappers[0], evt)[0].rules == ("everyone", "not-loan")


def test_rules_without_any_discriminator(tmp_path: Path) -> None:
    rules = textwrap.dedent(
        """\
        identity: [{mbox3rdPartyId: customer.thirdPartyId}]
        rules:
          - {name: a, attributes: {x: "'1'"}}
          - {name: b, when: "payload.amount > `1`", attributes: {x: "'2'"}}
        """
    )
    (tmp_path / "r.yaml").write_text(rules)
    update = Mapper(load_rules(tmp_path / "r.yaml", SCHEMA)).map(event())
    assert update is not None and update.attributes == {"x": "2"} and update.rules == ("a", "b")


def test_the_example_rules_map_as_every_rule_would(tmp_path: Path) -> None:
    example = yaml.safe_load((ROOT / "examples/mapping.yaml").read_text())
    indexed = Mapper(load_rules(ROOT / "examples/mapping.yaml", SCHEMA))
    plain = Mapper(ruleset(tmp_path, unindexed(example)))
    payloads = [
        {"reason": "billing", "durationSeconds": 5, "resolved": True, "agentTeam": " t "},
        {"loanId": "L", "product": "car", "amount": Decimal("5.00"), "currency": "eur"},
        {"storeId": "S1", "tier": "Gold", "pointsEarned": 3, "basketTotal": 150.5},
        {"kioskId": "K1", "location": "Lyon", "action": "print"},
    ]
    for channel in ("CALL_CENTER", "LOAN", "LOYALTY_STORE", "KIOSK", None):
        for payload in payloads:
            evt = event(channel, payload=payload, occurredAt=None)
            assert outcome(indexed, evt) == outcome(plain, evt)


# --- the same, over generated events ------------------------------------------------------

channels = st.one_of(
    st.sampled_from(["LOAN", "KIOSK", "LOYALTY_STORE", "CALL_CENTER", "OTHER", ""]),
    st.sampled_from([None, 0, 1, 2.5, True, ["LOAN"], {"LOAN": "LOAN"}]),
    st.just("LOAN").map(Text),
)
scalars = st.one_of(
    st.none(),
    st.text(max_size=8),
    st.sampled_from(["billing", "Gold", "gold", "car", "print"]),
    st.integers(-5, 5000),
    st.decimals(places=2, min_value=-10000, max_value=10000, allow_nan=False),
    st.booleans(),
)
payloads = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(["product", "amount", "currency", "reason", "tier", "action"]),
        scalars,
        max_size=6,
    ),
)
customers = st.fixed_dictionaries(
    {"thirdPartyId": st.sampled_from([None, "", "c1", "a+b"]), "pcId": st.sampled_from([None, "p"])}
)


@settings(max_examples=400, deadline=None)
@given(
    channel=channels,
    payload=payloads,
    customer=customers,
    event_id=scalars,
    without_channel=st.booleans(),
)
def test_the_index_agrees_with_every_rule_evaluated(
    mappers: tuple[Mapper, Mapper],
    channel: Any,
    payload: Any,
    customer: Any,
    event_id: Any,
    without_channel: bool,
) -> None:
    evt = event(channel, payload=payload, customer=customer, eventId=event_id)
    if without_channel:
        del evt["channel"]
    indexed, plain = mappers
    assert outcome(indexed, evt) == outcome(plain, evt)


# --- index entries whose rules all match (one flat attribute list) -------------------------

FLAT_RULES: dict[str, Any] = {
    "identity": [{"mbox3rdPartyId": "customer.thirdPartyId"}, {"mboxPC": "customer.pcId"}],
    "rules": [
        {
            "name": "loan",
            "when": "channel == 'LOAN'",
            "attributes": {
                "product": "lower(payload.product)",
                "amount": "payload.amount",
                "last": "'loan'",
            },
        },
        {
            "name": "loan-more",
            "when": "channel == 'LOAN'",
            "identity": [{"mboxPC": "customer.pcId"}],
            "attributes": {
                "summary": "concat(payload.product, ' ', payload.amount)",
                "last": "payload.currency",
            },
        },
        {
            "name": "kiosk",
            "when": "'KIOSK' == channel",
            "attributes": {
                "action": "trim(payload.action)",
                "where": "coalesce(payload.location, payload.reason)",
            },
        },
    ],
}


@pytest.fixture(scope="module")
def flat_mappers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Mapper, Mapper]:
    tmp = tmp_path_factory.mktemp("flat")
    indexed = Mapper(ruleset(tmp, FLAT_RULES))
    # Only the entries with every rule matching take the flat path: make sure they exist.
    assert indexed._by_value["LOAN"][1] is not None and indexed._by_value["KIOSK"][1] is not None
    return indexed, Mapper(ruleset(tmp, unindexed(FLAT_RULES), "plain.yaml"))


flat_payloads = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(["product", "amount", "currency", "action", "location", "reason"]),
        st.one_of(scalars, st.just(["a list"]), st.just(float("nan"))),
        max_size=6,
    ),
)


@settings(max_examples=400, deadline=None)
@given(channel=channels, payload=flat_payloads, customer=customers)
def test_a_flat_entry_maps_and_fails_as_every_rule_would(
    flat_mappers: tuple[Mapper, Mapper], channel: Any, payload: Any, customer: Any
) -> None:
    # Same attributes in the same order, same rules and identity (the override of the last
    # rule), and on a failing value the same MappingError naming the same rule and attribute.
    indexed, plain = flat_mappers
    evt = event(channel, payload=payload, customer=customer)
    assert outcome(indexed, evt) == outcome(plain, evt)


def test_a_failing_value_in_a_flat_entry_names_its_rule(
    flat_mappers: tuple[Mapper, Mapper],
) -> None:
    indexed, _ = flat_mappers
    with pytest.raises(MappingError) as info:
        indexed.map(event("LOAN", payload={"product": "car", "amount": float("nan")}))
    assert info.value.reason == "invalid_value"
    assert "rule 'loan': attribute 'amount'" in str(info.value)
    with pytest.raises(MappingError) as info:
        indexed.map(event("KIOSK", payload={}))
    assert info.value.reason == "no_attributes" and "kiosk" in str(info.value)
