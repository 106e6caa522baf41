"""One bulk batch being filled: one row per profile, merged, with its exact rendered size.

`BatchBuilder` (one per identity type and batch) takes mapped events with `try_add` (or `add`),
merging every event of a profile into that profile's single row, the later event winning per
attribute. It keeps the byte size of the body `render()` will produce exactly, updated on every
add, so a batch is never over `max_bytes` nor `max_rows`: an add that would pass either limit
changes nothing and returns False (the caller renders this batch and starts the next one).

The body is `batch=` then CSV: lines joined by `\\n`, cells by `,`, every header name, identity
and value percent-encoded as UTF-8 with nothing left safe (so no cell holds a raw `,` `\\n` `&`
`+` `%`). Header: `thirdPartyId` or `pcId`, then the attribute names in first-seen order.

Memory: per profile one dict entry (identity -> row index) and one `bytes` row (its encoded
cells after the identity, without the empty cells at its end: `render()` adds the identity and
pads them); per event only the caller's `ref` and 4 bytes of row index. The caller should keep
`ref` small (an int, a tuple of ints). The row holds no identity so that `encoded_rows` hands
out the very `bytes` the builder keeps: the carry (consumer/bulk/held.py) keeps them for every
profile sent, and a copy per row doubled that while the batch was alive, at the drain's peak.

Empty values are skipped: Target ignores them (an attribute cannot be cleared through bulk), so
an empty value never overwrites an earlier value of the same profile in the batch.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableSequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Generic, TypeVar, cast
from urllib.parse import quote, unquote

from consumer.errors import InvalidBulkRow

PREFIX = b"batch="
# Adobe: a batch must be under 50 MB and hold at most 500,000 rows.
BULK_MAX_BYTES = 50 * 1024 * 1024
BULK_MAX_ROWS = 500_000
# The product's default: 1 MiB under Adobe's bound, for whatever a proxy or Target counts on top.
DEFAULT_MAX_BYTES = BULK_MAX_BYTES - 1024 * 1024
# ProfileUpdate.identity_type -> the header's identity column.
ID_COLUMNS = {"mbox3rdPartyId": "thirdPartyId", "mboxPC": "pcId"}

Ref = TypeVar("Ref")
# What an earlier batch set for a profile: its attribute names and encoded cells, `,`-separated
# (`BatchBuilder.encoded_rows`; consumer/bulk/held.py keeps them so).
Carried = tuple[tuple[str, ...], bytes]


@lru_cache(maxsize=4096)
def encode_cell(text: str) -> bytes:
    """Names and identities: percent-encoded UTF-8, nothing safe (cached: names repeat)."""
    return quote(text, safe="").encode("ascii")


# A value needs no escaping when every byte is unreserved: this table maps those bytes to
# themselves and every other byte to 0 (one C pass instead of a regular expression, which cost
# 0.7 us a value). Escapes: one `replace` per distinct unsafe byte, `%` first (the escapes add
# their own). Measured on bench_bulk.py's values: 785 -> 506 ns a value, 22 % of them escaped.
_SAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.~-"
_CHECK = bytes(c if c in _SAFE else 0 for c in range(256))
_ESCAPES = {c: f"%{c:02X}".encode("ascii") for c in range(256) if c not in _SAFE}


def encode_value(text: str) -> bytes:
    """Exactly encode_cell, faster (no cache: values repeat less than names)."""
    if not text.isascii():
        return quote(text, safe="").encode("ascii")
    raw = text.encode("ascii")
    if 0 not in raw.translate(_CHECK):
        return raw
    unsafe = set(raw.translate(None, _SAFE))
    if 37 in unsafe:  # `%`
        raw = raw.replace(b"%", b"%25")
        unsafe.discard(37)
    for code in unsafe:
        raw = raw.replace(bytes((code,)), _ESCAPES[code])
    return raw


@dataclass(frozen=True, slots=True)
class BatchRow(Generic[Ref]):
    """A row as sent: `number` 1 is the first data row (Target's `rowNumber`)."""

    number: int
    identity: str
    attributes: dict[str, str]
    refs: tuple[Ref, ...]


class BatchBuilder(Generic[Ref]):
    """The rows of one batch for one identity type; pure (no I/O, no clock)."""

    def __init__(
        self,
        *,
        identity_type: str,
        max_rows: int = BULK_MAX_ROWS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        int_refs: bool = False,
    ) -> None:
        """`int_refs`: every ref is an int of 64 bits at most, kept in an array (8 bytes an
        event instead of a list slot and an int object, ~40 bytes: consumer/bulk/held.py)."""
        if identity_type not in ID_COLUMNS:
            raise ValueError(f"identity_type must be one of {sorted(ID_COLUMNS)}")
        if not 1 <= max_rows <= BULK_MAX_ROWS or not 1 <= max_bytes < BULK_MAX_BYTES:
            raise ValueError("max_rows or max_bytes beyond what Target accepts")
        self.identity_type = identity_type
        self.id_column = ID_COLUMNS[identity_type]
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._columns: dict[str, int] = {}  # attribute name -> column index
        self._header: list[bytes] = [encode_cell(self.id_column)]
        self._index: dict[str, int] = {}  # identity -> row index (insertion order = row order)
        self._rows: list[bytes] = []  # encoded cells (no identity), trailing empties left out
        self._event_rows = array("I")  # per event: its row index
        self._refs: MutableSequence[Ref] = (
            cast(MutableSequence[Ref], array("q")) if int_refs else []
        )
        # `batch=` + header; each row adds `\n` + identity + one `,` per column + its values.
        self._size = len(PREFIX) + len(self._header[0])

    # --- size and limits -------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Exactly `len(self.render())`."""
        return self._size

    @property
    def row_count(self) -> int:
        return len(self._rows)

    @property
    def event_count(self) -> int:
        return len(self._refs)

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def empty(self) -> bool:
        return not self._rows

    @property
    def full(self) -> bool:
        """No new row could be added: the row limit is reached, or even the smallest new row
        (a one-character identity, no value) would pass `max_bytes`. An event of a profile
        already in the batch may still fit: `try_add` answers exactly."""
        smallest_row = 2 + len(self._columns)
        return len(self._rows) >= self.max_rows or self._size + smallest_row > self.max_bytes

    # --- adding ------------------------------------------------------------------------------

    def add(self, identity: str, attributes: Mapping[str, str], ref: Ref) -> None:
        """Like `try_add`; raises OverflowError when the event does not fit."""
        if not self.try_add(identity, attributes, ref):
            raise OverflowError("the event does not fit in this batch")

    def try_add(
        self,
        identity: str,
        attributes: Mapping[str, str],
        ref: Ref,
        carried: Carried | None = None,
        seed: Callable[[str], Carried | None] | None = None,
    ) -> bool:
        """Merge one event into its profile's row; False (and no change) when the result would
        pass `max_rows` or `max_bytes`. An event that fits no batch at all (False on an empty
        builder) is too large for bulk. Raises InvalidBulkRow for an event no batch may carry
        (an empty identity, an attribute name that is an identity column or empty).

        `carried` (names, encoded cells as `encoded_rows` gives them) seeds a new row with
        what an earlier batch set for the profile, under the event's own values: taken as
        encoded, never decoded and encoded again. `seed`, when `carried` is not given: called
        with the identity only when the event starts a new row, to get what it carries."""
        if not identity:
            raise InvalidBulkRow("bulk_invalid_row", "empty identity")
        index = self._index.get(identity)
        if index is None:
            if len(self._rows) >= self.max_rows:
                return False
            if carried is None and seed is not None:
                carried = seed(identity)
        else:
            carried = None  # only a new row starts from what an earlier batch set
        columns = self._columns
        cells, grown = self._row_cells(index, identity)
        known = _fill(cells, attributes, carried, columns)
        new_names: list[str] = []
        if known is None:  # a new attribute name: the header widens (a copy, until it fits)
            new_names = _new_names(attributes, carried, columns)
            columns, grown = self._widen(columns, new_names, grown, new_row=index is None)
            cells = self._row_cells(index, identity)[0]
            known = _fill(cells, attributes, carried, columns)
            assert known is not None  # noqa: S101 - every name is a column now
        grown += known
        if grown > self.max_bytes:
            return False
        if new_names:
            self._header.extend(encode_cell(name) for name in new_names)
            self._columns = columns
        # Only non-empty cells were set, the last one included: no trailing empty cell to cut.
        joined = b",".join(cells)
        if index is None:
            index = self._index[identity] = len(self._rows)
            self._rows.append(joined)
        else:
            self._rows[index] = joined
        self._size = grown
        self._event_rows.append(index)
        self._refs.append(ref)
        return True

    def _row_cells(self, index: int | None, identity: str) -> tuple[list[bytes], int]:
        """The row's cells as they are (none for a new row) and the batch's size with the row
        in it: a new row adds `\n` + identity + a `,` per column."""
        if index is None:
            return [], self._size + 1 + len(encode_value(identity)) + len(self._columns)
        row = self._rows[index]
        return (row.split(b",") if row else []), self._size

    def _widen(
        self, columns: dict[str, int], new_names: list[str], grown: int, *, new_row: bool
    ) -> tuple[dict[str, int], int]:
        """Columns with `new_names` added (a copy), and the size with a `,` + name in the
        header and a `,` in every row for each."""
        for name in new_names:
            _check_name(name)
        rows = len(self._rows) + (1 if new_row else 0)
        grown += sum(1 + len(encode_cell(name)) for name in new_names) + rows * len(new_names)
        widened = dict(columns)
        for name in new_names:
            widened[name] = len(widened)
        return widened, grown

    # --- reading -----------------------------------------------------------------------------

    def render(self) -> bytes:
        """The request body: `batch=` + header + rows, joined once."""
        # Appended in place: a line object per row (and a list of them) cost as much as the body
        # again at the drain's peak. Every line has `width - 1` commas.
        width = len(self._header)
        out = bytearray(PREFIX)
        out += b",".join(self._header)
        for identity, row in zip(self._index, self._rows, strict=True):
            out += b"\n"
            out += encode_value(identity)
            if row:
                out += b","
                out += row
                missing = width - 2 - row.count(b",")
            else:
                missing = width - 1
            if missing:
                out += b"," * missing
        return bytes(out)

    @property
    def attribute_names(self) -> list[str]:
        return list(self._columns)

    def __contains__(self, identity: object) -> bool:
        """Whether the batch has a row for this identity."""
        return identity in self._index

    def identities(self) -> Iterator[str]:
        """The rows' identities, in row order."""
        return iter(self._index)

    def encoded_rows(self) -> Iterator[tuple[str, bytes]]:
        """Per row: its identity and its encoded cells after the identity (`,`-separated, in
        the order of `attribute_names`, trailing empty cells left out); nothing is decoded."""
        for identity, index in self._index.items():
            yield identity, self._rows[index]

    def refs(self) -> list[Ref]:
        """Every event's ref, in the order they were added."""
        return list(self._refs)

    def iter_refs(self) -> Iterator[Ref]:
        """Like `refs`, without a copy (a million refs would make a 40 MB list)."""
        return iter(self._refs)

    def refs_by_row(self) -> list[list[Ref]]:
        """Index i: the refs of row number i + 1 (built on demand, not kept)."""
        grouped: list[list[Ref]] = [[] for _ in self._rows]
        for row, ref in zip(self._event_rows, self._refs, strict=True):
            grouped[row].append(ref)
        return grouped

    def rows(self) -> Iterator[BatchRow[Ref]]:
        """Per row: rowNumber, identity, merged attributes, the refs of its events."""
        names = list(self._columns)
        grouped = self.refs_by_row()
        for number, (identity, index) in enumerate(self._index.items(), start=1):
            row = self._rows[index]
            cells = row.split(b",") if row else []
            attributes = {names[i]: _decode(cell) for i, cell in enumerate(cells) if cell}
            yield BatchRow(number, identity, attributes, tuple(grouped[index]))


def _set_cells(
    cells: list[bytes],
    pairs: Iterable[tuple[str, Any]],  # str values, or bytes ones already `encoded`
    columns: dict[str, int],
    *,
    encoded: bool,
) -> int | None:
    """Set each (name, value) pair's cell, empty values skipped (values encoded unless
    `encoded`); returns how many bytes the row grew, or None at the first name that is not a
    column yet (then `cells` is half-set: the caller drops it and takes the general path).
    The common case without a list per event: a profile's events mostly set known columns."""
    width = len(cells)
    grown = 0
    for name, value in pairs:
        if not value:
            continue
        at = columns.get(name)
        if at is None:
            return None
        cell: bytes = value if encoded else encode_value(value)
        if at >= width:
            cells.extend([b""] * (at + 1 - width))
            width = at + 1
        grown += len(cell) - len(cells[at])
        cells[at] = cell
    return grown


def _fill(
    cells: list[bytes],
    attributes: Mapping[str, str],
    carried: Carried | None,
    columns: dict[str, int],
) -> int | None:
    """What an earlier batch set (encoded), then the event's values over it: the bytes the row
    grew, or None when a name is not a column yet."""
    grown = 0
    if carried is not None:
        names, encoded = carried
        pairs = zip(names, encoded.split(b","), strict=False)
        from_carry = _set_cells(cells, pairs, columns, encoded=True)
        if from_carry is None:
            return None
        grown = from_carry
    from_event = _set_cells(cells, attributes.items(), columns, encoded=False)
    return None if from_event is None else grown + from_event


def _new_names(
    attributes: Mapping[str, str], carried: Carried | None, columns: dict[str, int]
) -> list[str]:
    """Names with a value that are not columns yet, carried ones first, each once."""
    names: list[str] = []
    if carried is not None:
        carried_names, encoded = carried
        cells = encoded.split(b",")
        names = [n for n, cell in zip(carried_names, cells, strict=False) if cell]
    names += [name for name, value in attributes.items() if value]
    return [name for name in dict.fromkeys(names) if name not in columns]


def _check_name(name: str) -> None:
    if not name or name in ID_COLUMNS.values():
        raise InvalidBulkRow(
            "bulk_invalid_row", "an attribute name is empty or names an identity column"
        )


def _decode(cell: bytes) -> str:
    return unquote(cell.decode("ascii"), encoding="utf-8", errors="strict")
