"""The bulk manifest: batches in flight, recorded in Kafka for other processes to read.

Every replica writes one JSON record per step of each of its batches (submitting, submitted,
resubmitted, complete, stuck, rejected, dropped) to the compacted topic `<kafka.group_id>.bulk`
(one partition), keyed by `<replica>-<sequence>`, so the topic keeps each batch's latest state.
`profile-consumer bulk status` reads it from the beginning and lists the batches whose latest
state is not final. The offsets each member holds until its batches are final remain what make
a restart send a batch's events again; the consumer reads the manifest back for one thing only:
which other members' batches (a revoked partition's, a dead process's) Target may still be
processing, so that it sends no single update of their partitions before they are final
(`follow`, consumer/bulk/foreign.py).

Two writes are waited for, because the next owner's safety rests on them: the `submitting`
record before a batch's POST (`written`: no POST without it), and every record about a revoked
partition's batches before the hand-over returns (`flush`). The other records are only queued
(`record`): one that cannot be produced is logged and dropped (the manifest is then stale about
a batch that is already known to be in flight, never silent about one). A member also writes a
sync marker (`<replica>-sync`, no `state`) after each assignment and waits to read it back:
everything written before it has then been read (consumer/bulk/foreign.py, `pending`).
The topic is compacted (one record per batch survives) and records older than a week are
deleted, so it stays small whatever the traffic.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from consumer.bulk.follow import follow, read_until_quiet, topic_reader
from consumer.bulk.foreign import ForeignBatches
from consumer.config import Settings
from consumer.errors import Unreachable

log = logging.getLogger(__name__)

# "dropped": the batch ended without any POST (revoked while it waited), after its `submitting`
# record was written or attempted.
FINAL_STATES = frozenset({"complete", "stuck", "rejected", "sent_single", "dropped"})
RETENTION_MS = 7 * 24 * 3600 * 1000


def manifest_topic(settings: Settings) -> str:
    return f"{settings.kafka.group_id}.bulk"


def ensure_topic(
    config: dict[str, Any],
    topic: str,
    create: bool,
    *,
    what: str = "bulk manifest",
    retention_ms: int = RETENTION_MS,
    timeout: float = 15.0,
) -> None:
    """Create a one-partition topic, compacted and kept `retention_ms`, unless it exists
    (`kafka.create_topics`); with `create` false, require it. The manifest's and the carry's."""
    if not create:
        from consumer.preflight import require_topic

        require_topic(config, topic, what, timeout)
        return
    admin_config: dict[str, Any] = {**config, "logger": log}
    admin = AdminClient(admin_config)
    settings = {"cleanup.policy": "compact,delete", "retention.ms": str(retention_ms)}
    future = admin.create_topics([NewTopic(topic, 1, -1, config=settings)])[topic]
    try:
        future.result(timeout)
    except Exception as exc:  # "already exists" is the usual answer
        if "TOPIC_ALREADY_EXISTS" not in str(exc):
            log.warning(
                f"cannot create the {what} topic",
                extra={"event": "bulk_topic_create_failed", "topic": topic, "error": str(exc)},
            )


class KafkaManifest:
    """Writes manifest records; `record` only enqueues (the producer's thread sends)."""

    def __init__(self, producer_config: dict[str, Any], topic: str) -> None:
        self.topic = topic
        self._config = producer_config
        self._reader: threading.Thread | None = None
        self._producer = Producer(
            {"linger.ms": 50, **producer_config, "logger": log, "acks": "all"}
        )
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="bulk-manifest", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.2)

    def record(self, entry: dict[str, Any]) -> None:
        self._produce(entry, _delivered)

    def _produce(self, entry: dict[str, Any], on_delivery: Callable[[Any, Any], None]) -> bool:
        try:
            self._producer.produce(
                self.topic,
                key=str(entry["key"]).encode(),
                value=json.dumps(entry, sort_keys=True).encode(),
                on_delivery=on_delivery,
            )
        except (BufferError, KafkaException) as exc:
            log.warning(
                "bulk manifest record dropped",
                extra={"event": "bulk_manifest_dropped", "error": str(exc)},
            )
            return False
        return True

    async def written(self, entry: dict[str, Any], timeout: float) -> bool:
        """Produce one record and wait (up to `timeout`) until the broker has it."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()

        def delivered(err: Any, msg: Any) -> None:  # on the poller thread
            _delivered(err, msg)
            try:
                loop.call_soon_threadsafe(_settle, done, err is None)
            except RuntimeError:
                pass  # the loop is gone: nobody waits any more

        if not self._produce(entry, delivered):
            return False
        try:
            return await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            return False

    async def flush(self, timeout: float) -> bool:
        """Wait (up to `timeout`) until every record queued so far is in Kafka."""
        loop = asyncio.get_running_loop()
        left = await loop.run_in_executor(None, self._producer.flush, max(0.0, timeout))
        return int(left) == 0

    async def follow(self, view: ForeignBatches) -> None:
        """Read the topic from the beginning into `view` until it is quiet (before the first
        assignment), then keep applying what it gets from a thread of its own."""
        consumer = topic_reader(self._config, self.topic, **{"fetch.wait.max.ms": 100})
        first: list[dict[str, Any]] = []
        await read_until_quiet(
            consumer,
            lambda messages: first.extend(_entries(messages)),
            idle=0.5,
            limit=30.0,
            batch=500,
        )
        view.apply(first)
        self._reader = follow(
            consumer,
            _entries,
            view.apply,
            closed=self._closed,
            batch=200,
            name="bulk-manifest-read",
        )

    def close(self, timeout: float = 5.0) -> None:
        self._producer.flush(timeout)
        self._closed.set()
        self._poller.join(timeout=1.0)
        if self._reader is not None:
            self._reader.join(timeout=2.0)


def _entries(messages: list[Any]) -> list[dict[str, Any]]:
    entries = []
    for message in messages:
        if message.error() is None and message.value() is not None:
            try:
                entries.append(json.loads(message.value()))
            except ValueError:
                continue  # not ours: skipped
    return entries


def _settle(done: asyncio.Future[bool], ok: bool) -> None:
    if not done.done():
        done.set_result(ok)


def _delivered(err: Any, _msg: Any) -> None:
    if err is not None:
        log.warning(
            "bulk manifest record not written",
            extra={"event": "bulk_manifest_dropped", "error": str(err)},
        )


def read_manifest(
    consumer_config: dict[str, Any], topic: str, timeout: float, idle: float = 1.0
) -> list[dict[str, Any]]:
    """Every batch's latest record, oldest first (sync markers left out). Reads until `idle`
    seconds bring nothing (not ListOffsets: Tansu answers "latest" inexactly); Unreachable
    past `timeout`."""
    consumer = Consumer(
        {
            **consumer_config,
            "group.id": f"{topic}.status",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "logger": log,
        }
    )
    latest: dict[bytes, dict[str, Any]] = {}
    try:
        meta = consumer.list_topics(topic, timeout=timeout)
        if topic not in meta.topics or meta.topics[topic].error is not None:
            return []
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions])
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle:
            batch = [m for m in consumer.consume(500, 0.2) if m.error() is None]
            if batch:
                quiet_since = time.monotonic()
            for message in batch:
                key, value = message.key() or b"", message.value()
                if value is None:
                    latest.pop(key, None)
                    continue
                try:
                    latest[key] = json.loads(value)
                except ValueError:
                    continue  # not ours: skipped
    except KafkaException as exc:
        raise Unreachable(f"cannot read the bulk manifest {topic}: {exc}") from exc
    finally:
        consumer.close()
    batches = [e for e in latest.values() if isinstance(e, dict) and "sync" not in e]
    return sorted(batches, key=lambda e: e.get("updated_at", 0))


async def open_manifest(settings: Settings, producer_config: dict[str, Any]) -> KafkaManifest:
    """Create (or require) the topic off the event loop, then the writer (App start-up)."""
    topic = manifest_topic(settings)
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1) as pool:
        await loop.run_in_executor(
            pool, ensure_topic, producer_config, topic, settings.kafka.create_topics
        )
    return KafkaManifest(producer_config, topic)
