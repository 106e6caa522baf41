"""JMESPath functions for mapping rules, and the one `Options` every expression runs with.

Beyond JMESPath's own functions, rules get:

- `lower(s)`, `upper(s)`, `trim(s)`: string -> string; null stays null (so a missing optional
  field leaves the attribute out instead of failing the event);
- `iso8601(t)`: a timestamp, epoch milliseconds or an ISO-8601 string -> the string Target gets
  (`2026-11-28T17:02:50.123Z`). Those strings sort in time order, so a rule compares times
  with `iso8601(occurredAt) >= '2026-01-01T00:00:00.000Z'`;
- `millis(t)`: a timestamp -> epoch milliseconds, for arithmetic-style comparisons;
- `sha256(v)`: hex SHA-256 of the rendered value (for ids that must not be sent in clear);
- `coalesce(a, b, ...)`: the first argument that is neither null nor an empty string;
- `concat(a, b, ...)`: the rendered arguments joined; nulls count as empty, all-null is null.

How Avro's Python types meet JMESPath: events are NOT
converted before evaluation (that would copy every event on the hot path). Instead:

- `decimal.Decimal` is a `numbers.Number`, so JMESPath's comparators already accept it, and
  Python compares it exactly with the int/float literals of a rule (`payload.amount >
  \\`1000\\``). Here it is also a "number" for every function's type check (`abs`, `max`...),
  and `to_number` keeps it exact (JMESPath's own would truncate it to an int).
- `datetime` is not comparable in JMESPath (an ordering comparison yields null, i.e. false):
  rules compare times through `iso8601()` or `millis()`, and rule validation rejects a direct
  ordering comparison on a timestamp field so the mistake cannot ship silently.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, TypeVar

import jmespath
from jmespath import functions as jp_functions
from jmespath.exceptions import JMESPathTypeError

from consumer.mapping.render import render, render_timestamp

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SCALAR_TYPES = ["string", "number", "boolean", "timestamp", "null"]

# JMESPath type name -> Python type names, JMESPath's own table plus Decimal and datetime.
_PYTYPES: dict[str, tuple[str, ...]] = {
    **{name: tuple(py) for name, py in jp_functions.REVERSE_TYPES_MAP.items()},
    "number": (*jp_functions.REVERSE_TYPES_MAP["number"], "Decimal"),
    "timestamp": ("datetime",),
}
_JMESPATH_TYPES: dict[str, str] = {
    **jp_functions.TYPES_MAP,
    "Decimal": "number",
    "datetime": "timestamp",
}

# Python type name -> the type, for the names above that name a builtin or Avro value type.
_PYTHON_TYPES: dict[str, type] = {
    t.__name__: t for t in (bool, list, dict, type(None), str, float, int, Decimal, datetime)
}

_F = TypeVar("_F", bound=Callable[..., Any])


def signature(*arguments: dict[str, Any]) -> Callable[[_F], _F]:
    """JMESPath's `@signature`, typed: records the argument types the registry checks."""

    def record(func: _F) -> _F:
        func.signature = arguments  # type: ignore[attr-defined]
        return func

    return record


