"""The process-wide GC settings `profile-consumer run` applies once started."""

from __future__ import annotations

import argparse
import gc
import signal
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from consumer import cli, runtime

pytestmark = pytest.mark.unit


@pytest.fixture
def gc_restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.usefixtures("gc_restored")
def test_tune_gc_freezes_what_exists_and_raises_the_young_threshold() -> None:
    _, middle, old = gc.get_threshold()
    runtime.tune_gc()
    assert gc.get_threshold() == (runtime.YOUNG_THRESHOLD, middle, old)
    assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("gc_restored")
def test_run_tunes_the_gc_after_start_up_and_before_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    steps: list[str] = []

    class App:
        def __init__(self, settings: Any) -> None:
            steps.append("App built")

        async def run(self, stop: Any) -> None:
            steps.append("App running")

    settings = SimpleNamespace(logging=SimpleNamespace(level="INFO", mask_identities=True))
    monkeypatch.setattr("consumer.app.App", App)
    monkeypatch.setattr("consumer.logs.configure", lambda *args: None)
    monkeypatch.setattr(runtime, "tune_gc", lambda: steps.append("GC tuned"))
    monkeypatch.setattr(cli, "_load", lambda path: settings)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert cli.cmd_run(argparse.Namespace(config=Path("config.yaml"), timeout=None)) == 0
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert steps == ["App built", "GC tuned", "App running"]
