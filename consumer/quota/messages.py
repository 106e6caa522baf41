"""The ledger's records: what a replica appends, as compact JSON, keyed for compaction.

Every record of one lease shares the key `lease:<replica>:<id>` so that, once the lease has
left the window, one tombstone (a null value) lets compaction drop all of them. Times are
ledger time: seconds since the epoch on the writer's clock.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
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
    """A no-op an observer appends and reads back to know it has seen the whole ledger; with
    `at` (the writer's clock when it appended), a probe of the writer's clock against the
    broker's timestamp."""

    replica: str
    marker: str
    at: float | None = None


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
    # A marker without `at` is written as before, so that older replicas can still read it.
    facts = {name: value for name, value in asdict(record).items() if value is not None}
    body: dict[str, Any] = {"kind": _NAMES[type(record)], **facts}
    return json.dumps(body, separators=(",", ":")).encode()


def decode(value: bytes) -> Record:
    """Parse and validate one record; raises RecordError when it is not one this version
    knows or a field has the wrong type or an impossible value (the replay must never see
    one: a bad field raising inside it would cost every record after it in the batch)."""
    try:
        body = json.loads(value)
        cls = _KINDS[body.pop("kind")]
        record = cls(**body)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RecordError(f"unreadable ledger record: {value[:200]!r}") from exc
    problem = _invalid(record)
    if problem:
        raise RecordError(f"invalid ledger record ({problem}): {value[:200]!r}")
    return record


# What each field must be. Times must be finite, except a hold's `until`: an absurd one
# (a server's Retry-After of "inf") is clamped by the replay, not refused.
_COUNTS = {"lease", "units", "spent"}
_TIMES = {"at", "start", "last"}


def _invalid(record: Record) -> str:
    """The first thing wrong with a decoded record, or ''."""
    for f in fields(record):
        value = getattr(record, f.name)
        if f.name in ("replica", "marker"):
            ok = isinstance(value, str) and value != ""
        elif f.name in _COUNTS:
            ok = _is_int(value) and value >= 0
        elif f.name in _TIMES:
            ok = (value is None and isinstance(record, Marker)) or (
                _is_number(value) and math.isfinite(value)
            )
        else:  # a hold's until
            ok = _is_number(value) and not math.isnan(value)
        if not ok:
            return f"{f.name}={value!r}"
    return ""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
