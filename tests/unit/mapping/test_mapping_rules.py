"""Rules file: the issue's exact format is accepted; every problem is reported at once."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from consumer.errors import ConfigError
from consumer.mapping import RuleSet, load_rules

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
SCHEMA: dict[str, Any] = json.loads((ROOT / "schemas/offline_transaction.avsc").read_text())

ISSUE_RULES = """\
identity:                     # tried in order; the first non-empty value wins
  - mbox3rdPartyId: customer.thirdPartyId
  - mboxPC: customer.pcId
rules:
  - name: call-centre
    when: "channel == 'CALL_CENTER'"
    attributes:
      lastCallCentreAt: occurredAt
      lastCallCentreReason: payload.reason
      callCentreResolved: payload.resolved
  - name: loan-funded
    when: "channel == 'LOAN'"
    attributes:
      lastLoanProduct: payload.product
      lastLoanAmount: payload.amount
      lastLoanCurrency: payload.currency
  - name: big-basket
    when: "channel == 'LOYALTY_STORE' && payload.basketTotal > `100`"
    attributes:
      bigBasketShopper: "'true'"
      loyaltyTier: lower(payload.tier)
  - name: kiosk
    when: "channel == 'KIOSK'"
    identity:                 # a rule may override the identity
      - mboxPC: customer.pcId
    attributes:
      lastKioskAction: payload.action
      kioskLocation: attributes.location_label
