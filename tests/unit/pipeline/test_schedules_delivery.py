"""The schedule search with the real send path behind the pipeline: Delivery, its circuit
breaker and the quota gate, in front of a fake Target whose every answer the search chooses.

It is the machine of test_schedules.py (assign, revoke, lose, bounce, read, DLQ held), with the
pipeline's `deliver` being a real `Delivery` (consumer/target/delivery.py, with its
`CircuitBreaker`) through a real `TargetClient` and a quota gate chosen at the start: a local
`QuotaGate` (eager or smooth), or two `SharedQuotaGate`s over a ledger that delivers late and
in different batches to each (tests/fakes/lagging_log.py), the other one standing for another
replica with its own demand and a clock off by up to 120 s. Target answers each request with a
200, a 400, a 429 with any Retry-After (0, 2, 1e12, inf, nan, negative, garbage, year 9999), a
503, a timeout before or after applying it, or nothing at all until a handover cancels it or
the client's own deadline passes. Every wait (backoff, holds, the circuit's cool-down, quota,
the client's deadline) runs in virtual time (tests/fakes/virtual_time.py): no sleeps.

Invariants, after every step: those of test_schedules.py (commit never passes an unfinished
event; no stale overwrite in Target's history), plus: never over the limit in any window,
measured on the fake Target's arrival times (every request that reached it, either replica's).
At the end, no stall: with the input stopped and Target accepting, every event finishes and
`buffered` returns to 0 (a probe cancelled by a handover, a hold of 1e12 s, a skewed
neighbour: none may freeze this member).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, precondition, rule

from consumer.coalesce import ProfileKey
from consumer.errors import HttpTimeout
from consumer.quota import QuotaGate
from consumer.quota.ledger import QuotaRule
from consumer.quota.shared import SharedQuotaGate
from consumer.target.client import TargetClient
from consumer.target.delivery import CircuitBreaker, Delivery
from consumer.target.http import Answer
from consumer.target.request import TargetRequest
from devtools.history import max_in_window
from tests.fakes.lagging_log import LaggingLog
from tests.fakes.virtual_time import VirtualTime
from tests.pipeline_rig import FakeClock, FakeTarget, Rig, parse_request
from tests.unit.pipeline.test_schedules import Schedules, pick

pytestmark = pytest.mark.unit

# Virtual time starts at 0 (at epoch-sized values a sub-microsecond sleep would not move the
# clock at all); HTTP dates in Retry-After are read against EPOCH + virtual time.
EPOCH = 1_800_000_000.0
LIMIT, WINDOW = 3, 5.0
CLIENT_TIMEOUT = 2.0  # the HTTP client's deadline for one exchange
RETRY_MAX = 20.0  # target.retry_max_seconds: time spent failing before dead-lettering
RETRY_AFTER_MAX = 60.0  # target.retry_after_max_seconds: the cap on any hold
SUCCESS = b"<response><success>true</success><message>ok</message></response>"
RETRY_AFTERS = [
    None,
    "0",
    "2",
    "1e12",
    "inf",
    "-inf",
    "nan",
    "-3",
    "soon",
    "Fri, 31 Dec 9999 23:59:59 GMT",
]


class TimeClock(FakeClock):
    """The rig's clock, reading (and moving) virtual time, so the pipeline's coalescing
    windows and the send path's waits share one clock."""

    def __init__(self, time: VirtualTime) -> None:
        self._time = time

    @property  # type: ignore[override]
    def now(self) -> float:
        return self._time.now

    @now.setter
    def now(self, value: float) -> None:
        self._time.now = value


@dataclass
class Exchange:
    key: ProfileKey
    attributes: dict[str, str]
    answer: asyncio.Future[Answer]


