"""What the reliability scenarios share: `profile-consumer run` as a real subprocess, the ops
probes, streams whose every event can be traced at the simulator, and the figures they report.

Streams mix two kinds of events. "Solo" events each have an identity of their own: the
simulator must hold exactly that event's attributes for it, so each one is provably delivered,
and every extra request for it is a duplicate. "Hot" events share a few hundred identities:
they coalesce, and Target's final value for them proves per-profile order (the last event wins).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from consumer.config import Settings
from devtools.samples import sample_events
from devtools.simulator import TargetSimulator
from tests.conftest import ROOT
from tests.helpers import encoder, event_key
from tests.oracles import assert_no_stale_overwrite, assert_regressions_corrected
from tests.reference import expected_updates, reference_update

CLI = str(Path(sys.executable).parent / "profile-consumer")

# Tansu answers a JoinGroup after half the session timeout, and a restarted member waits for a
# killed one's session to expire: 1.5 s keeps a restart at ~2 s instead of 45 s.
QUICK_GROUP = {"session.timeout.ms": 1500, "heartbeat.interval.ms": 300}

# Settings every scenario shares (make_settings overrides). The quota is out of the way (its
# own tests prove it); 8 requests in flight is where httpx is fastest on these machines.
COMMON: dict[str, Any] = {
    "kafka__config": QUICK_GROUP,
    "quota__limit": 100_000_000,
    "quota__pacing": "eager",
    "target__max_in_flight": 8,
}

Key = tuple[str, str]  # (identity type, identity)


# --- streams -----------------------------------------------------------------------------


def mixed_events(
    count: int, hot_profiles: int, solo_share: float, seed: int
) -> list[dict[str, Any]]:
    """`count` valid events; a `solo_share` of them with an identity no other event has."""
    events = sample_events(count, profiles=hot_profiles, seed=seed)
    rng = random.Random(seed)
    for index, event in enumerate(events):
        if rng.random() < solo_share:
            if event["channel"] == "KIOSK":
                pc_id = f"{7_000_000_000_000 + index}-575948.01_00"
                event["customer"] = {"thirdPartyId": None, "pcId": pc_id}
            else:
                event["customer"] = {"thirdPartyId": f"solo-{index:07d}", "pcId": None}
    return events


@dataclass
class Stream:
    """A stream's events and what Target must hold once every one of them is delivered."""

    events: list[dict[str, Any]]
    expected: dict[Key, dict[str, str]]
    keys: list[Key]  # each event's profile, in order
    solo: set[Key]  # profiles that exactly one event updates

    @classmethod
    def of(cls, settings: Settings, events: list[dict[str, Any]]) -> Stream:
        """Expectations from the reference interpreter (tests/reference.py), not the product's
        mapper: the scenarios run the example rules (`settings` is kept for the callers)."""
        expected: dict[Key, dict[str, str]] = {}
        keys: list[Key] = []
        for event in events:
            update = reference_update(event)
            assert update is not None, "every stream event must map"
            key, attributes = update
            keys.append(key)
            expected.setdefault(key, {}).update(attributes)
        counts = Counter(keys)
        return cls(events, expected, keys, {k for k, n in counts.items() if n == 1})

    def assert_no_stale_overwrite(self, simulator: TargetSimulator) -> None:
        """No scenario without a crash may ever set an older value over a newer one."""
        assert_no_stale_overwrite(simulator.received(), expected_updates(self.events))

    def assert_regressions_corrected(self, simulator: TargetSimulator) -> None:
        """After kill -9: replay may re-send older values, but must correct each one."""
        assert_regressions_corrected(simulator.received(), expected_updates(self.events))

    def encoded(self, settings: Settings) -> Iterator[tuple[bytes, bytes]]:
        return self.encode(settings, self.events)

    @staticmethod
    def encode(settings: Settings, events: list[dict[str, Any]]) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) records, keyed by customer: one profile's events share a partition."""
        enc = encoder(settings)
        for event in events:
            yield event_key(event), enc.encode(event)


