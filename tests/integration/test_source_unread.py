"""`KafkaSource.unread()` counts what is left to read from librdkafka's own figures (the
high watermark of the last fetch response, the position), on Tansu: a backlog read to its end
shows as 0 at once, not at the next statistics. Bulk's caught-up flush and the mode switch
read it every second."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry

from consumer.kafka.offsets import OffsetTracker
from consumer.kafka.source import KafkaSource
from consumer.metrics import Metrics
from tests.conftest import FAST_GROUP
from tests.helpers import produce

pytestmark = pytest.mark.integration

RECORDS = 300


async def test_unread_follows_the_position_without_waiting_for_statistics(
    broker, topics, make_settings
) -> None:
    # Statistics once a minute: any figure within the test comes from the live position.
    settings = make_settings(
        kafka__config={**FAST_GROUP, "statistics.interval.ms": 60_000},
        kafka__poll_batch_size=50,
    )
    # Keyed, so every partition of the topic gets records (unkeyed ones can all land in one
    # partition's batch: the sticky partitioner). The topic has three.
    ends = produce(
        broker.bootstrap, topics["topic"], ((b"k%d" % i, b"x%d" % i) for i in range(RECORDS))
    )
    assert sum(ends.values()) == RECORDS and len(ends) == 3
    tracker = OffsetTracker()
    source = KafkaSource(settings.kafka, tracker, Metrics(CollectorRegistry()))
    await source.start()
    try:
        read = 0
        deadline = time.monotonic() + 30
        while read == 0:
            assert time.monotonic() < deadline, "nothing read"
            read += len(await source.poll(50, 0.5))
        # Part read: what is left is exactly what was produced and not yet returned, once
        # every assigned partition has had a fetch answered (a partition without one counts 0).
        left = source.unread()
        assert 0 < left <= RECORDS - read
        while read < RECORDS:
            assert time.monotonic() < deadline, f"read {read} of {RECORDS}"
            read += len(await source.poll(50, 0.5))
        assert source.unread() == 0
        assert len(tracker.assigned()) == len(ends)
    finally:
        await source.close()
