"""The pipeline's intake of an event bulk takes: no `buffered` bookkeeping for it (bulk bounds
its held events itself), the same outcomes as before for the events it does not take."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from consumer.errors import InvalidBulkRow
from consumer.kafka.offsets import OffsetTracker
from consumer.mapping import ProfileUpdate
from consumer.metrics import Metrics
from consumer.pipeline import Pipeline
from consumer.record import SourceRecord
from tests.pipeline_rig import ENDPOINT, TOPIC, FakeClock, FakeDLQ, JsonDecoder, PassThroughMapper

pytestmark = pytest.mark.unit


class Route:
    """The bulk transport as the pipeline sees it: takes, refuses or raises, as told."""

    def __init__(self, answer: bool | Exception) -> None:
        self.answer = answer
        self.offered: list[tuple[ProfileUpdate, SourceRecord, int]] = []

    def route(self, update: ProfileUpdate, record: SourceRecord, epoch: int) -> bool:
        self.offered.append((update, record, epoch))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def single_started(self, key: tuple[str, str]) -> None: ...

    def single_done(self, key: tuple[str, str], accepted: bool) -> None: ...


class Gauge:
    """Every value the buffered-events gauge was set to."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def set(self, value: float) -> None:
        self.values.append(value)


def pipeline(route: Route) -> tuple[Pipeline, OffsetTracker, FakeDLQ, Gauge]:
    tracker = OffsetTracker()
    tracker.assign([(TOPIC, 0)])
    metrics = Metrics(CollectorRegistry())
    gauge = Gauge()
    metrics.buffered_events = gauge  # type: ignore[assignment]
    dlq = FakeDLQ()
    made = Pipeline(
        decoder=JsonDecoder(),  # type: ignore[arg-type]
        mapper=PassThroughMapper(),  # type: ignore[arg-type]
        deliver=lambda request: asyncio.sleep(0),
        dlq=dlq,
        tracker=tracker,
        metrics=metrics,
        endpoint_url=ENDPOINT,
        coalesce_window_seconds=1.0,
        max_in_flight=4,
        clock=FakeClock(),
        bulk=route,
    )
    return made, tracker, dlq, gauge


def record(offset: int, **event: Any) -> SourceRecord:
    return SourceRecord(TOPIC, 0, offset, None, json.dumps(event).encode(), None, None)


async def test_an_event_bulk_takes_never_enters_the_buffer() -> None:
    route = Route(True)
    made, tracker, dlq, gauge = pipeline(route)
    made.submit(record(0, key=["mbox3rdPartyId", "p"], attrs={"x": "1"}))
    [(update, taken, epoch)] = route.offered
    assert (update.identity, update.attributes, taken.offset) == ("p", {"x": "1"}, 0)
    assert epoch == 1  # the first assignment's epoch, for bulk's acks
    assert made.buffered == 0
    assert gauge.values == []  # not even a +1 then -1
    assert tracker.outstanding() == 1  # bulk acks it once its batch is final
    assert tracker.committable() == {}
    assert dlq.written == []


async def test_an_event_bulk_refuses_is_buffered_for_a_single_update() -> None:
    made, tracker, _dlq, gauge = pipeline(Route(False))
    made.submit(record(0, key=["mbox3rdPartyId", "p"], attrs={"x": "1"}))
    assert made.buffered == 1
    assert gauge.values == [1]
    assert tracker.outstanding() == 1


async def test_an_event_no_batch_may_carry_is_dead_lettered_and_acked() -> None:
    made, tracker, dlq, gauge = pipeline(Route(InvalidBulkRow("bulk_invalid_row", "too big")))
    made.submit(record(0, key=["mbox3rdPartyId", "p"], attrs={"x": "1"}))
    assert made.buffered == 1
    await asyncio.gather(*made._tasks)  # the dead-letter task
    assert [r.offset for r, _e in dlq.written] == [0]
    assert gauge.values == [1, 0]
    assert tracker.committable() == {(TOPIC, 0): 1}


async def test_a_skipped_event_is_acked_without_touching_the_buffer() -> None:
    route = Route(True)
    made, tracker, _dlq, gauge = pipeline(route)
    made.submit(record(0, skip=True))
    assert route.offered == []
    assert made.buffered == 0
    assert gauge.values == []
    assert tracker.committable() == {(TOPIC, 0): 1}


async def test_an_undecodable_event_is_dead_lettered_before_bulk_sees_it() -> None:
    route = Route(True)
    made, tracker, dlq, _gauge = pipeline(route)
    made.submit(SourceRecord(TOPIC, 0, 0, None, b"not json", None, None))
    await asyncio.gather(*made._tasks)
    assert route.offered == []
    assert [r.offset for r, _e in dlq.written] == [0]
    assert tracker.committable() == {(TOPIC, 0): 1}
