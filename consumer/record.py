"""The consumed record every stage handles, copied out of confluent-kafka's `Message` once."""

from __future__ import annotations

from typing import Any, NamedTuple

Headers = list[tuple[str, str | bytes | None]]


class SourceRecord(NamedTuple):
    """A consumed record as it came (the raw bytes, untouched: the DLQ writes them back).

    A named tuple rather than a frozen dataclass: as immutable, and built in a third of the
    time (one per event of a backlog: 1.2 against 3.0 us measured with timeit)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers | None
    timestamp_ms: int | None


def source_record(message: Any) -> SourceRecord:
    """Copy what the pipeline needs out of a confluent_kafka.Message."""
    kind, ts = message.timestamp()
    return SourceRecord(
        message.topic(),
        message.partition(),
        message.offset(),
        message.key(),
        message.value(),
        message.headers(),
        ts if kind else None,
    )
