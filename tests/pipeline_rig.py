"""A rig that drives the real Pipeline, OffsetTracker and Coalescer with fakes at the edges:
a fake clock, a fake Target whose every request waits until the test answers it, and a fake
DLQ that can be held. No timer decides anything: the test moves the clock and answers sends.

The dispatcher (`Pipeline.run`) waits on a real-time timer for the next due batch, so when the
fake clock moves the rig wakes it (`advance`); `settle` lets every ready task run to its next
wait before the test looks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from prometheus_client import CollectorRegistry

from consumer.coalesce import ProfileKey
from consumer.errors import DecodeError, EventError, PermanentDeliveryError
from consumer.kafka.offsets import OffsetTracker
from consumer.mapping.mapper import ProfileUpdate
from consumer.metrics import Metrics
from consumer.pipeline import Pipeline
from consumer.record import SourceRecord
from consumer.target.request import TargetRequest

TOPIC = "events"
ENDPOINT = "http://target.invalid/m2/acme/profile/update"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class JsonDecoder:
    """Records carry JSON: {"key": [type, id], "attrs": {...}}, or "skip"."""

    def decode(self, value: bytes | None) -> dict[str, Any]:
        try:
            event: dict[str, Any] = json.loads(value or b"")
        except ValueError:
            raise DecodeError("malformed_json", "not JSON") from None
        return event


class PassThroughMapper:
    def map(self, event: dict[str, Any]) -> ProfileUpdate | None:
        if event.get("skip"):
            return None
        identity_type, identity = event["key"]
        return ProfileUpdate(identity_type, identity, dict(event["attrs"]), ("rule",))


def parse_request(request: TargetRequest) -> tuple[ProfileKey, dict[str, str]]:
    query = urlsplit(request.url).query if request.method == "GET" else request.body.decode()
    pairs = parse_qsl(query, keep_blank_values=True)
    identity = next((n, v) for n, v in pairs if n in ("mbox3rdPartyId", "mboxPC"))
    return identity, {n.removeprefix("profile."): v for n, v in pairs if n.startswith("profile.")}


@dataclass
class Call:
    key: ProfileKey
    attributes: dict[str, str]
    future: asyncio.Future[None]


@dataclass
class FakeTarget:
    """Target, answered by the test. `history` is in the simulator's shape (tests/oracles.py)."""

    clock: FakeClock
    calls: list[Call] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    # How each call is answered as it arrives ("accept", "refuse", "crash"); None: it waits
    # for the test's answer.
    mood: str | None = None

    async def deliver(self, request: TargetRequest) -> None:
        key, attributes = parse_request(request)
        call = Call(key, attributes, asyncio.get_running_loop().create_future())
        self.calls.append(call)
        if self.mood is not None:
            getattr(self, self.mood)(call)
        await call.future

    def open_calls(self) -> list[Call]:
        return [c for c in self.calls if not c.future.done()]

    def accept(self, call: Call) -> None:
        """Target applies the update now (its arrival in the history) and answers 200."""
        self.write(call.key, call.attributes)
        call.future.set_result(None)

    def refuse(self, call: Call, reason: str = "http_400") -> None:
        call.future.set_exception(PermanentDeliveryError(reason, "refused", http_status=400))

    def crash(self, call: Call) -> None:
        call.future.set_exception(RuntimeError("a bug below the pipeline"))

    def write(self, key: ProfileKey, attributes: dict[str, str]) -> None:
        """An accepted write, from this member or from another one."""
        self.history.append(
            {
                "at": self.clock(),
                "identity_type": key[0],
                "identity": key[1],
                "attributes": dict(attributes),
                "accepted": True,
            }
        )


@dataclass
class FakeDLQ:
    held: bool = False
    written: list[tuple[SourceRecord, EventError]] = field(default_factory=list)
    _gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def write(self, record: SourceRecord, error: EventError) -> None:
        if self.held:
            await self._gate.wait()
        self.written.append((record, error))

    def hold(self) -> None:
        self.held = True
        self._gate.clear()

    def release(self) -> None:
        self.held = False
        self._gate.set()


class Rig:
    """One member: its pipeline, tracker, the dispatcher task, and the fakes around them."""

    def __init__(
        self,
        *,
        window: float = 1.0,
        max_in_flight: int = 8,
        clock: FakeClock | None = None,
        deliver: Callable[[TargetRequest], Awaitable[None]] | None = None,
    ) -> None:
        """`deliver` replaces the fake Target's (a real Delivery in front of a fake HTTP
        Target); `clock` is then the one its quota and retries run on."""
        self.clock = clock or FakeClock()
        self.target = FakeTarget(self.clock)
        self.dlq = FakeDLQ()
        self.tracker = OffsetTracker()
        self.metrics = Metrics(CollectorRegistry())
        self.pipeline = Pipeline(
            decoder=JsonDecoder(),  # type: ignore[arg-type]
            mapper=PassThroughMapper(),  # type: ignore[arg-type]
            deliver=deliver or self.target.deliver,
            dlq=self.dlq,
            tracker=self.tracker,
            metrics=self.metrics,
            endpoint_url=ENDPOINT,
            coalesce_window_seconds=window,
            max_in_flight=max_in_flight,
            clock=self.clock,
            wall_clock=self.clock,
        )
        self.offsets: dict[int, int] = {}  # partition -> next offset to read
        self._runner: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Rig:
        self._runner = asyncio.create_task(self.pipeline.run())
        await self.settle()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        self._runner.cancel()
        await self.pipeline.abandon()
        await asyncio.gather(self._runner, return_exceptions=True)

    def submit(
        self, partition: int, key: ProfileKey, offset: int | None = None, **attrs: str
    ) -> int:
        """Read one record of `partition` (at the next offset unless given); returns it."""
        at = self.offsets.get(partition, 0) if offset is None else offset
        self.offsets[partition] = at + 1
        value = json.dumps({"key": list(key), "attrs": attrs}).encode()
        self.pipeline.submit(SourceRecord(TOPIC, partition, at, None, value, None, None))
        return at

    async def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        self.pipeline._wake.set()  # the dispatcher's timer runs on real time: wake it
        await self.settle()

    async def revoke(self, *partitions: int, lost: bool = False) -> dict[tuple[str, int], int]:
        """What the Kafka source does on a revocation: seal, hand over, then forget."""
        tps = [(TOPIC, p) for p in partitions]
        self.tracker.seal(tps)
        await self.pipeline.handover(set(tps), 0.0)
        final = self.tracker.revoke(tps)
        await self.settle()
        return final

    def assign(self, *partitions: int, at: dict[int, int] | None = None) -> None:
        self.tracker.assign([(TOPIC, p) for p in partitions])
        for p in partitions:
            self.offsets[p] = (at or {}).get(p, self.offsets.get(p, 0))

    @staticmethod
    async def settle() -> None:
        # Yield to the loop until every task has reached its next real wait (no time passes).
        for _ in range(20):
            await asyncio.sleep(0)
