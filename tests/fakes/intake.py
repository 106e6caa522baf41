"""An Intake around a fake pipeline, for tests that drive its submit step by hand (no source,
no circuit, no tracker is touched there)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from consumer.config import Settings
from consumer.intake import Intake


def fake_intake(pipeline: SimpleNamespace, pool: Any = None) -> Intake:
    return Intake(
        settings=Settings(),
        source=SimpleNamespace(),  # type: ignore[arg-type]
        pipeline=pipeline,  # type: ignore[arg-type]
        circuit=SimpleNamespace(is_open=False),  # type: ignore[arg-type]
        tracker=SimpleNamespace(),  # type: ignore[arg-type]
        pool=pool,
    )
