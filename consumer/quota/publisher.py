"""Publishes the quota gate's view to Prometheus once a second (headroom, usage, exhaustion ETA)."""

from __future__ import annotations

import asyncio
import math

from consumer.metrics import Metrics
from consumer.quota.local import QuotaGate

PUBLISH_INTERVAL_SECONDS = 1.0


def publish_static(gate: QuotaGate, metrics: Metrics) -> None:
    """The figures known before the ledger is read: the limit and a full window."""
    metrics.quota_limit.set(gate.limit)
    metrics.quota_window.set(gate.window)
    metrics.quota_remaining.set(gate.limit)
    metrics.quota_used.set(0)
    metrics.quota_eta.set(math.inf)


async def publish_forever(gate: QuotaGate, metrics: Metrics) -> None:
    """Until cancelled."""
    waited, bad = 0.0, 0
    while True:
        snap = gate.snapshot()
        metrics.quota_used.set(snap.used)
        metrics.quota_remaining.set(snap.remaining)
        metrics.quota_used_by_replica.set(snap.used_by_this_replica)
        metrics.quota_eta.set(snap.exhaustion_eta_seconds)
        metrics.quota_wait.inc(gate.waited_seconds - waited)
        metrics.quota_ledger_bad_records.inc(gate.ledger_bad_records - bad)
        metrics.clock_skew.set(gate.skew_seconds)
        waited, bad = gate.waited_seconds, gate.ledger_bad_records
        await asyncio.sleep(PUBLISH_INTERVAL_SECONDS)
