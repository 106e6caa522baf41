"""The mapping rules file: its format, loading and validation.

```yaml
identity:                     # tried in order; the first non-empty value wins
  - mbox3rdPartyId: customer.thirdPartyId
  - mboxPC: customer.pcId
rules:
  - name: loan-funded         # required, unique
    description: free text    # optional, shown by tooling
    when: "channel == 'LOAN'" # optional JMESPath; omitted: always true
    identity:                 # optional; replaces the top-level list for events it matches
      - mboxPC: customer.pcId
    attributes:               # required: profile attribute name (no "profile.") -> JMESPath
      lastLoanAmount: payload.amount
```

`load_rules` reports EVERY problem at once, each as `FILE: rules[INDEX] (NAME): KEY: what was
expected` (`FILE: identity[0]: ...` for the top-level identity list): unknown keys, missing or
mistyped values, duplicate YAML keys, JMESPath syntax errors with their position, unknown
functions and wrong argument counts, attribute names Target refuses, duplicate rule names, and
field paths that cannot exist in the schema (see `schema_paths`).

Expressions are parsed once here and compiled for the hot path by `compiler`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jmespath
from jmespath.exceptions import IncompleteExpressionError, JMESPathError

from consumer.errors import ConfigError
from consumer.mapping.compiler import Evaluator, compile_evaluator
from consumer.mapping.functions import OPTIONS, function_names, function_signature
from consumer.mapping.schema_paths import AvroTypes, check_paths
from consumer.yamlfile import KeyPath, read_yaml_with_lines

IDENTITY_TYPES = ("mbox3rdPartyId", "mboxPC")
ATTRIBUTE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_TOP_KEYS = ("identity", "rules")
# Splits "rules[2] (name): attributes.x" into key-path parts ("rules", "2", "attributes", "x").
_PATH_PART = re.compile(r"(?:^|[.:\s])([A-Za-z_][\w-]*)?(?:\[(\d+)\])?(?:\s\([^)]*\))?")
_RULE_KEYS = ("name", "description", "when", "identity", "attributes")


@dataclass(frozen=True, slots=True)
class Expression:
    """A compiled JMESPath expression of a rule."""

    text: str
    compiled: Any  # jmespath.parser.ParsedResult
    evaluate: Evaluator  # the hot-path form; same result as `search`

    def search(self, value: Any) -> Any:
        """Evaluate the plain JMESPath way (reference semantics; slower than `evaluate`)."""
        return self.compiled.search(value, OPTIONS)


@dataclass(frozen=True, slots=True)
class IdentitySource:
    """One entry of an identity list: which Target id, taken from which expression."""

    type: str  # "mbox3rdPartyId" or "mboxPC"
    expression: Expression


@dataclass(frozen=True, slots=True)
class Rule:
    """One validated rule."""

    name: str
    index: int
    when: Expression | None
    attributes: tuple[tuple[str, Expression], ...]
    identity: tuple[IdentitySource, ...] | None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class RuleSet:
    """A validated rules file: the default identity list and the rules in file order."""

    source: str
    identity: tuple[IdentitySource, ...]
    rules: tuple[Rule, ...]


def load_rules(path: Path, schema: dict[str, Any], label: str | None = None) -> RuleSet:
    """Read, validate and compile a rules file against `schema` (the parsed .avsc).

    `label` names the file in messages (default: the path). Raises ConfigError listing every
    problem found, never only the first.
    """
    label = str(path) if label is None else label
    raw, problems, lines = read_yaml_with_lines(path, label, "rules file")
    try:
        types = AvroTypes(schema)
    except ValueError as exc:
        raise ConfigError([f"{label}: the schema is not usable: {exc}"]) from exc
    loader = _Loader(label, types, problems, lines)
    ruleset = loader.ruleset(raw)
    if problems or ruleset is None:
        raise ConfigError(problems)
    return ruleset


# --- validation ----------------------------------------------------------------------------


class _Loader:
    """Turns the raw YAML into a RuleSet, appending every problem to `problems`."""

    def __init__(
        self, label: str, types: AvroTypes, problems: list[str], lines: dict[KeyPath, int]
    ) -> None:
        self.label = label
        self.types = types
        self.problems = problems
        self.lines = lines

    def problem(self, where: str, key: str, expected: str) -> None:
        text = f"{where}: {key}: {expected}" if key else f"{where}: {expected}"
        line = self._line(where, key)
        if line and text.startswith(self.label + ":"):
            text = f"{self.label}:{line}{text[len(self.label) :]}"
        self.problems.append(text)

    def _line(self, where: str, key: str) -> int | None:
        """The line of the deepest key of `where` + `key` found in the file, if any."""
        path: list[str] = []
        for part in _PATH_PART.findall(f"{where[len(self.label) :]}.{key}"):
            name, index = part
            path += [name] if name else []
            path += [index] if index else []
        while path:
            line = self.lines.get(tuple(path))
            if line:
                return line
            path.pop()
        return None

    def ruleset(self, raw: Any) -> RuleSet | None:
        if not isinstance(raw, dict):
            self.problem(self.label, "", "expected a mapping with the keys identity and rules")
            return None
        self._unknown_keys(raw, _TOP_KEYS, self.label)
        identity = self._identity(raw.get("identity"), self.label, top=True)
        rules = self._rules(raw.get("rules"))
        return RuleSet(source=self.label, identity=identity or (), rules=tuple(rules))

    def _unknown_keys(self, raw: dict[Any, Any], allowed: tuple[str, ...], where: str) -> None:
        for key in raw:
            if key not in allowed:
                self.problem(where, str(key), f"unknown key; expected one of {', '.join(allowed)}")

    def _identity(self, raw: Any, where: str, top: bool) -> tuple[IdentitySource, ...] | None:
        """The top-level list (required) or a rule's override (optional)."""
        if raw is None and not top:
            return None
        expected = "a non-empty list of single-key mappings, each mbox3rdPartyId or mboxPC"
        if not isinstance(raw, list) or not raw:
            self.problem(where, "identity", f"expected {expected}")
            return None
        sources = []
        for index, item in enumerate(raw):
            # Top level: "FILE: identity[0]: KEY"; in a rule: "FILE: rules[i] (n): identity[0].KEY".
            item_where = f"{where}: identity[{index}]" if top else where
            item_key = "" if top else f"identity[{index}]"
            source = self._identity_source(item, item_where, item_key, expected)
            if source is not None:
                sources.append(source)
        return tuple(sources)

    def _identity_source(
        self, item: Any, where: str, key: str, expected: str
    ) -> IdentitySource | None:
        if not isinstance(item, dict) or len(item) != 1:
            self.problem(where, key, f"expected {expected}")
            return None
        ((id_type, text),) = item.items()
        id_key = f"{key}.{id_type}" if key else str(id_type)
        if id_type not in IDENTITY_TYPES:
            self.problem(where, id_key, f"unknown identity type; expected {expected}")
            return None
        expression = self._expression(text, where, id_key)
        return None if expression is None else IdentitySource(id_type, expression)

    def _rules(self, raw: Any) -> list[Rule]:
        if not isinstance(raw, list) or not raw:
            self.problem(self.label, "rules", "expected a non-empty list of rules")
            return []
        rules: list[Rule] = []
        first_index: dict[str, int] = {}
        for index, item in enumerate(raw):
            name = item.get("name") if isinstance(item, dict) else None
            shown = name if isinstance(name, str) and name.strip() else "unnamed"
            where = f"{self.label}: rules[{index}] ({shown})"
            if isinstance(name, str) and name in first_index:
                self.problem(
                    where, "name", f"expected a unique name; rules[{first_index[name]}] has it"
                )
            elif isinstance(name, str):
                first_index[name] = index
            rule = self._rule(item, index, where)
            if rule is not None:
                rules.append(rule)
        return rules

    def _rule(self, raw: Any, index: int, where: str) -> Rule | None:
        if not isinstance(raw, dict):
            self.problem(where, "", "expected a mapping with name, when and attributes")
            return None
        self._unknown_keys(raw, _RULE_KEYS, where)
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip():
            self.problem(where, "name", "expected a non-empty string")
        description = raw.get("description")
        if description is not None and not isinstance(description, str):
            self.problem(where, "description", "expected a string")
        when = None
        if "when" in raw:
            when = self._expression(raw.get("when"), where, "when")
        identity = self._identity(raw.get("identity"), where, top=False)
        attributes = self._attributes(raw.get("attributes"), where)
        if not isinstance(name, str) or attributes is None:
            return None
        return Rule(
            name=name,
            index=index,
            when=when,
            attributes=attributes,
            identity=identity,
            description=description if isinstance(description, str) else None,
        )

    def _attributes(self, raw: Any, where: str) -> tuple[tuple[str, Expression], ...] | None:
        if not isinstance(raw, dict) or not raw:
            self.problem(
                where, "attributes", "expected a non-empty mapping of attribute name to expression"
            )
            return None
        out = []
        for name, text in raw.items():
            key = f"attributes.{name}"
            if not isinstance(name, str):
                # YAML 1.1 reads yes/no/on/off/null/numbers as non-strings: say so.
                kind = "null" if name is None else type(name).__name__
                self.problem(
                    where,
                    key,
                    f"expected an attribute name; YAML read this key as a {kind}, quote it",
                )
                continue
            if not ATTRIBUTE_NAME.match(name):
                self.problem(
                    where,
                    key,
                    "expected an attribute name matching ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$",
                )
                continue
            if name.startswith("profile."):
                self.problem(
                    where, key, "expected the name without 'profile.' (it is added when sending)"
                )
                continue
            expression = self._expression(text, where, key)
            if expression is not None:
                out.append((name, expression))
        return tuple(out)

    def _expression(self, text: Any, where: str, key: str) -> Expression | None:
        if not isinstance(text, str) or not text.strip():
            self.problem(
                where,
                key,
                "expected a JMESPath expression (a non-empty string); "
                "a constant is a quoted literal, e.g. \"'true'\"",
            )
            return None
        try:
            compiled = jmespath.compile(text)
        except JMESPathError as exc:
            self.problem(where, key, f"{_syntax_error(exc, text)} in {text!r}")
            return None
        found = _function_problems(compiled.parsed) + check_paths(compiled.parsed, self.types)
        for message in found:
            self.problem(where, key, message)
        if found:
            return None
        return Expression(text, compiled, compile_evaluator(compiled.parsed))


def _syntax_error(exc: JMESPathError, text: str) -> str:
    position = getattr(exc, "lex_position", None)
    if isinstance(exc, IncompleteExpressionError):
        detail = "incomplete expression (it ends too early)"
    else:
        # LexerError keeps its explanation in `message`; ParseError in `msg`.
        detail = getattr(exc, "message", None) or getattr(exc, "msg", None) or str(exc)
    where = len(text) if position is None else position
    return f"JMESPath syntax error at position {where}: {detail}"


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for child in node.get("children", []):
            yield from _walk(child)


def _function_problems(parsed: dict[str, Any]) -> list[str]:
    problems = []
    for node in _walk(parsed):
        if node["type"] != "function_expression":
            continue
        name = node["value"]
        signature = function_signature(name)
        if signature is None:
            problems.append(f"unknown function {name}(); available: {', '.join(function_names())}")
            continue
        given = len(node["children"])
        variadic = bool(signature and signature[-1].get("variadic"))
        if (variadic and given < len(signature)) or (not variadic and given != len(signature)):
            least = "at least " if variadic else ""
            problems.append(
                f"function {name}() takes {least}{len(signature)} argument(s), got {given}"
            )
    return problems
