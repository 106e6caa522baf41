"""BatchBuilder: a rendered batch parses back, with our own parser, to exactly the merged rows."""

from __future__ import annotations

from urllib.parse import quote, unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.bulk.rows import (
    BULK_MAX_BYTES,
    BULK_MAX_ROWS,
    DEFAULT_MAX_BYTES,
    BatchBuilder,
    decode_row,
    encode_row,
    encode_value,
)
from consumer.errors import InvalidBulkRow

pytestmark = pytest.mark.unit

Event = tuple[str, dict[str, str]]


def parse(body: bytes) -> tuple[list[str], list[list[str]]]:
    """A reference reader written from the contract, not from the builder's code."""
    assert body.startswith(b"batch=")
    text = body[len(b"batch=") :].decode("ascii")  # everything is percent-encoded
    for raw in ("&", "+", " ", "\r"):
        assert raw not in text
    lines = text.split("\n")
    cells = [[unquote(cell, errors="strict") for cell in line.split(",")] for line in lines]
    header, rows = cells[0], cells[1:]
    assert all(len(row) == len(header) for row in rows)
    return header, rows


def merged(events: list[Event]) -> dict[str, dict[str, str]]:
    """One row per profile, later event winning per attribute, empty values ignored."""
    rows: dict[str, dict[str, str]] = {}
    for identity, attributes in events:
        row = rows.setdefault(identity, {})
        row.update({k: v for k, v in attributes.items() if v != ""})
    return rows


def as_rows(header: list[str], rows: list[list[str]]) -> dict[str, dict[str, str]]:
    return {
        row[0]: {name: value for name, value in zip(header[1:], row[1:], strict=True) if value}
        for row in rows
    }


# Names and values with everything that could break a CSV or a form body, or the builder's
# stored rows (NUL joins their cells, \x01 escapes).
nasty = st.text(
    alphabet=st.one_of(
        st.sampled_from(list(",\n\r%&+= ;\"'\\#?\x00\x01")), st.characters(codec="utf-8")
    ),
    max_size=12,
)
names = nasty.filter(lambda n: n not in ("", "thirdPartyId", "pcId"))
events_strategy = st.lists(
    st.tuples(
        st.text(min_size=1, max_size=8, alphabet=st.characters(codec="utf-8")) | nasty.filter(bool),
        st.dictionaries(names, nasty, max_size=4),
    ),
    max_size=30,
)


def built(events: list[Event]) -> BatchBuilder[int]:
    """A thirdPartyId batch holding `events`, each event's ref its position."""
    builder: BatchBuilder[int] = BatchBuilder(identity_type="mbox3rdPartyId")
    for number, (identity, attributes) in enumerate(events):
        builder.add(identity, attributes, number)
    return builder


@given(events_strategy)
@settings(max_examples=150, deadline=None)
def test_rendered_batch_parses_back_to_the_merged_rows(events: list[Event]) -> None:
    builder = built(events)
    body = builder.render()
    assert builder.size == len(body)
    header, rows = parse(body)
    assert header[0] == "thirdPartyId"
    expected = merged(events)
    assert as_rows(header, rows) == expected
    assert [row[0] for row in rows] == list(expected)  # first-seen order, one row each
    assert len(set(header)) == len(header)
    described = list(builder.rows())
    assert {r.identity: r.attributes for r in described} == expected
    assert [r.number for r in described] == list(range(1, len(expected) + 1))
    refs = {r.identity: r.refs for r in described}
    for identity in expected:
        assert refs[identity] == tuple(i for i, (who, _) in enumerate(events) if who == identity)


@given(events_strategy, st.integers(min_value=20, max_value=400), st.integers(1, 6))
@settings(max_examples=150, deadline=None)
def test_limits_hold_and_a_refusal_means_the_event_would_pass_one(
    events: list[Event], max_bytes: int, max_rows: int
) -> None:
    builder: BatchBuilder[int] = BatchBuilder(
        identity_type="mboxPC", max_rows=max_rows, max_bytes=max_bytes
    )
    accepted: list[Event] = []
    for number, (identity, attributes) in enumerate(events):
        before = builder.render()
        if builder.try_add(identity, attributes, number):
            accepted.append((identity, attributes))
        else:
            assert builder.render() == before  # a refusal changes nothing
            unbounded: BatchBuilder[int] = BatchBuilder(identity_type="mboxPC")
            for i, (who, attrs) in enumerate([*accepted, (identity, attributes)]):
                unbounded.add(who, attrs, i)
            assert unbounded.size > max_bytes or unbounded.row_count > max_rows
        assert builder.size == len(builder.render()) <= max_bytes
        assert builder.row_count <= max_rows
    assert as_rows(*parse(builder.render())) == merged(accepted)


