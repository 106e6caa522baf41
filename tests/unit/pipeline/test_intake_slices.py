"""The intake hands a poll batch to the pipeline in slices, with a turn of the event loop
between them, so answers and the dispatcher are not held up behind a whole batch's decoding."""

from __future__ import annotations

import asyncio
from collections import deque
from types import SimpleNamespace
from typing import Any

import pytest

from consumer.intake import SUBMIT_SLICE, Intake
from consumer.record import SourceRecord
from tests.fakes.intake import fake_intake

pytestmark = pytest.mark.unit


def record(partition: int, offset: int) -> SourceRecord:
    return SourceRecord(
        topic="t",
        partition=partition,
        offset=offset,
        key=None,
        value=b"",
        timestamp_ms=0,
        headers=None,
    )


def intake(submitted: list[SourceRecord]) -> Intake:
    decoder = SimpleNamespace(schema_to_fetch=lambda value: None)
    pipeline = SimpleNamespace(
        buffered=0, decoder=decoder, submit=submitted.append, publish_counts=lambda: None
    )
    return fake_intake(pipeline)


async def test_other_tasks_run_between_slices_of_a_poll_batch() -> None:
    submitted: list[SourceRecord] = []
    made = intake(submitted)
    batch = [record(0, offset) for offset in range(10 * SUBMIT_SLICE + 5)]
    made._pending.extend(batch)
    seen: list[int] = []  # how many were submitted each time another task got a turn

    async def other_task() -> None:
        while len(submitted) < len(batch):
            seen.append(len(submitted))
            await asyncio.sleep(0)

    watcher = asyncio.ensure_future(other_task())
    await asyncio.sleep(0)  # the watcher's first turn: nothing submitted yet
    assert await made._submit_pending() is False
    await watcher
    assert submitted == batch  # all of them, in order
    assert seen[0] == 0
    steps = [later - earlier for earlier, later in zip(seen, seen[1:], strict=False)]
    assert len(seen) > 10 and max(steps) <= SUBMIT_SLICE


async def test_a_revocation_between_slices_is_respected() -> None:
    submitted: list[SourceRecord] = []
    made = intake(submitted)
    batch = [record(offset % 2, offset) for offset in range(4 * SUBMIT_SLICE)]
    made._pending.extend(batch)

    async def revoke_partition_1() -> None:
        while not submitted:
            await asyncio.sleep(0)
        # What Intake._revoke does with the waiting records of a revoked partition.
        made._pending = deque(r for r in made._pending if r.partition != 1)

    revoker: Any = asyncio.ensure_future(revoke_partition_1())
    await asyncio.sleep(0)
    await made._submit_pending()
    await revoker
    first = submitted[:SUBMIT_SLICE]
    assert first == batch[:SUBMIT_SLICE]
    rest = submitted[SUBMIT_SLICE:]
    assert rest == [r for r in batch[SUBMIT_SLICE:] if r.partition == 0]
