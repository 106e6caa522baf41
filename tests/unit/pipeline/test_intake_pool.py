"""The intake with decode processes (a fake pool whose answers the test releases): chunks go out
in read order, at most POOL_AHEAD at once; results are taken in that order whatever order they
come back in; a revoked partition's records are skipped; a lost process ends the intake; the
registry holds records back exactly as without processes."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from consumer.decode_pool import DecodeProcessLost
from consumer.errors import RegistryUnavailable
from consumer.intake import POOL_AHEAD, POOL_CHUNK, Intake
from consumer.record import SourceRecord
from tests.fakes.intake import fake_intake

pytestmark = pytest.mark.unit


class FakePool:
    def __init__(self) -> None:
        self.asked: list[tuple[list[bytes | None], asyncio.Future[list[Any]]]] = []

    def prepare(self, values: list[bytes | None], texts: dict[int, str]) -> asyncio.Future[Any]:
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.asked.append((values, future))
        return future

    def answer(self, index: int) -> None:
        """Chunk `index` comes back: each value's "update" is the value itself."""
        values, future = self.asked[index]
        future.set_result(list(values))


def record(partition: int, offset: int) -> SourceRecord:
    value = f"{partition}:{offset}".encode()
    return SourceRecord("t", partition, offset, None, value, 0, None)


def intake(accepted: list[tuple[SourceRecord, Any]], pool: FakePool, fetch: Any = None) -> Intake:
    async def no_fetch(schema_id: int, timeout: float) -> None:
        return None

    decoder = SimpleNamespace(
        schema_to_fetch=lambda value: 7 if value.endswith(b":13") and fetch else None,
        fetch=fetch or no_fetch,
        schema_texts=dict,
    )

    async def handover(tps: set[tuple[str, int]], wait: float) -> None:
        return None

    pipeline = SimpleNamespace(
        buffered=0,
        decoder=decoder,
        accept=lambda r, p: accepted.append((r, p)),
        publish_counts=lambda: None,
        handover=handover,
    )
    return fake_intake(pipeline, pool)


async def test_results_are_taken_in_read_order_whatever_order_they_come_back_in() -> None:
    accepted: list[tuple[SourceRecord, Any]] = []
    pool = FakePool()
    made = intake(accepted, pool)
    records = [record(p % 3, p) for p in range(POOL_CHUNK + 10)]
    made._pending.extend(records)
    assert await made._submit_pending(wait=False) is False
    assert [len(values) for values, _ in pool.asked] == [POOL_CHUNK, 10]
    pool.answer(1)
    await made._submit_pending(wait=False)
    assert accepted == []  # the first chunk's results are not back yet
    pool.answer(0)
    await made._submit_pending(wait=False)
    assert [r for r, _ in accepted] == records
    assert all(p == r.value for r, p in accepted)


async def test_at_most_pool_ahead_chunks_are_out_and_wait_takes_the_oldest() -> None:
    accepted: list[tuple[SourceRecord, Any]] = []
    pool = FakePool()
    made = intake(accepted, pool)
    made._pending.extend(record(0, o) for o in range((POOL_AHEAD + 2) * POOL_CHUNK))
    await made._submit_pending(wait=False)
    assert len(pool.asked) == POOL_AHEAD
    waiting = asyncio.ensure_future(made._submit_pending(wait=True))
    await asyncio.sleep(0)
    assert not waiting.done()  # waits for the oldest chunk
    pool.answer(0)
    await waiting
    assert len(accepted) == POOL_CHUNK
    await made._submit_pending(wait=False)
    assert len(pool.asked) == POOL_AHEAD + 1  # one went out as the oldest came back


async def test_a_revoked_partitions_records_out_at_the_processes_are_skipped() -> None:
    accepted: list[tuple[SourceRecord, Any]] = []
    pool = FakePool()
    made = intake(accepted, pool)
    records = [record(p % 2, p) for p in range(100)]
    made._pending.extend(records)
    await made._submit_pending(wait=False)
    await made._revoke({("t", 1)}, 0.0)
    pool.answer(0)
    await made._submit_pending(wait=False)
    assert [r for r, _ in accepted] == [r for r in records if r.partition == 0]


async def test_a_lost_decode_process_ends_the_intake() -> None:
    pool = FakePool()
    made = intake([], pool)
    made._pending.extend(record(0, o) for o in range(5))
    await made._submit_pending(wait=False)
    pool.asked[0][1].set_exception(DecodeProcessLost("gone"))
    with pytest.raises(DecodeProcessLost):
        await made._submit_pending(wait=True)


async def test_the_registry_holds_back_a_record_and_every_one_after_it() -> None:
    accepted: list[tuple[SourceRecord, Any]] = []
    pool = FakePool()
    calls = []

    async def failing(schema_id: int, timeout: float) -> None:
        calls.append(schema_id)
        raise RegistryUnavailable("down")

    made = intake(accepted, pool, fetch=failing)
    records = [record(0, o) for o in range(20)]  # offset 13 needs schema 7
    made._pending.extend(records)
    assert await made._submit_pending(wait=False) is True
    assert pool.asked[0][0] == [r.value for r in records[:13]]
    assert list(made._pending) == records[13:]
    assert made.registry_problem == "down" and calls == [7]
