"""The intake loop: polls Kafka into the pipeline with backpressure, commits finished offsets,
waits out Schema Registry outages, and hands revoked partitions over.

Backpressure is a hysteresis on `pipeline.buffered`: partitions pause when the buffer is full
(or Target's circuit is open) and resume at half. A paused source keeps polling, so the group
never evicts this member for being slow.

A record whose writer schema must come from the Schema Registry is fetched first, off the
event loop and bounded in time. While the registry fails, records wait in `pending` (in order,
not tracked, so no commit passes them), partitions pause and polling goes on: the member stays
in its group, the loop stays live and `registry_problem` says why the consumer is not ready.

With decode processes (`pipeline.decode_processes`, consumer/decode_pool.py), records are sent
to them in chunks of POOL_CHUNK as soon as their writer schema is known, at most POOL_AHEAD
chunks at once, and their results are accepted in the order the records were read; the next
poll overlaps the children's work. A revoked partition's records in a chunk are skipped when
its results come back.

A poll batch is handed over in slices of SUBMIT_SLICE records with a turn of the event loop
between them. Decoding and mapping 500 records at once held the loop for 25 to 100 ms under
load, long enough for every send in flight to finish and wait there with its slot unused
(at 16 in flight and 50 ms, the loop stalled for about 1 s in the first 2 s of a run).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from consumer.config import Settings
from consumer.decode_pool import DecodePool
from consumer.errors import RegistryUnavailable
from consumer.kafka.offsets import OffsetTracker, TopicPartition
from consumer.kafka.source import KafkaSource
from consumer.pipeline import Pipeline
from consumer.prepare import Prepared
from consumer.record import SourceRecord, source_record
from consumer.target.delivery import CircuitBreaker

log = logging.getLogger(__name__)

REGISTRY_RETRY_FIRST_SECONDS = 0.5
REGISTRY_RETRY_CAP_SECONDS = 30.0
# Records submitted between two turns of the event loop: a few milliseconds of decode and map.
SUBMIT_SLICE = 32
# Decode processes: records per chunk, and chunks sent before the first one's results are taken
# (one decoded while the parent takes the previous one's results and polls).
POOL_CHUNK = 512
POOL_AHEAD = 3


class BulkSide(Protocol):
    """The bulk transport as the intake sees it (consumer/bulk/transport.py)."""

    @property
    def full(self) -> bool: ...

    @property
    def finals(self) -> int: ...

    async def revoke(self, tps: set[TopicPartition], wait: float) -> None: ...

    def assignment_hook(
        self, loop: asyncio.AbstractEventLoop
    ) -> Callable[[list[TopicPartition]], None]: ...


class Intake:
    """Runs the poll loop until `stop` is set; `turned` says when it last went round."""

    def __init__(
        self,
        *,
        settings: Settings,
        source: KafkaSource,
        pipeline: Pipeline,
        circuit: CircuitBreaker,
        tracker: OffsetTracker,
        on_turn: Callable[[], None] = lambda: None,
        bulk: BulkSide | None = None,
        pool: DecodePool | None = None,
    ) -> None:
        self._settings = settings
        self._source = source
        self._pipeline = pipeline
        self._circuit = circuit
        self._tracker = tracker
        self._on_turn = on_turn
        self._bulk = bulk
        self._pool = pool
        # Chunks sent to the decode processes, oldest first; a revoked record becomes None.
        self._inflight: deque[tuple[list[SourceRecord | None], asyncio.Future[list[Prepared]]]]
        self._inflight = deque()
        self.turned = time.monotonic()
        # Why records wait for the Schema Registry, while they do (the App is not ready then).
        self.registry_problem: str | None = None
        self._pending: deque[SourceRecord] = deque()
        self._registry_retry_at = 0.0
        self._registry_delay = REGISTRY_RETRY_FIRST_SECONDS

    async def run(self, stop: asyncio.Event) -> None:
        s = self._settings
        source, pipeline = self._source, self._pipeline
        limit = s.pipeline.max_buffered_events
        paused = False
        last_commit = time.monotonic()
        finals = 0
        # Revocations run on the Kafka thread, inside consume(): they wait there for the
        # revoked partitions' sends in flight before committing, so a write of ours cannot
        # land after the next owner's.
        source.on_revoked = handover_hook(
            self._revoke, asyncio.get_running_loop(), s.pipeline.shutdown_timeout_seconds
        )
        if self._bulk is not None:  # new partitions wait until the bulk manifest is read
            source.on_assigned = self._bulk.assignment_hook(asyncio.get_running_loop())
        while not stop.is_set():
            self.turned = time.monotonic()
            blocked = await self._submit_pending(wait=False)
            self._on_turn()
            paused = self._should_pause(paused, blocked)
            await source.set_paused(paused)  # also applies to newly assigned partitions
            waiting = pipeline.buffered + len(self._pending)
            room = max(0, min(s.kafka.poll_batch_size, limit - waiting))
            # With chunks at the decode processes, polling only looks: their results are due.
            timeout = 0.0 if self._inflight else 0.2 if paused else 0.5
            messages = await source.poll(max(1, room), timeout)
            self._pending.extend(source_record(message) for message in messages)
            await self._submit_pending(wait=not messages or len(self._inflight) >= POOL_AHEAD)
            # A bulk batch that became final acked a whole backlog at once: committed now
            # rather than at the next interval.
            settled = self._bulk is not None and self._bulk.finals != finals
            if settled or time.monotonic() - last_commit >= s.kafka.commit_interval_seconds:
                finals = self._bulk.finals if self._bulk is not None else 0
                await source.commit(self._tracker.committable())
                last_commit = time.monotonic()

    def _should_pause(self, paused: bool, blocked: bool) -> bool:
        """Hysteresis: pause when full, when Target is down or while the registry holds records
        back; resume at half full once neither holds."""
        limit = self._settings.pipeline.max_buffered_events
        buffered = self._pipeline.buffered
        if blocked or self._circuit.is_open:
            return True
        if self._bulk is not None and self._bulk.full:
            return True  # bulk holds its own bound of events until Target finishes batches
        return buffered >= limit if not paused else buffered > limit // 2

    async def _submit_pending(self, *, wait: bool = False) -> bool:
        """Hand waiting records over in order; True while the registry holds them back.
        `wait`: with decode processes, wait for the oldest chunk's results."""
        try:
            if self._pool is None:
                return await self._submit_slices()
            blocked = await self._dispatch(self._pool)
            await self._accept_chunks(wait=wait)
            return blocked
        finally:
            self._pipeline.publish_counts()

    async def _schema_ready(self, schema_id: int) -> bool:
        """Fetches a writer schema the decoder lacks (`Decoder.schema_to_fetch`); False while
        the registry cannot give it."""
        decoder = self._pipeline.decoder
        if time.monotonic() < self._registry_retry_at:
            return False
        try:
            await decoder.fetch(schema_id, self._settings.avro.schema_registry_timeout_seconds)
        except RegistryUnavailable as exc:
            self._registry_failed(exc)
            return False
        return True

    async def _dispatch(self, pool: DecodePool) -> bool:
        """Waiting records to the decode processes, in order, in chunks; True when the registry
        holds the next one back."""
        decoder = self._pipeline.decoder
        texts = decoder.schema_texts()
        while self._pending and len(self._inflight) < POOL_AHEAD:
            chunk: list[SourceRecord] = []
            blocked = False
            while self._pending and len(chunk) < POOL_CHUNK:
                schema_id = decoder.schema_to_fetch(self._pending[0].value)
                if schema_id is not None and not await self._schema_ready(schema_id):
                    blocked = True
                    break
                chunk.append(self._pending.popleft())
            if chunk:
                future = pool.prepare([record.value for record in chunk], texts)
                out: list[SourceRecord | None] = list(chunk)  # `_revoke` may blank some
                self._inflight.append((out, future))
            if blocked:
                return True
            self._registry_answers()
        return False

    async def _accept_chunks(self, *, wait: bool) -> None:
        """The results of the chunks that are back, oldest first, into the pipeline; with
        `wait`, the oldest one's are waited for. A DecodeProcessLost ends the intake."""
        while self._inflight:
            chunk, future = self._inflight[0]
            if not future.done() and not wait:
                return
            prepared = await future
            wait = False
            for index, outcome in enumerate(prepared):
                if index and index % SUBMIT_SLICE == 0:
                    self._pipeline.publish_counts()
                    await asyncio.sleep(0)  # as `_submit_slices`; a revocation may land here
                record = chunk[index]
                if record is not None:
                    self._pipeline.accept(record, outcome)
            self._inflight.popleft()

    async def _submit_slices(self) -> bool:
        submitted = 0
        while self._pending:
            if submitted == SUBMIT_SLICE:
                self._pipeline.publish_counts()
                # Let the answers that arrived meanwhile free their slots, and the dispatcher
                # fill them, before the next slice (see the module's docstring).
                await asyncio.sleep(0)
                submitted = 0
                continue  # `_pending` may have been replaced meanwhile (a revocation)
            record = self._pending[0]
            schema_id = self._pipeline.decoder.schema_to_fetch(record.value)
            if schema_id is not None and not await self._schema_ready(schema_id):
                return True
            try:
                self._pipeline.submit(record)  # raises before any bookkeeping
            except RegistryUnavailable as exc:
                self._registry_failed(exc)
                return True
            self._pending.popleft()
            submitted += 1
            self._registry_answers()
        return False

    def _registry_answers(self) -> None:
        if self.registry_problem is not None:
            log.info("schema registry answers again", extra={"event": "registry_back"})
            self.registry_problem = None
            self._registry_delay = REGISTRY_RETRY_FIRST_SECONDS

    def _registry_failed(self, exc: RegistryUnavailable) -> None:
        self.registry_problem = str(exc)
        delay = self._registry_delay
        log.warning(
            "schema registry unavailable, retrying",
            extra={"event": "registry_unavailable", "error": str(exc), "retry_in": delay},
        )
        self._registry_retry_at = time.monotonic() + delay
        self._registry_delay = min(delay * 2, REGISTRY_RETRY_CAP_SECONDS)

    async def _revoke(self, tps: set[TopicPartition], wait: float) -> None:
        """Waiting records of leaving partitions are dropped (never tracked, never committed:
        their next owner reads them again), then their sends in flight are handed over."""
        self._pending = deque(r for r in self._pending if (r.topic, r.partition) not in tps)
        for chunk, _ in self._inflight:
            for index, record in enumerate(chunk):
                if record is not None and (record.topic, record.partition) in tps:
                    chunk[index] = None
        if self._bulk is None:
            await self._pipeline.handover(tps, wait)
            return
        await asyncio.gather(self._pipeline.handover(tps, wait), self._bulk.revoke(tps, wait))


def handover_hook(
    revoke: Callable[[set[TopicPartition], float], Coroutine[Any, Any, None]],
    loop: asyncio.AbstractEventLoop,
    timeout: float,
) -> Callable[[list[TopicPartition], bool], None]:
    """The source's revocation hook: runs `revoke` on the event loop and waits for it.

    The loop is free meanwhile (it awaits the consume() call that runs the callback). Lost
    partitions may already be another member's: their sends are cancelled without waiting.
    """

    def handover(tps: list[TopicPartition], lost: bool) -> None:
        wait = 0.0 if lost else timeout
        future = asyncio.run_coroutine_threadsafe(revoke(set(tps), wait), loop)
        try:
            future.result(wait + 5.0)  # handover() itself gives up after `wait`
        except TimeoutError:
            future.cancel()
            log.warning("handover did not finish", extra={"event": "handover_timeout"})

    return handover
