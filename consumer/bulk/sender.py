"""BulkSender: mapped updates into batches, batches through Target, outcomes back to offsets.

Life of a batch (`_Batch`): *filling* (one `BatchBuilder` per identity type and source, a source
being one partition in one assignment epoch) -> *queued* when full, older than
`bulk.max_batch_seconds`, or when the held events reach `bulk.max_held_events` -> *submitted*
(BulkClient, which waits for the shared calls and rows budgets and retries everything
retryable) -> polled every `bulk.status_poll_seconds` (a cheap poll; one detailed fetch once
complete) -> *final*:

- complete: the events of rows Target reports as succeeded are acked; those of failed rows
  (state `failed`, or a state we do not know) go to the DLQ with reason `bulk_row_failed` and
  Target's row status (`error.message`, `error.http_body`), then are acked;
- stuck, refused status polls, or incomplete past `bulk.status_timeout_seconds`: resubmitted
  (rows are idempotent), at most `bulk.max_resubmits` times, then dead-lettered (`bulk_stuck`);
- refused at submit: dead-lettered (`bulk_rejected`).

Offsets: an event is acked only when its batch is final, so no commit passes an event whose
row could still fail: after a restart the events are read again and re-sent, and a failing row
still reaches the DLQ (docs/design.md: why, and what it costs). A held event is one int
(consumer/bulk/held.py); the records of dead-lettered rows are read again from Kafka.

Order per profile (invariant 6):
- a batch is submitted only when no earlier batch of its identity type that is not final has a
  row for one of its profiles (Target documents no order between batches), and once the single
  updates in flight at the switch to bulk are done (one could otherwise land after it);
- `holds(key)`: while a profile has events in a batch that is not final, its new events go to
  bulk too, never to a single update that would overtake the batch;
- the override caveat: a v2 thirdPartyId row carries the attributes bulk sent its profile since
  the profile's last single update (`Carry`): `single_started` forgets them.

Revocation: batches still filling or queued, or waiting for the budgets, that hold events of
a revoked partition are dropped whole (never sent; the next owner reads those events again from
the commit); their carried values are forgotten. A batch whose POST may have started (the
client's `before_post` ran) cannot be recalled: `revoke` waits (up to the handover timeout) for
it to become final, and past that its outcome only releases memory (acks of an old epoch are
ignored and its failed rows are the next owner's to report); it makes no new POST attempt once
its partition is no longer ours.

Write-ahead (the next owner's safety, consumer/bulk/foreign.py): before every POST attempt the
batch is recorded `submitting` in the manifest and the record's delivery is awaited (bounded by
MANIFEST_WRITE_SECONDS); a record that cannot be written skips that POST (retried with the
client's backoff, events held). Before `revoke` returns, the manifest is flushed within what is
left of its wait, so every record about the revoked partitions' batches is in Kafka.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from consumer.bulk.answers import BatchStatus, Submitted
from consumer.bulk.foreign import ForeignBatches
from consumer.bulk.held import OFFSET_BITS, Carry, Source, Sources
from consumer.bulk.rows import BatchBuilder, Carried
from consumer.errors import (
    EventError,
    InvalidBulkRow,
    PermanentBulkError,
    PermanentDeliveryError,
    RetryableBulkError,
)
from consumer.kafka.offsets import OffsetTracker, TopicPartition
from consumer.metrics import BulkMetrics
from consumer.record import SourceRecord

log = logging.getLogger(__name__)

FILLING, QUEUED, SUBMITTED, FINAL = "filling", "queued", "submitted", "final"
SUBMITTING, DROPPED = "submitting", "dropped"  # manifest states (consumer/bulk/foreign.py)
# A `submitting` record not delivered by then: that POST is skipped and retried later.
MANIFEST_WRITE_SECONDS = 10.0
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
ProfileKey = tuple[str, str]
Wanted = tuple[str, int, int]  # topic, partition, offset


class BulkCalls(Protocol):
    async def submit(
        self,
        batch: BatchBuilder[Any] | bytes,
        identity_type: str,
        rows: int | None = None,
        *,
        before_post: Callable[[], Awaitable[None]] | None = None,
    ) -> Submitted: ...

    async def status(self, submitted: Submitted, *, details: bool = True) -> BatchStatus: ...


class DeadLetters(Protocol):
    async def write(self, record: SourceRecord, error: EventError) -> None: ...


class Reread(Protocol):
    async def fetch(self, wanted: list[Wanted]) -> dict[Wanted, SourceRecord]: ...


class ManifestSink(Protocol):
    def record(self, entry: dict[str, Any]) -> None: ...

    async def written(self, entry: dict[str, Any], timeout: float) -> bool: ...

    async def flush(self, timeout: float) -> bool: ...


class _HandedOver(Exception):  # noqa: N818 - a signal, not an error
    """A POST attempt was about to start for a batch whose partition is no longer ours."""


class Singles(Protocol):
    """Single updates for a batch the bulk row budget cannot take (consumer/bulk/fallback.py)."""

    def claim(self, rows: int) -> bool: ...

    def release(self, rows: int) -> None: ...

    async def send(self, identity_type: str, identity: str, attributes: dict[str, str]) -> None: ...


@dataclass(eq=False, slots=True)
class _Batch:
    seq: int
    identity_type: str
    source: int
    builder: BatchBuilder[int]
    opened: float
    # Idleness, seen from `flush_caught_up` (not stamped per event: a clock call per event of
    # a backlog): the event count it last saw, and since when it has not changed.
    seen: int = 0
    quiet_since: float = 0.0
    # What a new row carries (BulkSender._seed), for identity types under the override caveat.
    seed: Callable[[str], Carried | None] | None = None
    state: str = FILLING
    submitted: Submitted | None = None
    submitted_at: float = 0.0
    submitted_wall: float = 0.0  # epoch seconds of the first submit (the manifest's age)
    resubmits: int = 0
    claimed: int = 0  # rows claimed from the rows budget until the first submit acquired them
    posting: bool = False  # a POST may have reached Target: revoke never cancels the batch
    announced: bool = False  # a `submitting` record was written (or tried)
    task: asyncio.Task[None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True, slots=True)
class SenderSettings:
    max_rows: int
    max_bytes: int
    max_batch_seconds: float
    status_poll_seconds: float
    status_timeout_seconds: float
    max_resubmits: int
    max_held_events: int


class BulkSender:
    """Takes mapped updates (`take`), runs their batches (`run`), acks or dead-letters."""

    def __init__(
        self,
        *,
        client: BulkCalls,
        tracker: OffsetTracker,
        dlq: DeadLetters,
        reread: Reread,
        metrics: BulkMetrics,
        settings: SenderSettings,
        carry: Carry,
        carries: Callable[[str], bool],
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
        manifest: ManifestSink | None = None,
        replica: str = "",
        wall_clock: Clock = time.time,
        singles: Singles | None = None,
        foreign: ForeignBatches | None = None,
    ) -> None:
        self._client = client
        self._singles = singles
        self._foreign = foreign
        self._tracker = tracker
        self._dlq = dlq
        self._reread = reread
        self._metrics = metrics
        self._s = settings
        self._carry = carry
        self._carries = carries
        self._clock = clock
        self._sleep = sleep
        self._barrier: asyncio.Future[Any] | None = None  # single sends to outlast (switch)
        self._manifest = manifest
        self._replica = replica
        self._wall_clock = wall_clock
        self._sources = Sources()
        # (identity type, topic, partition, epoch) -> the batch filling: `take`'s one lookup.
        self._filling: dict[tuple[str, str, int, int], _Batch] = {}
        self._live: list[_Batch] = []  # queued and submitted, in the order they were queued
        self._seq = itertools.count(1)
        self._changed = asyncio.Event()  # a batch became final, or one was queued
        if foreign is not None:
            foreign.on_change = self._changed.set
        self._idle = asyncio.Event()
        self._idle.set()
        self.held = 0
        self.finals = 0  # batches that became final so far

    # --- intake side (called for every mapped event in bulk mode) ---------------------------

    @property
    def full(self) -> bool:
        """Partitions pause while this is true (the held events' own bound)."""
        return self.held >= self._s.max_held_events

    @property
    def rows_unsent(self) -> int:
        """Rows of the batches queued and not yet accepted by a submit (the rows budget's
        share the mode switch weighs)."""
        return sum(b.builder.row_count for b in self._live if b.submitted is None)

    def blocked(self, topic: str, partition: int) -> bool:
        """Whether another member's batch not final holds rows of the partition: its events
        may not go as single updates (consumer/bulk/foreign.py)."""
        return self._foreign is not None and self._foreign.blocks((topic, partition))

    def holds(self, identity_type: str, identity: str) -> bool:
        """Whether the profile has events in a batch that is not final."""
        if self.held == 0:
            return False
        return any(
            b.identity_type == identity_type and identity in b.builder
            for b in itertools.chain(self._filling.values(), self._live)
        )

    def take(
        self,
        identity_type: str,
        identity: str,
        attributes: dict[str, str],
        *,
        topic: str,
        partition: int,
        offset: int,
        epoch: int,
    ) -> None:
        """Hold one mapped event in its batch. Raises InvalidBulkRow for an event no batch may
        carry (the caller dead-letters it). Called for every event of a backlog: one dict
        lookup finds the batch filling for the event's identity type and source."""
        batch = self._filling.get((identity_type, topic, partition, epoch))
        if batch is None:
            batch = self._open(identity_type, self._sources.index(topic, partition, epoch))
        ref = (batch.source << OFFSET_BITS) | offset
        if not batch.builder.try_add(identity, attributes, ref, seed=batch.seed):
            self._queue(batch)
            batch = self._open(identity_type, batch.source)
            if not batch.builder.try_add(identity, attributes, ref, seed=batch.seed):
                raise InvalidBulkRow("bulk_invalid_row", "the event alone is too large for a batch")
        if not self.held:
            self._idle.clear()
        self.held += 1
        if batch.builder.full:
            self._queue(batch)
        elif self.held >= self._s.max_held_events:
            self._queue_all()

    def _seed(self, batch: _Batch, identity: str) -> Carried | None:
        """A new row of a batch whose identity type carries (BatchBuilder calls this): what
        earlier batches set for the profile, as kept (merged under the event's values), once
        any other batch filling a row for it is queued first."""
        self._close_other_rows(batch, identity)
        return self._carry.take_stored(batch.identity_type, identity)

    def _close_other_rows(self, batch: _Batch, identity: str) -> None:
        """The profile is still filling in another source's batch (events of one profile on
        two partitions): queue that batch first, so its row is in the carry this row takes and
        this batch lands after it. Two rows filling at once could each miss what the other
        sets, and the later batch would take the earlier one's attributes away."""
        if len(self._filling) < 2:
            return
        for other in list(self._filling.values()):
            if (
                other is not batch
                and other.identity_type == batch.identity_type
                and identity in other.builder
            ):
                self._queue(other)

    def single_started(self, identity_type: str, identity: str) -> None:
        """A single update of the profile is being sent: no new row carries for it until
        `single_done` says whether it ended the override caveat."""
        self._carry.suspend(identity_type, identity)

    def single_done(self, identity_type: str, identity: str, *, accepted: bool) -> None:
        """Accepted: the mbox call ended the caveat. Refused for good: it did not, and what
        earlier batches set must still be carried (or the next batch would take it away)."""
        self._carry.settle(identity_type, identity, accepted=accepted)

    # --- filling -> queued ----------------------------------------------------------------

    def _open(self, identity_type: str, source: int) -> _Batch:
        builder: BatchBuilder[int] = BatchBuilder(
            identity_type=identity_type,
            max_rows=self._s.max_rows,
            max_bytes=self._s.max_bytes,
            int_refs=True,
        )
        batch = _Batch(next(self._seq), identity_type, source, builder, self._clock())
        if self._carries(identity_type):
            batch.seed = functools.partial(self._seed, batch)
        self._filling[self._key(batch)] = batch
        return batch

    def _key(self, batch: _Batch) -> tuple[str, str, int, int]:
        return (batch.identity_type, *self._sources.source(batch.source))

    def _queue(self, batch: _Batch) -> None:
        """The batch takes no more events: remember what it carries, start its life."""
        del self._filling[self._key(batch)]
        if batch.builder.empty:
            return
        if self._carries(batch.identity_type):
            names = tuple(batch.builder.attribute_names)
            self._carry.remember(
                batch.identity_type, batch.builder.stored_rows(), names, batch.source
            )
        batch.state = QUEUED
        self._live.append(batch)
        batch.task = asyncio.ensure_future(self._life(batch))
        self._changed.set()

    def _queue_all(self) -> None:
        for batch in list(self._filling.values()):
            self._queue(batch)

    def flush_due(self) -> float | None:
        """Queue the batches filling for `max_batch_seconds`; returns when the next is due."""
        now = self._clock()
        due: float | None = None
        for batch in list(self._filling.values()):
            at = batch.opened + self._s.max_batch_seconds
            if at <= now:
                self._queue(batch)
            else:
                due = at if due is None else min(due, at)
        return due

    def flush_caught_up(
        self,
        *,
        idle_seconds: float,
        min_age_seconds: float,
        partitions: set[TopicPartition] | None = None,
    ) -> int:
        """The work waiting is read (on `partitions`, or all; the wiring knows, every quarter
        of a second): queue their batches that got no event since this looked at them
        `idle_seconds` ago or more, and are at least `min_age_seconds` old, rather than letting
        a drained backlog wait out `max_batch_seconds`. Returns how many were queued."""
        now = self._clock()
        due = []
        for key, batch in self._filling.items():
            if partitions is not None and (key[1], key[2]) not in partitions:
                continue
            count = batch.builder.event_count
            if count != batch.seen:
                batch.seen, batch.quiet_since = count, now
            elif now - batch.quiet_since >= idle_seconds and now - batch.opened >= min_age_seconds:
                due.append(batch)
        for batch in due:
            self._queue(batch)
        return len(due)

    def flush_all(self) -> None:
        """Send what fills now (switching back to single updates, shutting down)."""
        self._queue_all()

    # --- one batch's life -------------------------------------------------------------------

    async def _life(self, batch: _Batch) -> None:
        try:
            await self._wait_turn(batch)
            await self._run_batch(batch)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug, not Target's answer: the events stay unacked (re-sent after a restart)
            # rather than being acked for rows nobody knows the fate of.
            log.exception("bulk batch failed unexpectedly", extra={"event": "bulk_batch_error"})
            self._release(batch, batch.builder.event_count)
        finally:
            self._final(batch)

    def barrier(self, sends: list[asyncio.Task[None]]) -> None:
        """Switching to bulk: these single sends (in flight now) finish before any batch is
        submitted; one for a profile a batch holds could otherwise land after the batch. Later
        singles never carry such a profile (`holds` routes its events to bulk)."""
        pending: list[asyncio.Future[Any]] = [task for task in sends if not task.done()]
        if self._barrier is not None and not self._barrier.done():
            pending.append(self._barrier)
        self._barrier = asyncio.ensure_future(asyncio.wait(pending)) if pending else None

    async def _wait_turn(self, batch: _Batch) -> None:
        """Until the singles in flight at the last switch are done, and no earlier batch not
        yet final shares a profile with this one."""
        if self._barrier is not None and not self._barrier.done():
            await asyncio.shield(self._barrier)
        while self._overlapping(batch) is not None or self._foreign_blocks(batch):
            self._changed.clear()
            if self._overlapping(batch) is None and not self._foreign_blocks(batch):
                return
            await self._changed.wait()

    def _foreign_blocks(self, batch: _Batch) -> bool:
        """Another member's batch not final holds rows of this batch's partition (it could
        hold an older value of one of these profiles, and land after this batch)."""
        if self._foreign is None:
            return False
        topic, partition, _epoch = self._sources.source(batch.source)
        return self._foreign.blocks((topic, partition))

    def _overlapping(self, batch: _Batch) -> _Batch | None:
        identities = None
        for other in self._live:
            if other is batch:
                return None
            if other.identity_type != batch.identity_type or other.state == FINAL:
                continue
            if identities is None:
                identities = list(batch.builder.identities())
            if any(identity in other.builder for identity in identities):
                return other
        return None

    async def _run_batch(self, batch: _Batch) -> None:
        singles = self._singles
        if singles is not None:
            if not singles.claim(batch.builder.row_count):
                await self._send_as_singles(batch, singles)
                return
            batch.claimed = batch.builder.row_count
        while True:
            batch.state = SUBMITTED
            if self._carry.store is not None:
                # What this batch sets must be known to the next run before Target has it.
                await self._carry.store.flush()
            try:
                batch.submitted = await self._client.submit(
                    batch.builder,
                    batch.identity_type,
                    before_post=functools.partial(self._before_post, batch),
                )
            except _HandedOver:
                self._handed_over(batch)
                return
            except PermanentBulkError as exc:
                self._release_claim(batch)
                self._metrics.batches.labels("rejected").inc()
                self._note(batch, "rejected", str(exc))
                await self._dead_letter_all(
                    batch,
                    PermanentDeliveryError("bulk_rejected", str(exc), exc.http_status, exc.body),
                )
                return
            self._release_claim(batch)
            batch.submitted_at = self._clock()
            batch.submitted_wall = batch.submitted_wall or self._wall_clock()
            self._metrics.batches.labels("accepted").inc()
            self._metrics.rows.labels("submitted").inc(batch.builder.row_count)
            self._note(batch, "submitted")
            status = await self._await_final(batch, batch.submitted)
            if status is not None:
                await self._complete(batch, status)
                return
            if batch.resubmits >= self._s.max_resubmits:
                self._metrics.batches.labels("stuck").inc()
                self._note(batch, "stuck")
                message = (
                    f"batch {batch.submitted.batch_id} not complete after "
                    f"{batch.resubmits + 1} submits"
                )
                await self._dead_letter_all(batch, PermanentDeliveryError("bulk_stuck", message))
                return
            batch.resubmits += 1
            self._metrics.batches.labels("resubmitted").inc()
            log.warning(
                "bulk batch stuck or late: resubmitted",
                extra={
                    "event": "bulk_resubmit",
                    "batch_id": batch.submitted.batch_id,
                    "resubmits": batch.resubmits,
                },
            )

    async def _before_post(self, batch: _Batch) -> None:
        """The client is about to POST (its calls unit taken): write the batch's `submitting`
        record and wait until Kafka has it, so the next owner of its partition knows Target
        may apply it; from then on the batch counts as posting (revoke waits for it)."""
        topic, partition, epoch = self._sources.source(batch.source)
        if not self._tracker.owns((topic, partition), epoch):
            raise _HandedOver  # the next owner sends these events; an attempt now could land late
        if self._manifest is not None:
            batch.announced = True
            entry = self._entry(batch, SUBMITTING)
            if not await self._manifest.written(entry, MANIFEST_WRITE_SECONDS):
                log.warning(
                    "bulk batch not posted: its manifest record could not be written",
                    extra={"event": "bulk_manifest_unwritten", "rows": entry["rows"]},
                )
                raise RetryableBulkError("manifest", "the bulk manifest record was not written")
        batch.posting = True

    def _handed_over(self, batch: _Batch) -> None:
        """No further POST for a batch of a partition now someone else's: its events are
        released (the next owner reads them again). One never posted is recorded `dropped`;
        one that was keeps its last record, which bounds the next owner's wait."""
        self._release(batch, batch.builder.event_count)
        if batch.announced and not batch.posting:
            self._note(batch, DROPPED)
        else:
            log.info(
                "bulk batch handed over before Target accepted it",
                extra={"event": "bulk_batch_handed_over", "rows": batch.builder.row_count},
            )

    def _release_claim(self, batch: _Batch) -> None:
        if batch.claimed and self._singles is not None:
            self._singles.release(batch.claimed)
        batch.claimed = 0

    async def _send_as_singles(self, batch: _Batch, singles: Singles) -> None:
        """The rows budget cannot take the batch (auto mode): each row, one profile's merged
        update with what it carries, goes as a single update instead. Its turn was waited for
        (`_wait_turn`), so no earlier batch of these profiles is still being processed."""
        batch.state = SUBMITTED
        self._metrics.batches.labels("sent_single").inc()
        self._note(batch, "sending_single")
        failed = 0
        for row in batch.builder.rows():
            if not self._owned(row.refs):
                # Handed over: the next owner reads these events again and sends them after
                # what it waits for; a single update from here could overtake its newer one.
                self._release(batch, len(row.refs))
                continue
            try:
                await singles.send(batch.identity_type, row.identity, row.attributes)
            except PermanentDeliveryError as exc:
                failed += 1
                await self._dead_letter(batch, [(ref, exc) for ref in row.refs])
                continue
            self._carry.forget(batch.identity_type, row.identity)  # the mbox call ended it
            self._ack(batch, row.refs)
        self._note(batch, "sent_single", failed_rows=failed)

    def _owned(self, refs: Iterable[int]) -> bool:
        for ref in refs:
            (topic, partition, epoch), _offset = self._sources.unpack(ref)
            if self._tracker.owns((topic, partition), epoch):
                return True
        return False

    async def _await_final(self, batch: _Batch, submitted: Submitted) -> BatchStatus | None:
        """The detailed status once complete; None when stuck, refused or too late."""
        deadline = self._clock() + self._s.status_timeout_seconds
        while True:
            await self._sleep(max(0.0, min(self._s.status_poll_seconds, deadline - self._clock())))
            try:
                status = await self._client.status(submitted, details=False)
                if status.complete:
                    return await self._client.status(submitted, details=True)
            except PermanentBulkError as exc:
                log.warning(
                    "bulk status refused",
                    extra={
                        "event": "bulk_status_refused",
                        "batch_id": submitted.batch_id,
                        "error": str(exc),
                    },
                )
                return None
            if status.state == "stuck" or self._clock() >= deadline:
                return None

    async def _complete(self, batch: _Batch, status: BatchStatus) -> None:
        failed = {row.number: row for row in status.rows}
        self._metrics.batches.labels("complete").inc()
        self._metrics.rows.labels("succeeded").inc(batch.builder.row_count - len(failed))
        self._metrics.rows.labels("failed").inc(len(failed))
        self._note(batch, "complete", failed_rows=len(failed))
        if not failed:
            self._ack(batch, batch.builder.iter_refs())
            return
        by_row = batch.builder.refs_by_row()
        doomed: list[tuple[int, EventError]] = []
        good: list[int] = []
        for number, refs in enumerate(by_row, start=1):
            row = failed.get(number)
            if row is None:
                good.extend(refs)
                continue
            text = f"rowNumber={row.number} status={row.state} message={row.message}"
            error = PermanentDeliveryError(
                "bulk_row_failed",
                f"bulk row {row.number} of batch {status.batch_id} {row.state}: {row.message}",
                body=text.encode("utf-8", "replace"),
            )
            doomed.extend((ref, error) for ref in refs)
        self._ack(batch, good)
        await self._dead_letter(batch, doomed)

    # --- outcomes ---------------------------------------------------------------------------

    def _ack(self, batch: _Batch, refs: Iterable[int]) -> None:
        count = 0
        unpack = self._sources.unpack
        ack = self._tracker.ack
        for ref in refs:
            (topic, partition, epoch), offset = unpack(ref)
            ack((topic, partition), offset, epoch)
            count += 1
        self._release(batch, count)

    async def _dead_letter_all(self, batch: _Batch, error: EventError) -> None:
        await self._dead_letter(batch, [(ref, error) for ref in batch.builder.iter_refs()])

    async def _dead_letter(self, batch: _Batch, doomed: list[tuple[int, EventError]]) -> None:
        """Re-read the records, write each to the DLQ, ack it. Events of partitions no longer
        owned are only released: their next owner sends them again, and reports them."""
        mine: list[tuple[Source, int, EventError]] = []
        for ref, error in doomed:
            source, offset = self._sources.unpack(ref)
            if self._tracker.owns((source[0], source[1]), source[2]):
                mine.append((source, offset, error))
        self._release(batch, len(doomed) - len(mine))
        records = await self._reread.fetch([(s[0], s[1], offset) for s, offset, _ in mine])
        for (topic, partition, epoch), offset, error in mine:
            record = records.get((topic, partition, offset)) or SourceRecord(
                topic, partition, offset, None, None, None, None
            )
            await self._dlq.write(record, error)
            self._tracker.ack((topic, partition), offset, epoch)
            self._release(batch, 1)
        if mine:
            self._metrics.batches.labels("dead_lettered").inc()

    def _release(self, batch: _Batch, count: int) -> None:
        self.held -= count
        if self.held <= 0:
            self.held = max(0, self.held)
            if not self._filling:
                self._idle.set()

    def _final(self, batch: _Batch) -> None:
        self._release_claim(batch)  # cancelled (or failed) before its submit returned
        batch.state = FINAL
        self.finals += 1
        if batch in self._live:
            self._live.remove(batch)
        batch.done.set()
        self._changed.set()
        if self.held == 0 and not self._filling:
            self._idle.set()

    def _note(self, batch: _Batch, state: str, error: str = "", failed_rows: int = 0) -> None:
        """Log the step and record it in the manifest (`profile-consumer bulk status`)."""
        entry = self._entry(batch, state, error, failed_rows)
        log.info(
            f"bulk batch {state}: {entry['rows']} rows, {entry['events']} events",
            extra={
                "event": f"bulk_batch_{state}",
                **{k: v for k, v in entry.items() if k not in ("key", "replica")},
            },
        )
        if self._manifest is not None:
            self._manifest.record(entry)

    def _entry(
        self, batch: _Batch, state: str, error: str = "", failed_rows: int = 0
    ) -> dict[str, Any]:
        # A `submitting` record names no batch: the POST about to start may create a new one,
        # and a poll of the previous (stuck) one must not release the partition.
        submitted = batch.submitted if state != SUBMITTING else None
        tps = sorted({self._sources.source(batch.source)[:2]})
        entry: dict[str, Any] = {
            "key": f"{self._replica}-{batch.seq}",
            "replica": self._replica,
            "batch_id": submitted.batch_id if submitted else "",
            # Where the next owner of these partitions asks whether it is final (foreign.py).
            "status_url": submitted.status_url if submitted else "",
            "identity_type": batch.identity_type,
            "state": state,
            "rows": batch.builder.row_count,
            "events": batch.builder.event_count,
            "bytes": batch.builder.size,
            "partitions": [f"{t}[{p}]" for t, p in tps],
            "resubmits": batch.resubmits,
            "failed_rows": failed_rows,
            "submitted_at": batch.submitted_wall,
            "updated_at": self._wall_clock(),
        }
        if error:
            entry["error"] = error[:300]
        return entry

    # --- loop, gauges, shutdown, revocation -------------------------------------------------

    async def run(self) -> None:
        """Queue batches as they come due and publish the gauges, until cancelled; poll the
        other members' batches that hold this member's partitions back."""
        watching = asyncio.ensure_future(self._watch_foreign()) if self._foreign else None
        try:
            while True:
                due = self.flush_due()
                self.publish()
                wait = 1.0 if due is None else max(0.0, min(1.0, due - self._clock()))
                await self._sleep(wait)
        finally:
            if watching is not None:
                watching.cancel()
                await asyncio.gather(watching, return_exceptions=True)

    async def _watch_foreign(self) -> None:
        """Every `status_poll_seconds`: ask Target about each foreign batch holding one of our
        partitions back (its member may be gone and never write its final record)."""
        assert self._foreign is not None  # noqa: S101 - narrowing for mypy
        while True:
            for foreign in self._foreign.on(self._tracker.assigned()):
                if foreign.status_url and await self._foreign_complete(
                    foreign.batch_id, foreign.status_url
                ):
                    self._foreign.final(foreign.key)
            self._changed.set()  # a horizon may have passed: waiting batches look again
            await self._sleep(self._s.status_poll_seconds)

    async def _foreign_complete(self, batch_id: str, status_url: str) -> bool:
        try:
            status = await self._client.status(Submitted(batch_id, status_url), details=False)
        except PermanentBulkError:
            return False  # refused: the horizon decides
        return status.complete

    def publish(self) -> None:
        submitted = [b for b in self._live if b.state == SUBMITTED]
        self._metrics.batches_in_flight.set(len(submitted))
        now = self._clock()
        oldest = min((b.submitted_at for b in submitted), default=now)
        self._metrics.oldest_batch_age.set(max(0.0, now - oldest))
        self._metrics.held_events.set(self.held)
        self._metrics.carried_profiles.set(len(self._carry))

    def batches(self) -> list[dict[str, Any]]:
        """What each batch not final is doing (for logs and tests)."""
        now = self._clock()
        return [
            {
                "seq": b.seq,
                "identity_type": b.identity_type,
                "state": b.state,
                "rows": b.builder.row_count,
                "events": b.builder.event_count,
                "age": now - (b.submitted_at or b.opened),
                "batch_id": b.submitted.batch_id if b.submitted else "",
            }
            for b in itertools.chain(self._filling.values(), self._live)
        ]

    async def drain(self, timeout: float) -> bool:
        """Send what fills, wait up to `timeout` for every batch to become final."""
        self.flush_all()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def abandon(self) -> None:
        """Stop every batch where it is: its events stay unacked (read and sent again)."""
        tasks = [b.task for b in self._live if b.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def revoke(self, tps: set[TopicPartition], wait: float) -> None:
        """The partitions leave this member: their rows never POSTed are dropped, the batches
        whose POST may have started get up to `wait` seconds to become final, and the manifest
        is flushed within what is left of `wait`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        sources = self._sources.indexes_of(tps)
        if not sources:
            return
        for key, batch in list(self._filling.items()):
            if batch.source in sources:
                del self._filling[key]
                self._release(batch, batch.builder.event_count)
        forgotten = self._carry.forget_sources(sources)
        unsent = [
            b for b in self._live if b.source in sources and b.submitted is None and not b.posting
        ]
        for batch in unsent:
            if batch.task is not None:
                batch.task.cancel()
        await asyncio.gather(*(b.task for b in unsent if b.task), return_exceptions=True)
        for batch in unsent:
            self._release(batch, batch.builder.event_count)
            if batch.announced:
                self._note(batch, DROPPED)  # its `submitting` record may be in Kafka
        pending = [b.done.wait() for b in self._live if b.source in sources]
        if pending and wait > 0:
            await asyncio.wait([asyncio.ensure_future(p) for p in pending], timeout=wait)
        left = sum(1 for b in self._live if b.source in sources)
        flushed = await self._flush_manifest(max(0.0, deadline - loop.time()))
        log.info(
            "bulk: partitions handed over",
            extra={
                "event": "bulk_handover",
                "dropped_unsent": len(unsent),
                "carry_forgotten": forgotten,
                "submitted_not_final": left,
                "manifest_flushed": flushed,
            },
        )

    async def _flush_manifest(self, timeout: float) -> bool:
        """Every record about the revoked partitions' batches in Kafka before they go: the
        next owner reads the manifest up to its assignment (foreign.py)."""
        if self._manifest is None or await self._manifest.flush(timeout):
            return True
        log.warning(
            "bulk manifest not flushed before the hand-over",
            extra={"event": "bulk_manifest_unflushed", "timeout": timeout},
        )
        return False

    async def catch_up(self, tps: set[TopicPartition]) -> None:
        """Newly assigned partitions: hold them back until the other members' batches written
        to the manifest before now are known (consumer/bulk/foreign.py)."""
        if self._foreign is not None and tps:
            await self._foreign.catch_up(tps)
