"""Reliability scenario: `kill -9` at random moments over a stream, restarting each time.

At-least-once means every event's update reaches Target however often the process dies: the
simulator must end up holding exactly what the events, applied in order, produce, and each solo
event's own identity must have been updated. The duplicate rate is what the kills cost.
"""

from __future__ import annotations

import random
import time

import pytest

from tests.helpers import committed, read_all
from tests.reliability.harness import (
    COMMON,
    Stream,
    accepted_per_profile,
    differences,
    mixed_events,
    produce,
    report,
    wait_for_profiles,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

EVENTS = 50_000
HOT_PROFILES = 300
SOLO_SHARE = 0.3  # 15,000 solo events: each must reach Target on its own
KILLS = 20
STARTUP_KILL_SHARE = 0.2  # kills while importing, joining the group or just assigned
SEED = 20261128


@pytest.mark.timeout(600)
def test_kill_9_at_random_moments_loses_nothing(
    broker, simulator, topics, make_settings, tmp_path, consumers
) -> None:
    settings = make_settings(**COMMON)
    config = tmp_path / "config.yaml"  # written by make_settings
    stream = Stream.of(settings, mixed_events(EVENTS, HOT_PROFILES, SOLO_SHARE, SEED))
    produced = produce(broker.bootstrap, topics["topic"], stream.encoded(settings))
    rng = random.Random(SEED)
    # Each kill comes after a random amount of progress, sized so that all the kills land
    # before the stream is done (every profile needs at least one request).
    step = len(stream.expected) // (KILLS + 10)
    started = time.monotonic()
    kills_mid_stream = kills_at_startup = 0
    for _ in range(KILLS):
        process = consumers.start(config)
        if rng.random() < STARTUP_KILL_SHARE:
            kills_at_startup += 1
            time.sleep(rng.uniform(0.2, 2.5))  # a random moment of the start-up
        else:
            goal = simulator.accepted_count() + rng.randint(1, 2 * step)
            assert simulator.wait_for(lambda s, goal=goal: s.accepted_count() >= goal, 60), (
                f"no progress after restart {len(consumers.started)}"
            )
            time.sleep(rng.uniform(0, 0.05))
        assert process.alive, process.log_path.read_text()[-2000:]
        process.kill()
        kills_mid_stream += simulator.profiles() != stream.expected
    killed_for = time.monotonic() - started
    assert kills_mid_stream == KILLS, "the stream was finished before the last kill"

    final = consumers.start(config)
    assert wait_for_profiles(simulator, stream.expected, 180), differences(
        simulator.profiles(), stream.expected
    )
    stream.assert_regressions_corrected(simulator)
    code, _ = final.terminate()
    assert code == 0
    assert committed(broker.bootstrap, topics["group"], topics["topic"]) == produced.ends
    assert read_all(broker.bootstrap, topics["dlq"]) == []

    per_profile = accepted_per_profile(simulator)
    assert all(per_profile[key] >= 1 for key in stream.solo)
    solo_requests = sum(per_profile[key] for key in stream.solo)
    report(
        "crash",
        events=EVENTS,
        profiles=len(stream.expected),
        solo_events=len(stream.solo),
        kills=KILLS,
        kills_mid_stream=kills_mid_stream,
        kills_at_startup=kills_at_startup,
        seconds_killing=round(killed_for, 1),
        seconds_total=round(time.monotonic() - started, 1),
        lost=0,
        solo_requests=solo_requests,
        solo_duplicate_rate=round(solo_requests / len(stream.solo), 4),
        solo_events_sent_twice_or_more=sum(per_profile[k] > 1 for k in stream.solo),
        requests_total=simulator.accepted_count(),
    )
