"""The data path from a consumed record to its outcome: decode, map, coalesce, send, ack.

Every record read is `buffered` until it is finished: sent (Target accepted its update),
skipped (no rule matched) or dead-lettered (the DLQ has it). Only then is it acked to the
offset tracker, so a commit never passes an unfinished event.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

from consumer.avro import Decoder
from consumer.coalesce import Batch, Coalescer
from consumer.errors import EventError, PermanentDeliveryError
from consumer.kafka.offsets import OffsetTracker
from consumer.kafka.offsets import TopicPartition as TP
from consumer.mapping import Mapper, ProfileUpdate
from consumer.metrics import Metrics
from consumer.prepare import Prepared, prepare
from consumer.quota import Clock
from consumer.record import SourceRecord
from consumer.target.request import TargetRequest, build_requests

log = logging.getLogger(__name__)


class DeadLetterSink(Protocol):
    async def write(self, record: SourceRecord, error: EventError) -> None: ...


class BulkRoute(Protocol):
    """The bulk transport as the pipeline sees it (consumer/bulk/transport.py)."""

    def route(self, update: ProfileUpdate, record: SourceRecord, epoch: int) -> bool: ...

    def single_started(self, key: tuple[str, str]) -> None: ...

    def single_done(self, key: tuple[str, str], accepted: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class EventRef:
    record: SourceRecord
    epoch: int

    @property
    def tp(self) -> TP:
        return (self.record.topic, self.record.partition)


def _partition_of(source: Hashable) -> TP | None:
    """The partition of a Coalescer source (topic, partition, epoch)."""
    if isinstance(source, tuple):
        return (source[0], source[1])
    return None


class Pipeline:
    def __init__(
        self,
        *,
        decoder: Decoder,
        mapper: Mapper,
        deliver: Callable[[TargetRequest], Awaitable[None]],
        dlq: DeadLetterSink,
        tracker: OffsetTracker,
        metrics: Metrics,
        endpoint_url: str,
        coalesce_window_seconds: float,
        max_in_flight: int,
        clock: Clock,
        wall_clock: Clock = time.time,
        bulk: BulkRoute | None = None,
    ) -> None:
        """`clock` is monotonic (coalescing windows); `wall_clock` is epoch seconds, compared
        with Kafka record timestamps for the event-to-update latency."""
        self._decoder = decoder
        self._mapper = mapper
        self._deliver = deliver
        self._dlq = dlq
        self._tracker = tracker
        self._metrics = metrics
        self._endpoint = endpoint_url
        self._coalescer: Coalescer[EventRef] = Coalescer(coalesce_window_seconds)
        self._max_in_flight = max_in_flight
        self._clock = clock
        self._wall_clock = wall_clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._sends: dict[asyncio.Task[None], list[EventRef]] = {}  # in flight: their events
        self._wake = asyncio.Event()
        self._dispatched = asyncio.Event()  # set at each turn of the dispatcher
        self._idle = asyncio.Event()
        self._idle.set()
        self.buffered = 0
        # Counter.labels() takes a lock and builds a key on every call: resolve them once.
        # Counted in plain ints and added to the counters by `publish_counts` (the intake calls
        # it after every slice): a counter's inc() takes a lock, 0.85 us, twice per event.
        self._consumed: dict[str, list[Any]] = {}  # topic -> [counter child, uncounted]
        self._mapped = metrics.events.labels("mapped")
        self._skipped = metrics.events.labels("skipped")
        self._uncounted_mapped = 0
        self._uncounted_skipped = 0
        self._sending = 0
        self._abandoned = False
        # Mapped updates go to bulk instead of the coalescer when it takes them: they leave
        # `buffered` then (bulk bounds its held events itself).
        self._bulk = bulk

    # --- intake ---------------------------------------------------------------------------

    @property
    def decoder(self) -> Decoder:
        """The decode stage (the intake fetches unknown registry schemas through it first)."""
        return self._decoder

    def submit(self, record: SourceRecord) -> None:
        """Take one consumed record; decode and map now, send later."""
        # Raises RegistryUnavailable before any bookkeeping: the caller retries the record.
        self.accept(record, prepare(self._decoder, self._mapper, record.value))

    def accept(self, record: SourceRecord, prepared: Prepared) -> None:
        """Take one consumed record whose value `prepare` (here or in a decode process,
        consumer/decode_pool.py) turned into an update, no update, or the event's error."""
        consumed = self._consumed.get(record.topic)
        if consumed is None:
            consumed = [self._metrics.events_consumed.labels(record.topic), 0]
            self._consumed[record.topic] = consumed
        consumed[1] += 1
        epoch = self._tracker.track((record.topic, record.partition), record.offset)
        if isinstance(prepared, EventError):
            self._add_buffered(1)
            self._spawn(self._dead_letter([EventRef(record, epoch)], prepared))
            return
        update = prepared
        if update is None:
            self._uncounted_skipped += 1
            self._tracker.ack((record.topic, record.partition), record.offset, epoch)
            return
        self._uncounted_mapped += 1
        # Bulk takes most events of a backlog: they never enter `buffered` (bulk bounds its
        # held events itself), so no EventRef and no gauge writes for them.
        if self._bulk is not None and self._bulk_takes(update, record, epoch):
            return
        ref = EventRef(record, epoch)
        self._add_buffered(1)
        key = (update.identity_type, update.identity)
        # One batch never mixes partitions or assignment epochs (see Coalescer).
        source = (record.topic, record.partition, epoch)
        if self._coalescer.add(key, update.attributes, ref, self._clock(), source):
            self._metrics.coalesced_events.inc()
        self._wake.set()

    def publish_counts(self) -> None:
        """Add the events counted since the last call to the consumed/mapped/skipped counters."""
        for entry in self._consumed.values():
            if entry[1]:
                entry[0].inc(entry[1])
                entry[1] = 0
        if self._uncounted_mapped:
            self._mapped.inc(self._uncounted_mapped)
            self._uncounted_mapped = 0
        if self._uncounted_skipped:
            self._skipped.inc(self._uncounted_skipped)
            self._uncounted_skipped = 0

    # --- dispatch -------------------------------------------------------------------------

    async def run(self) -> None:
        """Send due batches, at most max_in_flight at once, until cancelled."""
        while True:
            # Once abandoned, no new send starts: each cancelled one frees a slot, and without
            # this the dispatcher filled it with a request nobody would ever ack (found by the
            # SIGTERM scenario in tests/reliability: twice max_in_flight reached Target past
            # the commit).
            free = 0 if self._abandoned else self._max_in_flight - self._sending
            if free > 0:
                for batch in self._coalescer.pop_ready(self._clock(), free):
                    if self._bulk is not None:
                        self._bulk.single_started(batch.key)
                    self._sending += 1
                    self._metrics.in_flight.set(self._sending)
                    self._sends[self._spawn(self._send(batch))] = batch.refs
            self._dispatched.set()  # a handover may be waiting for a turn of this loop
            self._wake.clear()
            due = self._coalescer.next_due()
            timeout = None if due is None or free <= 0 else max(0.0, due - self._clock())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def _send(self, batch: Batch[EventRef]) -> None:
        # The events neither finished nor given up yet: whatever ends this task (success,
        # refusal, a bug, a cancellation in the middle of dead-lettering), each of them is
        # acked, dead-lettered or released from `buffered` exactly once.
        unfinished = list(batch.refs)
        landed = False  # whether it may have reached Target (bulk's override caveat)
        try:
            if self._handed_over(unfinished):
                # Its partitions now belong to another member, which re-reads these events
                # from the commit and sends them in order: sending them here too could land an
                # older value after its newer one (tests/reliability/test_handover.py).
                return
            landed = True
            await self._deliver_batch(batch)
        except PermanentDeliveryError as exc:
            result = "exhausted" if exc.reason == "retries_exhausted" else "rejected"
            landed = result == "exhausted"  # its last attempt may have timed out after landing
            self._metrics.updates_sent.labels(result).inc()
            await self._dead_letter(unfinished, exc)
        except Exception as exc:
            # A bug (ours or a library's), not Target's answer. Dead-lettering keeps the
            # partition moving and the events replayable once it is fixed; leaving them
            # unfinished froze that partition's commit with no signal at all.
            log.error("send failed unexpectedly", exc_info=exc, extra={"event": "send_error"})
            self._metrics.updates_sent.labels("error").inc()
            error = PermanentDeliveryError("internal_error", f"{type(exc).__name__} while sending")
            await self._dead_letter(unfinished, error)
        else:
            self._metrics.updates_sent.labels("success").inc()
            self._observe_latency(unfinished)
            self._finish(unfinished)
            unfinished.clear()
        finally:
            if self._bulk is not None:
                self._bulk.single_done(batch.key, landed)
            if unfinished and self._handed_over(unfinished):
                # Handed over (or cancelled by handover()): the next owner re-reads them.
                self._add_buffered(-len(unfinished))
            self._coalescer.done(batch.key)
            self._sending -= 1
            self._metrics.in_flight.set(self._sending)
            self._wake.set()

    async def _deliver_batch(self, batch: Batch[EventRef]) -> None:
        requests = build_requests(
            self._endpoint, batch.identity_type, batch.identity, batch.attributes
        )
        if len(requests) > 1:
            self._metrics.split_requests.inc(len(requests) - 1)
        for request in requests:
            await self._deliver(request)

    async def _dead_letter(self, refs: list[EventRef], error: EventError) -> None:
        """Write `refs` to the DLQ one by one, removing each from the list once finished (so
        a caller cancelled half-way knows which are left)."""
        while refs:
            await self._dlq.write(refs[0].record, error)
            self._finish([refs.pop(0)])

    # --- bookkeeping ----------------------------------------------------------------------

    def _finish(self, refs: list[EventRef]) -> None:
        for ref in refs:
            record = ref.record
            self._tracker.ack((record.topic, record.partition), record.offset, ref.epoch)
        self._add_buffered(-len(refs))

    def _add_buffered(self, delta: int) -> None:
        self.buffered += delta
        self._metrics.buffered_events.set(self.buffered)
        if self.buffered == 0:
            self._idle.set()
        else:
            self._idle.clear()

    def _observe_latency(self, refs: list[EventRef]) -> None:
        now = self._wall_clock()
        for ref in refs:
            if ref.record.timestamp_ms:
                self._metrics.event_to_update.observe(
                    max(0.0, now - ref.record.timestamp_ms / 1000)
                )

    def _handed_over(self, refs: list[EventRef]) -> bool:
        """True when no event of the batch is on a partition this process still owns."""
        return not any(self._tracker.owns(ref.tp, ref.epoch) for ref in refs)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._sends.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "pipeline task failed",
                exc_info=task.exception(),
                extra={"event": "task_failed"},
            )

    # --- bulk -----------------------------------------------------------------------------

    def _bulk_takes(self, update: ProfileUpdate, record: SourceRecord, epoch: int) -> bool:
        """Offer a record just read to bulk; True when bulk took it (or it was dead-lettered:
        an event no bulk batch may carry)."""
        assert self._bulk is not None  # noqa: S101 - narrowing for mypy
        try:
            return self._bulk.route(update, record, epoch)
        except EventError as exc:
            self._add_buffered(1)
            self._spawn(self._dead_letter([EventRef(record, epoch)], exc))
            return True

    def _to_bulk(self, update: ProfileUpdate, ref: EventRef) -> bool:
        """Offer the update to bulk; True when it is bulk's now (or dead-lettered)."""
        assert self._bulk is not None  # noqa: S101 - narrowing for mypy
        try:
            taken = self._bulk.route(update, ref.record, ref.epoch)
        except EventError as exc:  # an event no bulk batch may carry
            self._spawn(self._dead_letter([ref], exc))
            return True
        if taken:
            self._add_buffered(-1)
        return taken

    def sends_in_flight(self) -> list[asyncio.Task[None]]:
        """The single-update sends under way now (bulk waits for them after a switch)."""
        return list(self._sends)

    def move_waiting_to_bulk(self) -> int:
        """Switched to bulk: the single updates still waiting join the batches instead,
        mapped again from their records, in the order read. Returns how many moved."""
        refs = self._coalescer.drop(lambda _source: True)
        refs.sort(key=lambda ref: (ref.tp, ref.record.offset))
        for ref in refs:  # each stays in `buffered` until bulk takes or finishes it
            try:
                update = self._mapper.map(self._decoder.decode(ref.record.value))
            except Exception as exc:  # it mapped a moment ago: only a bug lands here
                error = PermanentDeliveryError("internal_error", f"{type(exc).__name__} remapping")
                self._spawn(self._dead_letter([ref], error))
                continue
            if update is None:
                self._finish([ref])
            elif not self._to_bulk(update, ref):
                key = (update.identity_type, update.identity)
                source = (ref.tp[0], ref.tp[1], ref.epoch)
                self._coalescer.add(key, update.attributes, ref, self._clock(), source)
        self._wake.set()
        return len(refs)

    # --- rebalance ------------------------------------------------------------------------

    async def handover(self, tps: set[TP], timeout: float) -> None:
        """Partitions are leaving this process (still ours until the final commit that follows:
        the source seals them after this returns). Before that commit, finish every event of
        theirs below the highest one already delivered, and let every send of theirs in flight
        end: the next owner re-sends from the commit, so an event left unfinished below a
        delivered one of the same profile would be re-sent after it, setting Target back to
        the older value; a cancelled request may have reached Target all the same. What lies
        above the highest delivered event is dropped: the next owner sends it, in order.

        `timeout` bounds it all (0: lost partitions, another member may own them already);
        what is still in flight then is cancelled and logged (`handover_cut`).
        """
        deadline = self._clock() + timeout
        finished = await self._finish_delivered(tps, deadline)
        dropped = self._coalescer.drop(lambda source: _partition_of(source) in tps)
        self._add_buffered(-len(dropped))
        self._wake.set()  # the batches held back behind the dropped ones may go
        if finished:
            return
        pending = [t for t, refs in self._sends.items() if any(r.tp in tps for r in refs)]
        stale = [t for t in pending if all(r.tp in tps for r in self._sends.get(t, []))]
        for task in stale:
            task.cancel()
        if pending and timeout > 0:
            log.warning(
                "hand-over cut at its timeout: sends in flight cancelled",
                extra={"event": "handover_cut", "cancelled": len(stale)},
            )
        await asyncio.gather(*stale, return_exceptions=True)

    async def _finish_delivered(self, tps: set[TP] | None, deadline: float) -> bool:
        """Until `deadline`: send the waiting batches of `tps` (None: every partition) that
        hold an event below the highest delivered one of its partition, hold the others back,
        and wait for every send of theirs in flight. True once none is left of either kind.

        Coalescing sends a profile's newer events ahead of older events of other profiles, so
        a partition's delivered offsets run ahead of its contiguous commit; each round may
        deliver higher offsets still (a batch merges a profile's later events), hence the loop.
        """
        while (remaining := deadline - self._clock()) > 0:
            if self._abandoned:
                return False  # no send starts any more: nothing left to wait for
            live = [t for t in self._sends if not t.done()]
            sends = [t for t in live if tps is None or any(r.tp in tps for r in self._sends[t])]
            if sends:
                await asyncio.wait(sends, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                continue
            if not self._release_behind(tps):
                return True
            # The dispatcher starts them on its next turn, unless their profile has a send in
            # flight (of a partition staying here), every slot is taken, or a batch of another
            # partition heads their profile's chain: then a send must end, or its timer fire.
            self._dispatched.clear()
            self._wake.set()
            try:
                await asyncio.wait_for(self._dispatched.wait(), remaining)
            except TimeoutError:
                return False
            if any(tps is None or any(r.tp in tps for r in refs) for refs in self._sends.values()):
                continue
            self._dispatched.clear()
            waits = [*live, asyncio.ensure_future(self._dispatched.wait())]
            await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            waits[-1].cancel()
        return False

    def _release_behind(self, tps: set[TP] | None) -> int:
        """Make due now the waiting batches of `tps` with an event below their partition's
        highest finished offset; hold back the other batches of `tps`. Returns how many go."""
        highest: dict[TP, int] = {}
        behind = 0

        def due_of(batch: Batch[EventRef]) -> float | None:
            nonlocal behind
            tp = batch.refs[0].tp
            if tps is not None and tp not in tps:
                return None
            if tp not in highest:
                highest[tp] = self._tracker.highest_finished(tp)
            if batch.refs[0].record.offset < highest[tp]:  # refs come in offset order
                behind += 1
                return -math.inf
            return math.inf

        self._coalescer.reschedule(due_of)
        return behind

    # --- shutdown -------------------------------------------------------------------------

    async def drain(self, timeout: float) -> bool:
        """Send what waits now and wait for everything to finish, all within `timeout` (the
        pod's grace period is sized on it). If half of it is not enough, spend the rest
        finishing what the final commit must cover (as a hand-over does) and hold the rest
        back: False, `abandon` follows."""
        deadline = self._clock() + timeout
        self._coalescer.flush()
        self._wake.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout / 2)
        except TimeoutError:
            await self._finish_delivered(None, deadline)
            return False
        return True

    async def abandon(self) -> None:
        """Cancel whatever is still in flight; its offsets stay uncommitted (re-sent later)."""
        self._abandoned = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
