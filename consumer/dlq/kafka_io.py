"""Kafka plumbing of the DLQ tools: reading a topic to its end, the replay group and its state.

The end of a topic is found by a quiet period, not by ListOffsets: Tansu answers "latest" with
the last batch's base offset + 1. The replay group never joins (joins are slow on Tansu and
nothing needs balancing): it `assign()`s the partitions at the offsets `committed()` returns.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from consumer.config import Settings
from consumer.errors import ProfileConsumerError
from consumer.kafka.clients import producer_config

log = logging.getLogger(__name__)

REPLAY_SUFFIX = ".dlq-replay"
DELIVERY_TIMEOUT_MS = 60_000
Position = tuple[int, int]  # (partition, offset) in the DLQ topic


class DlqToolError(ProfileConsumerError):
    """The tool cannot go on (topic missing, broker refusing); the message says why."""


def replay_group(settings: Settings) -> str:
    """The replay tool's consumer group; its state topic has the same name."""
    return settings.kafka.group_id + REPLAY_SUFFIX


def open_consumer(settings: Settings) -> Consumer:
    """A consumer in the replay group that never commits on its own and never joins."""
    return Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            **settings.kafka.config,
            "group.id": replay_group(settings),
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "logger": log,
        }
    )


def open_producer(settings: Settings) -> Producer:
    """Acks from all replicas and idempotence: a confirmed replay is really there."""
    defaults = {"acks": "all", "enable.idempotence": True, "linger.ms": 5}
    # Forced, not a default: every produce gets its report (ok or error) within the flush
    # timeout, so "not confirmed" never means "delivered later" (which would replay it twice).
    bounded = {"message.timeout.ms": DELIVERY_TIMEOUT_MS, "logger": log}
    return Producer({**defaults, **producer_config(settings), **bounded})


def partitions(consumer: Consumer, topic: str, required: bool = True) -> list[int]:
    """The topic's partition ids; a missing topic is an error when `required`, else []."""
    try:
        meta = consumer.list_topics(topic, timeout=10)
    except KafkaException as exc:
        raise DlqToolError(f"cannot read the metadata of {topic}: {exc}") from exc
    found = meta.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        if required:
            raise DlqToolError(f"topic {topic} does not exist on {consumer_bootstrap(meta)}")
        return []
    return sorted(found.partitions)


def consumer_bootstrap(meta: Any) -> str:
    brokers = getattr(meta, "brokers", {}) or {}
    return ", ".join(f"{b.host}:{b.port}" for b in brokers.values()) or "the cluster"


def committed_starts(consumer: Consumer, topic: str, parts: list[int]) -> dict[int, int]:
    """Where the replay group left off on each partition (the beginning when never)."""
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in parts], timeout=15)
    except KafkaException as exc:
        raise DlqToolError(f"cannot read the replay group's offsets: {exc}") from exc
    return {tp.partition: tp.offset if tp.offset >= 0 else OFFSET_BEGINNING for tp in tps}


def read_until_quiet(
    consumer: Consumer,
    topic: str,
    starts: dict[int, int],
    idle: float,
    first_wait: float = 5.0,
    ends: dict[int, int] | None = None,
    until_ms: int | None = None,
) -> Iterator[list[Message]]:
    """Batches of records from `starts`, in offset order per partition.

    A partition ends at its offset in `ends`, or at its first record newer than `until_ms`
    (the run's start: without it, a DLQ the App keeps writing to would never fall quiet);
    the whole read ends when every partition has, or after `idle` s of silence.
    `first_wait` covers the first fetch (connections, metadata) of a non-empty topic.
    """
    assignment = [TopicPartition(topic, p, o) for p, o in starts.items()]
    consumer.assign(assignment)
    consumer.resume(assignment)  # an earlier read of the same partitions may have paused them
    open_parts = set(starts)
    quiet_since, limit = time.monotonic(), max(idle, first_wait)
    while open_parts:
        batch = []
        for message in consumer.consume(500, 0.2):
            partition = message.partition()
            if not _usable(message) or partition not in open_parts:
                continue
            offset = message.offset() or 0
            if _past_end(message, offset, ends, until_ms):
                open_parts.discard(partition)
                consumer.pause([TopicPartition(topic, partition)])
                continue
            batch.append(message)
            if ends is not None and offset + 1 >= ends.get(partition, 0):
                open_parts.discard(partition)
        if batch:
            yield batch
            # Silence counts from here: the caller's time with the batch is not silence.
            quiet_since, limit = time.monotonic(), idle
        elif time.monotonic() - quiet_since > limit:
            return