class MappingFunctions(jp_functions.Functions):  # type: ignore[misc]  # jmespath is untyped
    """JMESPath's functions plus the mapping ones; aware of Decimal and datetime values."""

    def __init__(self) -> None:
        super().__init__()
        # Signatures are module-level constants: their id() is a stable cache key.
        self._allowed_cache: dict[int, tuple[list[str], list[tuple[str, ...]]]] = {}

    # --- type checking ---------------------------------------------------------------

    def _get_allowed_pytypes(self, types: list[str]) -> tuple[list[str], list[tuple[str, ...]]]:
        cached = self._allowed_cache.get(id(types))
        if cached is not None:
            return cached
        allowed: list[str] = []
        subtypes: list[tuple[str, ...]] = []
        for jp_type in types:
            outer, _, inner = jp_type.partition("-")
            if inner:
                subtypes.append(_PYTYPES[inner])
            allowed.extend(_PYTYPES[outer])
        self._allowed_cache[id(types)] = (allowed, subtypes)
        return allowed, subtypes

    def _type_check_single(self, current: Any, types: list[str], function_name: str) -> None:
        allowed, subtypes = self._get_allowed_pytypes(types)
        actual = type(current).__name__
        if actual not in allowed:
            raise JMESPathTypeError(
                function_name, current, self._convert_to_jmespath_type(actual), types
            )
        if subtypes:
            self._subtype_check(current, subtypes, types, function_name)

    def _convert_to_jmespath_type(self, pyobject: str) -> str:
        return _JMESPATH_TYPES.get(pyobject, "unknown")

    # --- JMESPath built-ins that must understand Decimal and datetime ----------------

    @signature({"types": []})
    def _func_to_string(self, arg: Any) -> Any:
        if isinstance(arg, (Decimal, datetime)):
            return render(arg)
        return super()._func_to_string(arg)

    @signature({"types": []})
    def _func_to_number(self, arg: Any) -> Any:
        if isinstance(arg, Decimal):
            return arg
        return super()._func_to_number(arg)

    @signature({"types": []})
    def _func_type(self, arg: Any) -> Any:
        if isinstance(arg, Decimal):
            return "number"
        if isinstance(arg, datetime):
            return "timestamp"
        return super()._func_type(arg)

    # --- mapping functions -------------------------------------------------------------

    @signature({"types": ["string", "null"]})
    def _func_lower(self, arg: str | None) -> str | None:
        return None if arg is None else arg.lower()

    @signature({"types": ["string", "null"]})
    def _func_upper(self, arg: str | None) -> str | None:
        return None if arg is None else arg.upper()

    @signature({"types": ["string", "null"]})
    def _func_trim(self, arg: str | None) -> str | None:
        return None if arg is None else arg.strip()

    @signature({"types": ["timestamp", "number", "string", "null"]})
    def _func_iso8601(self, arg: Any) -> str | None:
        if type(arg) is datetime:  # what fastavro gives: skip the conversions
            return render_timestamp(arg)
        moment = _to_datetime(arg)
        return None if moment is None else render_timestamp(moment)

    @signature({"types": ["timestamp", "null"]})
    def _func_millis(self, arg: datetime | None) -> int | None:
        if arg is None:
            return None
        if arg.tzinfo is None:
            arg = arg.replace(tzinfo=timezone.utc)
        return (arg - _EPOCH) // timedelta(milliseconds=1)

    @signature({"types": _SCALAR_TYPES})
    def _func_sha256(self, arg: Any) -> str | None:
        text = render(arg)
        if text is None:
            return None
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @signature({"types": [], "variadic": True})
    def _func_coalesce(self, *args: Any) -> Any:
        return _coalesce(args)

    @signature({"types": _SCALAR_TYPES, "variadic": True})
    def _func_concat(self, *args: Any) -> str | None:
        return _concat(args)

    def evaluator(self, name: str, args: tuple[Callable[[Any], Any], ...]) -> Callable[[Any], Any]:
        """What JMESPath's `call_function(name, [arg(value) for arg in args])` gives, as a
        callable of `value`, with the table lookup, the arity check and each argument's
        allowed types resolved once instead of on every call."""
        spec = self.FUNCTION_TABLE.get(name)
        if spec is None or not _arity_fits(spec["signature"], len(args)):
            call = self.call_function  # raises as JMESPath does, at run time
            return lambda value: call(name, [arg(value) for arg in args])
        checks = self._argument_checks(spec["signature"], len(args))
        if len(args) == 1:
            return self._evaluator_one(name, spec["function"], args[0], checks)
        on_list = _ON_LIST.get(name)
        if on_list is not None:
            return self._evaluator_on_list(name, on_list, args, checks)
        function = spec["function"]
        check = self._type_check_single

        def evaluate(value: Any) -> Any:
            resolved = [arg(value) for arg in args]
            for index, allowed, types in checks:
                if allowed is None or type(resolved[index]) not in allowed:
                    check(resolved[index], types, name)  # raises, or checks the elements
            return function(self, *resolved)

        return evaluate

    def _evaluator_on_list(
        self,
        name: str,
        on_list: Callable[[Sequence[Any]], Any],
        args: tuple[Callable[[Any], Any], ...],
        checks: tuple[tuple[int, frozenset[type] | None, list[str]], ...],
    ) -> Callable[[Any], Any]:
        # concat and coalesce take their argument list as it is: no *args unpacking, no bound
        # method (concat of 5 arguments: 1.8 us instead of 2.6). Their signature is one
        # variadic entry of scalar types, so one check, without element types, fits them all.
        if not checks:
            return lambda value: on_list([arg(value) for arg in args])
        allowed, types = checks[0][1], checks[0][2]
        assert allowed is not None  # noqa: S101 - scalar types have no element types
        check = self._type_check_single

        def evaluate_list(value: Any) -> Any:
            resolved = [arg(value) for arg in args]
            for item in resolved:
                if type(item) not in allowed:
                    check(item, types, name)  # raises unless the type's name is allowed
            return on_list(resolved)

        return evaluate_list

    def _evaluator_one(
        self,
        name: str,
        function: Callable[..., Any],
        arg: Callable[[Any], Any],
        checks: tuple[tuple[int, frozenset[type] | None, list[str]], ...],
    ) -> Callable[[Any], Any]:
        # The common case, `lower(x)`, unrolled: no list, no loop (twice as fast).
        if not checks:
            return lambda value: function(self, arg(value))
        ((_, allowed, types),) = checks
        check = self._type_check_single
        fast_type, fast = _DIRECT.get(name, (None, None))
        if fast is not None:
            # What the function does with the type rules meet most, without calling it.

            def evaluate_direct(value: Any) -> Any:
                resolved = arg(value)
                if type(resolved) is fast_type:
                    return fast(resolved)
                if allowed is None or type(resolved) not in allowed:
                    check(resolved, types, name)
                return function(self, resolved)

            return evaluate_direct

        def evaluate_one(value: Any) -> Any:
            resolved = arg(value)
            if allowed is None or type(resolved) not in allowed:
                check(resolved, types, name)
            return function(self, resolved)

        return evaluate_one

    def _argument_checks(
        self, signature: Sequence[dict[str, Any]], count: int
    ) -> tuple[tuple[int, frozenset[type] | None, list[str]], ...]:
        """(index, allowed types, type names) of each typed argument, in the order JMESPath
        checks them. A value of an allowed type passes at once; any other goes through
        JMESPath's own check by type NAME (which raises, or passes a class that merely shares
        a name). None instead of the types: the elements need checking too."""
        checks = []
        for index in range(count):
            types = signature[min(index, len(signature) - 1)]["types"]
            if types:
                allowed, subtypes = self._get_allowed_pytypes(types)
                fast = frozenset(_PYTHON_TYPES[n] for n in allowed if n in _PYTHON_TYPES)
                checks.append((index, None if subtypes else fast, types))
        return tuple(checks)

    def _type_check(self, actual: Sequence[Any], signature: Any, function_name: str) -> None:
        # JMESPath checks only as many arguments as the signature lists; a variadic
        # signature's last entry must also hold for every extra argument.
        super()._type_check(actual, signature, function_name)
        if signature and signature[-1].get("variadic"):
            types = signature[-1]["types"]
            if types:
                for extra in actual[len(signature) :]:
                    self._type_check_single(extra, types, function_name)


