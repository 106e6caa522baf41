"""Reading one of bulk's own one-partition topics (the carry log, the manifest) back.

Both are read the same way: from the beginning until nothing new comes for `idle` seconds (at
start-up, before the first assignment), then followed by a thread of their own that hands each
batch of records to the event loop, until `closed` is set.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from confluent_kafka import Consumer, Message, TopicPartition

log = logging.getLogger(__name__)

T = TypeVar("T")


def topic_reader(config: dict[str, Any], topic: str, **overrides: Any) -> Consumer:
    """A consumer of the topic's one partition from its start; it commits nothing."""
    consumer = Consumer(
        {
            **config,
            "group.id": f"{topic}.reader",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "logger": log,
            **overrides,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    return consumer


async def read_until_quiet(
    consumer: Consumer,
    take: Callable[[list[Message]], None],
    *,
    idle: float,
    limit: float,
    batch: int,
) -> bool:
    """On a worker thread: `take` every batch of records read until `idle` seconds bring none
    (False when `limit` seconds passed first)."""

    def read() -> bool:
        started = quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle:
            if time.monotonic() - started > limit:
                return False
            messages = [m for m in consumer.consume(batch, 0.1) if m.error() is None]
            if messages:
                quiet_since = time.monotonic()
                take(messages)
        return True

    with ThreadPoolExecutor(1) as pool:
        return await asyncio.get_running_loop().run_in_executor(pool, read)


def follow(
    consumer: Consumer,
    convert: Callable[[list[Message]], list[T]],
    apply: Callable[[list[T]], None],
    *,
    closed: threading.Event,
    batch: int,
    name: str,
) -> threading.Thread:
    """A thread that reads on, converts each batch there and hands what is not empty to `apply`
    on the running event loop; it closes the consumer once `closed` is set."""
    loop = asyncio.get_running_loop()

    def run() -> None:
        try:
            while not closed.is_set():
                items = convert([m for m in consumer.consume(batch, 0.2) if m.error() is None])
                if items and not closed.is_set():
                    loop.call_soon_threadsafe(apply, items)
        finally:
            consumer.close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread
