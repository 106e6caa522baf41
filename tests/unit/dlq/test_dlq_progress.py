"""The DLQ tools' progress line: on a terminal only, a count while the end is unknown."""

from __future__ import annotations

import io

import pytest

from consumer.dlq.progress import ProgressBar

pytestmark = pytest.mark.unit


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_scan_counts_records_on_a_terminal() -> None:
    out = Terminal()
    scan = ProgressBar(None, out, label="scanning t.dlq")
    assert scan.render(1200) == "scanning t.dlq: 1200 record(s) read"
    scan.update(500, force=True)
    scan.finish(1200)
    assert out.getvalue() == (
        "\r\033[Kscanning t.dlq: 500 record(s) read\r\033[Kscanning t.dlq: 1200 record(s) read\n"
    )


def test_nothing_is_drawn_when_stderr_is_not_a_terminal() -> None:
    out = io.StringIO()
    scan = ProgressBar(None, out, label="scanning t.dlq")
    scan.update(10, force=True)
    scan.finish(10)
    assert out.getvalue() == ""