class FakeTargetHttp:
    """Target as the real TargetClient sees it: each request arrives (its time recorded) and
    waits for the answer the test gives, or for the client's deadline in virtual time."""

    def __init__(self, time: VirtualTime, target: FakeTarget) -> None:
        self._time = time
        self._target = target  # accepted writes go to its history
        self.arrivals: list[float] = []
        self.exchanges: list[Exchange] = []

    async def request(
        self, method: str, url: str, body: bytes = b"", content_type: str | None = None
    ) -> Answer:
        self.arrivals.append(self._time.now)
        key, attributes = parse_request(TargetRequest(method, url, body))
        exchange = Exchange(key, attributes, asyncio.get_running_loop().create_future())
        self.exchanges.append(exchange)
        deadline = asyncio.ensure_future(self._time.sleep(CLIENT_TIMEOUT))
        try:
            await asyncio.wait({exchange.answer, deadline}, return_when=asyncio.FIRST_COMPLETED)
            if not exchange.answer.done():
                raise HttpTimeout("no answer before the client's deadline")
            return exchange.answer.result()
        finally:
            deadline.cancel()
            exchange.answer.cancel()  # no-op once answered: a cancelled request is not open

    def open(self) -> list[Exchange]:
        return [e for e in self.exchanges if not e.answer.done()]

    def accept(self, exchange: Exchange) -> None:
        self._target.write(exchange.key, exchange.attributes)
        exchange.answer.set_result(Answer(200, {}, SUCCESS))

    def status(self, exchange: Exchange, status: int, retry_after: str | None = None) -> None:
        headers = {} if retry_after is None else {"retry-after": retry_after}
        exchange.answer.set_result(Answer(status, headers, b""))

    def time_out(self, exchange: Exchange, applied: bool) -> None:
        """No answer in time; Target may have applied the update all the same."""
        if applied:
            self._target.write(exchange.key, exchange.attributes)
        exchange.answer.set_exception(HttpTimeout("timed out"))


