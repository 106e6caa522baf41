"""Reliability scenario: the broker hangs (SIGSTOP ... SIGCONT) during a run, and the broker is
absent when the consumer starts. Each test has a broker of its own: the session broker that
other tests share is never stopped.

The consumer must wait (never exit), say so on /readyz (503), and recover by itself with
nothing lost once the broker is back.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest

from devtools.broker import EmbeddedBroker, free_port
from tests.helpers import committed
from tests.reliability.harness import (
    COMMON,
    Produced,
    Stream,
    differences,
    mixed_events,
    poll_until,
    probe,
    produce,
    report,
    wait_for_profiles,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

HANG_SECONDS = 20.0
EVENTS = 4500
RATE = 150  # events per second: the load runs before, during and after the hang


@pytest.fixture
def own_broker(tmp_path):
    with EmbeddedBroker(log_path=tmp_path / "own-broker.log") as broker:
        yield broker


def test_broker_hang_makes_it_unready_then_it_recovers_losing_nothing(
    own_broker, simulator, topics, make_settings, tmp_path, consumers
) -> None:
    own_broker.create_topics({topics["topic"]: 3, topics["dlq"]: 1})
    # A session longer than the hang, as in production (45 s by default): the group never
    # notices, so /readyz must learn of the hang from the connection itself. (Tansu makes the
    # first join take half of it.)
    settings = make_settings(
        **{**COMMON, "kafka__config": {"session.timeout.ms": 25_000}},
        kafka__bootstrap_servers=own_broker.bootstrap,
    )
    config = tmp_path / "config.yaml"
    stream = Stream.of(settings, mixed_events(EVENTS, 200, solo_share=0.5, seed=55))
    ops = free_port()
    process = consumers.start(config, ops_port=ops)
    assert poll_until(lambda: probe(ops, "/readyz") == 200, 30), "never ready"

    # The producer's own buffer carries the load through the hang (it retries for 5 min).
    result: list[Produced] = []
    load = threading.Thread(
        target=lambda: result.append(
            produce(own_broker.bootstrap, topics["topic"], stream.encoded(settings), rate=RATE)
        ),
        daemon=True,
    )
    load.start()
    assert simulator.wait_for(lambda s: s.accepted_count() >= 200, 30), "no progress"

    own_broker.signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        unready = poll_until(lambda: probe(ops, "/readyz") == 503, HANG_SECONDS, every=0.25)
        not_ready_after = time.monotonic() - stopped_at
        assert unready, f"/readyz stayed 200 through a {HANG_SECONDS:.0f}s hang"
        assert process.alive
        assert probe(ops, "/healthz") == 200  # waiting is not being stuck: no restart
        remaining = HANG_SECONDS - (time.monotonic() - stopped_at)
        assert not poll_until(lambda: not process.alive, max(0.0, remaining), every=0.25)
    finally:
        own_broker.signal(signal.SIGCONT)
    resumed_at = time.monotonic()
    assert poll_until(lambda: probe(ops, "/readyz") == 200, 60), "not ready after the hang"
    ready_again_after = time.monotonic() - resumed_at

    load.join(120)
    assert result, "the producer failed"
    assert wait_for_profiles(simulator, stream.expected, 90), differences(
        simulator.profiles(), stream.expected
    )
    stream.assert_no_stale_overwrite(simulator)
    code, _ = process.terminate()
    assert code == 0
    assert committed(own_broker.bootstrap, topics["group"], topics["topic"]) == result[0].ends
    report(
        "broker-hang",
        events=EVENTS,
        rate_per_second=RATE,
        hang_seconds=HANG_SECONDS,
        seconds_to_not_ready=round(not_ready_after, 1),
        seconds_to_ready_after_resume=round(ready_again_after, 1),
        lost=0,
        requests_total=simulator.accepted_count(),
        profiles=len(stream.expected),
    )


def test_broker_absent_at_start_then_it_recovers(
    simulator, topics, make_settings, tmp_path, consumers
) -> None:
    port = free_port()  # nothing listens there yet
    settings = make_settings(**COMMON, kafka__bootstrap_servers=f"127.0.0.1:{port}")
    config = tmp_path / "config.yaml"
    stream = Stream.of(settings, mixed_events(1000, 100, solo_share=0.5, seed=56))
    ops = free_port()
    started = time.monotonic()
    process = consumers.start(config, ops_port=ops)
    assert poll_until(lambda: probe(ops, "/readyz") is not None, 30), "no ops server"
    ops_up_after = time.monotonic() - started
    assert probe(ops, "/readyz") == 503
    assert probe(ops, "/healthz") == 200
    # It waits rather than exits: still up, still unready, a few seconds on.
    assert not poll_until(lambda: not process.alive, 3.0)
    assert probe(ops, "/readyz") == 503

    with EmbeddedBroker(port=port, log_path=tmp_path / "late-broker.log") as late:
        broker_up_at = time.monotonic()
        late.create_topics({topics["topic"]: 3, topics["dlq"]: 1})
        produced = produce(late.bootstrap, topics["topic"], stream.encoded(settings))
        assert poll_until(lambda: probe(ops, "/readyz") == 200, 60), "never ready"
        ready_after = time.monotonic() - broker_up_at
        assert wait_for_profiles(simulator, stream.expected, 60), differences(
            simulator.profiles(), stream.expected
        )
        stream.assert_no_stale_overwrite(simulator)
        code, _ = process.terminate()
        assert code == 0
        assert committed(late.bootstrap, topics["group"], topics["topic"]) == produced.ends
    report(
        "broker-absent-at-start",
        events=len(stream.events),
        seconds_to_ops_server=round(ops_up_after, 1),
        seconds_without_broker=round(broker_up_at - started, 1),
        seconds_to_ready_after_broker_start=round(ready_after, 1),
        lost=0,
    )
