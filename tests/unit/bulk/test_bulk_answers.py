"""Target's bulk answers: odd but plausible documents read right, unusable ones refused."""

from __future__ import annotations

import pytest

from consumer.bulk.answers import (
    MAX_STATUS_BODY,
    parse_status,
    parse_submitted,
)
from consumer.errors import BulkAnswerError, RetryableBulkError

pytestmark = pytest.mark.unit


def test_submit_answer_as_documented() -> None:
    body = (
        b"<response><success>true</success><batchId>b-1</batchId>"
        b"<message>Batch submitted for processing</message>"
        b"<batchStatus>https://acme.tt.omtrdc.net/m2/acme/v2/profile/batchStatus?batchId=b-1"
        b"</batchStatus></response>"
    )
    ok, submitted = parse_submitted(body)
    assert ok and submitted.batch_id == "b-1"
    assert submitted.status_url.endswith("batchStatus?batchId=b-1")
    assert submitted.message == "Batch submitted for processing"


def test_submit_answer_with_whitespace_case_and_a_namespace() -> None:
    body = b"""<?xml version="1.0" encoding="UTF-8"?>
    <t:Response xmlns:t="urn:x">
      <t:Success> TRUE </t:Success>
      <BATCHID>
         b-2
      </BATCHID>
      <BatchStatus>https://h/m2/acme/profile/batchStatus?batchId=b-2&amp;x=1</BatchStatus>
    </t:Response>"""
    ok, submitted = parse_submitted(body)
    assert ok and submitted.batch_id == "b-2"
    assert submitted.status_url == "https://h/m2/acme/profile/batchStatus?batchId=b-2&x=1"


def test_a_refusal_is_returned_with_its_message() -> None:
    ok, submitted = parse_submitted(
        b"<response><success>false</success><message>bad header</message></response>"
    )
    assert not ok and submitted.message == "bad header"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"Service Unavailable",
        b"<html><body>502 Bad Gateway</body>",
        b"<response><success>true</success></response>",  # no batchId, no status URL
        b"<html><body>maintenance</body></html>",  # well-formed, but not a verdict
        b'<!DOCTYPE r [<!ENTITY a "aaaa">]><response><success>true</success></response>',
        b"<response>" + b" " * 70_000 + b"</response>",  # past the submit bound
    ],
)
def test_unusable_submit_answers_raise_a_retryable_error(body: bytes) -> None:
    with pytest.raises(BulkAnswerError) as caught:
        parse_submitted(body)
    assert isinstance(caught.value, RetryableBulkError)


STATUS = b"""<response>
  <batchId>b-1</batchId><status>complete</status><batchSize>3</batchSize>
  <rows>
    <row><rowNumber>1</rowNumber><id>p1</id><status>success</status><message>ok</message></row>
    <row><rowNumber>2</rowNumber><id>p&amp;2</id><status>failed</status>
         <message>invalid attribute</message></row>
    <row><rowNumber>3</rowNumber><id>p3</id><status>Pending</status></row>
  </rows>
</response>"""


def test_status_keeps_the_rows_that_did_not_succeed() -> None:
    status = parse_status(STATUS)
    assert status.complete and status.batch_id == "b-1" and status.size == 3
    assert status.succeeded == 1 and status.reported == 3
    failed, odd = status.rows
    assert (failed.number, failed.identity, failed.state) == (2, "p&2", "failed")
    assert failed.message == "invalid attribute" and not failed.ok
    assert (odd.number, odd.state, odd.message) == (3, "unknown", "pending")


def test_status_without_rows_as_v1_answers() -> None:
    status = parse_status(b"<response><batchId>b</batchId><status>INCOMPLETE</status></response>")
    assert status.state == "incomplete" and status.rows == () and status.reported == 0
    assert status.size is None


@pytest.mark.parametrize("raw", ["queued", "Processing", "COMPLETE-ish"])
def test_unknown_states_read_as_still_processing(raw: str) -> None:
    status = parse_status(f"<response><status>{raw}</status></response>".encode())
    assert status.state == "incomplete" and status.raw_state == raw and not status.complete


def test_stuck_is_its_own_state() -> None:
    status = parse_status(b"<Response><Status> stuck </Status><batchSize>x</batchSize></Response>")
    assert status.state == "stuck" and status.size is None


def test_the_batch_status_is_not_taken_from_a_row() -> None:
    body = b"<response><rows><row><rowNumber>1</rowNumber><status>failed</status></row></rows>"
    with pytest.raises(BulkAnswerError):
        parse_status(body + b"</response>")


@pytest.mark.parametrize(
    "body",
    [
        b"not xml at all",
        b"<response><status>complete</status>",  # truncated
        b"<response><batchId>b</batchId></response>",  # no status
        b"<response><status>complete</status><rows><row><status>failed</status></row></rows>"
        b"</response>",  # a failed row we could not place
    ],
)
def test_unusable_status_answers_raise(body: bytes) -> None:
    with pytest.raises(BulkAnswerError):
        parse_status(body)


def test_a_huge_status_is_refused_before_parsing() -> None:
    class Huge(bytes):
        def __len__(self) -> int:
            return MAX_STATUS_BODY + 1

    with pytest.raises(BulkAnswerError, match="more than"):
        parse_status(Huge(b"<response><status>complete</status></response>"))


def test_a_large_complete_status_is_read_in_bounded_objects() -> None:
    rows = b"".join(
        b"<row><rowNumber>%d</rowNumber><id>p%d</id><status>%s</status></row>"
        % (i, i, b"failed" if i % 1000 == 0 else b"success")
        for i in range(1, 100_001)
    )
    status = parse_status(
        b"<response><status>complete</status><rows>" + rows + b"</rows></response>"
    )
    assert status.succeeded == 99_900 and len(status.rows) == 100
    assert [r.number for r in status.rows[:2]] == [1000, 2000]


def _simulator_rows(states: list[str]) -> bytes:
    return b"".join(
        b"<row><rowNumber>%d</rowNumber><id>p%d&amp;x</id><status>%s</status>"
        b"<message>m</message></row>" % (i, i, state.encode())
        for i, state in enumerate(states, start=1)
    )


@pytest.mark.parametrize(
    ("before", "rows_wrapper"),
    [
        (b"", b"<rows>%s</rows>"),
        (b'<?xml version="1.0" encoding="UTF-8"?>\n', b"<rows>%s</rows>"),
        (b"", b"<rows><!-- a comment -->%s</rows>"),  # the expat path for every row
    ],
)
def test_plain_success_rows_are_counted_like_the_expat_path(
    before: bytes, rows_wrapper: bytes
) -> None:
    states = ["success", "failed", "success", "Pending", "success"]
    body = (
        before
        + b"<response><batchId>b</batchId><status>complete</status><batchSize>5</batchSize>"
        + rows_wrapper % _simulator_rows(states)
        + b"</response>"
    )
    status = parse_status(body)
    assert status.succeeded == 3 and status.reported == 5
    assert [(r.number, r.identity, r.state) for r in status.rows] == [
        (2, "p2&x", "failed"),
        (4, "p4&x", "unknown"),
    ]


def test_a_row_shaped_text_in_a_comment_is_not_counted() -> None:
    body = (
        b"<response><status>complete</status><rows><!-- "
        + _simulator_rows(["success"])
        + b" --></rows></response>"
    )
    assert parse_status(body).succeeded == 0
