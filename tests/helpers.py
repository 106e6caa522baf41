"""Test helpers that drive real parts: produce Avro records, run the app, read topics back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import CollectorRegistry

from consumer.app import App
from consumer.avro import load_schema
from consumer.config import Settings
from devtools.broker import read_topic
from devtools.encoder import Encoder
from tests import reference
from tests.oracles import assert_no_stale_overwrite, fetch_history

ROOT_SCHEMA = "schemas/offline_transaction.avsc"


def encoder(settings: Settings) -> Encoder:
    return Encoder(load_schema(settings.resolve(settings.avro.writer_schema)))


def produce(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes | None]]
) -> dict[int, int]:
    """Produce and wait; returns each partition's end offset (last delivered + 1).

    From delivery reports, not ListOffsets: Tansu answers "latest" with the last batch's base
    offset + 1, not the high watermark.
    """
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    ends: dict[int, int] = {}

    def delivered(err: Any, msg: Any) -> None:
        assert err is None, err
        ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    for key, value in records:
        producer.produce(topic, value=value, key=key, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(30) == 0
    return ends


def event_key(event: dict[str, Any]) -> bytes:
    customer = event["customer"]
    return str(customer["thirdPartyId"] or customer["pcId"] or "none").encode()


read_all = read_topic


def committed(bootstrap: str, group: str, topic: str, partitions: int = 3) -> dict[int, int]:
    """The group's committed offsets of partitions that have one."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}
    finally:
        consumer.close()


def headers_of(message: Any) -> dict[str, str]:
    return {k: (v or b"").decode("utf-8", "replace") for k, v in (message.headers() or [])}


async def wait_until(predicate: Callable[[], bool], timeout: float) -> None:
    """Await a condition the app's own loop makes true (checked at a short tick)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def running(settings: Settings, **kwargs: Any) -> AsyncIterator[App]:
    """Run the real App in this event loop; stops it (SIGTERM path) on exit."""
    app = App(settings, registry=CollectorRegistry(), **kwargs)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        yield app
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def expected_profiles(events: Iterable[dict[str, Any]]) -> dict[Any, dict[str, str]]:
    """What Target must hold after these valid events, by the reference interpreter of
    examples/mapping.yaml (tests/reference.py), never by the product's own mapper."""
    return reference.expected_profiles(events)


def assert_history_clean(simulator: Any, events: Iterable[dict[str, Any]]) -> None:
    """No stale overwrite in everything the simulator accepted (tests/oracles.py), against
    these events in produced order. `simulator`: a TargetSimulator or its URL (another
    process: the history comes from its admin endpoint)."""
    history = fetch_history(simulator) if isinstance(simulator, str) else simulator.received()
    assert_no_stale_overwrite(history, reference.expected_updates(events))


def finished(app: App, produced: int, topic: str) -> bool:
    """Every produced record was read and nothing is buffered any more."""
    m = app.metrics
    consumed = m.events_consumed.labels(topic)._value.get()
    return consumed >= produced and m.buffered_events._value.get() == 0
