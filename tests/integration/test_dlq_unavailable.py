"""Reliability scenario, the DLQ unavailable: its topic is missing and the producer may not
create it (`allow.auto.create.topics: false`, which Tansu honours: the produce fails with
UNKNOWN_TOPIC_OR_PART). While it is missing, nothing past the poison record is committed and
`profile_consumer_dlq_write_failures_total` rises; once the topic exists the consumer proceeds
by itself, with nothing lost and the poison in the DLQ.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from typing import Any

import pytest
from confluent_kafka import Producer

from consumer.app import App
from devtools.samples import sample_events
from tests.conftest import FAST_GROUP
from tests.helpers import (
    assert_history_clean,
    committed,
    encoder,
    event_key,
    expected_profiles,
    headers_of,
    read_all,
    running,
    wait_until,
)

pytestmark = pytest.mark.integration

POISON_PARTITION = 0


def produce_around_poison(
    bootstrap: str, topic: str, before: list[tuple[bytes, bytes]], after: list[tuple[bytes, bytes]]
) -> tuple[int, dict[int, int]]:
    """`before`, one undecodable record on partition 0, `after`; returns the poison's offset
    and each partition's end offset."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    ends: dict[int, int] = {}
    poison: list[int] = []

    def delivered(err: Any, msg: Any) -> None:
        assert err is None, err
        ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    for key, value in before:
        producer.produce(topic, value=value, key=key, on_delivery=delivered)
    assert producer.flush(30) == 0
    producer.produce(
        topic,
        value=b"\xff not avro",
        key=b"poison",
        partition=POISON_PARTITION,
        on_delivery=lambda err, msg: (delivered(err, msg), poison.append(msg.offset())),
    )
    assert producer.flush(30) == 0
    for key, value in after:
        producer.produce(topic, value=value, key=key, on_delivery=delivered)
    assert producer.flush(30) == 0
    return poison[0], ends


async def wait_committed(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Wait until the group's committed offsets are exactly `offsets` (read off-loop)."""
    deadline = time.monotonic() + 30
    while (now := await asyncio.to_thread(committed, bootstrap, group, topic)) != offsets:
        assert time.monotonic() < deadline, f"committed {now}, expected {offsets}"
        await asyncio.sleep(0.2)


def scrape(app: App, name: str) -> float:
    """A sample's value from the App's own /metrics endpoint (what Prometheus would see)."""
    assert app.ops is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{app.ops.port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exposed")


async def test_a_missing_dlq_topic_holds_the_commit_until_it_exists(
    broker, simulator, topics, make_settings, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="consumer.dlq.writer")
    dlq_topic = topics["topic"] + ".dlq-missing"
    settings = make_settings(
        kafka__dlq_topic=dlq_topic,
        kafka__config={
            **FAST_GROUP,
            # Applies to the consumer and to the DLQ producer (kafka.clients.producer_config).
            "allow.auto.create.topics": False,
            # How long librdkafka waits for a missing topic to appear before failing a produce
            # (default 30 s): short, so each DLQ attempt fails within a second.
            "topic.metadata.propagation.max.ms": 1000,
        },
        pipeline__shutdown_timeout_seconds=2,
    )
    enc = encoder(settings)
    events = sample_events(200, profiles=50, seed=17)
    valid = [(event_key(e), enc.encode(e)) for e in events]
    poison_offset, ends = produce_around_poison(
        broker.bootstrap, topics["topic"], valid[:80], valid[80:]
    )
    assert ends[POISON_PARTITION] > poison_offset + 1  # valid records follow the poison
    expected = None
    failures_run1 = 0.0

    # Run 1: the DLQ is missing all along; the App is stopped (SIGTERM path) while it fails.
    async with running(settings) as app:
        expected = expected_profiles(events)
        m = app.metrics
        await wait_until(lambda: m.dlq_write_failures._value.get() >= 2, 30)
        # Every valid event is delivered, also those after the poison on its partition...
        assert simulator.wait_for(lambda s: s.profiles() == expected, timeout=30)
        await wait_until(lambda: m.buffered_events._value.get() == 1, 30)  # only the poison
        # Commits go on: every other partition reaches its end, the poisoned one stops at it...
        held = {**ends, POISON_PARTITION: poison_offset}
        await wait_committed(broker.bootstrap, topics["group"], topics["topic"], held)
        # ...and stays there while more DLQ attempts fail.
        failures = m.dlq_write_failures._value.get()
        await wait_until(lambda: m.dlq_write_failures._value.get() > failures, 30)
        now = await asyncio.to_thread(committed, broker.bootstrap, topics["group"], topics["topic"])
        assert now == held
        failures_run1 = scrape(app, "profile_consumer_dlq_write_failures_total")
        assert failures_run1 >= 2
    held = committed(broker.bootstrap, topics["group"], topics["topic"])
    assert held.get(POISON_PARTITION, 0) <= poison_offset  # not even on shutdown
    assert any(r.getMessage().startswith("DLQ write failed") for r in caplog.records)

    # Run 2: restarted, still missing; then the topic is created while the App runs.
    async with running(settings) as app:
        m = app.metrics
        await wait_until(lambda: m.dlq_write_failures._value.get() >= 1, 30)
        assert (
            committed(broker.bootstrap, topics["group"], topics["topic"]).get(POISON_PARTITION, 0)
            <= poison_offset
        )
        created_at = time.monotonic()
        broker.create_topics({dlq_topic: 1})
        await wait_until(lambda: m.dlq_events.labels("decode", "malformed_avro")._value.get(), 30)
        recovered_in = time.monotonic() - created_at
        await wait_until(lambda: m.buffered_events._value.get() == 0, 30)
        await wait_committed(broker.bootstrap, topics["group"], topics["topic"], ends)
    assert simulator.profiles() == expected  # nothing lost
    assert_history_clean(simulator, events)
    dlq = read_all(broker.bootstrap, dlq_topic, expected=1)
    assert len(dlq) == 1
    h = headers_of(dlq[0])
    assert (h["error.stage"], h["error.reason"]) == ("decode", "malformed_avro")
    assert (int(h["original.partition"]), int(h["original.offset"])) == (
        POISON_PARTITION,
        poison_offset,
    )
    assert dlq[0].value() == b"\xff not avro"
    print(
        f"\nDLQ failures in run 1: {failures_run1:.0f}; recovered {recovered_in:.1f}s after create"
    )
