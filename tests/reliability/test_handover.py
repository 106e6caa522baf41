"""The fixes the reliability scenarios led to, pinned down in milliseconds (no broker, no HTTP):
a revoked partition's events are never sent by the old owner once sealed, its sends in flight
are waited for (and then cancelled), and an abandoned pipeline starts no new send."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from consumer.config import Settings, load_settings
from consumer.kafka.offsets import OffsetTracker
from consumer.metrics import Metrics
from consumer.pipeline import Pipeline
from consumer.record import SourceRecord
from consumer.stages import build_stages
from devtools.samples import sample_events
from tests.conftest import RULES_PATH, SCHEMA_PATH
from tests.helpers import encoder

pytestmark = pytest.mark.unit
TOPIC = "t"


def test_a_sealed_partition_is_no_longer_owned_but_its_acks_still_count() -> None:
    tracker = OffsetTracker()
    tracker.assign([(TOPIC, 0)])
    epoch = tracker.track((TOPIC, 0), 5)
    assert tracker.owns((TOPIC, 0), epoch)
    tracker.seal([(TOPIC, 0)])
    assert not tracker.owns((TOPIC, 0), epoch)
    tracker.ack((TOPIC, 0), 5, epoch)
    assert tracker.revoke([(TOPIC, 0)]) == {(TOPIC, 0): 6}
    tracker.assign([(TOPIC, 0)])  # assigned again: a new epoch, the old events stay stale
    assert not tracker.owns((TOPIC, 0), epoch)


class Target:
    """A deliver() whose requests stay in flight until the test lets them go."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.gate = asyncio.Event()

    async def deliver(self, request: Any) -> None:
        self.sent.append(request.url)
        await self.gate.wait()


class NoDLQ:
    async def write(self, record: SourceRecord, error: Any) -> None:
        raise AssertionError(f"nothing should be dead-lettered: {error}")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    config = tmp_path / "config.yaml"
    raw = {"avro": {"writer_schema": str(SCHEMA_PATH)}, "mapping": {"rules": str(RULES_PATH)}}
    config.write_text(yaml.safe_dump(raw))
    return load_settings(config, environ={})


def _pipeline(settings: Settings, target: Target, tracker: OffsetTracker) -> Pipeline:
    stages = build_stages(settings)
    return Pipeline(
        decoder=stages.decoder,
        mapper=stages.mapper,
        deliver=target.deliver,
        dlq=NoDLQ(),
        tracker=tracker,
        metrics=Metrics(CollectorRegistry()),
        endpoint_url=stages.endpoint_url,
        coalesce_window_seconds=0.0,
        max_in_flight=2,
        clock=asyncio.get_running_loop().time,
    )


def _records(settings: Settings, partition: int, count: int) -> list[SourceRecord]:
    enc = encoder(settings)
    events = sample_events(count, profiles=10_000, seed=partition)
    return [
        SourceRecord(TOPIC, partition, i, None, enc.encode(e), None, None)
        for i, e in enumerate(events)
    ]


async def _until(predicate: Any) -> None:
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not met")


async def test_handover_waits_for_in_flight_then_drops_what_waits(settings: Settings) -> None:
    tracker = OffsetTracker()
    tracker.assign([(TOPIC, 0), (TOPIC, 1)])
    target = Target()
    pipeline = _pipeline(settings, target, tracker)
    runner = asyncio.create_task(pipeline.run())
    for record in _records(settings, 0, 5):
        pipeline.submit(record)
    await _until(lambda: len(target.sent) == 2)  # max_in_flight 2: three events wait

    tracker.seal([(TOPIC, 0)])
    handover = asyncio.create_task(pipeline.handover({(TOPIC, 0)}, timeout=5))
    await asyncio.sleep(0.01)
    assert not handover.done()  # waiting for the two in flight
    target.gate.set()
    await asyncio.wait_for(handover, 1)
    assert tracker.revoke([(TOPIC, 0)]) == {(TOPIC, 0): 2}  # their acks made the commit
    await _until(lambda: pipeline.buffered == 0)
    assert len(target.sent) == 2  # the three waiting events were not sent: the next owner's

    for record in _records(settings, 1, 3):  # the partition still owned flows on
        pipeline.submit(record)
    await _until(lambda: pipeline.buffered == 0)
    assert len(target.sent) == 5
    runner.cancel()


async def test_handover_cancels_sends_still_in_flight_at_its_timeout(settings: Settings) -> None:
    tracker = OffsetTracker()
    tracker.assign([(TOPIC, 0)])
    target = Target()  # never answers
    pipeline = _pipeline(settings, target, tracker)
    runner = asyncio.create_task(pipeline.run())
    for record in _records(settings, 0, 2):
        pipeline.submit(record)
    await _until(lambda: len(target.sent) == 2)
    tracker.seal([(TOPIC, 0)])
    await asyncio.wait_for(pipeline.handover({(TOPIC, 0)}, timeout=0.05), 1)
    assert pipeline.buffered == 0
    assert tracker.revoke([(TOPIC, 0)]) == {}  # nothing finished, nothing committed
    runner.cancel()


async def test_an_abandoned_pipeline_starts_no_new_send(settings: Settings) -> None:
    tracker = OffsetTracker()
    tracker.assign([(TOPIC, 0)])
    target = Target()
    pipeline = _pipeline(settings, target, tracker)
    runner = asyncio.create_task(pipeline.run())
    for record in _records(settings, 0, 6):
        pipeline.submit(record)
    await _until(lambda: len(target.sent) == 2)
    await pipeline.abandon()
    await asyncio.sleep(0.02)  # give the dispatcher every chance to misbehave
    assert len(target.sent) == 2
    runner.cancel()
