"""Rendering values into the strings Target stores."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, localcontext
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.mapping.render import UnrenderableValueError, render

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ""),
        ("a b&c=d", "a b&c=d"),
        ("ünïcödé ✓", "ünïcödé ✓"),
        (None, None),
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (-42, "-42"),
        (2**63 - 1, "9223372036854775807"),
        (Decimal("1234.50"), "1234.50"),
        (Decimal("1.2345E+3"), "1234.5"),
        (Decimal("1E+3"), "1000"),
        (Decimal("0.00"), "0.00"),
        (Decimal("-0.01"), "-0.01"),
        (Decimal("1E-7"), "0.0000001"),
        (0.1, "0.1"),
        (1.0, "1.0"),
        (-0.0, "-0.0"),
        (150.25, "150.25"),
        (1e16, "10000000000000000"),
        (1.5e-7, "0.00000015"),
        (123456789.123, "123456789.123"),
        (
            datetime(2026, 11, 28, 17, 2, 50, 123456, tzinfo=timezone.utc),
            "2026-11-28T17:02:50.123Z",
        ),
        (datetime(2026, 11, 28, 17, 2, 50, tzinfo=timezone.utc), "2026-11-28T17:02:50.000Z"),
        (
            datetime(2026, 11, 28, 18, 2, 50, 123000, tzinfo=timezone(timedelta(hours=1))),
            "2026-11-28T17:02:50.123Z",
        ),
        (datetime(2026, 11, 28, 17, 2, 50, 5000), "2026-11-28T17:02:50.005Z"),  # naive = UTC
        (datetime(5, 1, 2, tzinfo=timezone.utc), "0005-01-02T00:00:00.000Z"),
        (date(2026, 1, 2), "2026-01-02"),
        (UUID(int=1), "00000000-0000-0000-0000-000000000001"),
    ],
)
def test_render(value: object, expected: str | None) -> None:
    assert render(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        [],
        ["a"],
        {},
        {"a": 1},
        b"x",
        float("nan"),
        float("inf"),
        -float("inf"),
        Decimal("NaN"),
        Decimal("Infinity"),
        object(),
    ],
)
def test_unrenderable(value: object) -> None:
    with pytest.raises(UnrenderableValueError):
        render(value)


def test_subclasses_render_like_their_base() -> None:
    class Tier(str):
        pass

    class Flag(int):
        pass

    assert render(Tier("gold")) == "gold"
    assert render(Flag(3)) == "3"


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_doubles_round_trip_and_have_no_exponent(value: float) -> None:
    text = render(value)
    assert text is not None
    assert "e" not in text.lower()
    assert float(text) == value
    assert math.copysign(1, float(text)) == math.copysign(1, value)


@given(
    st.decimals(
        allow_nan=False, allow_infinity=False, places=2, min_value=-(10**10), max_value=10**10
    )
)
def test_decimals_keep_their_scale(value: Decimal) -> None:
    text = render(value)
    assert text is not None
    assert Decimal(text) == value
    assert len(text.partition(".")[2]) == 2
    assert "E" not in text.upper()


@given(
    st.decimals(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
def test_decimals_never_have_an_exponent_whatever_the_context(
    value: Decimal, capitals: bool
) -> None:
    with localcontext() as context:
        context.capitals = int(capitals)
        text = render(value)
    assert text == format(value, "f") and "e" not in text.lower()


@given(st.datetimes(timezones=st.one_of(st.none(), st.timezones())))
def test_timestamps_render_as_iso8601_utc_with_milliseconds(value: datetime) -> None:
    utc = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value
    try:
        utc = utc.astimezone(timezone.utc)
    except OverflowError:  # a local time near year 1 or 9999 that UTC cannot hold
        return
    expected = utc.isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"
    assert render(value) == expected


def test_the_day_cache_stays_bounded() -> None:
    from consumer.mapping.render import _DAYS, _MAX_DAYS

    start = datetime(2000, 1, 1, tzinfo=timezone.utc)
    for offset in range(_MAX_DAYS + 10):
        moment = start + timedelta(days=offset, milliseconds=offset)
        assert render(moment) == moment.isoformat(timespec="milliseconds")[:-6] + "Z"
    assert 0 < len(_DAYS) <= _MAX_DAYS
