"""The carried rows in Kafka: Adobe's override caveat across restarts and replicas.

A v2 thirdPartyId row must carry again what earlier bulk rows set for its profile
(consumer/bulk/held.py, `Carry`). That knowledge must outlive the process (after a crash, the
events of a batch already committed are not read again, yet the next batch of the same profile
would take their attributes away) and reach every replica (a partition that moves brings its
profiles along).
So every carried row is also written to the topic `<kafka.group_id>.bulk-carry` (one
partition), and every replica reads the topic: from the beginning before it starts consuming
(`load`), then as it grows (a reader thread). Records, applied in log order:

- `rows`: up to CHUNK_BYTES of rows of one batch (identity type, header names, each row's identity
  and encoded cells, and until when they count, in epoch seconds), under a key of their own
  (`rows:<replica>:<sequence>`): one record per thousands of rows, not one per profile (a
  500,000-row batch of ~100-byte rows is about 200 records);
- `forget`: a single update ended the caveat for one profile; keyed by the profile, with a
  value (not a tombstone: compaction keeps it as long as the rows it overrides, where a
  tombstone could be removed first and let an older row come back on the next load).

The topic is compacted and deletes what is older than `bulk.carry_horizon_seconds`.

Writes are asynchronous (a producer with its poll thread); `flush` waits for them and is
awaited before a batch is submitted, so a batch never reaches Target before what it set is
known to the next run. A replica skips its own records when it reads them back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from confluent_kafka import KafkaException, Producer

from consumer.bulk.follow import follow, read_until_quiet, topic_reader
from consumer.bulk.held import Carry
from consumer.bulk.manifest import ensure_topic
from consumer.bulk.rows import encode_row
from consumer.config import Settings

log = logging.getLogger(__name__)

SEPARATOR = "\x00"  # between identity type and identity in a key: in neither of them
# A record holds rows up to this many bytes of cells and identities: well under the 1 MB of
# a broker's default message.max.bytes, JSON and names included.
CHUNK_BYTES = 256 * 1024
FORGET = b"forget"
LOAD_IDLE_SECONDS = 0.5  # read at start-up until this long brings nothing new
LOAD_TIMEOUT_SECONDS = 60.0


def carry_topic(settings: Settings) -> str:
    return f"{settings.kafka.group_id}.bulk-carry"


class KafkaCarryStore:
    """The producer side (`put`, `delete`, `flush`) and the reader thread that feeds `Carry`."""

    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        *,
        replica: str,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.topic = topic
        self._config = config
        self._replica = replica
        self._wall = wall_clock
        # Bounded local queue (librdkafka's default is 1 GB): produce waits for room instead.
        self._producer = Producer(
            {
                "linger.ms": 20,
                "queue.buffering.max.kbytes": 16_384,
                **config,
                "acks": "all",
                "logger": log,
            }
        )
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._spawn("carry-produce", self._poll_producer)
        self._names: dict[tuple[str, ...], tuple[str, ...]] = {}  # shared tuples
        self._sequence = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="carry-flush")

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _poll_producer(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.2)

    # --- writing ------------------------------------------------------------------------------

    def put(
        self,
        identity_type: str,
        rows: list[tuple[str, str | bytes]],
        expires_in: float,
        names: tuple[str, ...],
    ) -> None:
        expires = self._wall() + expires_in
        # Written percent-encoded (the topic's format): a stored row's separators would take
        # six bytes each as JSON escapes.
        encoded = [(identity, encode_row(cells)) for identity, cells in rows]
        for chunk in _chunks(encoded):
            value = {
                "t": identity_type,
                "e": expires,
                "n": list(names),
                "rows": [[identity, cells.decode("ascii")] for identity, cells in chunk],
            }
            self._sequence += 1
            key = f"rows:{self._replica}:{self._sequence}"
            self._produce(key, json.dumps(value, separators=(",", ":")).encode())

    def delete(self, identity_type: str, identity: str) -> None:
        self._produce(f"{identity_type}{SEPARATOR}{identity}", FORGET)

    def _produce(self, key_text: str, value: bytes) -> None:
        key = key_text.encode()
        headers: list[tuple[str, str | bytes | None]] = [("replica", self._replica.encode())]
        while True:
            try:
                self._producer.produce(self.topic, key=key, value=value, headers=headers)
                return
            except BufferError:
                self._producer.poll(0.1)  # the local queue is full: let deliveries drain it
            except KafkaException as exc:
                log.warning(
                    "bulk carry record not written",
                    extra={"event": "bulk_carry_dropped", "error": str(exc)},
                )
                return

    async def flush(self) -> None:
        """Wait until every record written so far is in Kafka (or failed for good)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._flush_blocking)

    def _flush_blocking(self) -> None:
        while self._producer.flush(1.0) > 0 and not self._closed.is_set():
            log.warning("bulk carry records still unsent", extra={"event": "bulk_carry_slow"})

    # --- reading ------------------------------------------------------------------------------

    async def load(self, carry: Carry) -> int:
        """Read the topic to its end into `carry`, then keep following it; returns the count
        read at start-up."""
        consumer = topic_reader(
            self._config,
            self.topic,
            **{
                "fetch.wait.max.ms": 50,
                # librdkafka prefetches up to 64 MB a partition by default: bounded here.
                "queued.max.messages.kbytes": 4096,
                "queued.min.messages": 2000,
            },
        )
        loaded = 0

        def take(messages: list[Any]) -> None:  # on the reading thread, before the loop uses it
            nonlocal loaded
            loaded += sum(self._apply(message, carry) for message in messages)

        if not await read_until_quiet(
            consumer, take, idle=LOAD_IDLE_SECONDS, limit=LOAD_TIMEOUT_SECONDS, batch=1000
        ):
            log.warning("bulk carry: start-up read cut short", extra={"event": "carry_slow"})
        self._threads.append(
            follow(
                consumer,
                list,
                partial(self._apply_all, carry=carry),
                closed=self._closed,
                batch=500,
                name="carry-read",
            )
        )
        return loaded

    def _apply_all(self, messages: list[Any], carry: Carry) -> None:
        for message in messages:
            self._apply(message, carry)

    def _apply(self, message: Any, carry: Carry) -> int:
        headers = dict(message.headers() or [])
        if headers.get("replica") == self._replica.encode():
            return 0  # our own: applied when written
        key = (message.key() or b"").decode("utf-8", "replace")
        raw = message.value()
        if raw == FORGET:
            identity_type, _, identity = key.partition(SEPARATOR)
            carry.restore(identity_type, identity, 0.0, (), None)
            return 1
        if raw is None or not key.startswith("rows:"):
            return 0
        try:
            value = json.loads(raw)
            identity_type = str(value["t"])
            names = tuple(str(n) for n in value["n"])
            expires_in = float(value["e"]) - self._wall()
            rows = [(str(i), str(c).encode("ascii")) for i, c in value["rows"]]
        except (ValueError, KeyError, TypeError, UnicodeEncodeError):
            return 0  # not ours: skipped
        shared = self._names.setdefault(names, names)
        for identity, cells in rows:
            carry.restore(identity_type, identity, expires_in, shared, cells)
        return len(rows)

    def close(self) -> None:
        self._producer.flush(5.0)
        self._closed.set()
        for thread in self._threads:
            thread.join(timeout=2.0)
        self._executor.shutdown(wait=False)


