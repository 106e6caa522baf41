"""Batches of other members (or of an earlier run) that Target may still be processing.

A batch cannot be recalled once submitted. When its partition moves to another member (or its
member dies) before Target has finished it, the next owner reads its events again and could
send a newer value of one of its profiles as a single update that Target applies *before* the
old batch, whose older value would then land last. So the next owner learns, from the manifest
topic (consumer/bulk/manifest.py, one record per step of every batch, with the partitions it
holds and its batchStatus URL), which batches not final hold rows of its partitions, and until
each is final:

- no single update is sent for an event of such a partition: it goes to bulk (`blocks`);
- no batch holding events of such a partition is submitted (BulkSender waits its turn).

Such a batch is final when its manifest record says so (its member still polls it), when this
member's own poll of its batchStatus URL finds it complete (its member is gone), or when the
horizon has passed since its submit (Target processes a batch within a day). Partitions, not
profiles: the manifest does not list a batch's identities (up to 500,000 of them), and holding
a partition back costs only that its events go through bulk for a while.

A batch is recorded `submitting` (no batchStatus URL yet) before its first POST, and again
before every later POST attempt. Such a record blocks its partitions until a later record for
the same key arrives (`submitted`, final, `dropped`) or until `bulk.status_timeout_seconds`
have passed since the record (`updated_at`, on its writer's clock): the bound the sender itself
assumes before it resubmits a batch it considers stuck. Its member stops POSTing a batch whose
partitions it no longer owns, so no attempt starts after that bound.

Assignment (`pending`, `catch_up`): a partition just assigned blocks until this member has read
everything written to the manifest before the assignment. It writes a sync marker of its own
and waits to read it back (the topic has one partition, so every earlier record was read
before it). Tansu answers ListOffsets "latest" with the last record batch's base offset + 1
(checked: 1 for a batch of 7 records), so the topic's end cannot be measured; the marker needs
no such answer. Bounded by `catch_up_timeout`: past it the partitions are let go, logged
(`bulk_catch_up_timeout`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from consumer.kafka.offsets import TopicPartition

log = logging.getLogger(__name__)

SUBMITTING = "submitting"
# Manifest states of a batch Target may apply and that is not final yet.
PROCESSING_STATES = frozenset({SUBMITTING, "submitted"})
# How long a new partition waits at most for the manifest reader to catch up: the marker's
# round trip takes well under a second on a healthy broker.
CATCH_UP_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class ForeignBatch:
    key: str
    batch_id: str
    status_url: str
    partitions: frozenset[TopicPartition]
    submitted_at: float  # epoch seconds
    expires: float  # epoch seconds: past this it blocks nothing (Target is done with it)


def parse_partition(text: str) -> TopicPartition | None:
    """`topic[3]` (the manifest's form) -> (topic, 3)."""
    topic, bracket, rest = text.rpartition("[")
    if not bracket or not rest.endswith("]") or not rest[:-1].isdigit():
        return None
    return topic, int(rest[:-1])


class ForeignBatches:
    """The other members' batches not final, by partition, as the manifest tells them."""

    def __init__(
        self,
        *,
        replica: str,
        horizon: float,
        wall_clock: Callable[[], float],
        submitting_timeout: float = 3600.0,
        catch_up_timeout: float = CATCH_UP_SECONDS,
        mark: Callable[[dict[str, Any]], None] = lambda entry: None,
    ) -> None:
        """`submitting_timeout`: bulk.status_timeout_seconds; `mark` writes a sync marker
        to the manifest (KafkaManifest.record)."""
        self._replica = replica
        self._horizon = horizon
        self._wall = wall_clock
        self._submitting_timeout = submitting_timeout
        self._catch_up_timeout = catch_up_timeout
        self._mark = mark
        self._batches: dict[str, ForeignBatch] = {}
        self._by_tp: dict[TopicPartition, set[str]] = {}
        self._final: set[str] = set()  # found complete by our own poll (a late record stays so)
        self.on_change: Callable[[], None] = lambda: None
        # Assignment catch-up: partition -> marker it waits for; marker -> deadline.
        self._tokens = itertools.count(1)
        self._pending: dict[TopicPartition, int] = {}
        self._deadlines: dict[int, float] = {}
        self._synced = 0  # the highest of our markers read back
        self._caught_up = asyncio.Event()

    def __len__(self) -> int:
        return len(self._batches)

    def apply(self, entries: Iterable[dict[str, Any]]) -> None:
        """Manifest records, in log order (our own are skipped: the sender knows them)."""
        changed = False
        for entry in entries:
            key = str(entry.get("key", ""))
            if entry.get("replica") == self._replica:
                changed |= self._read_marker(entry)
                continue
            if not key or "sync" in entry:
                continue
            if entry.get("state") in PROCESSING_STATES and key not in self._final:
                changed |= self._add(key, entry)
            else:
                changed |= self._drop(key)
        if changed:
            self.on_change()

    def _add(self, key: str, entry: dict[str, Any]) -> bool:
        parsed = (parse_partition(str(p)) for p in entry.get("partitions", ()))
        partitions = frozenset(tp for tp in parsed if tp is not None)
        url = str(entry.get("status_url", ""))
        if not partitions:
            return False
        self._drop(key)
        recorded = float(entry.get("updated_at") or 0.0)
        submitted_at = float(entry.get("submitted_at") or recorded)
        if entry.get("state") == SUBMITTING:
            # A POST may be on its way, with no status to ask: the sender's own bound.
            expires = recorded + self._submitting_timeout
        else:
            expires = submitted_at + self._horizon
        self._batches[key] = ForeignBatch(
            key, str(entry.get("batch_id", "")), url, partitions, submitted_at, expires
        )
        for tp in partitions:
            self._by_tp.setdefault(tp, set()).add(key)
        return True

    def _drop(self, key: str) -> bool:
        batch = self._batches.pop(key, None)
        if batch is None:
            return False
        for tp in batch.partitions:
            keys = self._by_tp.get(tp)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_tp[tp]
        return True

    def final(self, key: str) -> None:
        """Our own poll found the batch complete."""
        self._final.add(key)
        if self._drop(key):
            log.info("bulk: a foreign batch is final", extra={"event": "bulk_foreign_final"})
            self.on_change()

    def blocks(self, tp: TopicPartition) -> bool:
        """Whether a batch not final (and within its bound) holds rows of `tp`, or `tp` was
        just assigned and the manifest is not read up to the assignment yet."""
        if self._pending and tp in self._pending:
            self._expire_pending()
            if tp in self._pending:
                return True
        if not self._by_tp:
            return False
        keys = self._by_tp.get(tp)
        if not keys:
            return False
        now = self._wall()
        for key in list(keys):
            if self._batches[key].expires < now:
                self._drop(key)  # Target has processed it by now, whatever it answers
        return tp in self._by_tp

    # --- assignment catch-up ---------------------------------------------------------------

    def pending(self, tps: Iterable[TopicPartition]) -> int:
        """Block `tps` until our marker written now is read back; returns the marker."""
        token = next(self._tokens)
        now = self._wall()
        self._deadlines[token] = now + self._catch_up_timeout
        for tp in tps:
            self._pending[tp] = token
        key = f"{self._replica}-sync"
        self._mark({"key": key, "replica": self._replica, "sync": token, "updated_at": now})
        return token

    def waiting(self, token: int) -> bool:
        """Whether the partitions of `token` still wait for the reader (within the bound)."""
        self._expire_pending()
        return token in self._deadlines

    async def catch_up(self, tps: Iterable[TopicPartition]) -> bool:
        """`pending(tps)`, then wait until the reader has caught up (True) or the bound."""
        token = self.pending(tps)
        while self.waiting(token):
            self._caught_up.clear()
            left = self._deadlines[token] - self._wall()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._caught_up.wait(), max(0.0, left))
        return token <= self._synced

    def _read_marker(self, entry: dict[str, Any]) -> bool:
        """One of our own records: a sync marker read back releases what waited for it."""
        token = entry.get("sync")
        if not isinstance(token, int) or token <= self._synced:
            return False
        self._synced = token
        for done in [t for t in self._deadlines if t <= token]:
            del self._deadlines[done]
        self._pending = {tp: t for tp, t in self._pending.items() if t > token}
        self._caught_up.set()
        return True

    def _expire_pending(self) -> None:
        now = self._wall()
        late = [t for t, deadline in self._deadlines.items() if deadline <= now]
        if not late:
            return
        for token in late:
            del self._deadlines[token]
        stuck = sorted(tp for tp, t in self._pending.items() if t in late)
        self._pending = {tp: t for tp, t in self._pending.items() if t not in late}
        log.warning(
            "bulk: the manifest reader did not catch up after an assignment: partitions let go",
            extra={
                "event": "bulk_catch_up_timeout",
                "partitions": [f"{t}[{p}]" for t, p in stuck],
                "timeout": self._catch_up_timeout,
            },
        )
        self.on_change()

    def on(self, tps: Iterable[TopicPartition]) -> list[ForeignBatch]:
        """The batches blocking any of `tps` (to poll their status)."""
        keys = {key for tp in tps if self.blocks(tp) for key in self._by_tp.get(tp, ())}
        return [self._batches[key] for key in sorted(keys)]