def test_exactly_at_the_byte_limit_fits_one_more_byte_does_not() -> None:
    probe: BatchBuilder[int] = BatchBuilder(identity_type="mbox3rdPartyId")
    probe.add("p1", {"a": "x"}, 0)
    probe.add("p2", {"a": "yy"}, 1)
    exact = probe.size  # b"batch=thirdPartyId,a\np1,x\np2,yy"
    assert exact == len(b"batch=thirdPartyId,a\np1,x\np2,yy")

    at_limit: BatchBuilder[int] = BatchBuilder(identity_type="mbox3rdPartyId", max_bytes=exact)
    assert at_limit.try_add("p1", {"a": "x"}, 0)
    assert at_limit.try_add("p2", {"a": "yy"}, 1)
    assert not at_limit.try_add("p2", {"a": "yyy"}, 2)  # one byte more, same row
    assert at_limit.try_add("p2", {"a": "zz"}, 3)  # same size: still fits
    assert at_limit.full
    assert not at_limit.try_add("p3", {}, 4)

    short: BatchBuilder[int] = BatchBuilder(identity_type="mbox3rdPartyId", max_bytes=exact - 1)
    assert short.try_add("p1", {"a": "x"}, 0)
    assert not short.try_add("p2", {"a": "yy"}, 1)
    assert short.row_count == 1 and short.event_count == 1


def test_a_new_column_costs_a_comma_in_every_row() -> None:
    builder: BatchBuilder[int] = BatchBuilder(identity_type="mbox3rdPartyId")
    for i in range(5):
        builder.add(f"p{i}", {"a": "1"}, i)
    before = builder.size
    builder.add("p0", {"b": "2"}, 5)
    assert builder.size == before + len(",b") + 5 * len(",") + len("2")
    assert builder.size == len(builder.render())


def test_row_limit_counts_profiles_not_events() -> None:
    builder: BatchBuilder[int] = BatchBuilder(identity_type="mbox3rdPartyId", max_rows=2)
    assert builder.try_add("a", {"x": "1"}, 0)
    assert builder.try_add("b", {"x": "1"}, 1)
    assert builder.full
    assert builder.try_add("a", {"x": "2"}, 2)  # same profile: merged, no new row
    assert not builder.try_add("c", {"x": "1"}, 3)
    assert builder.refs_by_row() == [[0, 2], [1]]
    with pytest.raises(OverflowError):
        builder.add("c", {"x": "1"}, 3)


def test_empty_values_never_clear_an_earlier_value() -> None:
    builder: BatchBuilder[int] = BatchBuilder(identity_type="mbox3rdPartyId")
    builder.add("a", {"x": "1"}, 0)
    builder.add("a", {"x": "", "y": "2"}, 1)
    assert builder.render() == b"batch=thirdPartyId,x,y\na,1,2"


def test_reserved_or_empty_names_and_identities_are_refused_per_event() -> None:
    builder: BatchBuilder[int] = BatchBuilder(identity_type="mboxPC")
    for identity, attributes in (("", {"x": "1"}), ("a", {"pcId": "1"}), ("a", {"": "1"})):
        with pytest.raises(InvalidBulkRow) as caught:
            builder.add(identity, attributes, 0)
        assert caught.value.reason == "bulk_invalid_row"
    assert builder.empty and builder.render() == b"batch=pcId"


def test_limits_beyond_targets_are_refused() -> None:
    assert DEFAULT_MAX_BYTES < BULK_MAX_BYTES
    with pytest.raises(ValueError):
        BatchBuilder(identity_type="mboxPC", max_rows=BULK_MAX_ROWS + 1)
    with pytest.raises(ValueError):
        BatchBuilder(identity_type="mboxPC", max_bytes=BULK_MAX_BYTES)
    with pytest.raises(ValueError):
        BatchBuilder(identity_type="email")


