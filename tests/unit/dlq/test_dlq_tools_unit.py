"""DLQ tools without a broker: headers, selection, replay headers, the commit cursor, output."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from consumer.cli import build_parser
from consumer.dlq.inspection import Report, render_table
from consumer.dlq.records import (
    REPLAY_COUNT,
    DlqRecord,
    Selection,
    describe,
    interleave,
    jsonable,
    parse_time,
    refusal,
    replay_headers,
)
from consumer.dlq.replay import REPLAY, SKIP, CommitCursor, ProgressBar, classify
from consumer.errors import DecodeError

pytestmark = pytest.mark.unit


def record(
    offset: int = 0,
    reason: str = "http_404",
    stage: str = "send",
    at: str | None = "2026-11-01T10:00:00.000+00:00",
    extra: list[tuple[str, bytes | None]] | None = None,
    partition: int = 0,
    timestamp_ms: int | None = None,
) -> DlqRecord:
    headers: list[tuple[str, bytes | None]] = list(extra or [])
    headers += [("error.stage", stage.encode()), ("error.reason", reason.encode())]
    headers += [("error.message", b"refused")]
    if at is not None:
        headers.append(("error.timestamp", at.encode()))
    headers += [
        ("original.topic", b"offline"),
        ("original.partition", b"2"),
        ("original.offset", b"41"),
    ]
    return DlqRecord(partition, offset, b"key", b"value", headers, timestamp_ms)


class FakeDecoder:
    def decode(self, value: bytes | None) -> dict[str, Any]:
        if value != b"good":
            raise DecodeError("malformed_avro", "Avro body does not match the schema")
        return {"at": datetime(2026, 11, 1, tzinfo=UTC), "amount": Decimal("12.50"), "b": b"\x00"}


def test_headers_are_read_last_one_wins() -> None:
    # An original header with a DLQ name must not shadow what the DLQ writer appended.
    r = record(extra=[("error.reason", b"spoofed"), ("trace", b"t1")])
    assert (r.stage, r.reason, r.original_topic) == ("send", "http_404", "offline")
    assert r.original_partition == 2
    assert r.header("trace") == "t1" and r.header("missing") is None


def test_replay_count_defaults_to_zero_and_ignores_garbage() -> None:
    assert record().replay_count == 0
    assert record(extra=[(REPLAY_COUNT, b"2")]).replay_count == 2
    assert record(extra=[(REPLAY_COUNT, b"two")]).replay_count == 0


def test_dead_lettered_at_prefers_the_header_then_the_record_timestamp() -> None:
    assert record().dead_lettered_at == datetime(2026, 11, 1, 10, tzinfo=UTC)
    fallback = record(at=None, timestamp_ms=1_700_000_000_000)
    assert fallback.dead_lettered_at == datetime.fromtimestamp(1_700_000_000, UTC)
    assert record(at=None).dead_lettered_at is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01T10:30:00Z", datetime(2026, 11, 1, 10, 30, tzinfo=UTC)),
        ("2026-11-01T12:30:00+02:00", datetime(2026, 11, 1, 10, 30, tzinfo=UTC)),
        ("2026-11-01 10:30", datetime(2026, 11, 1, 10, 30, tzinfo=UTC)),
        ("yesterday", None),
    ],
)
def test_parse_time(text: str, expected: datetime | None) -> None:
    assert parse_time(text) == expected


def test_selection_by_reason_and_time_window() -> None:
    early = record(reason="http_404", at="2026-11-01T09:00:00+00:00")
    late = record(reason="no_identity", at="2026-11-01T11:00:00+00:00")
    assert Selection().matches(early) and Selection().matches(late)
    by_reason = Selection(frozenset({"no_identity"}))
    assert not by_reason.matches(early) and by_reason.matches(late)
    window = Selection(
        since=datetime(2026, 11, 1, 9, tzinfo=UTC), until=datetime(2026, 11, 1, 11, tzinfo=UTC)
    )
    assert window.matches(early)  # since is inclusive
    assert not window.matches(late)  # until is exclusive
    assert not window.matches(record(at=None))  # no time: a time filter cannot select it


def test_replay_headers_strip_dlq_headers_and_count_up() -> None:
    r = record(extra=[("trace", b"t1"), (REPLAY_COUNT, b"1")])
    assert replay_headers(r) == [("trace", b"t1"), (REPLAY_COUNT, b"2")]
    assert replay_headers(record()) == [(REPLAY_COUNT, b"1")]


def test_refusal_at_max_replays_and_without_an_original_topic() -> None:
    assert refusal(record(extra=[(REPLAY_COUNT, b"2")]), 3) is None
    message = refusal(record(extra=[(REPLAY_COUNT, b"3")]), 3)
    assert message is not None and "already replayed 3 time(s)" in message
    foreign = DlqRecord(0, 0, None, b"x", [("error.reason", b"x")])
    assert "original.topic" in (refusal(foreign, 3) or "")


def test_classify() -> None:
    done = {(0, 5)}
    sel = Selection(frozenset({"http_404"}))
    assert classify(record(offset=5), sel, done, 3) == SKIP
    assert classify(record(offset=6, reason="no_identity"), sel, done, 3) is None
    assert classify(record(offset=7), sel, done, 3) == REPLAY
    assert "already replayed" in str(
        classify(record(7, extra=[(REPLAY_COUNT, b"3")]), sel, done, 3)
    )


def test_commit_cursor_stops_at_the_first_record_left_alone() -> None:
    cursor = CommitCursor()
    for offset, handled in [(0, True), (1, True), (2, False), (3, True)]:
        cursor.advance((0, offset), handled)
    cursor.advance((1, 10), True)
    # Partition 0 stops before offset 2 (a later replay of its reason must still see it).
    assert cursor.positions == {0: 2, 1: 11}


def test_commit_cursor_never_commits_a_partition_that_starts_blocked() -> None:
    cursor = CommitCursor()
    cursor.advance((0, 0), False)
    cursor.advance((0, 1), True)
    assert cursor.positions == {}


def test_jsonable_event_values() -> None:
    event = {"at": datetime(2026, 11, 1, tzinfo=UTC), "n": [Decimal("1.10"), b"\xff"], "s": "é"}
    assert jsonable(event) == {"at": "2026-11-01T00:00:00+00:00", "n": ["1.10", "/w=="], "s": "é"}


def test_describe_decodes_as_far_as_it_can() -> None:
    good = DlqRecord(0, 1, b"\xff\x00", b"good", [("error.reason", b"http_404")])
    out = describe(good, FakeDecoder())
    assert out["key"] == "base64:/wA=" and out["event"]["amount"] == "12.50"
    assert out["event"]["at"] == "2026-11-01T00:00:00+00:00" and out["event"]["b"] == "AA=="
    bad = describe(record(), FakeDecoder())
    assert bad["event"] is None and bad["decode_error"].startswith("malformed_avro: ")
    assert bad["headers"]["error.reason"] == "http_404" and bad["key"] == "key"
    json.dumps(out)  # everything is JSON-ready


def test_interleave_shows_every_reason_first() -> None:
    a = [record(i, "a") for i in range(3)]
    b = [record(10 + i, "b") for i in range(3)]
    assert [r.offset for r in interleave([a, b], 4)] == [0, 10, 1, 11]


def test_report_counts_pending_and_time_range() -> None:
    report = Report("dlq", sample_size=2)
    report.add(record(0, at="2026-11-01T10:00:00+00:00"), is_pending=False)
    report.add(record(1, at="2026-11-01T08:00:00+00:00"), is_pending=True)
    report.add(record(2, "empty_value", "decode", at="2026-11-01T12:00:00+00:00"), True)
    data = report.as_dict(FakeDecoder())
    assert data["total"] == 3 and data["pending"] == 2
    assert data["by_stage"] == {"decode": 1, "send": 2}
    assert data["by_reason"] == [
        {"stage": "decode", "reason": "empty_value", "count": 1, "pending": 1},
        {"stage": "send", "reason": "http_404", "count": 2, "pending": 1},
    ]
    assert (data["oldest"], data["newest"]) == (
        "2026-11-01T08:00:00+00:00",
        "2026-11-01T12:00:00+00:00",
    )
    assert {s["reason"] for s in data["sample"]} == {"http_404", "empty_value"}
    out = io.StringIO()
    render_table(data, out)
    text = out.getvalue()
    assert "3 record(s), 2 pending replay" in text and "http_404" in text
    assert "does not decode (malformed_avro" in text


def test_progress_bar_render() -> None:
    bar = ProgressBar(4, io.StringIO(), width=8)
    assert bar.render(2) == "replay [####----] 2/4 (50%)"
    assert bar.render(0) == "replay [--------] 0/4 (0%)"
    assert ProgressBar(0, io.StringIO(), width=4).render(0) == "replay [####] 0/0 (100%)"
    assert not bar.enabled  # not a terminal: silent, the summary says it all


def test_cli_contract() -> None:
    parser = build_parser()
    args = parser.parse_args(["dlq", "inspect", "--config", "c.yaml", "--reason", "x", "--json"])
    assert (args.reason, args.limit, args.json) == (["x"], 10, True)
    args = parser.parse_args(
        ["dlq", "replay", "-c", "c.yaml", "--since", "2026-11-01", "--until", "2026-11-02T00:00Z"]
    )
    assert (args.max_replays, args.dry_run, args.limit) == (3, False, None)
    assert args.since == datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(SystemExit):
        parser.parse_args(["dlq", "replay", "-c", "c.yaml", "--since", "soon"])
    with pytest.raises(SystemExit):
        parser.parse_args(["dlq", "replay", "-c", "c.yaml", "--max-replays", "0"])
