"""`profile-consumer quota status`: the shared quota as the ledger tells it, for SREs.

It reads the ledger as an observer: it spends nothing and creates nothing. To know it has read
the whole ledger without trusting ListOffsets (wrong on Tansu), it appends a no-op marker, reads
until it sees it, then tombstones the marker.
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from consumer.config import Settings, load_settings
from consumer.quota.ledger import LedgerState, QuotaRule
from consumer.quota.log import KafkaLedgerLog, as_record
from consumer.quota.messages import Marker, RecordError, decode, encode, key_of
from consumer.quota.shared import rule_from


@dataclass(frozen=True)
class ReplicaRow:
    replica: str
    used: int
    leases: int
    last_request_seconds_ago: float | None


@dataclass(frozen=True)
class BudgetRow:
    """One bulk limit (consumer/bulk/limits.py) as its own ledger tells it."""

    budget: str  # "calls" or "rows"
    ledger_topic: str
    exists: bool
    limit: int
    window_seconds: float
    used: int
    remaining: int
    hold_until: float | None


@dataclass(frozen=True)
class QuotaStatus:
    ledger_topic: str
    exists: bool
    limit: int
    window_seconds: float
    pacing: str
    at: float
    used: int
    remaining: int
    rate_per_second: float
    exhaustion_eta_seconds: float | None  # None: never at this rate
    frees_at: float | None
    hold_until: float | None
    replicas: list[ReplicaRow] = field(default_factory=list)
    bulk: list[BudgetRow] = field(default_factory=list)


def add_parser(sub: Any) -> None:
    """Register `quota status` on the CLI's subcommands."""
    quota = sub.add_parser("quota", help="the quota shared by every replica, from its ledger")
    actions = quota.add_subparsers(dest="quota_command", required=True, metavar="ACTION")
    status = actions.add_parser(
        "status", help="used, remaining, rate, when budget frees up, per replica"
    )
    status.add_argument(
        "--config", "-c", type=Path, required=True, help="the YAML configuration file"
    )
    status.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    status.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="seconds to reach the broker and to read the ledger (exit 3: no broker answered)",
    )
    status.set_defaults(handler=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from consumer.kafka.clients import producer_config
    from consumer.preflight import broker_metadata

    settings = load_settings(args.config)
    # An unreachable broker: exit 3 naming it (cli.main), not a KafkaException traceback.
    broker_metadata(producer_config(settings), args.timeout)
    try:
        status = read_status(settings, args.timeout)
    except TimeoutError as exc:
        print(f"profile-consumer quota status: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(as_json(status), indent=2) if args.json else render(status))
    return 0


def read_status(settings: Settings, timeout: float = 30.0, wall: Any = time.time) -> QuotaStatus:
    """Replay the whole ledger (up to a marker of ours) and summarise it at `wall()`."""
    from consumer.kafka.clients import producer_config  # the same connection and security settings

    config = producer_config(settings)
    topic = settings.ledger_topic()
    state = LedgerState(rule_from(settings))
    exists = _topic_exists(config, topic, timeout)
    if exists:
        _replay(config, topic, state, timeout)
    bulk = [
        _budget(config, name, rule, topic, timeout, wall) for name, rule, topic in _bulk(settings)
    ]
    return replace(summarise(settings, state, exists, wall()), bulk=bulk)


def _bulk(settings: Settings) -> list[tuple[str, QuotaRule, str]]:
    from consumer.bulk.limits import calls_rule, ledger_topics, rows_rule

    topics = ledger_topics(settings)
    return [
        ("calls", calls_rule(settings), topics["calls"]),
        ("rows", rows_rule(settings), topics["rows"]),
    ]


def _budget(
    config: dict[str, Any], name: str, rule: QuotaRule, topic: str, timeout: float, wall: Any
) -> BudgetRow:
    state = LedgerState(rule)
    exists = _topic_exists(config, topic, timeout)
    if exists:
        _replay(config, topic, state, timeout)
    return summarise_budget(name, topic, state, exists, wall())


def summarise_budget(
    name: str, topic: str, state: LedgerState, exists: bool, now: float
) -> BudgetRow:
    used = state.used(now)
    return BudgetRow(
        budget=name,
        ledger_topic=topic,
        exists=exists,
        limit=state.rule.limit,
        window_seconds=state.rule.window,
        used=used,
        remaining=max(0, state.rule.limit - used),
        hold_until=state.hold_until if state.hold_until > now else None,
    )


def _topic_exists(config: dict[str, Any], topic: str, timeout: float) -> bool:
    probe = Consumer({**config, "group.id": f"{topic}.status"})
    try:
        meta = probe.list_topics(topic, timeout=timeout)
        found = meta.topics.get(topic)
        return found is not None and found.error is None and bool(found.partitions)
    finally:
        probe.close()


def _replay(config: dict[str, Any], topic: str, state: LedgerState, timeout: float) -> None:
    marker = Marker(f"status-{secrets.token_hex(4)}", secrets.token_hex(4))
    key = key_of(marker)
    producer = Producer({**config, "acks": "all"})
    offsets: list[int] = []

    def delivered(err: Any, msg: Any) -> None:
        offsets.append(-1 if err is not None else int(msg.offset()))

    producer.produce(
        topic, key=key.encode(), value=encode(marker), partition=0, on_delivery=delivered
    )
    producer.flush(timeout)
    if not offsets or offsets[0] < 0:
        raise TimeoutError(f"cannot append a marker to the ledger topic {topic}")
    reader = Consumer(KafkaLedgerLog(config, topic, 1.0).reader_config())
    reader.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    deadline = time.monotonic() + timeout
    try:
        while state.offset < offsets[0]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the ledger {topic} was not read up to our marker in time")
            for message in reader.consume(1000, 0.2):
                if message.error() is None:
                    _apply(state, message)
    finally:
        reader.close()
        producer.produce(topic, key=key.encode(), value=None, partition=0)  # tombstone it
        producer.flush(5.0)


def _apply(state: LedgerState, message: Any) -> None:
    offset, key, value, stamp = as_record(message)
    try:
        record = decode(value) if value is not None else None
    except RecordError:
        record = None  # skipped, as the replicas skip it
    state.apply(offset, key, record, stamp, time.time())


def summarise(settings: Settings, state: LedgerState, exists: bool, now: float) -> QuotaStatus:
    """The figures `snapshot()` gives a replica, for the whole deployment at `now`."""
    q = settings.quota
    span = min(60.0, q.window_seconds)
    used = state.used(now)
    remaining = max(0, q.limit - used)
    rate = state.granted_since(now - span) / span
    eta = 0.0 if remaining == 0 else (remaining / rate if rate > 0 else None)
    rows = [
        ReplicaRow(
            name,
            state.used(now, name),
            sum(1 for lease in state.live(now) if lease.replica == name),
            now - seen.last_at if math.isfinite(seen.last_at) else None,
        )
        for name, seen in sorted(state.replicas.items())
        if state.used(now, name) > 0 or now - seen.last_at < q.window_seconds
    ]
    return QuotaStatus(
        ledger_topic=settings.ledger_topic(),
        exists=exists,
        limit=q.limit,
        window_seconds=q.window_seconds,
        pacing=q.pacing,
        at=now,
        used=used,
        remaining=remaining,
        rate_per_second=rate,
        exhaustion_eta_seconds=eta,
        frees_at=state.frees_at(now),
        hold_until=state.hold_until if state.hold_until > now else None,
        replicas=rows,
    )


def as_json(status: QuotaStatus) -> dict[str, Any]:
    return asdict(status)


def render(status: QuotaStatus) -> str:
    """A table for a terminal."""
    s = status
    if not s.exists:
        return f"ledger topic {s.ledger_topic} does not exist yet: no replica has run"
    share = 100.0 * s.used / s.limit
    lines = [
        f"ledger      {s.ledger_topic} (limit {s.limit} per {_seconds(s.window_seconds)}, "
        f"{s.pacing})",
        f"used        {s.used} / {s.limit} ({share:.1f}%)",
        f"remaining   {s.remaining}",
        f"rate        {s.rate_per_second:.2f} updates/s over the last "
        f"{_seconds(min(60.0, s.window_seconds))}",
        "exhausted   "
        + (
            "never at this rate"
            if s.exhaustion_eta_seconds is None
            else f"in {_seconds(s.exhaustion_eta_seconds)} at this rate"
        ),
        f"frees up    {_when(s.frees_at, s.at) if s.frees_at else 'nothing is counted'}",
        f"hold        {_when(s.hold_until, s.at) if s.hold_until else 'none'}",
        "",
        f"{'REPLICA':<40} {'USED':>8} {'LEASES':>7}  LAST REQUEST",
    ]
    for row in s.replicas:
        ago = (
            "-"
            if row.last_request_seconds_ago is None
            else f"{row.last_request_seconds_ago:.1f}s ago"
        )
        lines.append(f"{row.replica:<40} {row.used:>8} {row.leases:>7}  {ago}")
    if not s.replicas:
        lines.append("(no replica has used the quota in this window)")
    if s.bulk:
        lines += ["", f"{'BULK BUDGET':<12} {'USED':>9} {'LIMIT':>9} {'REMAINING':>10}  PER"]
    for b in s.bulk:
        hold = f", hold {_when(b.hold_until, s.at)}" if b.hold_until else ""
        lines.append(
            f"{b.budget:<12} {b.used:>9} {b.limit:>9} {b.remaining:>10}  "
            f"{_seconds(b.window_seconds)} ({b.ledger_topic}"
            + ("" if b.exists else ", not created yet")
            + f"{hold})"
        )
    return "\n".join(lines)


def _when(at: float, now: float) -> str:
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
    return f"{stamp} (in {_seconds(max(0.0, at - now))})"


def _seconds(value: float) -> str:
    if value >= 3600:
        return f"{value / 3600:.1f}h"
    if value >= 60:
        return f"{value / 60:.1f}min"
    return f"{value:.1f}s"
