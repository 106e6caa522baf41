"""Helpers for the bulk transport's tests: settings that make batches quick, and completion."""

from __future__ import annotations

from typing import Any

from consumer.app import App
from consumer.config import Settings
from tests.conftest import FAST_GROUP

# Statistics (hence the consumer lag the mode switch reads) every 200 ms instead of 5 s.
FAST_STATS = {"statistics.interval.ms": 200}


def bulk_settings(
    make_settings: Any,
    *,
    transport: str = "auto",
    other: dict[str, Any] | None = None,
    **bulk: Any,
) -> Settings:
    """Settings for a test run: quick batches and polls; `bulk` overrides `bulk.*` keys,
    `other` any other (`section__key`)."""
    base = {
        "max_batch_seconds": 0.5,
        "status_poll_seconds": 0.1,
        "min_dwell_seconds": 0.0,
        **bulk,
    }
    overrides: dict[str, Any] = {f"bulk__{k}": v for k, v in base.items()}
    overrides["target__transport"] = transport
    overrides["kafka__config"] = {**FAST_GROUP, **FAST_STATS}
    overrides.update(other or {})
    return make_settings(**overrides)


def bulk_done(app: App, produced: int, topic: str) -> bool:
    """Every produced record was read, nothing is buffered, and no bulk batch is open."""
    m = app.metrics
    consumed = m.events_consumed.labels(topic)._value.get()
    held = app.bulk.sender.held if app.bulk is not None else 0
    return consumed >= produced and m.buffered_events._value.get() == 0 and held == 0
