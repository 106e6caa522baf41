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
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from consumer.kafka.offsets import TopicPartition

log = logging.getLogger(__name__)

# Manifest states of a batch handed to Target's asynchronous processing and not final yet.
PROCESSING_STATES = frozenset({"submitted"})


@dataclass(frozen=True, slots=True)
class ForeignBatch:
    key: str
    batch_id: str
    status_url: str
    partitions: frozenset[TopicPartition]
    submitted_at: float  # epoch seconds


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
    ) -> None:
        self._replica = replica
        self._horizon = horizon
        self._wall = wall_clock
        self._batches: dict[str, ForeignBatch] = {}
        self._by_tp: dict[TopicPartition, set[str]] = {}
        self._final: set[str] = set()  # found complete by our own poll (a late record stays so)
        self.on_change: Callable[[], None] = lambda: None

    def __len__(self) -> int:
        return len(self._batches)

    def apply(self, entries: Iterable[dict[str, Any]]) -> None:
        """Manifest records, in log order (our own are skipped: the sender knows them)."""
        changed = False
        for entry in entries:
            key = str(entry.get("key", ""))
            if not key or entry.get("replica") == self._replica:
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
        self._batches[key] = ForeignBatch(
            key,
            str(entry.get("batch_id", "")),
            url,
            partitions,
            float(entry.get("submitted_at") or entry.get("updated_at") or 0.0),
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
        """Whether a batch not final (and within the horizon) holds rows of `tp`."""
        if not self._by_tp:
            return False
        keys = self._by_tp.get(tp)
        if not keys:
            return False
        oldest = self._wall() - self._horizon
        for key in list(keys):
            if self._batches[key].submitted_at < oldest:
                self._drop(key)  # Target has processed it by now, whatever it answers
        return tp in self._by_tp

    def on(self, tps: Iterable[TopicPartition]) -> list[ForeignBatch]:
        """The batches blocking any of `tps` (to poll their status)."""
        keys = {key for tp in tps if self.blocks(tp) for key in self._by_tp.get(tp, ())}
        return [self._batches[key] for key in sorted(keys)]
