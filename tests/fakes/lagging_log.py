"""A ledger log that, unlike `MemoryLog`, does not hand every record to every reader at once.

Each reader gets the records in log order (the `LedgerLog` contract), but late: `lag` event
loop turns after they were appended, and in batches of whatever piled up meanwhile. Readers
with different lags see the same records at different moments, interleaved differently with
what the other replicas do, as replicas reading a real topic do. Records are stamped with the
"broker's" clock when appended, as a `LogAppendTime` topic stamps them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from consumer.quota.log import LogRecord, OnRecords


class _Reader:
    def __init__(self, log: LaggingLog, on_records: OnRecords, lag: int) -> None:
        self.on_records = on_records
        self.lag = lag
        self.next = 0  # offset of the first record not yet delivered
        self.wake = asyncio.Event()
        self.task = asyncio.ensure_future(self._deliver(log))

    async def _deliver(self, log: LaggingLog) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            for _ in range(self.lag):
                await asyncio.sleep(0)
            batch, self.next = log.records[self.next :], len(log.records)
            if batch:
                self.on_records(batch)


class LaggingLog:
    """Shared by several gates; `lags` are given to readers in the order they start (cycled)."""

    def __init__(self, clock: Callable[[], float], lags: Sequence[int] = (0,)) -> None:
        self.records: list[LogRecord] = []
        self._clock = clock
        self._lags = list(lags)
        self._readers: list[_Reader] = []

    async def start(self, on_records: OnRecords) -> None:
        lag = self._lags[len(self._readers) % len(self._lags)]
        reader = _Reader(self, on_records, lag)
        self._readers.append(reader)
        reader.wake.set()

    async def append(self, key: str, value: bytes | None) -> int:
        offset = len(self.records)
        self.records.append((offset, key, value, self._clock()))
        for reader in self._readers:
            reader.wake.set()
        return offset

    async def close(self) -> None:
        return None

    def detach(self, on_records: OnRecords) -> None:
        """Stop feeding a reader (a replica killed with -9 reads nothing more)."""
        for reader in [r for r in self._readers if r.on_records == on_records]:
            reader.task.cancel()
            self._readers.remove(reader)

    def stop(self) -> None:
        for reader in self._readers:
            reader.task.cancel()
