"""The hand-over edges of bulk: a batch whose POST may have reached Target is never cancelled,
its `submitting` record is in Kafka before the POST, the manifest is flushed before a revocation
returns, and a partition just assigned waits until the manifest is read up to then.

The sender runs with the real BulkClient over a scripted HTTP peer: where the client takes its
budgets and where it POSTs is what these tests are about."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from consumer.bulk.cli import in_flight
from consumer.bulk.client import BulkClient
from consumer.bulk.endpoints import Endpoints
from consumer.bulk.foreign import ForeignBatches
from consumer.target.http import Answer
from tests.unit.bulk.test_bulk_client import BASE
from tests.unit.bulk.test_bulk_client import OK as ACCEPTED
from tests.unit.bulk.test_bulk_sender import Rig

pytestmark = pytest.mark.unit

COMPLETE = (
    b"<response><batchId>b1</batchId><status>complete</status><batchSize>1</batchSize><rows>"
    b"<row><rowNumber>1</rowNumber><id>p1</id><status>success</status></row></rows></response>"
)
DAY = 86_400.0
STATUS_TIMEOUT = 600.0


class Peer:
    """Target as the client sees it: each POST waits for `release` (the request on the wire),
    then answers with the next of `posts` (ACCEPTED once they run out); status: complete."""

    def __init__(self, *posts: int) -> None:
        self.posts = list(posts)
        self.log: list[str] = []  # "POST" / "GET", with the manifest's writes between them
        self.posted = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()

    async def request(
        self, method: str, url: str, body: bytes = b"", content_type: str | None = None
    ) -> Answer:
        self.log.append(method)
        if method == "GET":
            return Answer(200, {}, COMPLETE)
        self.posted.set()
        await self.release.wait()
        status = self.posts.pop(0) if self.posts else 200
        return Answer(status, {}, ACCEPTED if status == 200 else b"")


class Budget:
    """The calls budget: open unless closed; the rows budget always has room."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.waiting = asyncio.Event()

    async def acquire(self, n: int = 1) -> None:
        self.waiting.set()
        await self.open.wait()


class Manifest:
    """The manifest as the sender sees it; `write_ok` scripts whether each `written` lands."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.entries: list[dict[str, Any]] = []
        self.write_ok: Callable[[int], bool] = lambda n: True
        self.writes = 0
        self.hold = asyncio.Event()  # cleared: `written` never answers (a broker that hangs)
        self.hold.set()
        self.writing = asyncio.Event()
        self.flushes: list[float] = []

    def record(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)
        self.log.append(f"record {entry['state']}")

    async def written(self, entry: dict[str, Any], timeout: float) -> bool:
        self.writing.set()
        await self.hold.wait()
        ok = self.write_ok(self.writes)
        self.writes += 1
        if ok:
            self.entries.append(entry)
        self.log.append(f"written {entry['state']}" if ok else "not written")
        return ok

    async def flush(self, timeout: float) -> bool:
        self.flushes.append(timeout)
        self.log.append("flush")
        return True

    def states(self) -> list[str]:
        return [e["state"] for e in self.entries]


class Gate:
    """The client's backoff sleep, held until `resume` (the fake clock moves as usual)."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.resume = asyncio.Event()
        self.resume.set()
        self.sleeping = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.sleeping.set()
        await self.resume.wait()
        await self.rig.clock.sleep(seconds)


def rig(peer: Peer) -> tuple[Rig, Budget, Manifest, Gate]:
    made = Rig()
    budget = Budget()
    limits = SimpleNamespace(
        rows=SimpleNamespace(acquire=lambda n: asyncio.sleep(0)),
        calls=SimpleNamespace(acquire=budget.acquire, hold=lambda until: None),
    )
    gate = Gate(made)
    client = BulkClient(
        http=peer,
        endpoints=Endpoints(base_url=BASE, client_code="acme", pcid_api="v2"),
        limits=limits,  # type: ignore[arg-type]
        metrics=made.metrics,
        clock=made.clock,
        sleep=gate.sleep,
    )
    manifest = Manifest(peer.log)
    made.sender._client = client  # noqa: SLF001 - the real client, as the wiring passes it
    made.sender._manifest = manifest  # noqa: SLF001
    made.sender._replica = "me"  # noqa: SLF001
    return made, budget, manifest, gate


async def turns(n: int = 50) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


# --- a POST in progress at revocation ----------------------------------------------------


