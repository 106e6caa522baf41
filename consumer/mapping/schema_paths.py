"""Which field paths can exist in an Avro schema, checked on a JMESPath AST before any event.

`check_paths` walks an expression's AST from the root, following field chains through the
schema (`payload.reason`: the union `payload` has the field if ANY branch has it; a map such
as `attributes` accepts every key). A path no event of the schema can have is a problem, with
a "did you mean" when a field of the same place is close. Where the walk cannot know the type
(inside projections, after a function, a literal) it stops checking instead of guessing: a
false alarm would block start-up for a rule that is fine.

The same walk catches comparisons that can never work at run time: a string that is not a
symbol of the enum it is compared with, an ordering comparison of a timestamp (a `datetime`
is not comparable in JMESPath), and number-versus-string orderings (they raise in Python).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "error", "enum", "fixed"})
_TIMESTAMPS = frozenset(
    {"timestamp-millis", "timestamp-micros", "local-timestamp-millis", "local-timestamp-micros"}
)
_ORDERING = frozenset({"lt", "gt", "lte", "gte"})

# A set of possible Avro types at some point of an expression; None: not known (not checked).
TypeSet = tuple[Any, ...] | None


class AvroTypes:
    """A parsed .avsc with named types resolved: union branches, record fields, categories."""

    def __init__(self, schema: Any) -> None:
        self._names: dict[str, Any] = {}
        self._full_names: dict[int, str] = {}
        self._collect_names(schema, "")
        self.root: Any = self.resolve(schema)
        self._fields: dict[int, dict[str, Any]] = {}

    def resolve(self, avro_type: Any) -> Any:
        """Follow a named-type reference; anything else is returned as is."""
        if isinstance(avro_type, str) and avro_type not in PRIMITIVES:
            found = self._names.get(avro_type)
            if found is None:
                found = self._names.get(avro_type.rpartition(".")[2])
            if found is None:
                raise ValueError(f"the schema references an unknown type {avro_type!r}")
            return found
        if isinstance(avro_type, dict) and isinstance(avro_type.get("type"), (dict, list)):
            return self.resolve(avro_type["type"])
        if isinstance(avro_type, dict) and avro_type.get("type") in PRIMITIVES:
            # {"type": "string"} without a logical type is just "string".
            return avro_type if "logicalType" in avro_type else avro_type["type"]
        return avro_type

    def branches(self, avro_type: Any) -> tuple[Any, ...]:
        """The resolved non-union types a value of `avro_type` may have."""
        resolved = self.resolve(avro_type)
        if isinstance(resolved, list):
            out: list[Any] = []
            for branch in resolved:
                out.extend(self.branches(branch))
            return tuple(out)
        return (resolved,)

    def fields(self, record: dict[str, Any]) -> dict[str, Any]:
        """A record's fields by name (cached)."""
        cached = self._fields.get(id(record))
        if cached is None:
            cached = {f["name"]: f["type"] for f in record.get("fields", [])}
            self._fields[id(record)] = cached
        return cached

    def full_name(self, avro_type: Any) -> str:
        """The full name of a named type (namespace included), else the Avro type name."""
        return self._full_names.get(id(avro_type)) or kind_of(avro_type)

    def _collect_names(self, node: Any, namespace: str) -> None:
        if isinstance(node, list):
            for branch in node:
                self._collect_names(branch, namespace)
            return
        if not isinstance(node, dict):
            return
        kind = node.get("type")
        if kind in _NAMED and isinstance(node.get("name"), str):
            namespace = self._register(node, namespace)
        for child in _children(node):
            self._collect_names(child, namespace)

    def _register(self, node: dict[str, Any], namespace: str) -> str:
        name: str = node["name"]
        namespace = node.get("namespace", namespace) or ""
        full = name if "." in name else f"{namespace}.{name}" if namespace else name
        self._names[full] = node
        self._full_names[id(node)] = full
        self._names.setdefault(full.rpartition(".")[2], node)
        return full.rpartition(".")[0]