@dataclass
class Produced:
    """Where each record landed: (partition, offset) per record, and each partition's end."""

    positions: list[tuple[int, int]] = field(default_factory=list)
    ends: dict[int, int] = field(default_factory=dict)


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes, bytes]],
    rate: float | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> Produced:
    """Produce and wait for every delivery report; `rate` paces it (records per second)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    out = Produced()
    slots: list[tuple[int, int] | None] = []
    started = time.monotonic()

    def report(index: int) -> Callable[[Any, Any], None]:
        def delivered(err: Any, msg: Any) -> None:
            assert err is None, err
            slots[index] = (msg.partition(), msg.offset())

        return delivered

    for index, (key, value) in enumerate(records):
        if stop():
            break
        slots.append(None)
        producer.produce(topic, value=value, key=key, on_delivery=report(index))
        producer.poll(0)
        if rate is not None:
            ahead = started + (index + 1) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)  # pacing the load, not waiting for a condition
    assert producer.flush(120) == 0, "records left undelivered"
    for slot in slots:
        assert slot is not None
        out.positions.append(slot)
        partition, offset = slot
        out.ends[partition] = max(out.ends.get(partition, 0), offset + 1)
    return out


# --- the consumer as a subprocess ---------------------------------------------------------


class ConsumerProcess:
    """One `profile-consumer run`, its JSON logs in a file (never a pipe nobody reads)."""

    def __init__(self, config: Path, log_path: Path, ops_port: int | None = None) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if ops_port is not None:
            env["PROFILE_CONSUMER__METRICS__PORT"] = str(ops_port)
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [CLI, "run", "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                cwd=ROOT,
            )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """kill -9: no drain, no commit, no LeaveGroup."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took to exit)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - started

    def events(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text("utf-8", "replace").splitlines()
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line cut by kill -9
        return out

    def assignment(self) -> set[tuple[str, int]]:
        """Partitions this process owns now, replayed from its assigned/revoked/lost logs."""
        owned: set[tuple[str, int]] = set()
        for entry in self.events():
            parts = {_partition(p) for p in entry.get("partitions", [])}
            if entry.get("event") == "assigned":
                owned |= parts
            elif entry.get("event") in ("revoked", "lost"):
                owned -= parts
        return owned


def _partition(name: str) -> tuple[str, int]:
    topic, _, rest = name.rpartition("[")
    return topic, int(rest.rstrip("]"))


class Consumers:
    """Starts consumer processes; whatever is still running at teardown is killed."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self.started: list[ConsumerProcess] = []

    def start(self, config: Path, ops_port: int | None = None) -> ConsumerProcess:
        log = self._log_dir / f"consumer-{len(self.started):03d}.log"
        process = ConsumerProcess(config, log, ops_port)
        self.started.append(process)
        return process

    def cleanup(self) -> None:
        for process in self.started:
            if process.alive:
                process.kill()


# --- probes and waits ---------------------------------------------------------------------


def probe(port: int, path: str) -> int | None:
    """The HTTP status of an ops endpoint; None when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=0.5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def poll_until(predicate: Callable[[], bool], timeout: float, every: float = 0.1) -> bool:
    """For conditions nothing notifies us of (HTTP probes, log files): check at a short tick."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def wait_for_profiles(
    simulator: TargetSimulator, expected: dict[Key, dict[str, str]], timeout: float
) -> bool:
    """Until Target holds exactly `expected`; woken by the simulator's requests, compared at
    most every 50 of them (or 0.5 s) so the comparison never slows the server down."""
    deadline = time.monotonic() + timeout
    while simulator.profiles() != expected:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        goal = simulator.accepted_count() + 50
        simulator.wait_for(lambda s, goal=goal: s.accepted_count() >= goal, min(remaining, 0.5))
    return True


def accepted_per_profile(simulator: TargetSimulator) -> Counter[Key]:
    return Counter((r.identity_type, r.identity) for r in simulator.received() if r.accepted)


def differences(
    actual: dict[Key, dict[str, str]], expected: dict[Key, dict[str, str]]
) -> list[str]:
    """A short, readable account of what differs (for assertion messages)."""
    out = [f"missing {k}" for k in expected if k not in actual]
    out += [f"unexpected {k}" for k in actual if k not in expected]
    for key, attrs in expected.items():
        got = actual.get(key)
        if got is not None and got != attrs:
            wrong = {a: (got.get(a), v) for a, v in attrs.items() if got.get(a) != v}
            out.append(f"{key}: (got, expected) {wrong}")
    return out[:10] + ([f"... {len(out) - 10} more"] if len(out) > 10 else [])


def log_counts(processes: Iterable[ConsumerProcess], *events: str) -> dict[str, int]:
    """How often each of `events` was logged by `processes` (e.g. `commit_gap`, `lost`), as
    figures named `logged_<event>`."""
    counts = Counter(e.get("event") for p in processes for e in p.events())
    return {f"logged_{event}": counts[event] for event in events}


def report(scenario: str, **figures: Any) -> None:
    """One line per scenario with its measured figures (run pytest with -s to see them)."""
    print(f"\nRELIABILITY {json.dumps({'scenario': scenario, **figures}, sort_keys=True)}")
