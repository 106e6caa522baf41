"""The bulk API's two limits, shared by every replica: batch calls a minute, rows a day.

Each limit is a quota gate of its own, apart from the single-update quota: at most
`bulk.calls_per_minute` batch calls (submits, retries included) in any rolling 60 s, and at most
`bulk.daily_rows` rows in any rolling 24 h. In the App both are `SharedQuotaGate`s, each on its
own ledger topic (`<quota ledger topic>.bulk-calls`, `.bulk-rows`): the same replay rule and
proof as the single quota (docs/quota.md), without a key namespace to keep apart. Status polls
are not batch calls and take nothing.

A 503 or 429 with Retry-After holds the calls gate, hence every replica's batch calls (the
hold goes through the ledger); it never holds single updates, nor the rows budget.

Usage (consumer/bulk/client.py): `await limits.rows.acquire(rows)` once per submitted batch,
then `await limits.calls.acquire()` before every POST attempt.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from consumer.config import Settings
from consumer.metrics import BulkMetrics
from consumer.quota.ledger import QuotaRule
from consumer.quota.local import Clock, QuotaGate, Sleep
from consumer.quota.log import KafkaLedgerLog
from consumer.quota.shared import SharedQuotaGate, replica_id

log = logging.getLogger(__name__)

CALLS_WINDOW_SECONDS = 60.0  # Adobe: about 50 batch calls a minute
ROWS_WINDOW_SECONDS = 86_400.0  # Adobe: rows of all batches in a day, per client


def calls_rule(settings: Settings) -> QuotaRule:
    # Eager: the limits are plain counts per window; pacing a backlog's drain would defeat bulk.
    hold_max = settings.target.retry_after_max_seconds
    return QuotaRule(settings.bulk.calls_per_minute, CALLS_WINDOW_SECONDS, hold_max=hold_max)


def rows_rule(settings: Settings) -> QuotaRule:
    hold_max = settings.target.retry_after_max_seconds
    return QuotaRule(settings.bulk.daily_rows, ROWS_WINDOW_SECONDS, hold_max=hold_max)


def ledger_topics(settings: Settings) -> dict[str, str]:
    """Budget name -> its ledger topic, named after the single quota's ledger."""
    base = settings.ledger_topic()
    return {"calls": f"{base}.bulk-calls", "rows": f"{base}.bulk-rows"}


class BulkLimits:
    """The calls gate and the rows gate (local or shared)."""

    def __init__(self, *, calls: QuotaGate, rows: QuotaGate) -> None:
        self.calls = calls
        self.rows = rows

    def gates(self) -> dict[str, QuotaGate]:
        return {"calls": self.calls, "rows": self.rows}

    def health(self) -> tuple[bool, str]:
        for name, gate in self.gates().items():
            ok, reason = gate.health()
            if not ok:
                return False, f"bulk {name} budget: {reason}"
        return True, "ok"

    def publish(self, metrics: BulkMetrics, waited: dict[str, float]) -> None:
        """Set the budget gauges from the gates' snapshots; `waited` carries each gate's
        `waited_seconds` from the previous call (updated in place) for the wait counter."""
        for name, gate in self.gates().items():
            snap = gate.snapshot()
            metrics.budget_limit.labels(name).set(snap.limit)
            metrics.budget_used.labels(name).set(snap.used)
            metrics.budget_remaining.labels(name).set(snap.remaining)
            metrics.budget_wait.labels(name).inc(
                max(0.0, gate.waited_seconds - waited.get(name, 0))
            )
            waited[name] = gate.waited_seconds

    async def close(self) -> None:
        for gate in self.gates().values():
            if isinstance(gate, SharedQuotaGate):
                await gate.close()


def local_limits(settings: Settings, *, clock: Clock, sleep: Sleep = asyncio.sleep) -> BulkLimits:
    """One process's limits (tests, tools): nothing is shared."""

    def gate(rule: QuotaRule) -> QuotaGate:
        return QuotaGate(
            rule.limit,
            rule.window,
            "eager",
            clock=clock,
            sleep=sleep,
            hold_max_seconds=rule.hold_max,
        )

    return BulkLimits(calls=gate(calls_rule(settings)), rows=gate(rows_rule(settings)))


async def open_shared_limits(
    settings: Settings, kafka_config: dict[str, Any], clock: Clock, replica: str | None = None
) -> BulkLimits:
    """The App's limits: both ledgers (created if missing and allowed) read from the start."""
    replica = replica or replica_id()
    topics = ledger_topics(settings)
    gates: dict[str, SharedQuotaGate] = {}
    try:
        for name, rule in (("calls", calls_rule(settings)), ("rows", rows_rule(settings))):
            ledger = KafkaLedgerLog(
                kafka_config, topics[name], rule.window, create_topic=settings.kafka.create_topics
            )
            gates[name] = SharedQuotaGate(rule, ledger, replica, clock)
            await gates[name].start()
    except BaseException:
        for gate in gates.values():
            await gate.close()
        raise
    log.info(
        "bulk ledgers open",
        extra={"event": "bulk_ledgers_open", "topics": sorted(topics.values())},
    )
    return BulkLimits(calls=gates["calls"], rows=gates["rows"])
