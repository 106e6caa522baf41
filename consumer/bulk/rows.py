"""One bulk batch being filled: one row per profile, merged, with its exact rendered size.

`BatchBuilder` (one per identity type and batch) takes mapped events with `try_add` (or `add`),
merging every event of a profile into that profile's single row, the later event winning per
attribute. It keeps the byte size of the body `render()` will produce exactly, updated on every
add, so a batch is never over `max_bytes` nor `max_rows`: an add that would pass either limit
changes nothing and returns False (the caller renders this batch and starts the next one).

The body is `batch=` then CSV: lines joined by `\\n`, cells by `,`, every header name, identity
and value percent-encoded as UTF-8 with nothing left safe (so no cell holds a raw `,` `\\n` `&`
`+` `%`). Header: `thirdPartyId` or `pcId`, then the attribute names in first-seen order.

Memory: per profile one dict entry (identity -> row index), one `str` row (its raw values
joined by SEP, escaped where a value holds SEP or ESC, without the empty cells at its end) and
4 bytes of its encoded length; per event only the caller's `ref` and 4 bytes of row index. The
caller should keep `ref` small (an int, a tuple of ints). The row holds no identity so that
`stored_rows` hands out the very `str` the builder keeps: the carry (consumer/bulk/held.py) keeps
them for every profile sent, and a copy per row doubled that while the batch was alive.

Rows are kept raw and percent-encoded when rendered, once per row: encoding each event's values
as it came cost a third of `try_add`, for values that later events of the profile mostly
replace. The rendered size stays exact: an event changes its row's encoded length by what the
UTF-8 bytes of the joined row say (a safe byte encodes to one byte, any other to three).

Empty values are skipped: Target ignores them (an attribute cannot be cleared through bulk), so
an empty value never overwrites an earlier value of the same profile in the batch.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableSequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Generic, TypeVar, cast
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
# What an earlier batch set for a profile: its attribute names and its cells, either as a
# builder stores them (`str`, `BatchBuilder.stored_rows`) or percent-encoded and `,`-separated
# (`bytes`, as the carry log has them). consumer/bulk/held.py keeps them so.
Carried = tuple[tuple[str, ...], str | bytes]
# A stored row: raw values joined by SEP; in a value, ESC is stored ESC ESC and SEP ESC "0".
SEP = "\x00"
ESC = "\x01"
_STORED_ESCAPE = re.compile("\x01(.)", re.DOTALL)


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
    return _escape(raw, set(raw.translate(None, _SAFE)))


# A stored row is encoded in a few C passes: its SEP joining the cells is the one byte taken as
# safe, and becomes `,` at the end.
_CHECK_JOINED = b"\x01" + _CHECK[1:]
_SAFE_JOINED = _SAFE + b"\x00"
_UNSAFE = bytes(c for c in range(256) if c not in _SAFE)


def encode_row(cells: str | bytes) -> bytes:
    """A stored row's cells percent-encoded and `,`-separated (`bytes` are that already)."""
    if isinstance(cells, bytes):
        return cells
    if ESC in cells or not cells.isascii():
        return b",".join(encode_value(_unstore(cell)) for cell in cells.split(SEP))
    raw = cells.encode("ascii")
    if 0 in raw.translate(_CHECK_JOINED):
        raw = _escape(raw, set(raw.translate(None, _SAFE_JOINED)))
    return raw.replace(b"\x00", b",")


def decode_row(names: tuple[str, ...] | list[str], cells: str | bytes) -> dict[str, str]:
    """A stored (or encoded) row's attributes by name, empty cells left out."""
    if isinstance(cells, bytes):
        values = [_decode(cell) for cell in cells.split(b",")] if cells else []
    else:
        values = [_unstore(cell) for cell in cells.split(SEP)] if cells else []
    return {names[i]: value for i, value in enumerate(values) if value}


def _stored_cells(cells: str | bytes) -> list[str]:
    """A carried row's cells as a builder stores them."""
    if isinstance(cells, str):
        return cells.split(SEP) if cells else []
    text = cells.decode("ascii")
    if "%" not in text:  # nothing was escaped, so no cell holds SEP or ESC either
        return text.split(",") if text else []
    return [_store(_unquote(cell)) if "%" in cell else cell for cell in text.split(",")]


def _store(value: str) -> str:
    if SEP in value or ESC in value:
        return value.replace(ESC, ESC + ESC).replace(SEP, ESC + "0")
    return value


def _unstore(cell: str) -> str:
    if ESC in cell:
        return _STORED_ESCAPE.sub(lambda m: ESC if m.group(1) == ESC else SEP, cell)
    return cell


def _encoded_length(row: str, cells: int) -> int:
    """The bytes of the row's values once encoded (the `,` between them not counted)."""
    if ESC in row:
        return sum(len(encode_value(_unstore(cell))) for cell in row.split(SEP))
    raw = row.encode("utf-8")
    unsafe = len(raw) - len(raw.translate(None, _UNSAFE))
    separators = cells - 1 if cells else 0  # each counted as an unsafe byte above
    return len(raw) + 2 * unsafe - 3 * separators


