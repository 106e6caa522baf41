"""Evaluating the rules on one decoded event: the hot path of the mapping stage.

Semantics:
- every rule whose `when` is true (JMESPath truthiness; omitted means true) adds its
  attributes, in file order; a later rule wins for the same name. A null value means "this
  rule has nothing to say": it leaves the attribute out and does not erase an earlier rule's;
- no rule matched: `map` returns None (the caller skips and counts the event);
- rules matched but every value was null: MappingError("no_attributes");
- the identity list is the top-level one, or that of the LAST matching rule that declares one
  (the same "later rule wins" as attributes); its entries are tried in order and the first
  value that is not null, empty or blank wins. None: "no_identity". An mbox3rdPartyId longer
  than 256 characters or containing `+` or `/`: "invalid_identity" (no fallback to mboxPC:
  the event is wrong, and sending it under another id would hide that); so is an mboxPC that
  is not of a Target visitor id's characters (letters, digits, `.`, `_`, `-`; at most 128).
  Leading and trailing whitespace is stripped from an identity before any of these checks
  (a padded id would name another, non-existent profile);
- a list or map value, or a function failing at run time: "invalid_value".

Error messages name the rule, the attribute and the kind of problem, never the values: they
go to logs and DLQ headers, and values may be personal data.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, NoReturn

from jmespath.exceptions import JMESPathTypeError

from consumer.errors import MappingError
from consumer.mapping.compiler import Evaluator, discriminator, field_getter
from consumer.mapping.loader import IdentitySource, Rule, RuleSet
from consumer.mapping.render import render, render_value

MAX_THIRD_PARTY_ID = 256
# Target generates mboxPC (tntId) values itself: "1368007744041-575948.01_00" or a 32-digit hex
# id with an edge suffix ("9f1c...e2.35_0"). Adobe documents no grammar, so only what neither
# form can hold is refused: anything else (a space, '&', '/', non-ASCII) is not an id Target
# gave out, and an update for it would be silently dropped as one for an unknown profile.
MAX_PC_ID = 128
_PC_ID = re.compile(r"[0-9A-Za-z._-]{1,%d}" % MAX_PC_ID)
# What an expression or a function may raise on unexpected data (JMESPathError and
# UnrenderableValueError are ValueErrors; comparing a number with a string is a TypeError).
_EVALUATION_ERRORS = (ValueError, TypeError, ArithmeticError, LookupError, AttributeError)

_Identity = tuple[tuple[str, str, Evaluator], ...]  # (id type, expression text, evaluate)
_CompiledRule = tuple[str, Evaluator | None, tuple[tuple[str, Evaluator], ...], _Identity | None]
# An index entry: its rules; when none has a `when` left, their attributes in one list (else
# None), their names and the identity list that applies (else () and the top-level list).
_Plan = tuple[
    tuple[_CompiledRule, ...], tuple[tuple[str, Evaluator], ...] | None, tuple[str, ...], _Identity
]


@dataclass(slots=True)
class ProfileUpdate:
    """The update one event asks for: which profile, and the attributes to set.

    Not frozen: a frozen dataclass pays a setattr call per field, once per event. Its
    `attributes` is a fresh dict that the caller owns (the Coalescer merges into it).
    """

    identity_type: str  # "mbox3rdPartyId" or "mboxPC"
    identity: str
    attributes: dict[str, str]  # name without "profile." -> rendered value
    rules: tuple[str, ...]  # the rules that matched, in file order


class Mapper:
    """Applies a RuleSet to decoded events. Stateless after construction; thread-safe.

    Most rules start their `when` with a test like `channel == 'LOAN'` (a Discriminator).
    The rules are indexed by the literal of the field most of them test: an event whose field
    holds a str evaluates, in file order, only the rules indexed under that string (their
    `when` reduced to what follows the test) and the rules without a test on that field. Any
    other value (null, missing, a number, a str subclass...) is rare: such an event evaluates
    every rule with its whole `when`, exactly as written.

    When none of an index entry's rules has a `when` left, every one of them matches: the
    entry is a Plan with their attributes in one flat list, and the matched names and the
    identity list known in advance.
    """

    def __init__(self, rules: RuleSet) -> None:
        self.ruleset = rules
        self._identity = _identity(rules.identity)
        whens = [None if rule.when is None else rule.when.evaluate for rule in rules.rules]
        self._all = self._plan(tuple(map(_compile, rules.rules, whens)))
        self._field, by_value, others = _index(rules.rules, whens)
        self._by_value = {literal: self._plan(entry) for literal, entry in by_value.items()}
        self._others = self._plan(others)

    def map(self, event: dict[str, Any]) -> ProfileUpdate | None:
        """The profile update for `event`, or None when no rule matched.

        Raises MappingError with reason no_identity, invalid_identity, invalid_value or
        no_attributes; nothing else.
        """
        plan = self._all
        if self._field is not None:
            try:
                found = self._field(event)
            except _EVALUATION_ERRORS:
                found = None  # every rule then runs, and the one whose `when` fails says so
            if type(found) is str:
                plan = self._by_value.get(found, self._others)
        rules, flat, names, identity = plan
        if flat is None:
            return self._map_rules(event, rules)
        if not names:
            return None
        attributes: dict[str, str] = {}
        try:
            for key, evaluate in flat:
                value = evaluate(event)
                if value is not None:
                    attributes[key] = value if type(value) is str else render_value(value)
        except _EVALUATION_ERRORS:
            # Evaluation is pure: the rule-by-rule pass fails the same way, and names the rule.
            return self._map_rules(event, rules)
        return _update(attributes, names, identity, event)

    def _map_rules(
        self, event: dict[str, Any], rules: tuple[_CompiledRule, ...]
    ) -> ProfileUpdate | None:
        attributes: dict[str, str] = {}
        matched: list[str] = []
        identity = self._identity
        name, key = "", "when"
        try:
            for name, when, rule_attributes, rule_identity in rules:
                key = "when"
                if when is not None and not _truthy(when(event)):
                    continue
                matched.append(name)
                if rule_identity is not None:
                    identity = rule_identity
                for key, evaluate in rule_attributes:
                    value = evaluate(event)
                    if value is not None:
                        attributes[key] = value if type(value) is str else render_value(value)
        except _EVALUATION_ERRORS as exc:
            where = "when" if key == "when" else f"attribute {key!r}"
            message = f"rule {name!r}: {where}: {_describe(exc)}"
            raise MappingError("invalid_value", message) from exc
        if not matched:
            return None
        return _update(attributes, tuple(matched), identity, event)

    def _plan(self, rules: tuple[_CompiledRule, ...]) -> _Plan:
        if any(when is not None for _, when, _, _ in rules):
            return rules, None, (), self._identity
        identity = self._identity
        for _, _, _, rule_identity in rules:
            identity = identity if rule_identity is None else rule_identity
        flat = tuple(pair for _, _, attributes, _ in rules for pair in attributes)
        return rules, flat, tuple(name for name, _, _, _ in rules), identity


def _update(
    attributes: dict[str, str], names: tuple[str, ...], identity: _Identity, event: dict[str, Any]
) -> ProfileUpdate:
    if not attributes:
        raise MappingError(
            "no_attributes",
            f"rules {', '.join(names)} matched but every attribute value was null",
        )
    identity_type, identity_value = _resolve_identity(identity, event)
    return ProfileUpdate(identity_type, identity_value, attributes, names)


def _index(
    rules: tuple[Rule, ...], whens: list[Evaluator | None]
) -> tuple[Evaluator | None, dict[str, tuple[_CompiledRule, ...]], tuple[_CompiledRule, ...]]:
    """The indexed field (None: no rule starts with a test), the rules to evaluate for each
    string it is tested against, and those for any other string."""
    tests = [None if r.when is None else discriminator(r.when.compiled.parsed) for r in rules]
    paths = Counter(test.path for test in tests if test is not None)
    if not paths:
        return None, {}, ()
    path = paths.most_common(1)[0][0]
    # A test on another field stays a plain part of its rule's `when`.
    tests = [test if test is not None and test.path == path else None for test in tests]

    def candidates(literal: str | None) -> tuple[_CompiledRule, ...]:
        # In file order; a rule indexed under `literal` keeps what follows its test.
        return tuple(
            _compile(rule, when if test is None else test.rest)
            for rule, when, test in zip(rules, whens, tests, strict=True)
            if test is None or test.literal == literal
        )

    by_value = {test.literal: candidates(test.literal) for test in tests if test is not None}
    return field_getter(path), by_value, candidates(None)


def _compile(rule: Rule, when: Evaluator | None) -> _CompiledRule:
    # Flat tuples of callables: the per-event loop touches no attribute lookups it can avoid.
    return (
        rule.name,
        when,
        tuple((name, expr.evaluate) for name, expr in rule.attributes),
        None if rule.identity is None else _identity(rule.identity),
    )


def _identity(sources: tuple[IdentitySource, ...]) -> _Identity:
    return tuple((s.type, s.expression.text, s.expression.evaluate) for s in sources)


def _truthy(value: Any) -> bool:
    # JMESPath truthiness: false, null, "", [] and {} are false; 0 is TRUE.
    if value is True:
        return True
    return not (value is None or value is False or value == "" or value == [] or value == {})


def _resolve_identity(sources: _Identity, event: dict[str, Any]) -> tuple[str, str]:
    for id_type, text, evaluate in sources:
        try:
            value = evaluate(event)
            rendered = value if type(value) is str else render(value)
        except _EVALUATION_ERRORS as exc:
            raise MappingError(
                "invalid_identity", f"{id_type} from {text}: {_describe(exc)}"
            ) from exc
        if rendered is None:
            continue
        # Padding (a fixed-width source column) would reach Target as part of the id, which
        # then names another profile, one that does not exist: update-only, so lost silently.
        rendered = rendered.strip()
        if not rendered:
            continue
        if id_type == "mbox3rdPartyId" and (
            len(rendered) > MAX_THIRD_PARTY_ID or "+" in rendered or "/" in rendered
        ):
            _refuse_third_party_id(rendered, text)
        if id_type == "mboxPC" and _PC_ID.fullmatch(rendered) is None:
            _refuse_pc_id(rendered, text)
        return id_type, rendered
    tried = ", ".join(f"{text} ({id_type})" for id_type, text, _ in sources)
    raise MappingError("no_identity", f"no identity value: tried {tried}; each was null or empty")


def _refuse_third_party_id(value: str, text: str) -> NoReturn:
    if len(value) > MAX_THIRD_PARTY_ID:
        problem = f"has {len(value)} characters; Target allows at most {MAX_THIRD_PARTY_ID}"
    else:
        char = "+" if "+" in value else "/"
        problem = f"contains {char!r}, which Target does not allow"
    raise MappingError("invalid_identity", f"mbox3rdPartyId from {text} {problem}")


def _refuse_pc_id(value: str, text: str) -> NoReturn:
    if len(value) > MAX_PC_ID:
        problem = f"has {len(value)} characters; a Target visitor id has at most {MAX_PC_ID}"
    else:
        problem = "is not a Target visitor id (letters, digits, '.', '_' and '-' only)"
    raise MappingError("invalid_identity", f"mboxPC from {text} {problem}")


def _describe(exc: Exception) -> str:
    if isinstance(exc, JMESPathTypeError):
        # Its own str() embeds the offending value: keep personal data out of DLQ headers.
        expected = " or ".join(exc.expected_types)
        return f"function {exc.function_name}() expected {expected}, got {exc.actual_type}"
    return str(exc) or type(exc).__name__