async def open_carry_store(
    settings: Settings, config: dict[str, Any], carry: Carry, replica: str
) -> KafkaCarryStore:
    """Create (or require) the topic, read it into `carry`, attach the store to it."""
    topic = carry_topic(settings)
    loop = asyncio.get_running_loop()
    create = settings.kafka.create_topics
    retention_ms = max(60_000, int(settings.bulk.carry_horizon_seconds * 1000))
    with ThreadPoolExecutor(1) as pool:
        await loop.run_in_executor(
            pool,
            partial(
                ensure_topic, config, topic, create, what="bulk carry", retention_ms=retention_ms
            ),
        )
    store = KafkaCarryStore(config, topic, replica=replica)
    loaded = await store.load(carry)
    carry.store = store
    log.info(
        "bulk carry loaded",
        extra={"event": "bulk_carry_loaded", "records": loaded, "profiles": len(carry)},
    )
    return store


def _chunks(rows: list[tuple[str, bytes]]) -> list[list[tuple[str, bytes]]]:
    """Consecutive runs of rows of at most CHUNK_BYTES (a larger row alone)."""
    chunks: list[list[tuple[str, bytes]]] = []
    current: list[tuple[str, bytes]] = []
    size = 0
    for identity, cells in rows:
        grown = size + len(identity) + len(cells) + 8
        if current and grown > CHUNK_BYTES:
            chunks.append(current)
            current, grown = [], len(identity) + len(cells) + 8
        current.append((identity, cells))
        size = grown
    if current:
        chunks.append(current)
    return chunks