async def test_revoke_waits_for_a_batch_whose_post_is_on_the_wire_and_never_cancels_it() -> None:
    peer = Peer()
    peer.release.clear()
    r, _budget, manifest, _gate = rig(peer)
    r.take("p1", partition=0, a="1")
    r.sender.flush_all()
    await asyncio.wait_for(peer.posted.wait(), 5)
    revoking = asyncio.ensure_future(r.sender.revoke({("t", 0)}, wait=30.0))
    await turns()
    assert not revoking.done()  # waiting for the batch, not cancelling it
    peer.release.set()  # Target answers: accepted; the status polls find it complete
    await asyncio.wait_for(revoking, 5)
    assert r.count("complete") == 1 and r.sender.held == 0
    assert r.tracker.committable() == {("t", 0): 1}  # acked before the hand-over's commit
    # Every record about the batch was flushed after it became final, before revoke returned.
    assert manifest.states() == ["submitting", "submitted", "complete"]
    assert peer.log[-1] == "flush" and 0 < manifest.flushes[0] <= 30.0


async def test_revoke_drops_a_batch_still_waiting_for_the_calls_budget() -> None:
    peer = Peer()
    r, budget, manifest, _gate = rig(peer)
    budget.open.clear()  # 50 calls a minute spent: the batch waits for its turn
    r.take("p1", partition=0, a="1")
    r.sender.flush_all()
    await asyncio.wait_for(budget.waiting.wait(), 5)
    await asyncio.wait_for(r.sender.revoke({("t", 0)}, wait=30.0), 5)
    budget.open.set()
    await turns()
    assert "POST" not in peer.log and r.sender.held == 0 and r.sender.batches() == []
    assert manifest.states() == []  # nothing announced: nothing to tell the next owner


# --- write-ahead -------------------------------------------------------------------------


async def test_submitting_is_in_the_manifest_before_the_post() -> None:
    peer = Peer()
    r, _budget, manifest, _gate = rig(peer)
    r.take("p1", partition=0, a="1")
    r.sender.flush_all()
    await asyncio.wait_for(r.settle(), 5)
    assert peer.log[:4] == ["written submitting", "POST", "record submitted", "GET"]
    first = manifest.entries[0]
    assert first["partitions"] == ["t[0]"] and first["key"] == "me-1"
    assert first["status_url"] == "" and first["batch_id"] == ""
    assert manifest.entries[1]["status_url"].endswith("batchId=b1")


async def test_no_post_while_the_submitting_record_cannot_be_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    peer = Peer()
    r, _budget, manifest, _gate = rig(peer)
    manifest.write_ok = lambda n: n >= 3  # the broker refuses the first three writes
    r.take("p1", partition=0, a="1")
    r.sender.flush_all()
    with caplog.at_level(logging.WARNING):
        await asyncio.wait_for(r.settle(), 5)
    assert peer.log[:5] == ["not written"] * 3 + ["written submitting", "POST"]
    assert peer.log.count("POST") == 1
    assert r.count("complete") == 1 and r.dlq.written == []
    unwritten = [
        rec for rec in caplog.records if rec.__dict__.get("event") == "bulk_manifest_unwritten"
    ]
    assert len(unwritten) == 3


async def test_every_post_attempt_is_announced_again() -> None:
    peer = Peer(503)  # the first POST is refused for the calls limit: retried
    r, _budget, manifest, _gate = rig(peer)
    r.take("p1", partition=0, a="1")
    r.sender.flush_all()
    await asyncio.wait_for(r.settle(), 5)
    assert peer.log[:4] == ["written submitting", "POST", "written submitting", "POST"]


async def test_a_batch_revoked_during_its_manifest_write_is_recorded_dropped_and_flushed() -> None:
    peer = Peer()
    r, _budget, manifest, _gate = rig(peer)
    manifest.hold.clear()  # the write-ahead never answers
    r.take("p1", partition=0, a="1")
    r.sender.flush_all()
    await asyncio.wait_for(manifest.writing.wait(), 5)
    await asyncio.wait_for(r.sender.revoke({("t", 0)}, wait=30.0), 5)
    assert "POST" not in peer.log and r.sender.held == 0
    # The `submitting` record may still land: a final record follows it, then the flush.
    assert peer.log == ["record dropped", "flush"]
    assert manifest.entries[-1]["key"] == "me-1"


async def test_no_new_post_attempt_once_the_partition_is_someone_elses() -> None:
    peer = Peer(503)
    r, _budget, manifest, gate = rig(peer)
    gate.resume.clear()
    r.take("p1", partition=0, a="1")
    r.sender.flush_all()
    await asyncio.wait_for(gate.sleeping.wait(), 5)  # 503: the client backs off
    # The first POST may have reached Target: revoke waits (here briefly), cancels nothing.
    await asyncio.wait_for(r.sender.revoke({("t", 0)}, wait=0.05), 5)
    assert r.sender.held == 1
    r.tracker.seal([("t", 0)])  # the source seals the partition once the hand-over returns
    gate.resume.set()
    await asyncio.wait_for(r.settle(), 5)
    assert peer.log.count("POST") == 1  # no attempt after the hand-over
    # No final record: its last `submitting` bounds the next owner's wait.
    assert manifest.states() == ["submitting"]


# --- the next owner's view ---------------------------------------------------------------


