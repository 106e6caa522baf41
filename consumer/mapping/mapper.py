"""Evaluating the rules on one decoded event: the hot path of the mapping stage.

Semantics (issue 3):
- every rule whose `when` is true (JMESPath truthiness; omitted means true) adds its
  attributes, in file order; a later rule wins for the same name. A null value means "this
  rule has nothing to say": it leaves the attribute out and does not erase an earlier rule's;
- no rule matched: `map` returns None (the caller skips and counts the event);
- rules matched but every value was null: MappingError("no_attributes");
- the identity list is the top-level one, or that of the LAST matching rule that declares one
  (the same "later rule wins" as attributes); its entries are tried in order and the first
  value that is not null, empty or blank wins. None: "no_identity". An mbox3rdPartyId longer
  than 256 characters or containing `+` or `/`: "invalid_identity" (no fallback to mboxPC:
  the event is wrong, and sending it under another id would hide that);
- a list or map value, or a function failing at run time: "invalid_value".

Error messages name the rule, the attribute and the kind of problem, never the values: they
go to logs and DLQ headers, and values may be personal data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jmespath.exceptions import JMESPathTypeError

from consumer.errors import MappingError
from consumer.mapping.render import render
from consumer.mapping.rules import Evaluator, IdentitySource, RuleSet

MAX_THIRD_PARTY_ID = 256
_FORBIDDEN_IN_THIRD_PARTY_ID = ("+", "/")
# What an expression or a function may raise on unexpected data (JMESPathError and
# UnrenderableValueError are ValueErrors; comparing a number with a string is a TypeError).
_EVALUATION_ERRORS = (ValueError, TypeError, ArithmeticError, LookupError, AttributeError)

_Identity = tuple[tuple[str, str, Evaluator], ...]  # (id type, expression text, evaluate)
_CompiledRule = tuple[str, Evaluator | None, tuple[tuple[str, Evaluator], ...], _Identity | None]


@dataclass(frozen=True, slots=True)
class ProfileUpdate:
    """The update one event asks for: which profile, and the attributes to set."""

    identity_type: str  # "mbox3rdPartyId" or "mboxPC"
    identity: str
    attributes: dict[str, str]  # name without "profile." -> rendered value
    rules: tuple[str, ...]  # the rules that matched, in file order


class Mapper:
    """Applies a RuleSet to decoded events. Stateless after construction; thread-safe."""

    def __init__(self, rules: RuleSet) -> None:
        self.ruleset = rules
        self._identity = _identity(rules.identity)
        # Flat tuples of callables: the per-event loop touches no attribute lookups it
        # can avoid and allocates nothing but the result.
        self._rules: tuple[_CompiledRule, ...] = tuple(
            (
                rule.name,
                None if rule.when is None else rule.when.evaluate,
                tuple((name, expr.evaluate) for name, expr in rule.attributes),
                None if rule.identity is None else _identity(rule.identity),
            )
            for rule in rules.rules
        )

    def map(self, event: dict[str, Any]) -> ProfileUpdate | None:
        """The profile update for `event`, or None when no rule matched.

        Raises MappingError with reason no_identity, invalid_identity, invalid_value or
        no_attributes; nothing else.
        """
        attributes: dict[str, str] = {}
        matched: list[str] = []
        identity = self._identity
        name, key = "", "when"
        try:
            for name, when, rule_attributes, rule_identity in self._rules:
                key = "when"
                if when is not None and not _truthy(when(event)):
                    continue
                matched.append(name)
                if rule_identity is not None:
                    identity = rule_identity
                for key, evaluate in rule_attributes:
                    value = evaluate(event)
                    if value is None:
                        continue
                    rendered = value if type(value) is str else render(value)
                    if rendered is not None:
                        attributes[key] = rendered
        except _EVALUATION_ERRORS as exc:
            where = "when" if key == "when" else f"attribute {key!r}"
            message = f"rule {name!r}: {where}: {_describe(exc)}"
            raise MappingError("invalid_value", message) from exc
        if not matched:
            return None
        if not attributes:
            raise MappingError(
                "no_attributes",
                f"rules {', '.join(matched)} matched but every attribute value was null",
            )
        identity_type, identity_value = _resolve_identity(identity, event)
        return ProfileUpdate(identity_type, identity_value, attributes, tuple(matched))


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
        if rendered is None or not rendered.strip():
            continue
        if id_type == "mbox3rdPartyId":
            _check_third_party_id(rendered, text)
        return id_type, rendered
    tried = ", ".join(f"{text} ({id_type})" for id_type, text, _ in sources)
    raise MappingError("no_identity", f"no identity value: tried {tried}; each was null or empty")


def _check_third_party_id(value: str, text: str) -> None:
    if len(value) > MAX_THIRD_PARTY_ID:
        raise MappingError(
            "invalid_identity",
            f"mbox3rdPartyId from {text} has {len(value)} characters; "
            f"Target allows at most {MAX_THIRD_PARTY_ID}",
        )
    for char in _FORBIDDEN_IN_THIRD_PARTY_ID:
        if char in value:
            raise MappingError(
                "invalid_identity",
                f"mbox3rdPartyId from {text} contains {char!r}, which Target does not allow",
            )


def _describe(exc: Exception) -> str:
    if isinstance(exc, JMESPathTypeError):
        # Its own str() embeds the offending value: keep personal data out of DLQ headers.
        expected = " or ".join(exc.expected_types)
        return f"function {exc.function_name}() expected {expected}, got {exc.actual_type}"
    return str(exc) or type(exc).__name__
