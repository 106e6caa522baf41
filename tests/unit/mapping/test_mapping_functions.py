"""The mapping functions and how Decimal and datetime values meet JMESPath."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import jmespath
import pytest
from jmespath.exceptions import JMESPathError

from consumer.mapping.compiler import compile_evaluator
from consumer.mapping.functions import OPTIONS, function_names, function_signature

pytestmark = pytest.mark.unit

AT = datetime(2026, 11, 28, 17, 2, 50, 123000, tzinfo=timezone.utc)
DATA: dict[str, Any] = {
    "s": "  MiXeD Case  ",
    "empty": "",
    "none": None,
    "amount": Decimal("1234.50"),
    "amounts": [Decimal("1.10"), Decimal("2.20")],
    "double": 0.5,
    "n": 7,
    "flag": True,
    "at": AT,
    "naive": datetime(2026, 11, 28, 17, 2, 50, 123000),
    "list": [1],
    "map": {"k": "v"},
    "strings": ["a", "b"],
    "mixed": ["a", 1],
}


def search(expression: str) -> Any:
    return jmespath.compile(expression).search(DATA, OPTIONS)


FUNCTION_CASES = pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("lower(s)", "  mixed case  "),
        ("upper(s)", "  MIXED CASE  "),
        ("trim(s)", "MiXeD Case"),
        ("lower(none)", None),
        ("upper(none)", None),
        ("trim(none)", None),
        ("iso8601(at)", "2026-11-28T17:02:50.123Z"),
        ("iso8601(naive)", "2026-11-28T17:02:50.123Z"),
        ("iso8601(`1795885370123`)", "2026-11-28T17:02:50.123Z"),
        ("iso8601('2026-11-28T18:02:50.123+01:00')", "2026-11-28T17:02:50.123Z"),
        ("iso8601('2026-11-28')", "2026-11-28T00:00:00.000Z"),
        ("iso8601(none)", None),
        ("millis(at)", 1795885370123),
        ("millis(naive)", 1795885370123),
        ("millis(none)", None),
        ("sha256('c1')", hashlib.sha256(b"c1").hexdigest()),
        ("sha256(amount)", hashlib.sha256(b"1234.50").hexdigest()),
        ("sha256(none)", None),
        ("coalesce(none, empty, s)", "  MiXeD Case  "),
        ("coalesce(none, `0`)", 0),
        ("coalesce(none, empty)", None),
        ("concat('a', none, amount, '-', flag, '-', n, '-', double)", "a1234.50-true-7-0.5"),
        ("concat(at)", "2026-11-28T17:02:50.123Z"),
        ("concat(none, none)", None),
        ("concat(empty)", ""),
        # JMESPath's own functions, taught about Decimal and datetime.
        ("abs(amount)", Decimal("1234.50")),
        ("max(amounts)", Decimal("2.20")),
        ("sum(amounts)", Decimal("3.30")),
        ("to_number(amount)", Decimal("1234.50")),
        ("to_string(amount)", "1234.50"),
        ("to_string(at)", "2026-11-28T17:02:50.123Z"),
        ("to_string(n)", "7"),
        ("type(amount)", "number"),
        ("type(at)", "timestamp"),
        ("type(s)", "string"),
        ("amount > `1000`", True),
        ("amount == `1234.5`", True),
        ("length(s)", 14),
        ("not_null(none, n)", 7),
        ("join('-', strings)", "a-b"),
        ("max(amounts)", Decimal("2.20")),
    ],
)
TYPE_ERROR_CASES = pytest.mark.parametrize(
    "expression",
    [
        "lower(n)",
        "upper(list)",
        "trim(flag)",
        "iso8601('not a date')",
        "iso8601(list)",
        "millis(s)",
        "sha256(list)",
        "concat('a', map)",
        "concat(list)",
        "concat('a', 'b', list)",
        "abs(s)",
        "join('-', mixed)",
        "max(mixed)",
        "lower(s, s)",  # rejected when rules load; at run time an ArityError, as JMESPath's
        "nope(s)",
    ],
)


@FUNCTION_CASES
def test_functions(expression: str, expected: Any) -> None:
    result = search(expression)
    assert result == expected
    assert type(result) is type(expected)


@TYPE_ERROR_CASES
def test_function_type_errors(expression: str) -> None:
    with pytest.raises((JMESPathError, ValueError)):
        search(expression)


@FUNCTION_CASES
def test_the_hot_path_form_gives_what_search_gives(expression: str, expected: Any) -> None:
    result = compile_evaluator(jmespath.compile(expression).parsed)(DATA)
    assert result == expected
    assert type(result) is type(expected)


@TYPE_ERROR_CASES
def test_the_hot_path_form_fails_as_search_fails(expression: str) -> None:
    # Functions resolve their table entry and argument types once: the error must not change.
    with pytest.raises((JMESPathError, ValueError)) as expected:
        search(expression)
    with pytest.raises(type(expected.value)) as got:
        compile_evaluator(jmespath.compile(expression).parsed)(DATA)
    assert str(got.value) == str(expected.value)


def test_the_issue_functions_exist() -> None:
    names = function_names()
    for name in ("lower", "upper", "trim", "iso8601", "sha256", "coalesce", "concat", "millis"):
        assert name in names
    assert function_signature("nope") is None
    assert function_signature("lower") == [{"types": ["string", "null"]}]


def test_iso8601_strings_sort_in_time_order() -> None:
    earlier = jmespath.compile("iso8601(`-1000`)").search({}, OPTIONS)
    later = jmespath.compile("iso8601(`1000`)").search({}, OPTIONS)
    assert earlier == "1969-12-31T23:59:59.000Z" and earlier < later