class DeliverySchedules(Schedules):
    def build_rig(self) -> Rig:
        self.time = VirtualTime(0.0)
        self.delivery: Delivery | None = None
        self.theirs: SharedQuotaGate | None = None
        self.their_arrivals: list[float] = []
        self.their_sends: list[asyncio.Future[None]] = []
        self.ledger: LaggingLog | None = None
        rig = Rig(window=1.0, max_in_flight=2, clock=TimeClock(self.time), deliver=self.deliver)
        self.http = FakeTargetHttp(self.time, rig.target)
        return rig

    async def deliver(self, request: TargetRequest) -> None:
        assert self.delivery is not None, "a send before the quota was chosen"
        await self.delivery.deliver(request)

    @initialize(
        quota=st.sampled_from(["eager", "smooth", "shared"]),
        mine=st.sampled_from([0.0, 0.05, -0.05]),
        theirs=st.sampled_from([0.0, 0.05, -3.0, 3.0, 120.0]),
    )
    def choose_quota(self, quota: str, mine: float, theirs: float) -> None:
        """This member's clock stays within the ledger's margin (beyond it, it rightly stops
        sending, which the no-stall check would flag); the other replica's may be far off."""
        if quota == "shared":
            gate: QuotaGate = self.run(self.shared_gates(mine, theirs))
        else:
            gate = QuotaGate(
                LIMIT,
                WINDOW,
                quota,
                burst=1,
                clock=self.time.clock,
                sleep=self.time.sleep,
                hold_max_seconds=RETRY_AFTER_MAX,
            )
        metrics = self.rig.metrics
        self.delivery = Delivery(
            client=TargetClient(http=self.http, metrics=metrics, wall_clock=self.wall),
            gate=gate,
            circuit=CircuitBreaker(3, 1.0, self.time.clock, max_open_seconds=8.0),
            metrics=metrics,
            clock=self.time.clock,
            retry_max_seconds=RETRY_MAX,
            base_seconds=0.5,
            cap_seconds=4.0,
            retry_after_max_seconds=RETRY_AFTER_MAX,
            sleep=self.time.sleep,
            rng=random.Random(0),
        )

    def wall(self) -> float:
        return EPOCH + self.time.now

    async def shared_gates(self, mine: float, theirs: float) -> SharedQuotaGate:
        t = self.time
        self.ledger = LaggingLog(t.clock, lags=(0, 3))
        rule = QuotaRule(limit=LIMIT, window=WINDOW, hold_max=RETRY_AFTER_MAX)
        gates = [
            SharedQuotaGate(
                rule, self.ledger, name, clock=t.clock, wall=lambda s=skew: t.now + s, sleep=t.sleep
            )
            for name, skew in (("a-mine", mine), ("b-theirs", theirs))
        ]
        for gate in gates:
            await gate.start()
            # Its housekeeping runs on real time: stopped, so that a schedule replays exactly.
            # Spent and expired leases are still retired by acquire() itself.
            assert gate._housekeeper is not None
            gate._housekeeper.cancel()
        self.theirs = gates[1]
        return gates[0]

    # --- Target's answers, time, the other replica --------------------------------------------

    @precondition(lambda self: self.http.open())
    @rule(
        index=st.integers(0, 7),
        outcome=st.sampled_from(["accept", "accept", "400", "429", "503", "timeout", "lost"]),
        retry_after=st.sampled_from(RETRY_AFTERS),
    )
    def answer(self, index: int, outcome: str, retry_after: str | None) -> None:
        exchange = pick(self.http.open(), index)
        if outcome == "accept":
            self.http.accept(exchange)
        elif outcome in ("timeout", "lost"):
            self.http.time_out(exchange, applied=outcome == "lost")
        else:
            self.http.status(exchange, int(outcome), retry_after if outcome == "429" else None)
        self.run(self.step(0.0))

    @rule(seconds=st.sampled_from([0.0, 0.5, 1.0, 3.0, 10.0, 70.0]))
    def advance(self, seconds: float) -> None:
        """Time passes: backoffs, holds, the circuit's cool-down, quota windows and the
        client's deadline (a request left unanswered times out) come due in order."""
        self.run(self.step(seconds))

    @precondition(lambda self: self.theirs is not None)
    @rule(count=st.integers(1, 4))
    def their_demand(self, count: int) -> None:
        """The other replica sends `count` updates, each as soon as its gate allows."""
        for _ in range(count):
            self.their_sends.append(asyncio.ensure_future(self.their_send(), loop=self.loop))
        self.run(self.step(0.0))

    async def their_send(self) -> None:
        assert self.theirs is not None
        await self.theirs.acquire()
        self.their_arrivals.append(self.time.now)

    async def step(self, seconds: float) -> None:
        await self.time.run_until(self.time.now + seconds)
        self.rig.pipeline._wake.set()  # its timer runs on real time: let it look at the clock
        await self.rig.settle()

    # --- invariants ---------------------------------------------------------------------------

    @invariant()
    def never_over_the_limit_in_any_window(self) -> None:
        arrivals = self.http.arrivals + self.their_arrivals
        most = max_in_window(arrivals, WINDOW)
        assert most <= LIMIT, f"{most} requests reached Target within {WINDOW}s (limit {LIMIT})"

    def answer_everything(self) -> None:
        """The input has stopped: Target accepts every request, time passes (holds, windows
        and cool-downs end), until nothing is buffered."""
        for _ in range(300):
            if not self.http.open() and self.rig.pipeline.buffered == 0:
                break
            for exchange in self.http.open():
                self.http.accept(exchange)
            self.run(self.step(5.0))
        self.never_over_the_limit_in_any_window()

    async def close(self) -> None:
        for send in self.their_sends:
            send.cancel()
        await asyncio.gather(*self.their_sends, return_exceptions=True)
        await super().close()
        if self.ledger is not None:
            self.ledger.stop()


# Derandomized and without the example database: the same schedules on every run and machine.
DeliverySchedules.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None, derandomize=True, database=None
)
TestDeliverySchedules = DeliverySchedules.TestCase
