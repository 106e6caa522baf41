"""Read given records again from Kafka by offset: the originals of dead-lettered bulk rows.

Held bulk events keep only (partition, offset, epoch) (consumer/bulk/held.py); when a row
fails, the DLQ wants the record as it came. `KafkaReread.fetch` reads those records back with a
consumer of its own (assigned, never subscribed: no group, no commit), on its own thread:
offsets close to each other are read in one pass, a distant one is sought. It is bounded: at
most `timeout` seconds a call. A record it could not read (deleted by retention, or the broker
did not answer in time) is absent from the answer: the caller dead-letters a record with
its coordinates and no value (docs/dlq.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from consumer.record import SourceRecord, source_record

log = logging.getLogger(__name__)

Wanted = tuple[str, int, int]  # topic, partition, offset
# A wanted offset further than this past the read position is sought, not read up to.
SEEK_GAP = 2000
POLL_BATCH = 500


class KafkaReread:
    """Reads records by offset; one call at a time, each on a short-lived consumer."""

    def __init__(self, consumer_config: dict[str, Any], *, timeout: float = 30.0) -> None:
        self._config = {
            **consumer_config,
            "group.id": "profile-consumer.reread",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "auto.offset.reset": "earliest",
            "queued.max.messages.kbytes": 4096,
            "queued.min.messages": 2000,
            "logger": log,
        }
        self._timeout = timeout
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="bulk-reread")

    async def fetch(self, wanted: list[Wanted]) -> dict[Wanted, SourceRecord]:
        if not wanted:
            return {}
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(self._executor, self._fetch, wanted)
        if len(found) < len(set(wanted)):
            log.warning(
                "records could not be read again for the DLQ",
                extra={"event": "bulk_reread_missing", "missing": len(set(wanted)) - len(found)},
            )
        return found

    def _fetch(self, wanted: list[Wanted]) -> dict[Wanted, SourceRecord]:
        per_partition: dict[tuple[str, int], list[int]] = defaultdict(list)
        for topic, partition, offset in wanted:
            per_partition[(topic, partition)].append(offset)
        deadline = time.monotonic() + self._timeout
        found: dict[Wanted, SourceRecord] = {}
        consumer = Consumer(self._config)
        try:
            for (topic, partition), offsets in per_partition.items():
                self._read_partition(
                    consumer, topic, partition, sorted(set(offsets)), deadline, found
                )
        finally:
            consumer.close()
        return found

    @staticmethod
    def _read_partition(
        consumer: Consumer,
        topic: str,
        partition: int,
        offsets: list[int],
        deadline: float,
        found: dict[Wanted, SourceRecord],
    ) -> None:
        position = -1  # the next offset the consumer will return; -1: not assigned yet
        wanted = set(offsets)
        for offset in offsets:
            if (topic, partition, offset) in found:
                continue
            if position < 0 or offset < position or offset - position > SEEK_GAP:
                consumer.assign([TopicPartition(topic, partition, offset)])
                position = offset
            while position <= offset and time.monotonic() < deadline:
                for message in consumer.consume(POLL_BATCH, 0.5):
                    if message.error() is not None:
                        continue
                    at = message.offset() or 0
                    position = max(position, at + 1)
                    if at in wanted:
                        found[(topic, partition, at)] = source_record(message)
            if time.monotonic() >= deadline:
                return

    def close(self) -> None:
        self._executor.shutdown(wait=False)
