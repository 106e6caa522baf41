"""Target's bulk answers, read defensively: the submit answer and the batchStatus document.

Adobe documents the shape only loosely, so: element names are matched case-insensitively and
without any namespace prefix, text is stripped, a DOCTYPE (hence any entity) is refused, the
body is bounded, and the document is streamed through expat without building a tree (a status
with 500,000 rows is tens of MB). An answer we cannot use raises BulkAnswerError (retryable).

A status keeps, of its rows, only those that did not succeed: the successes are only counted
(`succeeded`), so a complete 500,000-row batch costs a counter, not 500,000 objects. Unknown
batch states read as "incomplete" (still processing: poll again); the raw text stays in
`raw_state` for logs. A row whose status is neither `success` nor `failed` is kept, with
`state` "unknown": the wiring treats it as failed once the batch is complete.

Successful rows in Target's plain shape (`<row><rowNumber>..</rowNumber><id>..</id>
<status>success</status><message>..</message></row>`, no markup inside) are counted by one
regular expression pass in C and cut out before expat runs: expat calls back into Python five
times an element, which made a 200,000-row status cost seconds of the event loop (measured by
benchmarks/bench_bulk.py). Every other row, and every document holding a comment, CDATA or
processing instruction (where a row-shaped text need not be a row), takes the expat path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from xml.parsers import expat

from consumer.errors import BulkAnswerError

# The submit answer is a few hundred bytes. A detailed status is ~100 bytes a row plus the
# identity and message: 500,000 rows with long identities stay well under this.
MAX_SUBMIT_BODY = 65_536
MAX_STATUS_BODY = 256 * 1024 * 1024

COMPLETE, INCOMPLETE, STUCK = "complete", "incomplete", "stuck"
# One successful row in the plain shape: no `<` inside a text, so nothing nested is skipped.
_SUCCESS_ROW = re.compile(
    rb"<row>\s*<rowNumber>\s*\d+\s*</rowNumber>\s*<id>[^<]*</id>\s*"
    rb"<status>\s*success\s*</status>\s*<message>[^<]*</message>\s*</row>"
)
_STATES = frozenset({COMPLETE, INCOMPLETE, STUCK})


@dataclass(frozen=True, slots=True)
class Submitted:
    """Target accepted a batch: its id and where to ask for its status (as Target wrote it;
    consumer.bulk.endpoints decides which origin the poll really goes to)."""

    batch_id: str
    status_url: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class RowStatus:
    number: int  # Target's rowNumber: 1 is the first data row
    identity: str
    state: str  # "success", "failed" or "unknown"
    message: str

    @property
    def ok(self) -> bool:
        return self.state == "success"


@dataclass(frozen=True, slots=True)
class BatchStatus:
    batch_id: str
    state: str  # complete, incomplete (also every unknown state) or stuck
    raw_state: str
    size: int | None  # batchSize, when given
    rows: tuple[RowStatus, ...]  # the rows that did not succeed, in document order
    succeeded: int  # rows reported as success

    @property
    def complete(self) -> bool:
        return self.state == COMPLETE

    @property
    def reported(self) -> int:
        """Rows the document gave a status for (0: no detail, as v1 answers)."""
        return self.succeeded + len(self.rows)


def parse_submitted(body: bytes) -> tuple[bool, Submitted]:
    """(success, what Target said). Raises BulkAnswerError when the answer is not usable;
    a refusal (`success` false) is returned, not raised: the caller knows the HTTP status."""
    fields: dict[str, str] = {}

    def on_end(path: tuple[str, ...], text: str) -> None:
        if len(path) == 2 and path[1] not in fields:
            fields[path[1]] = text

    _walk(body, MAX_SUBMIT_BODY, on_end)
    if "success" not in fields:
        # A proxy's or load balancer's page, not Target's verdict: nothing was refused.
        raise BulkAnswerError("the submit answer has no success element")
    success = fields["success"].lower() == "true"
    submitted = Submitted(
        batch_id=fields.get("batchid", ""),
        status_url=fields.get("batchstatus", ""),
        message=fields.get("message", ""),
    )
    if success and not (submitted.batch_id and submitted.status_url):
        raise BulkAnswerError("the submit answer says success but has no batchId or batchStatus")
    return success, submitted


class _StatusReader:
    """Collects a status document's fields as expat reports element ends."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self.row: dict[str, str] = {}
        self.rows: list[RowStatus] = []
        self.succeeded = 0

    def on_end(self, path: tuple[str, ...], text: str) -> None:
        depth = len(path)
        if depth == 2 and path[1] not in self.fields:
            self.fields[path[1]] = text
        elif depth >= 3 and path[-2] == "row":
            self.row.setdefault(path[-1], text)
        elif depth >= 2 and path[-1] == "row":
            self._row_done()

    def _row_done(self) -> None:
        row, self.row = self.row, {}
        state = row.get("status", "").lower()
        if state == "success":
            self.succeeded += 1
            return
        number = row.get("rownumber", "")
        if not number.isdigit():
            raise BulkAnswerError("a failed row of the status answer has no usable rowNumber")
        self.rows.append(
            RowStatus(
                number=int(number),
                identity=row.get("id", ""),
                state="failed" if state == "failed" else "unknown",
                message=row.get("message", "") or state,
            )
        )


