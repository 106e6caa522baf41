"""Three `profile-consumer run` processes share one quota through the ledger on a real broker;
one is killed with SIGKILL mid-burst and restarted. The simulator's own record is the judge."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.samples import sample_events
from tests.helpers import encoder, event_key, produce, read_all
from tests.oracles import assert_regressions_corrected, max_in_window
from tests.reference import expected_updates

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LIMIT, WINDOW = 300, 20.0
BIN = Path(sys.executable).parent / "profile-consumer"


def start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(  # our own console script
            [str(BIN), "run", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT
        )


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def per_window(times: list[float], start: float, end: float) -> list[int]:
    """Accepted updates in consecutive windows from `start`."""
    counts = []
    edge = start
    while edge < end:
        counts.append(sum(1 for t in times if edge <= t < edge + WINDOW))
        edge += WINDOW
    return counts


def test_three_replicas_never_exceed_the_shared_quota_through_a_kill(
    broker, simulator, topics, make_settings, tmp_path
) -> None:
    settings = make_settings(
        quota__limit=LIMIT,
        quota__window_seconds=WINDOW,
        quota__pacing="eager",
        # Single updates only: under this backlog `auto` would move most events to bulk
        # batches, which spend the bulk budget, not the quota measured here.
        target__transport="single",
        pipeline__max_buffered_events=200,
        target__max_in_flight=32,
    )
    config = tmp_path / "config.yaml"
    enc = encoder(settings)
    events = sample_events(3000, profiles=3000, seed=11)
    produce(broker.bootstrap, topics["topic"], ((event_key(e), enc.encode(e)) for e in events))
    logs = [tmp_path / f"replica-{i}.log" for i in range(3)]
    procs = [start(config, log) for log in logs]
    try:
        assert simulator.wait_for(lambda s: s.accepted_count() > 0, 30), "nothing was sent"
        first = min(r.at for r in simulator.received() if r.accepted)
        # Kill one replica while the second window's budget is being spent, restart it.
        time.sleep(max(0.0, first + WINDOW + 1.0 - time.monotonic()))
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(5)
        time.sleep(2.0)
        procs[0] = start(config, logs[0])
        time.sleep(max(0.0, first + 2.5 * WINDOW - time.monotonic()))
        status = subprocess.run(
            [str(BIN), "quota", "status", "--json", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        stop(procs)

    # Single updates only: rows of bulk batches (the auto transport may switch to bulk under
    # this backlog) are recorded too, but spend the bulk budget, not this quota.
    accepted = sorted(r.at for r in simulator.received() if r.accepted and r.batch_id is None)
    worst = simulator.max_accepted_in_window(WINDOW)
    windows = per_window(accepted, first, accepted[-1])
    # The (limit+1)-th update after any update came this long after it (> WINDOW: safe).
    gap = min(b - a for a, b in zip(accepted, accepted[LIMIT:], strict=False))
    print(
        f"\nquota {LIMIT} per {WINDOW:.0f}s, 3 replicas, one killed (-9) and restarted: "
        f"accepted {len(accepted)}, max in any {WINDOW:.0f}s window {worst} "
        f"(utilisation {worst / LIMIT:.1%}), per consecutive window {windows}, "
        f"tightest update-to-limit+1 gap {gap:.2f}s"
    )
    assert worst <= LIMIT
    # Counted again by the oracle, where Target sees it: every window of WINDOW seconds on
    # the simulator's arrival times of accepted updates.
    assert max_in_window(accepted, WINDOW) == worst
    # A replica was killed (-9): replay may re-send older values, each corrected by itself.
    assert_regressions_corrected(simulator.received(), expected_updates(events))
    assert worst >= 0.95 * LIMIT
    assert len(accepted) >= 2 * 0.95 * LIMIT  # the budget came back after the window, twice
    assert read_all(broker.bootstrap, topics["dlq"]) == []  # waiting never dead-letters
    report = json.loads(status.stdout)
    assert 0 < report["used"] <= LIMIT and report["replicas"]
