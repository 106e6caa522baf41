"""History oracles: what Target received over time, judged against what was produced.

Final state alone cannot see an older value that overwrote a newer one and was then fixed by a
later event of the stream: the window in which Target served the stale value leaves no trace
in it. These checkers read the simulator's whole history instead (`TargetSimulator.received()`,
or `GET /_sim/records` over HTTP); the demo runs them on its own run, the tests on theirs.

For each profile and attribute, the produced events define a sequence of values v0, v1, ... (in
the order produced: one profile's events share a partition; "value #i" in a report is a
position in it). Each accepted write of that attribute must be one of those values; matched to
positions in the sequence, the writes must never go back:

- `stale_overwrites`: the writes can be matched to non-decreasing positions (a write may repeat
  the current value: at-least-once re-sends the same event). Any going back is a stale
  overwrite. Every scenario without a crash must pass it.
- `uncorrected_regressions`: after a kill -9, replay from the last commit may re-send older
  values; each such regression must be corrected later, by the replay itself: the last write
  reaches the furthest position ever written.

A value can occur at several positions (two events with the same value): a write is matched to
the earliest position that keeps the order, which is the most lenient matching, so a reported
violation is a real one.

The quota is judged where Target sees it too: `max_in_window` counts arrivals (the history's
`at`) in every window of the quota's length. All functions are pure.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

Key = tuple[str, str]  # (identity type, identity)
Update = tuple[Key, Mapping[str, str]]


@dataclass(frozen=True)
class Write:
    """One accepted write of one attribute, in arrival order."""

    at: float
    key: Key
    name: str
    value: str


def accepted_writes(history: Iterable[Any]) -> list[Write]:
    """The accepted writes of a history, per attribute, ordered by arrival (`at`, then the
    order recorded). Takes `ReceivedUpdate`s or the dicts of `GET /_sim/records`."""
    records = [r if isinstance(r, Mapping) else vars_of(r) for r in history]
    ordered = sorted(enumerate(records), key=lambda pair: (pair[1]["at"], pair[0]))
    return [
        Write(record["at"], (record["identity_type"], record["identity"]), name, value)
        for _, record in ordered
        if record["accepted"]
        for name, value in record["attributes"].items()
    ]


def vars_of(record: Any) -> dict[str, Any]:
    fields = ("at", "identity_type", "identity", "attributes", "accepted")
    return {name: getattr(record, name) for name in fields}


def value_sequences(updates: Iterable[Update]) -> dict[tuple[Key, str], list[str]]:
    """(profile, attribute) -> the values the produced events set, in produced order."""
    sequences: dict[tuple[Key, str], list[str]] = defaultdict(list)
    for key, attributes in updates:
        for name, value in attributes.items():
            sequences[(key, name)].append(value)
    return dict(sequences)


def stale_overwrites(history: Iterable[Any], updates: Iterable[Update]) -> list[str]:
    """Every accepted write that sets an attribute back to an earlier event's value after a
    later one was written, or to a value no event produced. Empty: the history is clean."""
    problems: list[str] = []
    for (key, name), (values, writes) in _per_attribute(history, updates).items():
        for step in _steps(key, name, values, writes, problems):
            if step.went_back:
                problems.append(
                    f"{key} {name}: at {step.write.at:.3f} went back to value #{step.latest} "
                    f"after value #{step.before} had been written"
                )
    return problems


def uncorrected_regressions(history: Iterable[Any], updates: Iterable[Update]) -> list[str]:
    """After a crash: each attribute's last accepted write must reach the furthest event
    position any write reached (every regression that replay caused was corrected), and every
    value written must come from some event."""
    problems: list[str] = []
    for (key, name), (values, writes) in _per_attribute(history, updates).items():
        furthest = max((s.after for s in _steps(key, name, values, writes, problems)), default=0)
        last = writes[-1] if writes else None
        if last is not None and last.value in values:
            reach = max(i for i, v in enumerate(values) if v == last.value)
            if reach < furthest:
                problems.append(
                    f"{key} {name}: ends on value #{reach} although value "
                    f"#{furthest} had been written (a regression never corrected)"
                )
    return problems


@dataclass(frozen=True)
class _Step:
    write: Write
    before: int  # the event position reached before this write
    after: int  # the position this write stands for
    latest: int  # the latest event position whose value it is
    went_back: bool  # no event at or after `before` set this value


def _steps(
    key: Key, name: str, values: list[str], writes: list[Write], problems: list[str]
) -> Iterator[_Step]:
    """Walks one attribute's writes along the events' values: each write stands for the first
    event at or after the position reached that set its value, else (a regression) the
    earliest. A value no event set is reported in `problems` and skipped."""
    position = 0
    for write in writes:
        candidates = [i for i, v in enumerate(values) if v == write.value]
        if not candidates:
            problems.append(_unknown(key, name, write))
            continue
        later = [i for i in candidates if i >= position]
        after = later[0] if later else min(candidates)
        yield _Step(write, position, after, max(candidates), not later)
        position = after


def max_in_window(times: Iterable[float], window: float) -> int:
    """The most arrivals in any window (t - window, t] of the given length."""
    ordered, best, lo = sorted(times), 0, 0
    for hi, at in enumerate(ordered):
        while ordered[lo] <= at - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _per_attribute(
    history: Iterable[Any], updates: Iterable[Update]
) -> dict[tuple[Key, str], tuple[list[str], list[Write]]]:
    sequences = value_sequences(updates)
    writes: dict[tuple[Key, str], list[Write]] = defaultdict(list)
    for write in accepted_writes(history):
        writes[(write.key, write.name)].append(write)
    return {
        pair: (sequences.get(pair, []), writes.get(pair, []))
        for pair in sequences.keys() | writes.keys()
    }


def _unknown(key: Key, name: str, write: Write) -> str:
    return f"{key} {name}: at {write.at:.3f} got a value no produced event has"