def _children(node: dict[str, Any]) -> Iterable[Any]:
    kind = node.get("type")
    if isinstance(kind, (dict, list)):
        yield kind
    if kind in ("record", "error"):
        for fld in node.get("fields", []):
            yield fld.get("type")
    elif kind == "array":
        yield node.get("items")
    elif kind == "map":
        yield node.get("values")


def kind_of(avro_type: Any) -> str:
    """The Avro type name of a resolved type (`record`, `map`, `long`...)."""
    if isinstance(avro_type, dict):
        return str(avro_type.get("type"))
    return str(avro_type)


def category(avro_type: Any) -> str:
    """What a decoded value of the type is to a rule: number, string, timestamp, record..."""
    kind = kind_of(avro_type)
    logical = avro_type.get("logicalType") if isinstance(avro_type, dict) else None
    if logical in _TIMESTAMPS and kind == "long":
        return "timestamp"
    if logical == "decimal" and kind in ("bytes", "fixed"):
        return "number"
    if logical == "date" and kind == "int":
        return "date"
    if kind in ("int", "long", "float", "double"):
        return "number"
    if kind in ("string", "enum"):
        return "string"
    if kind in ("record", "error"):
        return "record"
    if kind == "fixed":
        return "bytes"
    return kind  # null, boolean, bytes, map, array