def _escape(raw: bytes, unsafe: set[int]) -> bytes:
    """`raw` with each byte of `unsafe` percent-encoded: one `replace` per distinct byte, `%`
    first (the escapes add their own)."""
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
        self._rows: list[str] = []  # stored cells (no identity), trailing empties left out
        self._lengths = array("I")  # per row: its values' encoded length (`_encoded_length`)
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

        `carried` (names and cells, as `stored_rows` gives them or encoded) seeds a new row
        with what an earlier batch set for the profile, under the event's own values. `seed`,
        when `carried` is not given: called with the identity only when the event starts a
        new row, to get what it carries."""
        if not identity:
            raise InvalidBulkRow("bulk_invalid_row", "empty identity")
        index = self._index.get(identity)
        if index is None:
            if len(self._rows) >= self.max_rows:
                return False
            if carried is None and seed is not None:
                carried = seed(identity)
            row, old = "", 0
            # A new row adds `\n` + identity + a `,` per column.
            grown = self._size + 1 + len(encode_value(identity)) + len(self._columns)
        else:
            carried = None  # only a new row starts from what an earlier batch set
            row, old, grown = self._rows[index], self._lengths[index], self._size
        columns = self._columns
        new_names: list[str] = []
        cells = row.split(SEP) if row else []
        if not _fill(cells, attributes, carried, columns):
            # A new attribute name: the header widens (a copy, until the event fits).
            new_names = _new_names(attributes, carried, columns)
            columns, grown = self._widen(columns, new_names, grown, new_row=index is None)
            cells = row.split(SEP) if row else []
            _fill(cells, attributes, carried, columns)
        joined = SEP.join(cells)
        if ESC in joined or joined.count(SEP) != (len(cells) - 1 if cells else 0):
            # A value holds SEP or ESC (or an escaped one is in the row): store them escaped.
            stored = {name: _store(value) for name, value in attributes.items()}
            cells = row.split(SEP) if row else []
            _fill(cells, stored, carried, columns)
            joined = SEP.join(cells)
        length = _encoded_length(joined, len(cells))
        grown += length - old
        if grown > self.max_bytes:
            return False
        if new_names:
            self._header.extend(encode_cell(name) for name in new_names)
            self._columns = columns
        if index is None:
            index = self._index[identity] = len(self._rows)
            self._rows.append(joined)
            self._lengths.append(length)
        else:
            self._rows[index] = joined
            self._lengths[index] = length
        self._size = grown
        self._event_rows.append(index)
        self._refs.append(ref)
        return True

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
        """The request body: `batch=` + header + rows, each row encoded here, joined once."""
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
                out += encode_row(row)
                missing = width - 2 - row.count(SEP)
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

    def stored_rows(self) -> Iterator[tuple[str, str]]:
        """Per row: its identity and its cells as stored (in the order of `attribute_names`,
        trailing empty cells left out: `encode_row` and `decode_row` read them)."""
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
            attributes = decode_row(names, self._rows[index])
            yield BatchRow(number, identity, attributes, tuple(grouped[index]))


def _set_cells(cells: list[str], pairs: Iterable[tuple[str, str]], columns: dict[str, int]) -> bool:
    """Set each (name, value) pair's cell, empty values skipped; False at the first name that is
    not a column yet (then `cells` is half-set: the caller drops it and widens the columns). No
    list per event: a profile's events mostly set known columns."""
    width = len(cells)
    for name, value in pairs:
        if value:
            at = columns.get(name)
            if at is None:
                return False
            if at >= width:
                cells.extend([""] * (at + 1 - width))
                width = at + 1
            cells[at] = value
    return True


def _fill(
    cells: list[str],
    attributes: Mapping[str, str],
    carried: Carried | None,
    columns: dict[str, int],
) -> bool:
    """What an earlier batch set, then the event's values over it; False when a name is not a
    column yet."""
    if carried is not None:
        names, stored = carried
        if not _set_cells(cells, zip(names, _stored_cells(stored), strict=False), columns):
            return False
    return _set_cells(cells, attributes.items(), columns)


def _new_names(
    attributes: Mapping[str, str], carried: Carried | None, columns: dict[str, int]
) -> list[str]:
    """Names with a value that are not columns yet, carried ones first, each once."""
    names: list[str] = []
    if carried is not None:
        carried_names, stored = carried
        cells = _stored_cells(stored)
        names = [n for n, cell in zip(carried_names, cells, strict=False) if cell]
    names += [name for name, value in attributes.items() if value]
    return [name for name in dict.fromkeys(names) if name not in columns]


def _check_name(name: str) -> None:
    if not name or name in ID_COLUMNS.values():
        raise InvalidBulkRow(
            "bulk_invalid_row", "an attribute name is empty or names an identity column"
        )


def _decode(cell: bytes) -> str:
    return _unquote(cell.decode("ascii"))


def _unquote(cell: str) -> str:
    return unquote(cell, encoding="utf-8", errors="strict")
