"""`dlq inspect`: what is in the DLQ, why, since when, and what a few records look like.

Reads the whole DLQ (to a quiet period) without committing anything. A record counts as
pending until the replay tool has handled it (replayed or refused): below the replay group's
committed offset, or in its state topic.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

from confluent_kafka import OFFSET_BEGINNING

from consumer.config import Settings
from consumer.dlq.kafka_io import (
    ReplayState,
    committed_starts,
    open_consumer,
    partitions,
    read_until_quiet,
)
from consumer.dlq.progress import ProgressBar
from consumer.dlq.records import DlqRecord, EventDecoder, Selection, describe, dumps, interleave

ReasonKey = tuple[str, str]  # (stage, reason)


@dataclass
class Report:
    """Counts and a sample of the records a selection matches."""

    topic: str
    sample_size: int
    counts: Counter[ReasonKey] = field(default_factory=Counter)
    pending: Counter[ReasonKey] = field(default_factory=Counter)
    oldest: datetime | None = None
    newest: datetime | None = None
    examples: dict[str, list[DlqRecord]] = field(default_factory=dict)

    def add(self, record: DlqRecord, is_pending: bool) -> None:
        key = (record.stage, record.reason)
        self.counts[key] += 1
        self.pending[key] += int(is_pending)
        at = record.dead_lettered_at
        if at is not None:
            self.oldest = at if self.oldest is None else min(self.oldest, at)
            self.newest = at if self.newest is None else max(self.newest, at)
        examples = self.examples.setdefault(record.reason, [])
        if len(examples) < self.sample_size:  # enough to fill the sample with any one reason
            examples.append(record)

    def sample(self) -> list[DlqRecord]:
        return interleave(self.examples.values(), self.sample_size)

    def as_dict(self, decoder: EventDecoder) -> dict[str, Any]:
        by_stage: Counter[str] = Counter()
        for (stage, _), n in self.counts.items():
            by_stage[stage] += n
        return {
            "topic": self.topic,
            "total": sum(self.counts.values()),
            "pending": sum(self.pending.values()),
            "oldest": self.oldest.isoformat() if self.oldest else None,
            "newest": self.newest.isoformat() if self.newest else None,
            "by_stage": dict(sorted(by_stage.items())),
            "by_reason": [
                {"stage": s, "reason": r, "count": n, "pending": self.pending[(s, r)]}
                for (s, r), n in sorted(self.counts.items())
            ],
            "sample": [describe(record, decoder) for record in self.sample()],
        }


def build_report(
    settings: Settings,
    selection: Selection,
    sample_size: int,
    idle: float = 1.0,
    scan: ProgressBar | None = None,
) -> Report:
    """Read the DLQ from its beginning; never commits (the replay group is only looked at).

    `scan` shows how far the read has got (on a terminal: the DLQ can hold millions)."""
    topic = settings.kafka.dlq_topic
    report = Report(topic, sample_size)
    scan = scan or ProgressBar(None, label=f"scanning {topic}")
    read = 0
    consumer = open_consumer(settings)
    try:
        parts = partitions(consumer, topic)
        committed = committed_starts(consumer, topic, parts)
        state = ReplayState(settings)
        state.load(consumer, idle)
        starts = {p: OFFSET_BEGINNING for p in parts}
        now_ms = int(time.time() * 1000)  # a snapshot: what was there when the command started
        for batch in read_until_quiet(consumer, topic, starts, idle, until_ms=now_ms):
            read += len(batch)
            scan.update(read)
            for message in batch:
                record = DlqRecord.from_message(message)
                if selection.matches(record):
                    handled = record.offset < committed[record.partition]
                    report.add(record, not handled and record.position not in state.done)
    finally:
        consumer.close()
    scan.finish(read)
    return report


def render_table(data: dict[str, Any], out: TextIO) -> None:
    """The report for a terminal: a summary, a table by reason, then the sample."""
    print(
        f"DLQ {data['topic']}: {data['total']} record(s), {data['pending']} pending replay",
        file=out,
    )
    if not data["total"]:
        return
    print(f"oldest {data['oldest']}   newest {data['newest']}", file=out)
    stages = ", ".join(f"{s}={n}" for s, n in data["by_stage"].items())
    print(f"by stage: {stages}\n", file=out)
    rows = [("STAGE", "REASON", "COUNT", "PENDING")] + [
        (r["stage"], r["reason"], str(r["count"]), str(r["pending"])) for r in data["by_reason"]
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print(
            f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  "
            f"{row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}",
            file=out,
        )
    print(f"\nsample ({len(data['sample'])} record(s)):", file=out)
    for item in data["sample"]:
        _render_record(item, out)


def _render_record(item: dict[str, Any], out: TextIO) -> None:
    print(
        f"- partition {item['partition']} offset {item['offset']}  {item['dead_lettered_at']}  "
        f"{item['stage']}/{item['reason']}",
        file=out,
    )
    print(f"    key: {item['key']}", file=out)
    for name, value in item["headers"].items():
        print(f"    {name}: {_shorten(value)}", file=out)
    if item["event"] is not None:
        print(f"    event: {_shorten(dumps(item['event']), 2000)}", file=out)
    else:
        print(f"    event: does not decode ({item['decode_error']})", file=out)


def _shorten(value: str | None, limit: int = 200) -> str:
    text = "" if value is None else value
    return text if len(text) <= limit else text[: limit - 1] + "…"