def _past_end(
    message: Message, offset: int, ends: dict[int, int] | None, until_ms: int | None
) -> bool:
    if ends is not None and offset >= ends.get(message.partition() or 0, 0):
        return True
    return until_ms is not None and message.timestamp()[1] > until_ms


def _usable(message: Message) -> bool:
    err = message.error()
    if err is None:
        return True
    if err.fatal() or err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
        raise DlqToolError(f"cannot read {message.topic()}: {err.str()}")
    if err.code() != KafkaError._PARTITION_EOF:
        log.warning("consume error: %s", err.str())
    return False


def commit(consumer: Consumer, topic: str, positions: dict[int, int]) -> None:
    """Synchronous: when this returns, a later run starts from `positions`."""
    if not positions:
        return
    tps = [TopicPartition(topic, p, o) for p, o in positions.items()]
    try:
        consumer.commit(offsets=tps, asynchronous=False)
    except KafkaException as exc:
        raise DlqToolError(f"cannot commit the replay group's offsets: {exc}") from exc


class ReplayState:
    """What was replayed (or refused) beyond the committed offsets: a small compacted topic.

    Key `<dlq topic>:<partition>:<offset>`, value a JSON note; a null value (tombstone) forgets
    an entry once the committed offset has passed it, so compaction keeps the topic small.
    """

    def __init__(self, settings: Settings) -> None:
        self.topic = replay_group(settings)
        self.dlq_topic = settings.kafka.dlq_topic
        self.done: set[Position] = set()

    def key(self, position: Position) -> bytes:
        return f"{self.dlq_topic}:{position[0]}:{position[1]}".encode()

    def load(self, consumer: Consumer, idle: float) -> None:
        """Read the whole state topic (absent: nothing was replayed beyond the commits)."""
        parts = partitions(consumer, self.topic, required=False)
        starts = {p: OFFSET_BEGINNING for p in parts}
        for batch in read_until_quiet(consumer, self.topic, starts, idle, first_wait=2.0):
            for message in batch:
                self._apply(message.key(), message.value())

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        topic, _, rest = (key or b"").decode("utf-8", "replace").rpartition(":")
        dlq_topic, _, partition = topic.rpartition(":")
        if dlq_topic != self.dlq_topic or not partition.isdigit() or not rest.isdigit():
            return  # another DLQ topic's entries, or garbage: not ours to judge
        position = (int(partition), int(rest))
        if value is None:
            self.done.discard(position)
        else:
            self.done.add(position)

    def ensure_topic(self, settings: Settings) -> None:
        """Create the compacted state topic if missing (replication: the broker's default);
        with `kafka.create_topics: false` it must exist already (TopicMissing otherwise)."""
        if not settings.kafka.create_topics:
            from consumer.preflight import require_topic

            require_topic(producer_config(settings), self.topic, "replay state", 15.0)
            return
        admin = AdminClient(producer_config(settings))
        new = NewTopic(self.topic, 1, -1, config={"cleanup.policy": "compact"})
        # Keep `admin` referenced until the future resolves (else it fails with _DESTROY).
        future = admin.create_topics([new])[self.topic]
        try:
            future.result(15)
        except Exception as exc:  # only "already exists" is fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise DlqToolError(f"cannot create the state topic {self.topic}: {exc}") from exc

    def mark(self, producer: Producer, position: Position, outcome: str) -> None:
        """Queue an entry (the caller flushes and checks delivery before committing)."""
        note = {"outcome": outcome, "at": datetime.now(UTC).isoformat(timespec="seconds")}
        producer.produce(self.topic, key=self.key(position), value=json.dumps(note).encode())
        self.done.add(position)

    def forget_before(self, producer: Producer, positions: dict[int, int]) -> int:
        """Tombstone entries the committed offsets now cover; returns how many."""
        stale = [p for p in self.done if p[0] in positions and p[1] < positions[p[0]]]
        for position in stale:
            producer.produce(self.topic, key=self.key(position), value=None)
            self.done.discard(position)
        return len(stale)
