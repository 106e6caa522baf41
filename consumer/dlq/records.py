"""DLQ records as the tools see them: headers parsed, selection, replay headers, JSON shapes.

Pure functions, no Kafka I/O: the selection and header rules are unit-tested here. The header
names are the contract in `consumer.dlq.headers`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any, Protocol
from uuid import UUID

from consumer.dlq.headers import DLQ_HEADER_PREFIXES, REPLAY_COUNT

RawHeaders = list[tuple[str, bytes | None]]
ProducerHeaders = list[tuple[str, str | bytes | None]]  # what Producer.produce accepts


class EventDecoder(Protocol):
    def decode(self, value: bytes | None) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class DlqRecord:
    """One DLQ record: its position, the original bytes and every header."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: RawHeaders = field(default_factory=list)
    timestamp_ms: int | None = None

    @classmethod
    def from_message(cls, message: Any) -> DlqRecord:
        """Copy a confluent_kafka.Message (headers may be str or bytes values)."""
        kind, ts = message.timestamp()
        headers = [(k, _as_bytes(v)) for k, v in (message.headers() or [])]
        return cls(
            partition=message.partition(),
            offset=message.offset(),
            key=message.key(),
            value=message.value(),
            headers=headers,
            timestamp_ms=ts if kind else None,
        )

    @property
    def position(self) -> tuple[int, int]:
        return (self.partition, self.offset)

    def header(self, name: str) -> str | None:
        """The last value of a header, as text.

        The last one wins because the DLQ writer appends its headers after the original ones.
        """
        found: str | None = None
        for key, value in self.headers:
            if key == name:
                found = (value or b"").decode("utf-8", "replace")
        return found

    @property
    def stage(self) -> str:
        return self.header("error.stage") or "unknown"

    @property
    def reason(self) -> str:
        return self.header("error.reason") or "unknown"

    @property
    def original_topic(self) -> str | None:
        return self.header("original.topic") or None

    @property
    def original_partition(self) -> int | None:
        text = self.header("original.partition")
        return int(text) if text is not None and text.isdigit() else None

    @property
    def replay_count(self) -> int:
        """How many times this event was replayed already (0 when never, or unreadable)."""
        text = self.header(REPLAY_COUNT)
        try:
            return max(0, int(text)) if text is not None else 0
        except ValueError:
            return 0

    @property
    def dead_lettered_at(self) -> datetime | None:
        """`error.timestamp` when present and valid, else the record's own timestamp."""
        stamp = parse_time(self.header("error.timestamp") or "")
        if stamp is None and self.timestamp_ms is not None:
            stamp = datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)
        return stamp


@dataclass(frozen=True, slots=True)
class Selection:
    """The operator's filters: any of `reasons` (all when empty), `since` <= time < `until`."""

    reasons: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, record: DlqRecord) -> bool:
        if self.reasons and record.reason not in self.reasons:
            return False
        if self.since is None and self.until is None:
            return True
        at = record.dead_lettered_at
        if at is None:
            return False  # a time filter cannot vouch for a record without a time
        if self.since is not None and at < self.since:
            return False
        return self.until is None or at < self.until


def parse_time(text: str) -> datetime | None:
    """ISO 8601 (a date, or date and time; `Z` allowed) as an aware UTC datetime, or None."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # operators type UTC; the DLQ writes UTC
    return parsed.astimezone(UTC)


def refusal(record: DlqRecord, max_replays: int) -> str | None:
    """Why this record must not be replayed, or None when it may be."""
    if record.original_topic is None:
        return "no original.topic header (not written by profile-consumer's DLQ writer)"
    if record.replay_count >= max_replays:
        return (
            f"already replayed {record.replay_count} time(s) (--max-replays {max_replays}): "
            f"last failure {record.stage}/{record.reason}; fix the cause or raise the limit"
        )
    return None


def replay_headers(record: DlqRecord) -> ProducerHeaders:
    """The original headers (error.*, original.* and the old count removed) + replay.count."""
    kept: ProducerHeaders = [
        (k, v)
        for k, v in record.headers
        if not k.startswith(DLQ_HEADER_PREFIXES) and k != REPLAY_COUNT
    ]
    return [*kept, (REPLAY_COUNT, str(record.replay_count + 1).encode())]


def jsonable(value: Any) -> Any:
    """An Avro event (fastavro's Python shape) as JSON-ready values.

    datetimes/dates as ISO text, Decimals as strings (exact), bytes as base64, UUIDs as text.
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


def text_or_base64(raw: bytes | None) -> str | None:
    """UTF-8 text when it is, else `base64:` + the encoding (so it survives JSON)."""
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(raw).decode("ascii")


def describe(record: DlqRecord, decoder: EventDecoder) -> dict[str, Any]:
    """A record decoded as far as it goes: position, key, headers, and the event or why not."""
    at = record.dead_lettered_at
    out: dict[str, Any] = {
        "partition": record.partition,
        "offset": record.offset,
        "dead_lettered_at": at.isoformat() if at else None,
        "stage": record.stage,
        "reason": record.reason,
        "key": text_or_base64(record.key),
        "headers": {k: text_or_base64(v) for k, v in record.headers},
    }
    try:
        out["event"] = jsonable(decoder.decode(record.value))
    except Exception as exc:  # poison is expected here; show why it fails
        out["event"] = None
        out["decode_error"] = f"{getattr(exc, 'reason', type(exc).__name__)}: {exc}"
    return out


def dumps(value: Any) -> str:
    """Compact, readable JSON for one event or report."""
    return json.dumps(value, ensure_ascii=False, default=str)


def interleave(groups: Iterable[list[DlqRecord]], limit: int) -> list[DlqRecord]:
    """Round-robin over groups (one per reason) so a sample shows every reason first."""
    queues = [list(g) for g in groups]
    out: list[DlqRecord] = []
    while len(out) < limit and any(queues):
        for queue in queues:
            if queue and len(out) < limit:
                out.append(queue.pop(0))
    return out


def _as_bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value
