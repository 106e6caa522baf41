"""Where ledger records live: the Kafka topic (production) or a list in memory (tests).

The reader hands records to the event loop in log order; `append` returns the record's offset
from the producer's delivery report. Nothing here trusts ListOffsets (Tansu answers "latest"
with the last batch's base offset + 1): a writer knows it has read the ledger up to its own
record when the reader has applied that record's offset.

Each record comes with the broker's timestamp when the topic has `LogAppendTime` (the one
clock every replica shares: the replay bounds each writer's clock by it), else None: a
`CreateTime` stamp is only the writer's own clock again, and proves nothing about it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaError,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

log = logging.getLogger(__name__)

# offset, key, value (None: tombstone), broker timestamp in seconds (None: not the broker's)
LogRecord = tuple[int, str, bytes | None, float | None]
OnRecords = Callable[[list[LogRecord]], None]


class LedgerLog(Protocol):
    async def start(self, on_records: OnRecords) -> None:
        """Begin delivering every record from the first one, in order, on the event loop."""

    async def append(self, key: str, value: bytes | None) -> int:
        """Append durably; return the record's offset. Retries until it succeeds."""

    async def close(self) -> None:
        """Flush what was appended, stop reading."""


class MemoryLog:
    """An in-process ledger several gates can share: unit tests of the replay and the gates.

    With a `clock`, records are stamped like a `LogAppendTime` topic (the broker's clock);
    without, like a `CreateTime` one (no stamp the replay can trust).
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.records: list[LogRecord] = []
        self._readers: list[OnRecords] = []
        self._clock = clock

    async def start(self, on_records: OnRecords) -> None:
        on_records(list(self.records))
        self._readers.append(on_records)

    async def append(self, key: str, value: bytes | None) -> int:
        offset = len(self.records)
        record = (offset, key, value, self._clock() if self._clock is not None else None)
        self.records.append(record)
        for reader in list(self._readers):
            reader([record])
        return offset

    async def close(self) -> None:
        return None

    def detach(self, on_records: OnRecords) -> None:
        """Stop feeding a reader (a replica killed with -9 reads nothing more)."""
        self._readers.remove(on_records)


def topic_config(window_seconds: float) -> dict[str, str]:
    """Compacted; a record is kept at least three windows (plus a minute) before compaction,
    so every record a live decision could depend on is still there for a replay. Stamped by
    the broker (`LogAppendTime`): the replay bounds every writer's clock by that stamp."""
    lag_ms = int((3 * window_seconds + 60) * 1000)
    return {
        "cleanup.policy": "compact",
        "min.compaction.lag.ms": str(lag_ms),
        "message.timestamp.type": "LogAppendTime",
    }


