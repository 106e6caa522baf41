"""Compact handles for events held by bulk batches, and the carried attributes of profiles.

A held event is one `int`: the index of its source (topic, partition, assignment epoch) in a
small table, shifted over its offset. A batch holds up to 500,000 profiles' worth of events
(a backlog of millions), so keeping the consumed record (its value bytes) per event is out of
the question: the rare dead-lettered row re-reads its records from Kafka instead
(consumer/bulk/reread.py). One int costs 32 bytes plus a list slot, ~40 bytes an event.

`Carry` is what Adobe's override caveat asks for: consecutive v2 batches for one profile, with
no mbox call in between, leave the profile with only the later row's attributes. So each row
carries again the attributes bulk sent for its profile since the profile's last single update:
kept as the batch stored them (its very row, no copy; rows learnt from the carry log stay
percent-encoded as written there, consumer/bulk/rows.py reads both), for `horizon` seconds (Target
processes a batch within 24 h, after which the caveat cannot join two batches), and for at most
`max_profiles` profiles (the oldest is forgotten first, and counted, past that). A
`CarryStore` (consumer/bulk/carry_log.py) makes it outlive the process and reach every replica:
a restarted or newly assigned member must know what earlier batches set, or its first batch of
a profile would take those attributes away.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from itertools import islice
from typing import Protocol

from consumer.bulk.rows import Carried, decode_row
from consumer.kafka.offsets import TopicPartition

log = logging.getLogger(__name__)

OFFSET_BITS = 44  # 17.6e12 offsets a partition; the source index takes the bits above
OFFSET_MASK = (1 << OFFSET_BITS) - 1
Source = tuple[str, int, int]  # topic, partition, assignment epoch


class Sources:
    """Source <-> small index, so a held event is one int (`pack`/`unpack`)."""

    def __init__(self) -> None:
        self._index: dict[Source, int] = {}
        self._sources: list[Source] = []

    def index(self, topic: str, partition: int, epoch: int) -> int:
        source = (topic, partition, epoch)
        found = self._index.get(source)
        if found is None:
            found = self._index[source] = len(self._sources)
            self._sources.append(source)
        return found

    def source(self, index: int) -> Source:
        return self._sources[index]

    def pack(self, index: int, offset: int) -> int:
        return (index << OFFSET_BITS) | offset

    def unpack(self, ref: int) -> tuple[Source, int]:
        """(source, offset) of a packed ref."""
        return self._sources[ref >> OFFSET_BITS], ref & OFFSET_MASK

    def indexes_of(self, tps: Iterable[TopicPartition]) -> set[int]:
        """Every source index of these partitions, whatever the epoch."""
        wanted = set(tps)
        return {i for i, (t, p, _e) in enumerate(self._sources) if (t, p) in wanted}


def source_of(ref: int) -> int:
    return ref >> OFFSET_BITS


NO_SOURCE = -1  # a carried row learnt from the store: not from a partition of this member


class CarryStore(Protocol):
    """Where carried rows are written for restarts and the other replicas."""

    def put(
        self,
        identity_type: str,
        rows: list[tuple[str, str | bytes]],
        expires_in: float,
        names: tuple[str, ...],
    ) -> None: ...

    def delete(self, identity_type: str, identity: str) -> None: ...

    async def flush(self) -> None: ...


class Carry:
    """Per profile, the attributes bulk sent it since its last single update (stored rows)."""

    def __init__(
        self,
        *,
        horizon: float,
        max_profiles: int,
        clock: Callable[[], float],
        store: CarryStore | None = None,
    ) -> None:
        self._horizon = horizon
        self._max = max_profiles
        self._clock = clock
        self.store = store
        # (identity type, identity) -> (expires at, source index, names, cells)
        self._rows: dict[tuple[str, str], tuple[float, int, tuple[str, ...], str | bytes]] = {}
        # Profiles with a single update in flight: their entry is kept (the update may yet be
        # refused, and then Target still holds what bulk set) but carried by no new row (the
        # update may land first, and a carried older value would then overwrite its newer one).
        self._suspended: set[tuple[str, str]] = set()
        self.forgotten = 0  # dropped for room before their horizon (the caveat may bite them)

    def __len__(self) -> int:
        return len(self._rows)

    def remember(
        self,
        identity_type: str,
        rows: Iterable[tuple[str, str]],
        names: tuple[str, ...],
        source: int,
    ) -> None:
        """The rows of a batch that stopped taking events (`BatchBuilder.stored_rows`)."""
        if self._max <= 0 or self._horizon <= 0:
            return
        expires = self._clock() + self._horizon
        table = self._rows
        kept: list[tuple[str, str | bytes]] = list(rows)
        for identity, cells in kept:
            key = (identity_type, identity)
            table.pop(key, None)  # re-inserted last: the dict's order is the age order
            table[key] = (expires, source, names, cells)
        if self._suspended:
            # A row built while a single update was in flight: its batch lands after that
            # update (the barrier), so the caveat joins it to the next batch whatever the
            # update's fate.
            self._suspended.difference_update((identity_type, identity) for identity, _ in kept)
        if self.store is not None:
            self.store.put(identity_type, kept, self._horizon, names)
        self._bound()

    def restore(
        self,
        identity_type: str,
        identity: str,
        expires_in: float,
        names: tuple[str, ...],
        cells: bytes | None,
    ) -> None:
        """A row learnt from the store (another replica's, or an earlier run's); `cells`
        None: a single update ended the caveat for the profile."""
        key = (identity_type, identity)
        self._rows.pop(key, None)
        self._suspended.discard(key)
        if cells is not None and expires_in > 0 and self._max > 0:
            self._rows[key] = (self._clock() + expires_in, NO_SOURCE, names, cells)
            self._bound()

    def _bound(self) -> None:
        table = self._rows
        excess = len(table) - self._max
        if excess > 0:
            for key in list(islice(table, excess)):
                del table[key]
                self._suspended.discard(key)
            self.forgotten += excess
            log.warning(
                "bulk carry full: the oldest profiles forgotten",
                extra={"event": "bulk_carry_forgotten", "profiles": excess},
            )

    def take(self, identity_type: str, identity: str) -> dict[str, str] | None:
        """The attributes to carry for this profile (None: nothing to carry)."""
        found = self.take_stored(identity_type, identity)
        return None if found is None else decode_row(*found)

    def take_stored(self, identity_type: str, identity: str) -> Carried | None:
        """Like `take`, as kept: names and cells (`BatchBuilder.try_add(carried=)` merges
        them as they are)."""
        if not self._rows:
            return None
        entry = self._rows.get((identity_type, identity))
        if entry is None or (self._suspended and (identity_type, identity) in self._suspended):
            return None
        expires, _source, names, cells = entry
        if expires <= self._clock():
            del self._rows[(identity_type, identity)]
            return None
        return names, cells

    def suspend(self, identity_type: str, identity: str) -> None:
        """A single update of the profile starts: carry nothing for it until `settle`."""
        key = (identity_type, identity)
        if self._rows and key in self._rows:
            self._suspended.add(key)

    def settle(self, identity_type: str, identity: str, *, accepted: bool) -> None:
        """The single update that `suspend` announced is over. Accepted: the mbox call ended
        the caveat, forget what was carried. Refused for good: Target still holds what bulk
        set, so later rows carry it again."""
        key = (identity_type, identity)
        if key not in self._suspended:
            return  # nothing was carried, or a later batch's row replaced it (`remember`)
        self._suspended.discard(key)
        if accepted:
            self.forget(identity_type, identity)

    def forget(self, identity_type: str, identity: str) -> None:
        """The caveat no longer joins batches for the profile (a single update landed)."""
        self._suspended.discard((identity_type, identity))
        if self._rows and self._rows.pop((identity_type, identity), None) is not None:
            if self.store is not None:
                self.store.delete(identity_type, identity)

    def forget_sources(self, sources: set[int]) -> int:
        """Values from partitions this member no longer owns may ride no request."""
        if not sources:
            return 0
        gone = [key for key, entry in self._rows.items() if entry[1] in sources]
        for key in gone:
            del self._rows[key]
            self._suspended.discard(key)
        return len(gone)