def _arity_fits(signature: Sequence[dict[str, Any]], count: int) -> bool:
    # JMESPath's _validate_arguments: a variadic last entry takes any number of extras.
    if signature and signature[-1].get("variadic"):
        return count >= len(signature)
    return count == len(signature)


def _coalesce(args: Sequence[Any]) -> Any:
    for arg in args:
        if arg is not None and arg != "":
            return arg
    return None


def _concat(args: Sequence[Any]) -> str | None:
    parts = [arg if type(arg) is str else render(arg) for arg in args]
    if parts.count(None) == len(parts):
        return None
    return "".join(filter(None, parts))  # drops the nulls (and empty strings)


# function -> (argument type, what the function returns for a value of exactly that type).
_DIRECT: dict[str, tuple[type, Callable[[Any], Any]]] = {
    "lower": (str, str.lower),
    "upper": (str, str.upper),
    "trim": (str, str.strip),
    "iso8601": (datetime, render_timestamp),
}

# Variadic functions evaluated on the list of their arguments (see `evaluator`).
_ON_LIST: dict[str, Callable[[Sequence[Any]], Any]] = {"coalesce": _coalesce, "concat": _concat}


def _to_datetime(arg: Any) -> datetime | None:
    if arg is None or isinstance(arg, datetime):
        return arg
    if isinstance(arg, str):
        try:
            parsed = datetime.fromisoformat(arg)
        except ValueError:
            raise ValueError("iso8601(): the string is not an ISO-8601 timestamp") from None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)
    # A number: epoch milliseconds, like Avro's timestamp-millis.
    return _EPOCH + timedelta(milliseconds=arg)


FUNCTIONS = MappingFunctions()
"""The one functions table; stateless apart from a type-check cache, safe to share."""

OPTIONS = jmespath.Options(custom_functions=FUNCTIONS)
"""Pass to `compiled.search(value, OPTIONS)` to evaluate a rule expression."""


def function_signature(name: str) -> list[dict[str, Any]] | None:
    """The signature of function `name`, or None when no such function exists."""
    spec = FUNCTIONS.FUNCTION_TABLE.get(name)
    return None if spec is None else list(spec["signature"])


def function_names() -> list[str]:
    """Every function a rule may call, sorted."""
    return sorted(FUNCTIONS.FUNCTION_TABLE)
