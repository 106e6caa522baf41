"""glibc malloc settings `profile-consumer run` applies before any Kafka client starts."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import Any

import pytest

from consumer import cli, runtime

pytestmark = pytest.mark.unit


class Libc:
    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.answer


@pytest.fixture
def libc(monkeypatch: pytest.MonkeyPatch) -> Libc:
    fake = Libc()
    monkeypatch.setattr(runtime.ctypes, "CDLL", lambda name: fake)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    return fake


def test_arenas_bounded_and_mmap_threshold_fixed(libc: Libc) -> None:
    assert runtime.tune_malloc() is True
    assert libc.calls == [(-8, runtime.ARENA_MAX), (-3, runtime.MMAP_THRESHOLD)]


def test_the_environment_wins(libc: Libc, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert runtime.tune_malloc() is True
    assert libc.calls == []


def test_a_refusal_or_no_glibc_reads_false(libc: Libc, monkeypatch: pytest.MonkeyPatch) -> None:
    libc.answer = 0
    assert runtime.tune_malloc() is False

    def missing(name: Any) -> Any:
        raise OSError("no libc")

    monkeypatch.setattr(runtime.ctypes, "CDLL", missing)
    assert runtime.tune_malloc() is False


def test_the_real_libc_takes_them() -> None:
    """This image runs glibc: a wrong parameter number would be refused (0)."""
    assert runtime.tune_malloc() is True


class Loaded(Exception):
    """Stops `cmd_run` once it loads the config: what ran before that is what counts."""


def test_run_tunes_malloc_before_anything_else(monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[str] = []

    def load(path: Path) -> None:
        steps.append("config loaded")  # preflight and App (every Kafka client) come after
        raise Loaded

    monkeypatch.setattr(runtime, "tune_malloc", lambda: steps.append("malloc tuned"))
    monkeypatch.setattr(cli, "_load", load)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with pytest.raises(Loaded):
            cli.cmd_run(argparse.Namespace(config=Path("config.yaml"), timeout=None))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert steps == ["malloc tuned", "config loaded"]
