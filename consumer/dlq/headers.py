"""The DLQ header contract: what the writer adds to a dead-lettered record, and what the
tools read back. docs/dlq.md documents it for operators; these names never change meaning."""

from __future__ import annotations

from datetime import UTC, datetime

from consumer.errors import EventError, PermanentDeliveryError
from consumer.record import Headers, SourceRecord

REPLAY_COUNT = "replay.count"
# Headers the DLQ writer adds; a replay strips them so the event travels as it first did.
DLQ_HEADER_PREFIXES = ("error.", "original.")


def dlq_headers(record: SourceRecord, error: EventError) -> Headers:
    """The record's own headers, then the error.* and original.* ones ."""
    headers: Headers = list(record.headers or [])
    headers += [
        ("error.stage", error.stage.encode()),
        ("error.reason", error.reason.encode()),
        ("error.message", str(error).encode("utf-8", "replace")[:1024]),
        ("error.timestamp", datetime.now(UTC).isoformat(timespec="milliseconds").encode()),
    ]
    if isinstance(error, PermanentDeliveryError):
        if error.http_status is not None:
            headers.append(("error.http_status", str(error.http_status).encode()))
        if error.body:
            headers.append(("error.http_body", error.body))
    headers += [
        ("original.topic", record.topic.encode()),
        ("original.partition", str(record.partition).encode()),
        ("original.offset", str(record.offset).encode()),
    ]
    return headers
