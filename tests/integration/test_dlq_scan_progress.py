"""Scanning the DLQ before `inspect` reports its progress to the given (terminal) stream."""

from __future__ import annotations

import io

import pytest

from consumer.dlq.inspection import build_report
from consumer.dlq.progress import ProgressBar
from consumer.dlq.records import Selection
from tests.conftest import Broker, SettingsFactory
from tests.helpers import produce

pytestmark = pytest.mark.integration


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_inspect_shows_how_many_records_it_has_read(
    broker: Broker, topics: dict[str, str], make_settings: SettingsFactory
) -> None:
    settings = make_settings()
    produce(broker.bootstrap, topics["dlq"], ((b"k", b"not a dlq record") for _ in range(7)))
    out = Terminal()
    scan = ProgressBar(None, out, label=f"scanning {topics['dlq']}")
    report = build_report(settings, Selection(frozenset(), None, None), 3, scan=scan)
    assert sum(report.counts.values()) == 7
    assert out.getvalue().endswith(f"scanning {topics['dlq']}: 7 record(s) read\n")
