"""History oracles for the tests: the pure checkers live in devtools/history.py (the demo runs
them on its own run too); this module adds reading a simulator's history over HTTP."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterable
from typing import Any

from devtools.history import (
    Key,
    Update,
    Write,
    accepted_writes,
    max_in_window,
    stale_overwrites,
    uncorrected_regressions,
    value_sequences,
)

__all__ = [
    "Key",
    "Update",
    "Write",
    "accepted_writes",
    "assert_no_stale_overwrite",
    "assert_regressions_corrected",
    "fetch_history",
    "max_in_window",
    "stale_overwrites",
    "uncorrected_regressions",
    "value_sequences",
]


def fetch_history(simulator_url: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The history of a simulator in another process, from its admin endpoint."""
    with urllib.request.urlopen(f"{simulator_url}/_sim/records", timeout=timeout) as answer:  # noqa: S310 - a loopback test server
        records: list[dict[str, Any]] = json.load(answer)
    return records


def assert_no_stale_overwrite(history: Iterable[Any], updates: Iterable[Update]) -> None:
    problems = stale_overwrites(history, updates)
    assert not problems, f"{len(problems)} stale overwrite(s): " + "; ".join(problems[:10])


def assert_regressions_corrected(history: Iterable[Any], updates: Iterable[Update]) -> None:
    problems = uncorrected_regressions(history, updates)
    assert not problems, f"{len(problems)} uncorrected regression(s): " + "; ".join(problems[:10])
