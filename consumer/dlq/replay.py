"""`dlq replay`: re-produce selected DLQ records to their original topic, each at most once.

Two passes over the DLQ from the replay group's committed offsets:
1. plan: read to the end (a quiet period), decide per record: replay, refuse (too many
   replays, or not a DLQ record), skip (already replayed), or leave alone (not selected).
   `--dry-run` stops here and reports the plan.
2. execute: read the same range again; per batch, produce the replays, wait for the broker's
   confirmation, record replayed/refused positions in the state topic (confirmed too), then
   commit the contiguous prefix of handled records. A record left alone stops the prefix, so a
   filtered replay never hides other reasons from a later replay; handled records beyond the
   prefix are found in the state topic next time. See docs/dlq.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from consumer.config import Settings
from consumer.dlq.kafka_io import (
    DELIVERY_TIMEOUT_MS,
    DlqToolError,
    Position,
    ReplayState,
    commit,
    committed_starts,
    open_consumer,
    open_producer,
    partitions,
    read_until_quiet,
)
from consumer.dlq.progress import ProgressBar
from consumer.dlq.records import DlqRecord, Selection, refusal, replay_headers

REPLAY = "replay"
SKIP = "skip"
# Longer than the producer's delivery timeout: after a flush, every report has come back.
FLUSH_SECONDS = DELIVERY_TIMEOUT_MS / 1000 + 30


@dataclass
class Plan:
    """What a run will do: an action per position (REPLAY, or a refusal message)."""

    starts: dict[int, int]
    ends: dict[int, int] = field(default_factory=dict)
    actions: dict[Position, str] = field(default_factory=dict)
    skipped: int = 0

    @property
    def selected(self) -> int:
        return len(self.actions)

    @property
    def refusals(self) -> int:
        return sum(1 for action in self.actions.values() if action != REPLAY)


@dataclass
class Outcome:
    replayed: int = 0
    refused: int = 0
    failed: list[str] = field(default_factory=list)


class CommitCursor:
    """Per partition, the offset after the longest run of handled records from the start.

    The first record not handled (not selected, past the limit, or whose produce failed)
    blocks its partition for the rest of the run: committing past it would hide it.
    """

    def __init__(self) -> None:
        self.positions: dict[int, int] = {}
        self._blocked: set[int] = set()

    def advance(self, position: Position, handled: bool) -> None:
        partition, offset = position
        if partition in self._blocked:
            return
        if handled:
            self.positions[partition] = offset + 1
        else:
            self._blocked.add(partition)


def classify(
    record: DlqRecord,
    selection: Selection,
    done: set[Position],
    max_replays: int,
) -> str | None:
    """'skip' (already handled), None (leave alone), REPLAY, or a refusal message."""
    if record.position in done:
        return SKIP
    if not selection.matches(record):
        return None
    return refusal(record, max_replays) or REPLAY


def make_plan(
    consumer: Consumer,
    settings: Settings,
    state: ReplayState,
    selection: Selection,
    max_replays: int,
    limit: int | None,
    idle: float,
    scan: ProgressBar | None = None,
) -> Plan:
    """Pass 1: read from the committed offsets to the end and decide, changing nothing."""
    topic = settings.kafka.dlq_topic
    plan = Plan(committed_starts(consumer, topic, partitions(consumer, topic)))
    now_ms = int(time.time() * 1000)
    read = 0
    for batch in read_until_quiet(consumer, topic, plan.starts, idle, until_ms=now_ms):
        read += len(batch)
        if scan is not None:
            scan.update(read)
        for message in batch:
            record = DlqRecord.from_message(message)
            plan.ends[record.partition] = record.offset + 1
            action = classify(record, selection, state.done, max_replays)
            if action == SKIP:
                plan.skipped += int(selection.matches(record))
            elif action is not None and (limit is None or plan.selected < limit):
                plan.actions[record.position] = action
    if scan is not None:
        scan.finish(read)
    return plan


def execute(
    consumer: Consumer,
    producer: Producer,
    settings: Settings,
    state: ReplayState,
    plan: Plan,
    bar: ProgressBar,
) -> Outcome:
    """Pass 2: replay what the plan says, committing only what the broker confirmed."""
    topic, outcome, cursor = settings.kafka.dlq_topic, Outcome(), CommitCursor()
    starts = {p: o for p, o in plan.starts.items() if p in plan.ends}
    for batch in read_until_quiet(consumer, topic, starts, idle=10.0, ends=plan.ends):
        records = [DlqRecord.from_message(m) for m in batch]
        # `done` guards against acting twice should the same record be fetched twice.
        ours = [r for r in records if r.position in plan.actions and r.position not in state.done]
        handled = _run_batch(producer, state, plan, ours, outcome, bar.message)
        for record in records:
            beyond = record.offset >= plan.ends.get(record.partition, 0)
            ok = not beyond and (record.position in handled or record.position in state.done)
            cursor.advance(record.position, ok)
        commit(consumer, topic, cursor.positions)
        bar.update(outcome.replayed + outcome.refused + len(outcome.failed))
        if outcome.failed:
            break  # stop at the first broker refusal; the next run resumes from the commit
    if state.forget_before(producer, cursor.positions):
        producer.flush(15)  # best effort: a tombstone lost only leaves a harmless entry
    return outcome


def _run_batch(
    producer: Producer,
    state: ReplayState,
    plan: Plan,
    records: list[DlqRecord],
    outcome: Outcome,
    report: Callable[[str], None],
) -> set[Position]:
    """Produce, confirm, then remember; returns the positions safely handled."""
    delivered = _produce_confirmed(
        producer, [r for r in records if plan.actions[r.position] == REPLAY]
    )
    failures = {p: e for p, e in delivered.items() if e is not None}
    handled: set[Position] = set()
    for record in records:
        action = plan.actions[record.position]
        if action != REPLAY:
            report(f"refused partition {record.partition} offset {record.offset}: {action}")
            outcome.refused += 1
        elif record.position in failures:
            outcome.failed.append(f"offset {record.offset}: {failures[record.position]}")
            continue
        else:
            outcome.replayed += 1
        state.mark(producer, record.position, "replayed" if action == REPLAY else "refused")
        handled.add(record.position)
    if handled and producer.flush(FLUSH_SECONDS) != 0:
        raise DlqToolError(
            f"the state topic {state.topic} did not confirm; nothing of this batch was committed"
        )
    return handled


def _produce_confirmed(producer: Producer, records: list[DlqRecord]) -> dict[Position, str | None]:
    """Produce to each original topic and wait: position -> None (confirmed) or the error."""
    results: dict[Position, str | None] = {}

    def on_delivery(position: Position) -> Callable[[KafkaError | None, object], None]:
        def done(err: KafkaError | None, _msg: object) -> None:
            results[position] = None if err is None else err.str()

        return done

    for record in records:
        try:
            # Back to the partition it came from (so a key stays where its producer put it);
            # -1 lets the partitioner choose when the header is missing.
            partition = record.original_partition
            producer.produce(
                record.original_topic or "",
                partition=-1 if partition is None else partition,
                key=record.key,
                value=record.value,
                headers=replay_headers(record),
                on_delivery=on_delivery(record.position),
            )
        except (BufferError, KafkaException) as exc:
            results[record.position] = str(exc)
        producer.poll(0)
    producer.flush(FLUSH_SECONDS)
    for record in records:
        results.setdefault(record.position, f"no delivery report within {FLUSH_SECONDS:.0f} s")
    return results


def run_replay(
    settings: Settings,
    selection: Selection,
    *,
    limit: int | None,
    max_replays: int,
    dry_run: bool,
    idle: float = 1.0,
) -> dict[str, Any]:
    """The whole command; returns its summary (`render_summary` prints it for a terminal)."""
    topic = settings.kafka.dlq_topic
    state = ReplayState(settings)
    consumer = open_consumer(settings)
    try:
        partitions(consumer, topic)  # fail early and clearly on a wrong topic name
        state.load(consumer, idle)
        scan = ProgressBar(None, label=f"scanning {topic}")
        plan = make_plan(consumer, settings, state, selection, max_replays, limit, idle, scan)
        if dry_run:
            return _dry_run_summary(plan)
        return _replay(consumer, settings, state, plan)
    finally:
        consumer.close()


def _replay(
    consumer: Consumer, settings: Settings, state: ReplayState, plan: Plan
) -> dict[str, Any]:
    summary: dict[str, Any] = {"dry_run": False, "selected": plan.selected, "replayed": 0}
    summary.update(refused=0, skipped=plan.skipped, failed=[], nothing_new=not plan.ends)
    if not plan.ends:
        return summary
    if plan.selected:
        state.ensure_topic(settings)
    producer = open_producer(settings)
    bar = ProgressBar(plan.selected)
    try:
        outcome = execute(consumer, producer, settings, state, plan, bar)
    finally:
        producer.flush(15)
    bar.finish(outcome.replayed + outcome.refused)
    summary.update(replayed=outcome.replayed, refused=outcome.refused, failed=outcome.failed)
    return summary


def _dry_run_summary(plan: Plan) -> dict[str, Any]:
    refusals = [
        {"partition": partition, "offset": offset, "reason": action}
        for (partition, offset), action in sorted(plan.actions.items())
        if action != REPLAY
    ]
    return {
        "dry_run": True,
        "selected": plan.selected,
        "would_replay": plan.selected - plan.refusals,
        "would_refuse": plan.refusals,
        "skipped": plan.skipped,
        "refusals": refusals,
    }


def render_summary(summary: dict[str, Any], out: TextIO, err: TextIO) -> int:
    """The summary for a terminal; returns the exit code (1 when a produce failed)."""
    if summary["dry_run"]:
        for refusal in summary["refusals"]:
            print(
                f"would refuse partition {refusal['partition']} offset {refusal['offset']}: "
                f"{refusal['reason']}",
                file=out,
            )
        print(
            f"dry run: selected {summary['selected']}, would replay {summary['would_replay']}, "
            f"would refuse {summary['would_refuse']}, skipped {summary['skipped']} "
            "(already replayed); nothing was produced or committed",
            file=out,
        )
        return 0
    if summary["nothing_new"]:
        print("selected 0, replayed 0, refused 0, skipped 0: nothing new in the DLQ", file=out)
        return 0
    print(
        f"selected {summary['selected']}, replayed {summary['replayed']}, "
        f"refused {summary['refused']}, skipped {summary['skipped']} (already replayed)",
        file=out,
    )
    for failure in summary["failed"]:
        print(f"error: produce failed, stopped (run again to resume): {failure}", file=err)
    return exit_code(summary)


def exit_code(summary: dict[str, Any]) -> int:
    return 1 if summary.get("failed") else 0
