"""Compiles parsed JMESPath expressions into the hot path's evaluators.

Each expression gets an `evaluate` callable: plain field chains (`payload.amount`) and
`field == 'literal'` tests, the bulk of real rules, become direct dict lookups with JMESPath's
exact semantics; everything else runs on one shared JMESPath interpreter instead of a new one
per call as `ParsedResult.search` would create. `discriminator` finds a rule's leading
`channel == '...'` test, which the mapper indexes rules by.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from jmespath.visitor import TreeInterpreter, _is_comparable

from consumer.mapping.functions import FUNCTIONS, OPTIONS

# Stateless apart from a method cache: one instance serves every expression and thread.
_INTERPRETER = TreeInterpreter(OPTIONS)

Evaluator = Callable[[Any], Any]
# Exact types JMESPath's `_is_comparable` accepts, tested first: it is an ABC isinstance check.
_COMPARABLE = frozenset({int, float, str})


def compile_evaluator(parsed: dict[str, Any]) -> Evaluator:
    """A callable giving the same result as the JMESPath interpreter for this AST."""
    chain = _field_chain(parsed)
    if chain is not None:
        return field_getter(chain)
    test = _string_comparison(parsed)
    if test is not None:
        return _string_test(field_getter(test[0]), test[1], parsed["value"] == "eq")
    if parsed["type"] == "literal":
        constant = parsed["value"]
        return lambda _event: constant
    compiled = _compile_node(parsed)
    return compiled if compiled is not None else partial(_INTERPRETER.visit, parsed)


def _compile_node(node: dict[str, Any]) -> Evaluator | None:
    """Closures doing what TreeInterpreter's visit_* methods do for the node types rules use
    (comparisons, &&, ||, function calls), over compiled children; None for the others."""
    kind = node["type"]
    if kind == "function_expression":
        args = tuple(compile_evaluator(child) for child in node["children"])
        return FUNCTIONS.evaluator(node["value"], args)
    if kind in ("and_expression", "or_expression"):
        first, second = (compile_evaluator(child) for child in node["children"])
        if kind == "and_expression":

            def both(value: Any) -> Any:
                matched = first(value)
                return matched if _is_false(matched) else second(value)

            return both

        def either(value: Any) -> Any:
            matched = first(value)
            return second(value) if _is_false(matched) else matched

        return either
    if kind == "comparator":
        compare = TreeInterpreter.COMPARATOR_FUNC[node["value"]]
        left, right = (compile_evaluator(child) for child in node["children"])
        if node["value"] in ("eq", "ne"):
            return lambda value: compare(left(value), right(value))

        def ordering(value: Any) -> Any:
            a, b = left(value), right(value)
            if (type(a) in _COMPARABLE or _is_comparable(a)) and (
                type(b) in _COMPARABLE or _is_comparable(b)
            ):
                return compare(a, b)
            return None

        return ordering
    return None


def _is_false(value: Any) -> bool:
    # TreeInterpreter._is_false: JMESPath falsiness (0 is true).
    return value == "" or value == [] or value == {} or value is None or value is False


def _field_chain(node: dict[str, Any]) -> tuple[str, ...] | None:
    if node["type"] == "field":
        return (node["value"],)
    if node["type"] != "subexpression":
        return None
    names: list[str] = []
    for child in node["children"]:
        part = _field_chain(child)
        if part is None:
            return None
        names.extend(part)
    return tuple(names)


@dataclass(frozen=True, slots=True)
class Discriminator:
    """The test a `when` starts with, `path == 'literal'` (alone or as the first operand of
    `&&`): only events whose field at `path` is that string can match the rule."""

    path: tuple[str, ...]
    literal: str
    rest: Evaluator | None  # the rest of the `when` once the test passed; None: nothing more


def discriminator(parsed: dict[str, Any]) -> Discriminator | None:
    """The Discriminator of a `when` AST, or None when it does not start with such a test.

    Only the first operand qualifies: `&&` evaluates left to right and stops at the first
    false operand, so skipping the rule when that operand is false skips nothing that could
    have run (or failed).
    """
    first, rest = _first_conjunct(parsed)
    test = _string_comparison(first)
    if test is None or first["value"] != "eq":
        return None
    return Discriminator(test[0], test[1], None if rest is None else compile_evaluator(rest))


def _first_conjunct(node: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    # `a && b && c` parses as ((a && b) && c): the first operand is the leftmost leaf. Once it
    # is true, ((a && b) && c) has the value of (b && c), the rest returned here.
    if node["type"] != "and_expression":
        return node, None
    left, right = node["children"]
    first, rest = _first_conjunct(left)
    if rest is None:
        return first, right
    return first, {"type": "and_expression", "children": [rest, right]}


def _string_comparison(node: dict[str, Any]) -> tuple[tuple[str, ...], str] | None:
    """(field path, literal) of `path == 'literal'` or `!=`, either way round; else None."""
    if node["type"] != "comparator" or node["value"] not in ("eq", "ne"):
        return None
    left, right = node["children"]
    if right["type"] == "literal":
        left, right = right, left
    chain = _field_chain(right)
    # JMESPath's equality special-cases only numbers vs booleans; with a string literal
    # it is plain ==, so a direct comparison (or a dict lookup of a str) is exact.
    if chain is None or left["type"] != "literal" or type(left["value"]) is not str:
        return None
    return chain, left["value"]


def field_getter(keys: tuple[str, ...]) -> Evaluator:
    """The value at a field path, as JMESPath's `a.b.c` gives it (None where it is missing)."""
    # JMESPath's field step is `value.get(name)`, None when the value has no .get: same here.
    if len(keys) == 1:
        (key,) = keys

        def get_one(value: Any) -> Any:
            try:
                return value.get(key)
            except AttributeError:
                return None

        return get_one
    if len(keys) == 2:
        first, second = keys

        def get_two(value: Any) -> Any:
            try:
                return value.get(first).get(second)
            except AttributeError:
                return None

        return get_two

    def get_many(value: Any) -> Any:
        try:
            for key in keys:
                value = value.get(key)
        except AttributeError:
            return None
        return value

    return get_many


def _string_test(get: Evaluator, literal: str, equal: bool) -> Evaluator:
    if equal:
        return lambda event: get(event) == literal
    return lambda event: get(event) != literal
