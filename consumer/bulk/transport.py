"""The bulk side as the App wires it: the mode switch, the sender, the shared limits.

`BulkTransport` is what the pipeline and the intake see of bulk:
- `route(update, record, epoch)`: the pipeline offers every mapped update; bulk takes it when
  the mode is bulk, or when the profile still has events in a batch that is not final (a
  single update would overtake them);
- `single_started(key)` / `single_done(key, accepted)`: the pipeline sends a single update
  (an accepted one ends the override caveat, a refused one does not);
- `full`: the held events reached `bulk.max_held_events` (the intake pauses partitions);
- `finals`: how many batches became final so far (the intake commits after each);
- `revoke(tps, wait)`: partitions leave (the intake's handover);
- `assignment_hook(loop)`: the source's assignment hook: new partitions wait, on the Kafka
  thread and bounded, until the manifest is read up to the assignment (foreign.py), so no
  record of theirs is read before the other members' batches holding them are known.

`route` also sends to bulk the events of a partition that another member's batch not final
still holds (consumer/bulk/foreign.py): a single update could land before that batch.

`run()` decides the mode once a second from the work waiting (pipeline buffer + consumer lag)
and the single-update quota's state, moves the single updates still waiting into bulk when it
switches to bulk (re-mapped from their records: the coalescer's merged attributes are not
kept), sends what is filling when it switches back, and publishes the bulk gauges.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from consumer.bulk import answers
from consumer.bulk.carry_log import open_carry_store
from consumer.bulk.client import BulkClient
from consumer.bulk.endpoints import Endpoints
from consumer.bulk.fallback import SingleFallback
from consumer.bulk.foreign import CATCH_UP_SECONDS, ForeignBatches
from consumer.bulk.held import Carry
from consumer.bulk.limits import BulkLimits, open_shared_limits
from consumer.bulk.manifest import KafkaManifest, open_manifest
from consumer.bulk.mode import Figures, ModeSwitch
from consumer.bulk.reread import KafkaReread
from consumer.bulk.sender import BulkSender, DeadLetters, SenderSettings
from consumer.config import Settings
from consumer.kafka.offsets import OffsetTracker, TopicPartition
from consumer.mapping import ProfileUpdate
from consumer.metrics import BulkMetrics
from consumer.quota.local import QuotaGate
from consumer.record import SourceRecord
from consumer.target.http import TargetHttp
from consumer.target.request import TargetRequest

log = logging.getLogger(__name__)

DECIDE_EVERY_SECONDS = 1.0
# Once its partition is read to its end (and no single update waits), a batch that got no
# event for this long goes without waiting out bulk.max_batch_seconds, if it is at least a tenth
# of that old: a drained backlog is sent at once, while a trickle in bulk mode still makes few,
# large batches. Looked at every CAUGHT_UP_EVERY_SECONDS (the source's per-partition counts, no
# ledger): the end of a drain waited 1 to 2 s for the next decision before.
CAUGHT_UP_EVERY_SECONDS = 0.25
CAUGHT_UP_IDLE_SECONDS = 0.5
CAUGHT_UP_AGE_SHARE = 0.1


class PipelineSide(Protocol):
    """What the transport needs of the pipeline."""

    buffered: int

    def sends_in_flight(self) -> list[asyncio.Task[None]]: ...

    def move_waiting_to_bulk(self) -> int: ...


class BulkTransport:
    def __init__(
        self,
        *,
        mode: ModeSwitch,
        sender: BulkSender,
        limits: BulkLimits,
        gate: QuotaGate,
        metrics: BulkMetrics,
        lag: Callable[[], Mapping[TopicPartition, int]],
        max_batch_seconds: float = 60.0,
        closers: list[Callable[[], Any]] | None = None,
    ) -> None:
        self.mode = mode
        self.sender = sender
        self._limits = limits
        self._gate = gate
        self._metrics = metrics
        self._lag = lag
        self._max_batch_seconds = max_batch_seconds
        self._closers = closers or []
        self._pipeline: PipelineSide | None = None
        self._waited: dict[str, float] = {}
        self._closed = False

    def attach(self, pipeline: PipelineSide) -> None:
        self._pipeline = pipeline

    # --- the pipeline's hooks ---------------------------------------------------------------

    def route(self, update: ProfileUpdate, record: SourceRecord, epoch: int) -> bool:
        """True when bulk took the update (raises InvalidBulkRow for one it cannot carry)."""
        sender = self.sender
        if (
            not self.mode.bulk
            and not sender.holds(update.identity_type, update.identity)
            and not sender.blocked(record.topic, record.partition)
        ):
            return False
        sender.take(
            update.identity_type,
            update.identity,
            update.attributes,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            epoch=epoch,
        )
        return True

    def single_started(self, key: tuple[str, str]) -> None:
        self.sender.single_started(key[0], key[1])

    def single_done(self, key: tuple[str, str], accepted: bool) -> None:
        self.sender.single_done(key[0], key[1], accepted=accepted)

    @property
    def full(self) -> bool:
        return self.sender.full

    @property
    def finals(self) -> int:
        return self.sender.finals

    async def revoke(self, tps: set[TopicPartition], wait: float) -> None:
        await self.sender.revoke(tps, wait)

    def assignment_hook(
        self, loop: asyncio.AbstractEventLoop
    ) -> Callable[[list[TopicPartition]], None]:
        """Runs `sender.catch_up` on the event loop and waits for it on the Kafka thread (the
        loop is free meanwhile: it awaits the consume() call that runs the callback)."""

        def assigned(tps: list[TopicPartition]) -> None:
            if self._closed or not tps:
                return  # shutting down: the manifest reader is gone, nothing will be sent
            future = asyncio.run_coroutine_threadsafe(self.sender.catch_up(set(tps)), loop)
            try:
                future.result(CATCH_UP_SECONDS + 5.0)  # catch_up itself gives up sooner
            except TimeoutError:
                future.cancel()
                log.warning("bulk catch-up did not finish", extra={"event": "bulk_catch_up_cut"})

        return assigned

    def health(self) -> tuple[bool, str]:
        """The shared bulk budgets' (ledgers') health, for /readyz."""
        return self._limits.health()

    # --- the loop ---------------------------------------------------------------------------

    def figures(self) -> Figures:
        snap = self._gate.snapshot()
        buffered = self._pipeline.buffered if self._pipeline is not None else 0
        rate = snap.limit / snap.window_seconds if snap.window_seconds > 0 else 0.0
        return Figures(
            waiting=buffered + sum(self._lag().values()),
            rate=rate,
            remaining=snap.remaining,
            limit=snap.limit,
            bulk_rows_remaining=self._limits.rows.snapshot().remaining,
            bulk_rows_needed=self.sender.rows_unsent,
        )

    def decide(self) -> None:
        figures = self.figures()
        switch = self.mode.update(figures)
        if switch is None:
            self.flush_caught_up()
            return
        if switch.to == "bulk" and self._pipeline is not None:
            self.sender.barrier(self._pipeline.sends_in_flight())
            moved = self._pipeline.move_waiting_to_bulk()
            log.info(
                "single updates still waiting moved to bulk",
                extra={"event": "bulk_moved_waiting", "events": moved},
            )
        elif switch.to == "single":
            self.sender.flush_all()

    def flush_caught_up(self) -> None:
        """Queue the batches gone idle of the partitions read to their end, while no single
        update waits. Per partition: a backlog's partitions are not read to their end at once
        (librdkafka serves them unevenly), and the first one drained goes to Target while the
        others are still read."""
        if self._pipeline is not None and self._pipeline.buffered:
            return
        drained = {tp for tp, unread in self._lag().items() if unread == 0}
        if drained:
            self.sender.flush_caught_up(
                idle_seconds=CAUGHT_UP_IDLE_SECONDS,
                min_age_seconds=self._max_batch_seconds * CAUGHT_UP_AGE_SHARE,
                partitions=drained,
            )

    async def run(self) -> None:
        sending = asyncio.ensure_future(self.sender.run())
        every = round(DECIDE_EVERY_SECONDS / CAUGHT_UP_EVERY_SECONDS)
        try:
            for tick in itertools.count():
                if tick % every == 0:
                    self.decide()
                    self._limits.publish(self._metrics, self._waited)
                else:
                    self.flush_caught_up()
                await asyncio.sleep(CAUGHT_UP_EVERY_SECONDS)
        finally:
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)

    async def drain(self, timeout: float) -> bool:
        return await self.sender.drain(timeout)

    async def close(self) -> None:
        self._closed = True
        await self.sender.abandon()
        await self._limits.close()
        for close in self._closers:
            close()


async def open_bulk_transport(
    settings: Settings,
    *,
    http: TargetHttp,
    gate: QuotaGate,
    tracker: OffsetTracker,
    dlq: DeadLetters,
    metrics: BulkMetrics,
    kafka_config: dict[str, Any],
    lag: Callable[[], Mapping[TopicPartition, int]],
    clock: Callable[[], float],
    replica: str,
    deliver: Callable[[TargetRequest], Awaitable[None]] | None = None,
    endpoint_url: str = "",
) -> BulkTransport:
    """Everything bulk needs, opened: the shared limits' ledgers, the manifest topic.
    `deliver` (the single-update send path) and `endpoint_url`: where a batch the rows budget
    cannot take goes in auto mode (consumer/bulk/fallback.py)."""
    b = settings.bulk
    limits = await open_shared_limits(settings, kafka_config, clock, replica)
    try:
        manifest: KafkaManifest = await open_manifest(settings, kafka_config)
    except BaseException:
        await limits.close()
        raise
    bulk_http = http.derive(
        timeout=b.request_timeout_seconds, max_body=answers.MAX_STATUS_BODY, held=False
    )
    client = BulkClient.from_settings(
        settings, http=bulk_http, limits=limits, metrics=metrics, clock=clock
    )
    carry = Carry(horizon=b.carry_horizon_seconds, max_profiles=b.carry_max_profiles, clock=clock)
    try:
        store = await open_carry_store(settings, kafka_config, carry, replica)
    except BaseException:
        manifest.close()
        await limits.close()
        raise
    foreign = ForeignBatches(
        replica=replica,
        horizon=b.carry_horizon_seconds,
        wall_clock=time.time,
        submitting_timeout=b.status_timeout_seconds,
        mark=manifest.record,
    )
    try:
        await manifest.follow(foreign)
    except BaseException:
        store.close()
        manifest.close()
        await limits.close()
        raise
    reread = KafkaReread(kafka_config)
    endpoints = Endpoints(
        base_url=settings.target.url(),
        client_code=settings.target.client_code,
        pcid_api=b.pcid_api,
    )
    # Adobe names the override caveat for v2 thirdPartyId batches only (so does the simulator).
    caveat = {
        "mbox3rdPartyId": endpoints.version("mbox3rdPartyId") == "v2",
        "mboxPC": False,
    }
    mode = ModeSwitch.from_settings(settings, clock=clock, metrics=metrics)
    singles = None
    if deliver is not None:
        singles = SingleFallback(
            mode=mode, rows=limits.rows, deliver=deliver, endpoint_url=endpoint_url
        )
    sender = BulkSender(
        client=client,
        tracker=tracker,
        dlq=dlq,
        reread=reread,
        metrics=metrics,
        settings=sender_settings(settings),
        carry=carry,
        carries=caveat.__getitem__,
        clock=clock,
        manifest=manifest,
        replica=replica,
        singles=singles,
        foreign=foreign,
    )
    transport = BulkTransport(
        mode=mode,
        sender=sender,
        limits=limits,
        gate=gate,
        metrics=metrics,
        lag=lag,
        max_batch_seconds=b.max_batch_seconds,
        closers=[manifest.close, reread.close, store.close],
    )
    return transport


def sender_settings(settings: Settings) -> SenderSettings:
    b = settings.bulk
    return SenderSettings(
        max_rows=b.batch_rows(),
        max_bytes=b.max_bytes,
        max_batch_seconds=b.max_batch_seconds,
        status_poll_seconds=b.status_poll_seconds,
        status_timeout_seconds=b.status_timeout_seconds,
        max_resubmits=b.max_resubmits,
        max_held_events=b.max_held_events,
    )
