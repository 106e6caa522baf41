"""Reliability scenario: kill -9 while bulk batches are in flight, restarting each time.

Held acks mean a batch's events are committed only once Target reported it final, so every
kill sends the unfinished batches' events again after the restart: nothing may be lost, and
each older value a replay writes must be corrected by the replay itself (the replay variant of
the history checker). The carried rows (consumer/bulk/carry_log.py) must also survive the
kills, or a profile's next batch would take the attributes of its committed batches away
(the simulator applies Adobe's override caveat and counts what it removed).
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from tests.bulk_helpers import FAST_STATS, bulk_settings
from tests.helpers import committed, read_all
from tests.reliability.harness import (
    COMMON,
    QUICK_GROUP,
    Produced,
    Stream,
    differences,
    mixed_events,
    produce,
    report,
    wait_for_profiles,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

EVENTS = 4_000
HOT_PROFILES = 200
KILLS = 4
SEED = 20261130


@pytest.mark.timeout(300)
def test_kill_9_with_bulk_batches_in_flight_loses_nothing(
    broker, simulator, topics, make_settings, tmp_path, consumers
) -> None:
    settings = bulk_settings(
        make_settings,
        transport="bulk",
        max_batch_seconds=0.3,
        max_rows=150,
        # A kill between a batch's `submitting` record and its answer leaves the next process
        # unable to poll it: its partition waits this bound (docs/design.md), the default hour
        # in production. The simulator finishes a batch in 0.6 s, so 10 s is far beyond it.
        status_timeout_seconds=10.0,
        other={**COMMON, "kafka__config": {**QUICK_GROUP, **FAST_STATS}},
    )
    simulator.configure(bulk_processing_seconds=0.6)  # batches stay in flight a while
    config = tmp_path / "config.yaml"  # written by make_settings
    stream = Stream.of(settings, mixed_events(EVENTS, HOT_PROFILES, 0.2, SEED))
    # Slow enough that the stream is still coming when the kills land.
    rate = EVENTS / 12
    rng = random.Random(SEED)
    started = time.monotonic()
    process = consumers.start(config)
    produced: list[Produced] = []
    producer = threading.Thread(
        target=lambda: produced.append(
            produce(broker.bootstrap, topics["topic"], stream.encoded(settings), rate=rate)
        )
    )
    producer.start()
    in_flight_kills = 0
    for _ in range(KILLS):
        seen = len(simulator.bulk_batches())
        assert simulator.wait_for(lambda s, seen=seen: len(s.bulk_batches()) > seen, 30), (
            process.log_path.read_text()[-3000:]
        )
        time.sleep(rng.uniform(0.0, 0.4))  # a random moment while the batch is processed
        in_flight_kills += any(b.status == "incomplete" for b in simulator.bulk_batches())
        assert process.alive, process.log_path.read_text()[-3000:]
        process.kill()
        process = consumers.start(config)
    producer.join(60)
    assert produced, "the producer did not finish"
    assert wait_for_profiles(simulator, stream.expected, 90), differences(
        simulator.profiles(), stream.expected
    )
    stream.assert_regressions_corrected(simulator)
    code, _ = process.terminate()
    assert code == 0
    assert committed(broker.bootstrap, topics["group"], topics["topic"]) == produced[0].ends
    assert read_all(broker.bootstrap, topics["dlq"]) == []
    stats = simulator.stats()
    report(
        "bulk_kill_9",
        kills=KILLS,
        kills_with_a_batch_incomplete=in_flight_kills,
        batches=stats["bulk_batches_accepted"],
        rows_applied=stats["bulk_rows_applied"],
        attributes_overridden=stats["bulk_attributes_overridden"],
        seconds=round(time.monotonic() - started, 1),
    )
    assert in_flight_kills >= 1
