"""A member draining on SIGTERM keeps serving its group (on Tansu).

Before, the drain stopped polling: a rebalance that started meanwhile (another member leaving
or joining) reached this member only inside close(), which in the storm scenario sometimes
never returned. `KafkaSource.serve_during` polls (every partition paused) while the drain runs,
so the rebalance's callbacks run during the drain, and close() then finds nothing pending.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from confluent_kafka import Consumer
from prometheus_client import CollectorRegistry

from consumer.kafka.offsets import OffsetTracker
from consumer.kafka.source import KafkaSource
from consumer.metrics import Metrics
from tests.conftest import FAST_GROUP

pytestmark = pytest.mark.integration


async def test_a_rebalance_during_the_drain_runs_its_callbacks_before_close(
    broker, topics, make_settings
) -> None:
    settings = make_settings()
    tracker = OffsetTracker()
    source = KafkaSource(settings.kafka, tracker, Metrics(CollectorRegistry()))
    revoked = asyncio.Event()
    loop = asyncio.get_running_loop()
    source.on_revoked = lambda tps, lost: loop.call_soon_threadsafe(revoked.set)
    await source.start()
    deadline = time.monotonic() + 30
    while len(tracker.assigned()) < 3:  # the whole topic is ours before the other one joins
        assert time.monotonic() < deadline, "never assigned"
        await source.poll(10, 0.2)

    joined = threading.Event()
    stop_other = threading.Event()

    def other_member() -> None:
        other = Consumer(
            {
                "bootstrap.servers": broker.bootstrap,
                "group.id": topics["group"],
                "partition.assignment.strategy": "cooperative-sticky",
                "enable.auto.commit": False,
                **FAST_GROUP,
            }
        )
        other.subscribe([topics["topic"]], on_assign=lambda c, ps: ps and joined.set())
        while not stop_other.is_set():
            other.poll(0.1)
        other.close()

    thread = threading.Thread(target=other_member, daemon=True)
    thread.start()
    try:

        async def drain() -> str:
            # Stands in for Pipeline.drain: done once this member has given partitions up.
            await asyncio.wait_for(revoked.wait(), 30)
            return "drained"

        assert await source.serve_during(drain()) == "drained"
        assert len(tracker.assigned()) < 3  # the revocation ran during the drain
        assert await asyncio.to_thread(joined.wait, 30), "the other member got nothing"
        started = time.monotonic()
        await source.close()
        assert time.monotonic() - started < 10
    finally:
        stop_other.set()
        thread.join(30)
