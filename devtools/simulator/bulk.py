"""Target's Bulk Profile Update API rules: routes, the ``batch=`` CSV body, rows, XML answers.

Pure functions: no clock, no state. A 500,000-row batch must parse in about a second, so no
step walks the text in Python: the body is checked with whole-text scans, and decoded in one
C call (`binascii.a2b_qp`, whose ``=XX`` escapes are ``%XX`` once ``%`` is swapped for ``=``)
with the separators swapped for control characters first, so that a decoded ``,`` or newline
cannot split a cell; then `str.split`. A body where that swap would be ambiguous (a raw ``=``,
NUL or SOH, or an encoded one) takes the slow path: `urllib.parse.unquote` per cell.
"""

from __future__ import annotations

import binascii
import contextlib
import gc
import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import unquote
from xml.sax.saxutils import escape

from devtools.simulator.rules import MAX_ATTRIBUTE_NAME_CHARS, MAX_THIRD_PARTY_ID_CHARS

MAX_BULK_BODY_BYTES = 50 * 1024 * 1024  # Adobe: the batch must be under 50 MB
MAX_BULK_ROWS = 500_000  # Adobe: at most 500,000 rows per batch
BATCH_PREFIX = "batch="
# Header identity column -> the identity type single updates (and the history) use.
IDENTITY_COLUMNS = {"thirdPartyId": "mbox3rdPartyId", "pcId": "mboxPC"}
SUBMITTED_MESSAGE = "Batch submitted for processing"
ROW_REJECTED = "row rejected"  # the message of an injected row failure
ROW_SUCCESS = "Row processed"
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Raw separators -> characters no cell holds on the fast path (checked by `_fast_path_safe`).
_CELL, _LINE = "\x00", "\x01"
_PROTECT = str.maketrans({",": _CELL, "\n": _LINE})


class BatchError(Exception):
    """The whole batch is refused (400): Adobe would not be able to read it either."""


@dataclass(frozen=True)
class BulkRoute:
    """A bulk path: ``/m2/{cc}[/v2]/profile/batchUpdate`` or ``.../batchStatus``."""

    client_code: str
    version: str  # "v1" or "v2"
    action: str  # "batchUpdate" or "batchStatus"

    def status_path(self) -> str:
        version = "/v2" if self.version == "v2" else ""
        return f"/m2/{self.client_code}{version}/profile/batchStatus"


def bulk_route(path: str) -> BulkRoute | None:
    """The bulk route `path` names, whatever its client code (checked later, for a 404)."""
    parts = path.split("/")
    if len(parts) == 6 and parts[3] == "v2":
        version = "v2"
        del parts[3]
    elif len(parts) == 5:
        version = "v1"
    else:
        return None
    if parts[0] or parts[1] != "m2" or not parts[2] or parts[3] != "profile":
        return None
    if parts[4] not in ("batchUpdate", "batchStatus"):
        return None
    return BulkRoute(client_code=parts[2], version=version, action=parts[4])


@dataclass
class ParsedBatch:
    """A readable batch: its header and its data rows as decoded cells (identity first)."""

    id_column: str  # "thirdPartyId" or "pcId"
    names: list[str]  # attribute names, in header order
    rows: list[list[str]]  # any number of cells: a row of the wrong width fails on its own

    @property
    def identity_type(self) -> str:
        return IDENTITY_COLUMNS[self.id_column]


def parse_batch(body: bytes) -> ParsedBatch:
    """Read a ``batch=`` form body; raises `BatchError` for anything that spoils the batch."""
    text = _batch_text(body).removesuffix("\n")  # the newline that ends the last row
    data_rows = text.count("\n")
    if data_rows > MAX_BULK_ROWS:
        raise BatchError(f"batch has {data_rows} rows; at most {MAX_BULK_ROWS} are allowed")
    if data_rows == 0:
        raise BatchError("batch has no data rows")
    with paused_gc():
        table = _decode_table(text)
    header = table[0]
    _check_header(header)
    return ParsedBatch(id_column=header[0], names=header[1:], rows=table[1:])


def _decode_table(text: str) -> list[list[str]]:
    """Lines of decoded cells, the header first."""
    if "%" not in text:
        return [line.split(",") for line in text.split("\n")]
    if not _fast_path_safe(text):
        return [_decode_cells(line, number) for number, line in enumerate(text.split("\n"))]
    protected = text.translate(_PROTECT).replace("%", "=")
    try:
        decoded = binascii.a2b_qp(protected.encode("utf-8")).decode("utf-8")
    except UnicodeDecodeError:
        raise BatchError("a cell is not valid UTF-8 once decoded") from None
    return [line.split(_CELL) for line in decoded.split(_LINE)]


def _fast_path_safe(text: str) -> bool:
    """True when swapping separators and ``%`` cannot be confused with the text itself.

    Every ``%`` is already known to start a valid escape, so ``=`` never ends a line (which
    would be a quoted-printable soft line break).
    """
    return not any(mark in text for mark in ("=", _CELL, _LINE, "%00", "%01"))


