"""The consumed record every stage handles, copied out of confluent-kafka's `Message` once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Headers = list[tuple[str, str | bytes | None]]


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """A consumed record as it came (the raw bytes, untouched: the DLQ writes them back)."""

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
        topic=message.topic(),
        partition=message.partition(),
        offset=message.offset(),
        key=message.key(),
        value=message.value(),
        headers=message.headers(),
        timestamp_ms=ts if kind else None,
    )