def _literal_category(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "map"


@dataclass
class _Checker:
    types: AvroTypes
    problems: list[str] = field(default_factory=list)

    def visit(self, node: dict[str, Any], ctx: TypeSet, path: str) -> tuple[TypeSet, str]:
        handler = getattr(self, f"_visit_{node['type']}", None)
        if handler is None:
            for child in node.get("children", []):
                if isinstance(child, dict):
                    self.visit(child, ctx, path)
            return None, ""
        result: tuple[TypeSet, str] = handler(node, ctx, path)
        return result

    def _visit_field(self, node: dict[str, Any], ctx: TypeSet, path: str) -> tuple[TypeSet, str]:
        name: str = node["value"]
        here = f"{path}.{name}" if path else name
        if ctx is None:
            return None, here
        found: list[Any] = []
        containers: list[Any] = []
        for avro_type in ctx:
            kind = kind_of(avro_type)
            if kind in ("record", "error"):
                containers.append(avro_type)
                fields = self.types.fields(avro_type)
                if name in fields:
                    found.extend(self.types.branches(fields[name]))
            elif kind == "map":
                containers.append(avro_type)
                found.extend(self.types.branches(avro_type["values"]))
        if found:
            return tuple(found), here
        self._report_missing(name, here, path, ctx, containers)
        return None, here

    def _report_missing(
        self, name: str, here: str, path: str, ctx: tuple[Any, ...], containers: list[Any]
    ) -> None:
        where = repr(path) if path else "the event"
        if not containers:
            kinds = " or ".join(sorted({kind_of(t) for t in ctx}))
            self.problems.append(
                f"field path {here!r} cannot exist in the schema: {where} is {kinds}, "
                "which has no fields"
            )
            return
        known = sorted({f for rec in containers for f in self.types.fields(rec)})
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        self.problems.append(
            f"field path {here!r} cannot exist in the schema: {where} has no field "
            f"{name!r}{hint}; its fields: {', '.join(known)}"
        )

    def _visit_subexpression(
        self, node: dict[str, Any], ctx: TypeSet, path: str
    ) -> tuple[TypeSet, str]:
        for child in node["children"]:
            ctx, path = self.visit(child, ctx, path)
        return ctx, path

    _visit_index_expression = _visit_subexpression
    _visit_pipe = _visit_subexpression

    def _visit_current(self, node: dict[str, Any], ctx: TypeSet, path: str) -> tuple[TypeSet, str]:
        return ctx, path

    _visit_identity = _visit_current

    def _visit_literal(self, node: dict[str, Any], ctx: TypeSet, path: str) -> tuple[TypeSet, str]:
        return None, ""

    def _visit_expref(self, node: dict[str, Any], ctx: TypeSet, path: str) -> tuple[TypeSet, str]:
        # An expression reference runs on elements a function picks: the type is unknown.
        for child in node["children"]:
            self.visit(child, None, "")
        return None, ""

    def _visit_projection(
        self, node: dict[str, Any], ctx: TypeSet, path: str
    ) -> tuple[TypeSet, str]:
        base, base_path = self.visit(node["children"][0], ctx, path)
        element = self._elements(base, node["type"])
        for child in node["children"][1:]:
            self.visit(child, element, f"{base_path}[]" if element is not None else "")
        return None, ""

    _visit_value_projection = _visit_projection
    _visit_filter_projection = _visit_projection

    def _elements(self, base: TypeSet, kind: str) -> TypeSet:
        if base is None:
            return None
        out: list[Any] = []
        for avro_type in base:
            base_kind = kind_of(avro_type)
            if base_kind == "array" and kind != "value_projection":
                out.extend(self.types.branches(avro_type["items"]))
            elif base_kind == "map" and kind == "value_projection":
                out.extend(self.types.branches(avro_type["values"]))
            elif base_kind in ("record", "error") and kind == "value_projection":
                for field_type in self.types.fields(avro_type).values():
                    out.extend(self.types.branches(field_type))
        # Nothing to project over: the projection is always null, nothing to check after it.
        return tuple(out) if out else None

    def _visit_comparator(
        self, node: dict[str, Any], ctx: TypeSet, path: str
    ) -> tuple[TypeSet, str]:
        sides = [self.visit(child, ctx, path) for child in node["children"]]
        literals = [
            child["value"] if child["type"] == "literal" else _NO_LITERAL
            for child in node["children"]
        ]
        for (types, side_path), other in ((sides[0], literals[1]), (sides[1], literals[0])):
            if types is not None:
                self._check_comparison(node["value"], types, side_path, other)
        return ("boolean",), ""

    def _check_comparison(self, op: str, types: tuple[Any, ...], path: str, other: Any) -> None:
        cats = {category(t) for t in types} - {"null"}
        name = repr(path) if path else "the left side"
        if "timestamp" in cats and (op in _ORDERING or other is not _NO_LITERAL):
            self.problems.append(
                f"{name} is a timestamp, which JMESPath cannot compare: compare "
                f"iso8601({path or '...'}) with an ISO-8601 string such as "
                "'2026-01-01T00:00:00.000Z', or millis(...) with a number"
            )
            return
        if other is _NO_LITERAL:
            return
        if op in _ORDERING:
            self._check_ordering(cats, name, _literal_category(other))
        elif isinstance(other, str):
            self._check_enum(types, name, other)

    def _check_ordering(self, cats: set[str], name: str, other_cat: str) -> None:
        if other_cat not in ("number", "string"):
            self.problems.append(
                f"ordering comparison with a {other_cat} literal is always false; "
                "compare numbers with numbers or strings with strings"
            )
        elif cats and other_cat not in cats:
            self.problems.append(
                f"{name} is {' or '.join(sorted(cats))} but is compared with a {other_cat} "
                f"literal; write the literal as a {' or '.join(sorted(cats))}"
            )

    def _check_enum(self, types: tuple[Any, ...], name: str, literal: str) -> None:
        non_null = [t for t in types if kind_of(t) != "null"]
        if not non_null or any(kind_of(t) != "enum" for t in non_null):
            return
        symbols = [s for t in non_null for s in t.get("symbols", [])]
        if literal not in symbols:
            self.problems.append(
                f"{literal!r} is not a symbol of {name} (expected one of: {', '.join(symbols)})"
            )

    def _visit_function_expression(
        self, node: dict[str, Any], ctx: TypeSet, path: str
    ) -> tuple[TypeSet, str]:
        for child in node["children"]:
            self.visit(child, ctx, path)
        return None, ""


_NO_LITERAL = object()


def check_paths(parsed: dict[str, Any], types: AvroTypes) -> list[str]:
    """Problems (without file/rule prefix) found in a parsed JMESPath AST against the schema."""
    checker = _Checker(types)
    checker.visit(parsed, (types.root,), "")
    return checker.problems
