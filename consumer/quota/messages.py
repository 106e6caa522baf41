"""The ledger's records: what a replica appends, as compact JSON, keyed for compaction.

Every record of one lease shares the key `lease:<replica>:<id>` so that, once the lease has
left the window, one tombstone (a null value) lets compaction drop all of them. Times are
ledger time: seconds since the epoch on the writer's clock.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """`replica` asks for `units` at its clock time `at`; the replay rule decides."""

    replica: str
    lease: int
    units: int
    at: float


@dataclass(frozen=True, slots=True)
class Settle:
    """The owner learnt it got `units` (fewer than asked) from `start`; it spends after this."""

    replica: str
    lease: int
    units: int
    start: float


@dataclass(frozen=True, slots=True)
class Release:
    """The owner will spend no more of the lease: `spent` units, the last at `last`."""

    replica: str
    lease: int
    start: float
    spent: int
    last: float


@dataclass(frozen=True, slots=True)
class Hold:
    """Target answered 429 with Retry-After: nobody sends before `until`."""

    replica: str
    until: float


@dataclass(frozen=True, slots=True)
class Marker:
    """A no-op an observer appends and reads back to know it has seen the whole ledger."""

    replica: str
    marker: str


Record = LeaseRequest | Settle | Release | Hold | Marker
_KINDS: dict[str, type[Record]] = {
    "lease": LeaseRequest,
    "settle": Settle,
    "release": Release,
    "hold": Hold,
    "marker": Marker,
}
_NAMES = {cls: name for name, cls in _KINDS.items()}


class RecordError(ValueError):
    """A ledger record this version cannot read (ignored by the replay, never fatal)."""


def lease_key(replica: str, lease: int) -> str:
    return f"lease:{replica}:{lease}"


def key_of(record: Record) -> str:
    """The compaction key: per lease, per replica for holds, per marker."""
    if isinstance(record, LeaseRequest | Settle | Release):
        return lease_key(record.replica, record.lease)
    if isinstance(record, Hold):
        return f"hold:{record.replica}"
    return f"marker:{record.replica}:{record.marker}"


def encode(record: Record) -> bytes:
    body: dict[str, Any] = {"kind": _NAMES[type(record)], **asdict(record)}
    return json.dumps(body, separators=(",", ":")).encode()


def decode(value: bytes) -> Record:
    """Parse one record; raises RecordError when it is not one this version knows."""
    try:
        body = json.loads(value)
        cls = _KINDS[body.pop("kind")]
        return cls(**body)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RecordError(f"unreadable ledger record: {value[:200]!r}") from exc