def _batch_text(body: bytes) -> str:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BatchError("body is not valid UTF-8") from None
    if not text.startswith(BATCH_PREFIX):
        raise BatchError(f"body must start with {BATCH_PREFIX!r}")
    text = text[len(BATCH_PREFIX) :]
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if "\r" in text:
            raise BatchError("a raw carriage return outside a CRLF line end; encode it as %0D")
    for char, code in (("&", "%26"), ("+", "%2B")):
        if char in text:
            raise BatchError(f"un-encoded {char!r} corrupts the batch; encode it as {code}")
    bad = _BAD_ESCAPE.search(text)
    if bad is not None:
        found = text[bad.start() : bad.start() + 3]
        raise BatchError(f"invalid percent escape {found!r}; encode '%' as %25")
    return text


def _decode_cells(line: str, row_number: int) -> list[str]:
    cells = line.split(",")
    try:
        return [unquote(cell, encoding="utf-8", errors="strict") for cell in cells]
    except UnicodeDecodeError:
        where = "header" if row_number == 0 else f"row {row_number}"
        raise BatchError(f"{where}: a cell is not valid UTF-8 once decoded") from None


def _check_header(header: list[str]) -> None:
    if header[0] not in IDENTITY_COLUMNS:
        raise BatchError("the first header cell must be thirdPartyId or pcId")
    names = header[1:]
    if not names:
        raise BatchError("the header names no attribute")
    for name in names:
        if not name:
            raise BatchError("empty attribute name in the header")
        if len(name) > MAX_ATTRIBUTE_NAME_CHARS:
            raise BatchError(f"attribute name longer than {MAX_ATTRIBUTE_NAME_CHARS} characters")
        if name.startswith("profile.") or name in IDENTITY_COLUMNS:
            raise BatchError(f"attribute name {name!r}: names carry no 'profile.' prefix")
    if len(set(names)) != len(names):
        raise BatchError("duplicate attribute name in the header")


def row_problems(batch: ParsedBatch) -> dict[int, str]:
    """Row index -> why that row fails on its own (wrong width, bad or repeated identity)."""
    width = len(batch.names) + 1
    third_party = batch.id_column == "thirdPartyId"
    first_row: dict[str, int] = {}
    problems: dict[int, str] = {}
    # One pass, the common case inlined: this runs once per row of up to 500,000.
    for index, cells in enumerate(batch.rows):
        if len(cells) != width:
            problems[index] = f"row has {len(cells)} cells; the header has {width}"
            continue
        identity = cells[0]
        if not identity or (
            third_party
            and (len(identity) > MAX_THIRD_PARTY_ID_CHARS or "+" in identity or "/" in identity)
        ):
            problems[index] = _identity_problem(identity)
            continue
        first = first_row.setdefault(identity, index)
        if first != index:
            problems[index] = f"duplicate {batch.id_column}: row {first + 1} has it"
    return problems


def _identity_problem(identity: str) -> str:
    if not identity:
        return "empty identity"
    if len(identity) > MAX_THIRD_PARTY_ID_CHARS:
        return f"thirdPartyId is longer than {MAX_THIRD_PARTY_ID_CHARS} characters"
    return "thirdPartyId must not contain '+' or '/'"


def row_attributes(names: list[str], cells: list[str]) -> dict[str, str]:
    """The attributes a row sets: Target ignores empty values, so they update nothing."""
    attributes = dict(zip(names, itertools.islice(cells, 1, None), strict=True))
    if "" in cells:
        return {name: value for name, value in attributes.items() if value}
    return attributes


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Hold the cyclic collector off while a batch's rows are built or applied.

    Half a million rows are as many lists and dicts that all survive: the collector would
    otherwise run over and over while they are created and find nothing to free (they hold no
    cycles), tripling the time. Reference counting still frees everything as usual.
    """
    if not gc.isenabled():  # already paused (another batch, or the embedding process)
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# --- XML answers


def submit_xml(batch_id: str, status_url: str) -> bytes:
    return (
        f"<response><success>true</success><batchId>{escape(batch_id)}</batchId>"
        f"<message>{SUBMITTED_MESSAGE}</message>"
        f"<batchStatus>{escape(status_url)}</batchStatus></response>"
    ).encode("utf-8")


@dataclass(frozen=True)
class RowOutcome:
    number: int  # 1 = first data row
    identity: str
    failure: str | None  # None: success


def status_xml(batch_id: str, status: str, size: int, rows: Iterable[RowOutcome] | None) -> bytes:
    """The batchStatus document; `rows` None leaves the per-row detail out."""
    parts = [
        f"<response><batchId>{escape(batch_id)}</batchId><status>{status}</status>",
        f"<batchSize>{size}</batchSize>",
    ]
    if rows is not None:
        parts.append("<rows>")
        parts.extend(_row_xml(row) for row in rows)
        parts.append("</rows>")
    parts.append("</response>")
    return "".join(parts).encode("utf-8")


def _row_xml(row: RowOutcome) -> str:
    state, message = ("success", ROW_SUCCESS) if row.failure is None else ("failed", row.failure)
    return (
        f"<row><rowNumber>{row.number}</rowNumber><id>{escape(row.identity)}</id>"
        f"<status>{state}</status><message>{escape(message)}</message></row>"
    )