def test_many_profiles_stay_compact() -> None:
    """Per profile a few hundred bytes, per event a few: 20,000 profiles, 100,000 events."""
    import tracemalloc

    profiles, events = 20_000, 100_000
    identities = [f"customer-{i:07d}" for i in range(profiles)]
    tracemalloc.start()
    builder: BatchBuilder[int] = BatchBuilder(identity_type="mbox3rdPartyId")
    for i in range(events):
        builder.add(identities[i % profiles], {"tier": "gold", "spend": str(i % 997)}, 7)
    body = builder.render()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert builder.row_count == profiles and len(body) == builder.size
    per_profile = (peak - len(body)) / profiles
    assert per_profile < 300, f"{per_profile:.0f} bytes per profile"


def test_carried_cells_seed_a_new_row_under_the_events_values() -> None:
    builder: BatchBuilder[int] = BatchBuilder(identity_type="mbox3rdPartyId")
    builder.add("p1", {"tier": "gold"}, 1)
    carried = (("tier", "city", "note"), b"silver,Z%C3%BCrich,")
    assert builder.try_add("p2", {"tier": "", "points": "7"}, 2, carried)
    assert builder.try_add("p1", {"city": "Lyon"}, 3, carried)  # not new: carried unused
    rows = {row.identity: row.attributes for row in builder.rows()}
    # An empty event value leaves the carried one (Target ignores empties anyway).
    assert rows["p2"] == {"tier": "silver", "city": "Zürich", "points": "7"}
    assert rows["p1"] == {"tier": "gold", "city": "Lyon"}
    assert builder.size == len(builder.render())


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | nasty)
@settings(max_examples=400, deadline=None)
def test_value_encoding_is_exactly_quote_with_nothing_safe(text: str) -> None:
    # The fast path (a byte table, one replace per unsafe byte) against the standard library.
    assert encode_value(text) == quote(text, safe="").encode("ascii")


def test_value_encoding_escapes_the_percent_sign_once() -> None:
    assert encode_value("100% & 5:00") == b"100%25%20%26%205%3A00"


def test_values_holding_the_stored_rows_separator_or_escape_come_back_exactly() -> None:
    builder: BatchBuilder[int] = BatchBuilder(identity_type="mbox3rdPartyId")
    builder.add("p1", {"a": "x\x00y", "b": "\x01"}, 1)
    builder.add("p1", {"c": "plain"}, 2)  # a clean event on a row holding escaped cells
    builder.add("p1", {"b": "\x01\x000\x01\x01"}, 3)
    builder.add("p2", {"a": "\x00", "c": "%00"}, 4)
    expected = {
        "p1": {"a": "x\x00y", "b": "\x01\x000\x01\x01", "c": "plain"},
        "p2": {"a": "\x00", "c": "%00"},
    }
    assert as_rows(*parse(builder.render())) == expected
    assert {row.identity: row.attributes for row in builder.rows()} == expected
    assert builder.size == len(builder.render())
    names = builder.attribute_names
    for identity, stored in builder.stored_rows():
        assert decode_row(names, stored) == expected[identity]
        assert decode_row(names, encode_row(stored)) == expected[identity]


@given(events_strategy)
@settings(max_examples=100, deadline=None)
def test_a_stored_row_seeds_the_next_batch_as_its_encoded_form_does(events: list[Event]) -> None:
    # What the carry holds: a batch's own stored rows, or the carry log's encoded ones.
    first = built(events)
    names = tuple(first.attribute_names)
    late = {"late": "1"}
    for form in (lambda cells: cells, encode_row):
        second: BatchBuilder[int] = BatchBuilder(identity_type="mbox3rdPartyId")
        for identity, stored in first.stored_rows():
            assert second.try_add(identity, late, 0, (names, form(stored)))
        expected = {i: {**row, **late} for i, row in merged(events).items()}
        assert as_rows(*parse(second.render())) == expected
        assert second.size == len(second.render())
