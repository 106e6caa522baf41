"""The intake pauses partitions while bulk holds its bound of events, apart from the pipeline's
buffer (so a batch can fill while `pipeline.max_buffered_events` stays small)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from consumer.config import Settings
from consumer.intake import Intake

pytestmark = pytest.mark.unit


class Bulk:
    def __init__(self) -> None:
        self.full = False
        self.finals = 0
        self.revoked: list[tuple[set[Any], float]] = []

    async def revoke(self, tps: set[Any], wait: float) -> None:
        self.revoked.append((tps, wait))


def intake(bulk: Bulk | None, buffered: int = 0) -> tuple[Intake, SimpleNamespace]:
    pipeline = SimpleNamespace(buffered=buffered, handed_over=[])

    async def handover(tps: set[Any], wait: float) -> None:
        pipeline.handed_over.append(tps)

    pipeline.handover = handover
    made = Intake(
        settings=Settings(pipeline={"max_buffered_events": 100}),
        source=SimpleNamespace(),  # type: ignore[arg-type]
        pipeline=pipeline,  # type: ignore[arg-type]
        circuit=SimpleNamespace(is_open=False),  # type: ignore[arg-type]
        tracker=SimpleNamespace(),  # type: ignore[arg-type]
        bulk=bulk,
    )
    return made, pipeline


def test_bulk_full_pauses_and_its_room_resumes() -> None:
    bulk = Bulk()
    made, _ = intake(bulk, buffered=0)
    assert made._should_pause(False, False) is False
    bulk.full = True
    assert made._should_pause(False, False) is True
    assert made._should_pause(True, False) is True
    bulk.full = False
    assert made._should_pause(True, False) is False  # the pipeline's buffer is empty


def test_the_pipeline_bound_still_applies_with_bulk() -> None:
    made, pipeline = intake(Bulk(), buffered=100)
    assert made._should_pause(False, False) is True
    pipeline.buffered = 51
    assert made._should_pause(True, False) is True  # hysteresis: resume at half
    pipeline.buffered = 50
    assert made._should_pause(True, False) is False


async def test_revocation_reaches_both_the_pipeline_and_bulk() -> None:
    bulk = Bulk()
    made, pipeline = intake(bulk)
    await made._revoke({("t", 1)}, 2.5)
    assert pipeline.handed_over == [{("t", 1)}]
    assert bulk.revoked == [({("t", 1)}, 2.5)]


async def test_a_bulk_batch_made_final_is_committed_at_the_next_turn_not_the_next_interval() -> (
    None
):
    commits: list[dict[Any, int]] = []
    stop = asyncio.Event()
    bulk = Bulk()
    turns = 0

    async def poll(_max: int, _timeout: float) -> list[Any]:
        nonlocal turns
        turns += 1
        if turns == 3:
            bulk.finals = 1  # a batch became final between two turns
        if turns == 5:
            stop.set()
        return []

    async def commit(offsets: dict[Any, int]) -> bool:
        commits.append(offsets)
        return True

    async def set_paused(_paused: bool) -> None:
        return None

    source = SimpleNamespace(poll=poll, commit=commit, set_paused=set_paused, on_revoked=None)
    pipeline = SimpleNamespace(buffered=0, publish_counts=lambda: None, decoder=None)
    bulk.assignment_hook = lambda _loop: lambda _tps: None  # type: ignore[attr-defined]
    made = Intake(
        settings=Settings(kafka={"commit_interval_seconds": 3600}),
        source=source,  # type: ignore[arg-type]
        pipeline=pipeline,  # type: ignore[arg-type]
        circuit=SimpleNamespace(is_open=False),  # type: ignore[arg-type]
        tracker=SimpleNamespace(committable=lambda: {("t", 0): 7}),  # type: ignore[arg-type]
        bulk=bulk,  # type: ignore[arg-type]
    )
    await made.run(stop)
    assert commits == [{("t", 0): 7}]  # once, on the turn after the batch became final