class KafkaLedgerLog:
    """One partition of a Kafka topic; a reader thread and a producer with its poll thread."""

    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        window_seconds: float,
        *,
        create_topic: bool = True,
    ) -> None:
        self._config = config
        # False (`kafka.create_topics`): the topic must exist; a missing one is fatal.
        self._create_topic = create_topic
        self.topic = topic
        self._window = window_seconds
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._producer: Producer | None = None
        self._retry_seconds = 0.5

    async def start(self, on_records: OnRecords) -> None:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1) as pool:
            await loop.run_in_executor(pool, self.ensure_topic)
        self._producer = Producer(
            {
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 0,
                **self._config,
                "logger": log,
            }
        )
        consumer = Consumer(self.reader_config())
        consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
        self._spawn("ledger-produce", self._poll_producer)
        self._spawn("ledger-read", lambda: self._read(consumer, loop, on_records))

    def reader_config(self) -> dict[str, Any]:
        """Assigned, never subscribed: no group join; short fetch waits for quick read-back."""
        return {
            **self._config,
            "group.id": f"{self.topic}.reader",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 10,
            "enable.partition.eof": False,
            "logger": log,
        }

    def ensure_topic(self, timeout: float = 15.0) -> None:
        """Create the topic (one partition, compacted) unless it exists; never fatal here,
        except a topic we may not create (`kafka.create_topics: false`) that is missing."""
        if not self._create_topic:
            self._require_topic(timeout)
            return
        config: dict[str, Any] = {**self._config, "logger": log}
        admin = AdminClient(config)
        new = NewTopic(self.topic, 1, -1, config=topic_config(self._window))
        future = admin.create_topics([new])[self.topic]
        try:
            future.result(timeout)
            log.info("ledger topic created", extra={"event": "ledger_created", "topic": self.topic})
        except Exception as exc:  # "already exists" is the usual answer
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                log.warning(
                    "cannot create the ledger topic (appends will retry)",
                    extra={"event": "ledger_create_failed", "error": str(exc)},
                )

    def _require_topic(self, timeout: float) -> None:
        from consumer.errors import Unreachable
        from consumer.preflight import require_topic

        try:
            require_topic(self._config, self.topic, "quota ledger", timeout)
        except Unreachable as exc:  # a broker still starting: appends will retry
            log.warning(
                "cannot check the ledger topic (appends will retry)",
                extra={"event": "ledger_check_failed", "error": str(exc)},
            )

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _poll_producer(self) -> None:
        assert self._producer is not None  # noqa: S101 - set before the thread starts
        while not self._closed.is_set():
            self._producer.poll(0.1)

    def _read(
        self, consumer: Consumer, loop: asyncio.AbstractEventLoop, on_records: OnRecords
    ) -> None:
        try:
            while not self._closed.is_set():
                first = consumer.poll(0.1)
                if first is None:
                    continue
                batch = [first, *consumer.consume(1000, 0)]
                records = [as_record(m) for m in batch if _usable(m)]
                if records:
                    loop.call_soon_threadsafe(on_records, records)
        except RuntimeError:
            pass  # the event loop closed under us: the process is ending
        finally:
            consumer.close()

    async def append(self, key: str, value: bytes | None) -> int:
        while True:
            outcome = await self._produce_once(key, value)
            if isinstance(outcome, int):
                return outcome
            log.warning(
                "ledger append failed, retrying",
                extra={"event": "ledger_append_failed", "error": outcome},
            )
            await asyncio.sleep(self._retry_seconds)

    async def _produce_once(self, key: str, value: bytes | None) -> int | str:
        assert self._producer is not None  # noqa: S101 - start() was awaited
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int | str] = loop.create_future()

        def delivered(err: KafkaError | None, msg: Any) -> None:
            outcome: int | str = err.str() if err is not None else int(msg.offset())
            loop.call_soon_threadsafe(_resolve, done, outcome)

        try:
            self._producer.produce(
                self.topic, key=key.encode(), value=value, partition=0, on_delivery=delivered
            )
        except Exception as exc:  # BufferError (queue full), KafkaException
            return str(exc)
        return await done

    async def close(self) -> None:
        if self._producer is not None:
            producer = self._producer
            await asyncio.get_running_loop().run_in_executor(None, producer.flush, 5.0)
        self._closed.set()
        for thread in self._threads:
            thread.join(timeout=2.0)


def _usable(message: Any) -> bool:
    err = message.error()
    if err is None:
        return True
    if err.code() != KafkaError._PARTITION_EOF:
        log.warning("ledger read error", extra={"event": "ledger_read_error", "error": err.str()})
    return False


def as_record(message: Any) -> LogRecord:
    """A consumed ledger message as the replay reads it."""
    key = message.key()
    kind, millis = message.timestamp()
    stamp = millis / 1000 if kind == TIMESTAMP_LOG_APPEND_TIME else None
    text = key.decode("utf-8", "replace") if key else ""
    return int(message.offset()), text, message.value(), stamp


def _resolve(future: asyncio.Future[int | str], outcome: int | str) -> None:
    if not future.done():
        future.set_result(outcome)