"""


def load(tmp_path: Path, text: str, label: str | None = None) -> RuleSet:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_rules(path, SCHEMA, label=label)


def problems(tmp_path: Path, text: str) -> list[str]:
    """The messages without their line numbers (test_problems_give_the_line checks those)."""
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, label="rules.yaml")
    return [_LINE.sub("rules.yaml:", p) for p in info.value.problems]


_LINE = re.compile(r"^rules\.yaml:\d+:")


def test_problems_give_the_line(tmp_path: Path) -> None:
    text = (
        "identity:\n"
        "  - mbox3rdPartyId: customer.thirdPartId\n"  # line 2
        "rules:\n"
        "  - name: a\n"
        "    when: \"channel == 'LOAN'\"\n"
        "    attributes:\n"
        "      x: payload.resaon\n"  # line 7
        "    extra: 1\n"  # line 8
    )
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, label="rules.yaml")
    lines = sorted(p.split(" ", 1)[0] for p in info.value.problems)
    assert lines == ["rules.yaml:2:", "rules.yaml:7:", "rules.yaml:8:"]


def one_rule(attributes: str, when: str | None = None, extra: str = "") -> str:
    when_line = f"    when: {json.dumps(when)}\n" if when is not None else ""
    return (
        "identity:\n  - mbox3rdPartyId: customer.thirdPartyId\n"
        "rules:\n  - name: r\n" + when_line + extra + "    attributes:\n" + attributes
    )


def test_the_issue_format_is_accepted(tmp_path: Path) -> None:
    ruleset = load(tmp_path, ISSUE_RULES)
    assert [r.name for r in ruleset.rules] == ["call-centre", "loan-funded", "big-basket", "kiosk"]
    assert [(s.type, s.expression.text) for s in ruleset.identity] == [
        ("mbox3rdPartyId", "customer.thirdPartyId"),
        ("mboxPC", "customer.pcId"),
    ]
    kiosk = ruleset.rules[3]
    assert kiosk.identity is not None
    assert [(s.type, s.expression.text) for s in kiosk.identity] == [("mboxPC", "customer.pcId")]
    assert [name for name, _ in ruleset.rules[2].attributes] == ["bigBasketShopper", "loyaltyTier"]
    assert ruleset.rules[0].identity is None


def test_the_example_file_holds_the_issue_rules_first() -> None:
    example = load_rules(ROOT / "examples/mapping.yaml", SCHEMA)
    issue = load_rules_from_text(ISSUE_RULES)
    assert [_describe(r) for r in example.rules[:4]] == [_describe(r) for r in issue.rules]
    channels = {r.when.text for r in example.rules[4:] if r.when is not None}
    for channel in ("CALL_CENTER", "LOAN", "LOYALTY_STORE", "KIOSK"):
        assert any(channel in text for text in channels), channel


def load_rules_from_text(text: str) -> RuleSet:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return load(Path(tmp), text)


def _describe(rule: Any) -> tuple[Any, ...]:
    identity = (
        None if rule.identity is None else [(s.type, s.expression.text) for s in rule.identity]
    )
    when = None if rule.when is None else rule.when.text
    return rule.name, when, identity, [(n, e.text) for n, e in rule.attributes]


def test_when_may_be_omitted(tmp_path: Path) -> None:
    ruleset = load(tmp_path, one_rule("      eventId: eventId\n"))
    assert ruleset.rules[0].when is None


def test_description_is_kept(tmp_path: Path) -> None:
    ruleset = load(tmp_path, one_rule("      a: eventId\n", extra="    description: hello\n"))
    assert ruleset.rules[0].description == "hello"


def test_the_label_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, one_rule("      a: payload.resaon\n"), label="mapping/rules.yaml")
    assert info.value.problems[0].startswith("mapping/rules.yaml:6: rules[0] (r): attributes.a: ")


def test_without_label_the_path_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, one_rule("      a: payload.resaon\n"))
    assert info.value.problems[0].startswith(f"{tmp_path / 'rules.yaml'}:6: rules[0] (r): ")


def test_a_field_typo_names_file_rule_index_and_key(tmp_path: Path) -> None:
    text = ISSUE_RULES.replace("lastCallCentreReason: payload.reason", "x: payload.resaon")
    found = problems(tmp_path, text)
    assert len(found) == 1
    assert found[0].startswith("rules.yaml: rules[0] (call-centre): attributes.x: ")
    assert "'payload.resaon' cannot exist" in found[0]
    assert "did you mean 'reason'" in found[0]


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("payload.resaon", "'payload.resaon' cannot exist"),
        ("customer.id", "'customer' has no field 'id'"),
        ("nope", "the event has no field 'nope'"),
        ("lower(payload.tierr)", "'payload.tierr' cannot exist"),
        ("customer.thirdPartyId.x", "which has no fields"),
        ("eventId.length", "which has no fields"),
        ("[payload.reason, payload.bogus]", "'payload.bogus' cannot exist"),
        ("{a: payload.bogus}", "'payload.bogus' cannot exist"),
        ("payload.reason || payload.bogus", "'payload.bogus' cannot exist"),
        ("customer | thirdParty", "no field 'thirdParty'"),
        ("@.payload.bogus", "'payload.bogus' cannot exist"),
        ("customer.*.x", "which has no fields"),
    ],
)
def test_field_paths_that_cannot_exist(tmp_path: Path, expression: str, fragment: str) -> None:
    found = problems(tmp_path, one_rule(f"      a: {json.dumps(expression)}\n"))
    assert len(found) == 1, found
    assert fragment in found[0]
    assert found[0].startswith("rules.yaml: rules[0] (r): attributes.a: ")


@pytest.mark.parametrize(
    "expression",
    [
        "payload.reason",  # a union: some branch has it
        "payload.amount",
        "payload.basketTotal",
        "payload.action",
        "attributes.any_key_at_all",  # a map: every key may exist
        'attributes."with space"',
        "customer.thirdPartyId",
        "lower(payload.tier)",
        "coalesce(attributes.location_label, payload.location)",
        "sort_by(keys(attributes), &@)",  # inside an expression reference: not checked
        "payload.*",
        '`{"a": 1}`.a',  # a literal: nothing to check
        "iso8601(occurredAt)",
        "millis(occurredAt)",
    ],
)
def test_field_paths_that_can_exist(tmp_path: Path, expression: str) -> None:
    load(tmp_path, one_rule(f"      a: {json.dumps(expression)}\n"))


def test_when_is_checked_like_attributes(tmp_path: Path) -> None:
    found = problems(tmp_path, one_rule("      a: eventId\n", when="chanel == 'LOAN'"))
    assert found[0].startswith("rules.yaml: rules[0] (r): when: field path 'chanel' cannot exist")


def test_an_enum_literal_that_is_no_symbol(tmp_path: Path) -> None:
    found = problems(tmp_path, one_rule("      a: eventId\n", when="channel == 'CALL_CENTRE'"))
    assert len(found) == 1
    assert "'CALL_CENTRE' is not a symbol of 'channel'" in found[0]
    assert "CALL_CENTER" in found[0]


@pytest.mark.parametrize(
    ("when", "fragment"),
    [
        ("occurredAt > '2026-01-01'", "is a timestamp"),
        ("occurredAt == '2026-01-01T00:00:00.000Z'", "is a timestamp"),
        ("payload.basketTotal > '100'", "compared with a string literal"),
        ("payload.amount >= '1000'", "compared with a string literal"),
        ("eventId < `3`", "compared with a number literal"),
        ("payload.pointsEarned > `true`", "always false"),
        # JMESPath has no `null` keyword: bare null is a field of that name.
        ("customer.thirdPartyId == null", "no field 'null'"),
    ],
)
def test_comparisons_that_cannot_work(tmp_path: Path, when: str, fragment: str) -> None:
    found = problems(tmp_path, one_rule("      a: eventId\n", when=when))
    assert len(found) == 1, found
    assert fragment in found[0]


@pytest.mark.parametrize(
    "when",
    [
        "payload.amount > `1000`",
        "payload.basketTotal >= `99.5`",
        "iso8601(occurredAt) >= '2026-01-01T00:00:00.000Z'",
        "millis(occurredAt) > `0`",
        "channel != 'KIOSK'",
        "eventId > 'e'",
        "customer.thirdPartyId == `null`",
    ],
)
def test_comparisons_that_work(tmp_path: Path, when: str) -> None:
    load(tmp_path, one_rule("      a: eventId\n", when=when))


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("payload.reason ==", "JMESPath syntax error at position 17: incomplete expression"),
        ("foo bar", "JMESPath syntax error at position 4: Unexpected token: bar"),
        ("a ~ b", "JMESPath syntax error at position 2: Unknown token ~"),
        ("'abc", "JMESPath syntax error at position 0: Unclosed ' delimiter"),
        ("lowerr(payload.tier)", "unknown function lowerr(); available: "),
        ("lower(payload.tier, 'x')", "function lower() takes 1 argument(s), got 2"),
        ("concat()", "function concat() takes at least 1 argument(s), got 0"),
        ("", "expected a JMESPath expression"),
    ],
)
def test_expression_errors(tmp_path: Path, expression: str, fragment: str) -> None:
    found = problems(tmp_path, one_rule(f"      a: {json.dumps(expression)}\n"))
    assert len(found) == 1, found
    assert found[0].startswith("rules.yaml: rules[0] (r): attributes.a: ")
    assert fragment in found[0]


@pytest.mark.parametrize("value", ["true", "12", "null", "[a]", "{a: b}"])
def test_an_attribute_value_must_be_an_expression_string(tmp_path: Path, value: str) -> None:
    found = problems(tmp_path, one_rule(f"      a: {value}\n"))
    assert found == [
        "rules.yaml: rules[0] (r): attributes.a: expected a JMESPath expression (a non-empty "
        "string); a constant is a quoted literal, e.g. \"'true'\""
    ]


@pytest.mark.parametrize("name", ["a" * 128, "_x", "9lives", "a.b-c_d", "X"])
def test_good_attribute_names(tmp_path: Path, name: str) -> None:
    load(tmp_path, one_rule(f"      {json.dumps(name)}: eventId\n"))


@pytest.mark.parametrize(
    "name", ["a" * 129, ".x", "-x", "with space", "é", "a/b", "a&b", "a=b", "", "profile.x"]
)
def test_bad_attribute_names(tmp_path: Path, name: str) -> None:
    found = problems(tmp_path, one_rule(f"      {json.dumps(name)}: eventId\n"))
    assert len(found) == 1, found
    assert found[0].startswith(f"rules.yaml: rules[0] (r): attributes.{name}: expected ")


def test_a_quoted_numeric_attribute_name_is_fine(tmp_path: Path) -> None:
    load(tmp_path, one_rule("      '12': eventId\n"))


@pytest.mark.parametrize(
    ("key", "shown", "kind"),
    [("12", "12", "int"), ("yes", "True", "bool"), ("null", "None", "null")],
)
def test_a_non_string_attribute_name_is_reported(
    tmp_path: Path, key: str, shown: str, kind: str
) -> None:
    # YAML 1.1 reads these keys as an int, a bool and null: the message says so.
    found = problems(tmp_path, one_rule(f"      {key}: eventId\n"))
    assert found == [
        f"rules.yaml: rules[0] (r): attributes.{shown}: expected an attribute name; "
        f"YAML read this key as a {kind}, quote it"
    ]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = """\
    identity:
      - mbox3rdPartyId: customer.thirdPartId
      - mboxPCX: customer.pcId
      - {}
    extra: 1
    rules:
      - name: a
        whne: "x"
        when: "channel == 'CALL_CENTRE'"
        attributes:
          "bad name": payload.reason
          ok: lowerr(payload.reason)
      - name: a
        identity:
          - mboxPC: customer.pc
        attributes: {}
      - 5
      - attributes: {x: b}
    """
    assert problems(tmp_path, text) == [
        "rules.yaml: extra: unknown key; expected one of identity, rules",
        "rules.yaml: identity[0]: mbox3rdPartyId: field path 'customer.thirdPartId' cannot exist"
        " in the schema: 'customer' has no field 'thirdPartId' (did you mean 'thirdPartyId'?);"
        " its fields: pcId, thirdPartyId",
        "rules.yaml: identity[1]: mboxPCX: unknown identity type; expected a non-empty list of"
        " single-key mappings, each mbox3rdPartyId or mboxPC",
        "rules.yaml: identity[2]: expected a non-empty list of single-key mappings, each"
        " mbox3rdPartyId or mboxPC",
        "rules.yaml: rules[0] (a): whne: unknown key; expected one of name, description, when,"
        " identity, attributes",
        "rules.yaml: rules[0] (a): when: 'CALL_CENTRE' is not a symbol of 'channel' (expected one"
        " of: CALL_CENTER, LOAN, LOYALTY_STORE, KIOSK)",
        "rules.yaml: rules[0] (a): attributes.bad name: expected an attribute name matching"
        " ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$",
        "rules.yaml: rules[0] (a): attributes.ok: unknown function lowerr(); available: abs, avg,"
        " ceil, coalesce, concat, contains, ends_with, floor, iso8601, join, keys, length, lower,"
        " map, max, max_by, merge, millis, min, min_by, not_null, reverse, sha256, sort, sort_by,"
        " starts_with, sum, to_array, to_number, to_string, trim, type, upper, values",
        "rules.yaml: rules[1] (a): name: expected a unique name; rules[0] has it",
        "rules.yaml: rules[1] (a): identity[0].mboxPC: field path 'customer.pc' cannot exist in"
        " the schema: 'customer' has no field 'pc' (did you mean 'pcId'?); its fields: pcId,"
        " thirdPartyId",
        "rules.yaml: rules[1] (a): attributes: expected a non-empty mapping of attribute name to"
        " expression",
        "rules.yaml: rules[2] (unnamed): expected a mapping with name, when and attributes",
        "rules.yaml: rules[3] (unnamed): name: expected a non-empty string",
        "rules.yaml: rules[3] (unnamed): attributes.x: field path 'b' cannot exist in the schema:"
        " the event has no field 'b'; its fields: attributes, channel, customer, eventId,"
        " occurredAt, payload",
    ]


def test_duplicate_yaml_keys_are_reported(tmp_path: Path) -> None:
    found = problems(tmp_path, one_rule("      a: eventId\n      a: channel\n"))
    assert found == ["rules.yaml: line 7: duplicate key 'a' (each key may appear once)"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "rules.yaml: expected a mapping with the keys identity and rules"),
        ("- a\n", "rules.yaml: expected a mapping with the keys identity and rules"),
        ("identity: []\nrules: []\n", "rules.yaml: identity: expected a non-empty list"),
        ("identity:\n  - mboxPC: customer.pcId\n", "rules.yaml: rules: expected a non-empty list"),
        (
            "identity:\n  - mboxPC: customer.pcId\n  - mboxPC: customer.pcId\n    x: y\n"
            "rules: []\n",
            "rules.yaml: identity[1]: expected a non-empty list of single-key mappings",
        ),
    ],
)
def test_structural_problems(tmp_path: Path, text: str, expected: str) -> None:
    found = problems(tmp_path, text)
    assert found[0].startswith(expected), found


def test_rule_identity_problems_name_the_rule(tmp_path: Path) -> None:
    found = problems(tmp_path, one_rule("      a: eventId\n", extra="    identity: mboxPC\n"))
    assert found == [
        "rules.yaml: rules[0] (r): identity: expected a non-empty list of single-key mappings,"
        " each mbox3rdPartyId or mboxPC"
    ]


def test_invalid_yaml(tmp_path: Path) -> None:
    found = problems(tmp_path, "rules: [\n")
    assert len(found) == 1 and found[0].startswith("rules.yaml: not valid YAML: ")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_rules(tmp_path / "nope.yaml", SCHEMA)
    assert "cannot read the rules file" in info.value.problems[0]


def test_yaml_tags_are_not_executed(tmp_path: Path) -> None:
    found = problems(tmp_path, "rules: !!python/object/apply:os.system ['true']\n")
    assert "not valid YAML" in found[0]
