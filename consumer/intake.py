"""The intake loop: polls Kafka into the pipeline with backpressure, commits finished offsets,
waits out Schema Registry outages, and hands revoked partitions over.

Backpressure is a hysteresis on `pipeline.buffered`: partitions pause when the buffer is full
(or Target's circuit is open) and resume at half. A paused source keeps polling, so the group
never evicts this member for being slow.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

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
    ) -> None:
        self._settings = settings
        self._source = source
        self._pipeline = pipeline
        self._circuit = circuit
        self._tracker = tracker
        self._on_turn = on_turn
        self.turned = time.monotonic()

    async def run(self, stop: asyncio.Event) -> None:
        s = self._settings
        source, pipeline = self._source, self._pipeline
        limit = s.pipeline.max_buffered_events
        paused = False
        last_commit = time.monotonic()
        # Revocations run on the Kafka thread, inside consume(): they wait there for the
        # revoked partitions' sends in flight before committing, so a write of ours cannot
        # land after the next owner's.
        source.on_revoked = handover_hook(
            pipeline, asyncio.get_running_loop(), s.pipeline.shutdown_timeout_seconds
        )
        while not stop.is_set():
            self.turned = time.monotonic()
            self._on_turn()
            if not paused and (pipeline.buffered >= limit or self._circuit.is_open):
                paused = True
            elif paused and not self._circuit.is_open and pipeline.buffered <= limit // 2:
                paused = False
            await source.set_paused(paused)  # also applies to newly assigned partitions
            room = max(0, min(s.kafka.poll_batch_size, limit - pipeline.buffered))
            messages = await source.poll(max(1, room), 0.2 if paused else 0.5)
            for message in messages:
                if not await self._submit(source_record(message), stop):
                    return
            if time.monotonic() - last_commit >= s.kafka.commit_interval_seconds:
                await source.commit(self._tracker.committable())
                last_commit = time.monotonic()

    async def _submit(self, record: SourceRecord, stop: asyncio.Event) -> bool:
        """Hand a record over, waiting out a Schema Registry outage; False when stopping.

        A record not handed over is not tracked, so no commit can pass it.
        """
        delay = REGISTRY_RETRY_FIRST_SECONDS
        while True:
            try:
                self._pipeline.submit(record)
                return True
            except RegistryUnavailable as exc:
                log.warning(
                    "schema registry unavailable, retrying",
                    extra={"event": "registry_unavailable", "error": str(exc), "retry_in": delay},
                )
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return False
            except TimeoutError:
                delay = min(delay * 2, REGISTRY_RETRY_CAP_SECONDS)


def handover_hook(
    pipeline: Pipeline, loop: asyncio.AbstractEventLoop, timeout: float
) -> Callable[[list[TopicPartition], bool], None]:
    """The source's revocation hook: runs `pipeline.handover` on the event loop and waits.

    The loop is free meanwhile (it awaits the consume() call that runs the callback). Lost
    partitions may already be another member's: their sends are cancelled without waiting.
    """

    def handover(tps: list[TopicPartition], lost: bool) -> None:
        wait = 0.0 if lost else timeout
        future = asyncio.run_coroutine_threadsafe(pipeline.handover(set(tps), wait), loop)
        try:
            future.result(wait + 5.0)  # handover() itself gives up after `wait`
        except TimeoutError:
            future.cancel()
            log.warning("handover did not finish", extra={"event": "handover_timeout"})

    return handover
