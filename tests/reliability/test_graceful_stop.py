"""Reliability scenario: SIGTERM under load, with Target slow.

The process stops polling, sends what it holds, waits at most
`pipeline.shutdown_timeout_seconds`, abandons what is still in flight, commits what finished
and exits 0. Every event is solo (its own profile), so each request is traceable to one record:
the restart may resend only records past the commit, at most `target.max_in_flight` of which
had reached Target (no coalescing here: nothing else can wait "merged").
"""

from __future__ import annotations

import time

import pytest

from devtools.simulator import TargetSimulator
from tests.helpers import committed
from tests.reliability.harness import (
    COMMON,
    ConsumerProcess,
    Stream,
    accepted_per_profile,
    differences,
    mixed_events,
    produce,
    report,
    wait_for_profiles,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

EVENTS = 2000
MAX_IN_FLIGHT = 8
EXIT_MARGIN = 5.0  # commit, LeaveGroup, closing the producers, interpreter exit


@pytest.mark.parametrize(
    ("latency", "shutdown_timeout", "max_buffered", "drains"),
    [
        # Thousands buffered, 0.4 s a request: the timeout ends the drain, in-flight abandoned.
        (0.4, 1.5, 10_000, False),
        # 16 buffered at most: all of it is sent within the timeout, nothing to resend.
        (0.2, 5.0, 16, True),
    ],
    ids=["timeout-abandons", "drain-completes"],
)
def test_sigterm_under_load_commits_finished_work_and_resends_only_in_flight(
    broker,
    simulator,
    topics,
    make_settings,
    tmp_path,
    consumers,
    latency,
    shutdown_timeout,
    max_buffered,
    drains,
) -> None:
    overrides = {**COMMON, "target__max_in_flight": MAX_IN_FLIGHT}
    settings = make_settings(
        **overrides,
        pipeline__shutdown_timeout_seconds=shutdown_timeout,
        pipeline__max_buffered_events=max_buffered,
    )
    config = tmp_path / "config.yaml"
    stream = Stream.of(settings, mixed_events(EVENTS, 1, solo_share=1.0, seed=2))
    assert len(stream.solo) == EVENTS
    produced = produce(broker.bootstrap, topics["topic"], stream.encoded(settings))
    simulator.configure(latency_seconds=latency)

    first = consumers.start(config)
    assert accepted_while_alive(simulator, first, 3 * MAX_IN_FLIGHT, 180), (
        f"{simulator.accepted_count()} accepted; alive={first.alive}\n"
        + first.log_path.read_text()[-2000:]
    )
    first_code, took = first.terminate()
    logs = [e.get("event") for e in first.events()]
    assert first_code == 0, first.log_path.read_text()[-2000:]
    assert "stopped" in logs
    assert ("abandoned" in logs) is not drains
    assert took <= shutdown_timeout + EXIT_MARGIN, f"exit took {took:.1f}s"

    # What the commit says is finished really is; what reached Target beyond it is bounded.
    commit = committed(broker.bootstrap, topics["group"], topics["topic"])
    sent_first = set(accepted_per_profile(simulator))
    past_commit = [
        key
        for key, (partition, offset) in zip(stream.keys, produced.positions, strict=True)
        if offset >= commit.get(partition, 0)
    ]
    below = [k for k in stream.keys if k not in set(past_commit)]
    assert all(key in sent_first for key in below), "a commit passed an unfinished event"
    in_flight_at_stop = sum(key in sent_first for key in past_commit)
    assert in_flight_at_stop <= MAX_IN_FLIGHT
    if drains:
        assert in_flight_at_stop == 0

    # The restart (Target fast again, default buffer) finishes the stream, resending only
    # records past the commit.
    simulator.configure(latency_seconds=0.0)
    make_settings(**overrides)  # rewrites config.yaml
    second = consumers.start(config)
    assert wait_for_profiles(simulator, stream.expected, 120), differences(
        simulator.profiles(), stream.expected
    )
    stream.assert_no_stale_overwrite(simulator)
    code, _ = second.terminate()
    assert code == 0
    assert committed(broker.bootstrap, topics["group"], topics["topic"]) == produced.ends
    per_profile = accepted_per_profile(simulator)
    resent = {key for key, n in per_profile.items() if n > 1}
    assert resent <= set(past_commit)
    assert len(resent) == in_flight_at_stop
    report(
        "graceful-stop",
        case="drain-completes" if drains else "timeout-abandons",
        events=EVENTS,
        latency_seconds=latency,
        shutdown_timeout_seconds=shutdown_timeout,
        max_in_flight=MAX_IN_FLIGHT,
        max_buffered_events=max_buffered,
        exit_code=first_code,
        seconds_to_exit=round(took, 2),
        sent_before_stop=len(sent_first),
        committed_before_stop=len(below),
        sent_past_commit=in_flight_at_stop,
        resent_after_restart=len(resent),
        lost=0,
    )


def accepted_while_alive(
    simulator: TargetSimulator, process: ConsumerProcess, count: int, timeout: float
) -> bool:
    """Wait for `count` accepted updates, returning at once when they are there (each request
    wakes the wait) or when the consumer died. The ceiling is generous on purpose: on two
    loaded cores, starting the interpreter and the first group join took most of the old 60 s,
    and a healthy run never waits for the ceiling anyway."""
    deadline = time.monotonic() + timeout
    while process.alive and time.monotonic() < deadline:
        if simulator.wait_for(lambda s: s.accepted_count() >= count, 1.0):
            return True
    return simulator.accepted_count() >= count