class Wall:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def entry(state: str, **extra: Any) -> dict[str, Any]:
    url = "" if state == "submitting" else "/status?batchId=99"
    return {
        "key": "old-7",
        "replica": "old",
        "batch_id": "" if state == "submitting" else "99",
        "status_url": url,
        "state": state,
        "partitions": ["t[0]"],
        "submitted_at": 0.0 if state == "submitting" else 1_800_000_000.0,
        "updated_at": 1_800_000_000.0,
        **extra,
    }


def view(wall: Wall, marks: list[dict[str, Any]] | None = None) -> ForeignBatches:
    sink = marks if marks is not None else []
    return ForeignBatches(
        replica="me",
        horizon=DAY,
        wall_clock=wall,
        submitting_timeout=STATUS_TIMEOUT,
        catch_up_timeout=10.0,
        mark=sink.append,
    )


def test_submitting_blocks_until_a_later_record_for_the_key() -> None:
    wall = Wall()
    foreign = view(wall)
    foreign.apply([entry("submitting")])
    assert foreign.blocks(("t", 0)) and not foreign.blocks(("t", 1))
    assert foreign.on([("t", 0)])[0].status_url == ""  # nothing to poll yet
    foreign.apply([entry("submitted")])
    assert foreign.blocks(("t", 0))  # now Target processes it: polled, horizon
    foreign.apply([entry("complete")])
    assert not foreign.blocks(("t", 0))
    foreign.apply([entry("submitting", key="old-8"), entry("dropped", key="old-8")])
    assert not foreign.blocks(("t", 0))


def test_submitting_blocks_for_the_status_timeout_since_the_record() -> None:
    wall = Wall()
    foreign = view(wall)
    foreign.apply([entry("submitting")])
    wall.now += STATUS_TIMEOUT - 1
    assert foreign.blocks(("t", 0))
    wall.now += 2
    assert not foreign.blocks(("t", 0))
    # A `submitted` record is bounded by the horizon, not by the status timeout.
    foreign.apply([entry("submitted", updated_at=wall.now)])
    wall.now += STATUS_TIMEOUT + 1
    assert foreign.blocks(("t", 0))


def test_bulk_status_lists_a_submitting_batch_as_in_flight() -> None:
    entries = [entry("submitting"), entry("submitted", key="b"), entry("dropped", key="c")]
    assert [e["state"] for e in in_flight(entries)] == ["submitting", "submitted"]


# --- the assignment catch-up -------------------------------------------------------------


def test_a_new_partition_blocks_until_the_reader_reads_our_marker_back() -> None:
    wall = Wall()
    marks: list[dict[str, Any]] = []
    foreign = view(wall, marks)
    token = foreign.pending([("t", 0)])
    assert marks == [{"key": "me-sync", "replica": "me", "sync": token, "updated_at": wall.now}]
    assert foreign.blocks(("t", 0)) and not foreign.blocks(("t", 1))
    foreign.apply([entry("complete"), {"key": "old-sync", "replica": "old", "sync": token}])
    assert foreign.blocks(("t", 0))  # another member's marker says nothing about ours
    later = foreign.pending([("t", 1)])
    foreign.apply([dict(marks[0])])  # the first marker read back: what preceded it is known
    assert not foreign.blocks(("t", 0)) and foreign.blocks(("t", 1))
    assert not foreign.waiting(token) and foreign.waiting(later)


def test_an_old_batch_read_before_the_marker_keeps_blocking_after_it() -> None:
    wall = Wall()
    marks: list[dict[str, Any]] = []
    foreign = view(wall, marks)
    foreign.pending([("t", 0)])
    foreign.apply([entry("submitting"), marks[0]])
    assert foreign.blocks(("t", 0))  # caught up, and the old batch is known


def test_the_catch_up_gives_up_after_its_bound(caplog: pytest.LogCaptureFixture) -> None:
    wall = Wall()
    foreign = view(wall)
    token = foreign.pending([("t", 0)])
    wall.now += 9.0
    assert foreign.blocks(("t", 0))
    wall.now += 1.0
    with caplog.at_level(logging.WARNING):
        assert not foreign.blocks(("t", 0)) and not foreign.waiting(token)
    assert any(rec.__dict__.get("event") == "bulk_catch_up_timeout" for rec in caplog.records)


async def test_catch_up_returns_once_the_reader_reports_the_marker() -> None:
    loop = asyncio.get_running_loop()
    foreign: ForeignBatches

    def mark(marker: dict[str, Any]) -> None:  # the follower thread reads it back later
        loop.call_later(0.05, foreign.apply, [marker])

    foreign = ForeignBatches(replica="me", horizon=DAY, wall_clock=Wall(), mark=mark)
    waiting = asyncio.ensure_future(foreign.catch_up({("t", 0)}))
    await turns()
    assert not waiting.done() and foreign.blocks(("t", 0))
    assert await asyncio.wait_for(waiting, 5) is True
    assert not foreign.blocks(("t", 0))