def parse_status(body: bytes) -> BatchStatus:
    """The batchStatus document; raises BulkAnswerError when it has no status at all."""
    reader = _StatusReader()
    if len(body) > MAX_STATUS_BODY:
        raise BulkAnswerError(f"answer of {len(body)} bytes, more than {MAX_STATUS_BODY} allowed")
    if b"<row>" in body and _plain(body):
        body, reader.succeeded = _SUCCESS_ROW.subn(b"", body)
    _walk(body, MAX_STATUS_BODY, reader.on_end)
    raw = reader.fields.get("status", "")
    if not raw:
        raise BulkAnswerError("the status answer has no status element")
    size_text = reader.fields.get("batchsize", "")
    return BatchStatus(
        batch_id=reader.fields.get("batchid", ""),
        state=raw.lower() if raw.lower() in _STATES else INCOMPLETE,
        raw_state=raw,
        size=int(size_text) if size_text.isdigit() else None,
        rows=tuple(reader.rows),
        succeeded=reader.succeeded,
    )


def _plain(body: bytes) -> bool:
    """No comment, CDATA, DOCTYPE or processing instruction past the XML declaration."""
    start = body.find(b"?>") + 2 if body.lstrip().startswith(b"<?xml") else 0
    return b"<!" not in body and body.find(b"<?", start) == -1


def _walk(body: bytes, limit: int, on_end: Callable[[tuple[str, ...], str], None]) -> None:
    """Stream `body` through expat: `on_end(path, text)` at each element's end, `path` the
    lower-cased local names from the root down to it, `text` its own stripped text."""
    if len(body) > limit:
        raise BulkAnswerError(f"answer of {len(body)} bytes, more than {limit} allowed")
    parser = expat.ParserCreate()
    stack: list[str] = []
    texts: list[list[str]] = []

    def start(name: str, _attrs: object) -> None:
        stack.append(name.rpartition(":")[2].lower())
        texts.append([])

    def end(_name: str) -> None:
        text = "".join(texts.pop()).strip()
        on_end(tuple(stack), text)
        stack.pop()

    def data(chunk: str) -> None:
        if texts:
            texts[-1].append(chunk)

    def doctype(*_args: object) -> None:
        raise BulkAnswerError("the answer carries a DOCTYPE: refused")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = data
    parser.StartDoctypeDeclHandler = doctype
    parser.buffer_text = True
    try:
        parser.Parse(body, True)
    except expat.ExpatError as exc:
        raise BulkAnswerError(f"the answer is not XML: {exc}") from None
