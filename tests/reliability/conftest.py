"""Fixtures of the reliability scenarios (the shared ones live in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.harness import Consumers


@pytest.fixture
def consumers(tmp_path: Path) -> Iterator[Consumers]:
    """Start `profile-consumer run` processes; any left running is killed at teardown."""
    logs = tmp_path / "logs"
    logs.mkdir()
    started = Consumers(logs)
    try:
        yield started
    finally:
        started.cleanup()
