"""The intake loop: polls Kafka into the pipeline with backpressure, commits finished offsets,
waits out Schema Registry outages, and hands revoked partitions over.

Backpressure is a hysteresis on `pipeline.buffered`: partitions pause when the buffer is full
(or Target's circuit is open) and resume at half. A paused source keeps polling, so the group
never evicts this member for being slow.

A record whose writer schema must come from the Schema Registry is fetched first, off the
event loop and bounded in time. While the registry fails, records wait in `pending` (in order,
not tracked, so no commit passes them), partitions pause and polling goes on: the member stays
in its group, the loop stays live and `registry_problem` says why the consumer is not ready.

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
from consumer.errors import RegistryUnavailable
from consumer.kafka.offsets import OffsetTracker, TopicPartition
from consumer.kafka.source import KafkaSource
from consumer.pipeline import Pipeline
from consumer.record import SourceRecord, source_record
from consumer.target.delivery import CircuitBreaker

log = logging.getLogger(__name__)

REGISTRY_RETRY_FIRST_SECONDS = 0.5
REGISTRY_RETRY_CAP_SECONDS = 30.0
# Records submitted between two turns of the event loop: a few milliseconds of decode and map.
SUBMIT_SLICE = 32


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
    ) -> None:
        self._settings = settings
        self._source = source
        self._pipeline = pipeline
        self._circuit = circuit
        self._tracker = tracker
        self._on_turn = on_turn
        self._bulk = bulk
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
            blocked = await self._submit_pending()
            self._on_turn()
            paused = self._should_pause(paused, blocked)
            await source.set_paused(paused)  # also applies to newly assigned partitions
            room = max(0, min(s.kafka.poll_batch_size, limit - pipeline.buffered))
            messages = await source.poll(max(1, room), 0.2 if paused else 0.5)
            self._pending.extend(source_record(message) for message in messages)
            await self._submit_pending()
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

    async def _submit_pending(self) -> bool:
        """Hand waiting records over in order; True while the registry holds them back."""
        try:
            return await self._submit_slices()
        finally:
            self._pipeline.publish_counts()

    async def _submit_slices(self) -> bool:
        decoder = self._pipeline.decoder
        timeout = self._settings.avro.schema_registry_timeout_seconds
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
            schema_id = decoder.schema_to_fetch(record.value)
            if schema_id is not None:
                if time.monotonic() < self._registry_retry_at:
                    return True
                try:
                    await decoder.fetch(schema_id, timeout)
                except RegistryUnavailable as exc:
                    self._registry_failed(exc)
                    return True
            try:
                self._pipeline.submit(record)  # raises before any bookkeeping
            except RegistryUnavailable as exc:
                self._registry_failed(exc)
                return True
            self._pending.popleft()
            submitted += 1
            if self.registry_problem is not None:
                log.info("schema registry answers again", extra={"event": "registry_back"})
                self.registry_problem = None
                self._registry_delay = REGISTRY_RETRY_FIRST_SECONDS
        return False

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
