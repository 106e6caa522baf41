"""The schedule search with the real send path behind the pipeline: Delivery, its circuit
breaker and the quota gate, in front of a fake Target whose every answer the search chooses.

It is the machine of test_schedules.py (assign, leave, lose, come back, read, DLQ held), with
the pipeline's `deliver` being a real `Delivery` (consumer/target/delivery.py, with its
`CircuitBreaker`) through a real `TargetClient` and the production transport's Retry-After
hooks (`RetryAfterHold`), and a quota gate chosen at the start: a local `QuotaGate` (eager or
smooth), or two `SharedQuotaGate`s over a ledger that delivers late and in different batches
to each (tests/fakes/lagging_log.py), the other one standing for another replica with its own
demand, its own 429s and a clock off by up to 120 s (or of an older version, writing whatever
hold Target asked for to the ledger). Target answers each request, one by one or by a mood that
answers every request as it arrives, with a 200, a 400, a 429 or 503 with any Retry-After (0,
2, just under and over the cap, 1e12, inf, nan, negative, garbage, an HTTP date within or past
the cap, year 9999), a timeout before or after applying it, or nothing at all until a handover
cancels it or the client's own deadline passes. Every wait (backoff, holds, the circuit's
cool-down, quota, the client's deadline) runs in virtual time (tests/fakes/virtual_time.py):
no sleeps.

Invariants, after every step: those of test_schedules.py (commit never passes an unfinished
event; no stale overwrite in Target's history), plus: never over the limit in any window,
measured on the fake Target's arrival times (every request that reached it, either replica's);
an event is dead-lettered as `retries_exhausted` only after its requests failed often enough
to spend `retry_max_seconds` failing (waiting for quota, the circuit or a hold does not count:
a held batch is retried, not dead-lettered); in every replica's view of the ledger, no hold
ends more than `retry_after_max_seconds` after the last answer that asked anyone to wait. At
the end, no stall: with the input stopped and Target accepting, every event finishes and
`buffered` returns to 0 (a probe cancelled by a handover, a hold of 1e12 s, a skewed
neighbour: none may freeze this member).
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass

import pytest
from hypothesis import seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from consumer.coalesce import ProfileKey
from consumer.errors import HttpTimeout
from consumer.quota import QuotaGate
from consumer.quota.ledger import QuotaRule
from consumer.quota.messages import Hold, encode, key_of
from consumer.quota.shared import SharedQuotaGate
from consumer.target.client import RetryAfterHold, TargetClient, is_retryable, parse_retry_after
from consumer.target.delivery import CircuitBreaker, Delivery
from consumer.target.http import Answer
from consumer.target.request import TargetRequest
from devtools.history import max_in_window
from tests.fakes.lagging_log import LaggingLog
from tests.fakes.virtual_time import VirtualTime
from tests.pipeline_rig import FakeClock, FakeTarget, Rig, parse_request
from tests.unit.pipeline.test_schedules import Schedules, marker, pick

pytestmark = pytest.mark.unit

# Virtual time starts at 0 (at epoch-sized values a sub-microsecond sleep would not move the
# clock at all); HTTP dates in Retry-After are read against EPOCH + virtual time.
EPOCH = 1_800_000_000.0
LIMIT, WINDOW = 3, 5.0
CLIENT_TIMEOUT = 5.0  # the HTTP client's deadline for one exchange
RETRY_MAX = 20.0  # target.retry_max_seconds: time spent failing before dead-lettering
RETRY_AFTER_MAX = 60.0  # target.retry_after_max_seconds: the cap on any hold
SUCCESS = b"<response><success>true</success><message>ok</message></response>"
# Below, at and past the cap (scaled down from 3600 s with the rest), absurd, malformed, and HTTP
# dates: one within the cap, one past it, one in year 9999 (read against EPOCH + virtual time).
RETRY_AFTERS = [
    "1e12",  # first: the value the search draws most
    None,
    "0",
    "2",
    "59",
    "61",
    "inf",
    "-inf",
    "nan",
    "-3",
    "soon",
    "Fri, 15 Jan 2027 08:00:30 GMT",
    "Fri, 15 Jan 2027 09:00:00 GMT",
    "Fri, 31 Dec 9999 23:59:59 GMT",
]
# Each failed attempt adds at most the client's deadline plus one backoff (its cap) to the
# time spent failing, so `retries_exhausted` needs more failed answers than this.
BACKOFF_CAP = 4.0
FEWEST_FAILURES_TO_EXHAUST = math.ceil(RETRY_MAX / (CLIENT_TIMEOUT + BACKOFF_CAP))


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
    failed: bool = False  # Target answered it with a retryable status, or not in time


class FakeTargetHttp:
    """Target as the real TargetClient sees it, behind the production transport's Retry-After
    hooks (`RetryAfterHold`: the hold is waited for before a request goes and set from an
    answer's headers, uncapped, as consumer/target/transport.py does), all within the client's
    deadline. Each request arrives (its time recorded) and waits for the answer the test gives,
    or for that deadline in virtual time."""

    def __init__(self, time: VirtualTime, target: FakeTarget) -> None:
        self._time = time
        self._target = target  # accepted writes go to its history
        self.hold: RetryAfterHold | None = None  # set once the quota gate is chosen
        self.arrivals: list[float] = []
        self.exchanges: list[Exchange] = []
        # How Target answers each request as it arrives, until the search changes it; None:
        # it waits for the search's answer (or for the client's deadline).
        self.mood: tuple[str, str | None] | None = None
        self.asked_to_wait = -math.inf  # when an answer last carried a Retry-After

    async def request(
        self, method: str, url: str, body: bytes = b"", content_type: str | None = None
    ) -> Answer:
        sent: list[Exchange] = []
        work = asyncio.ensure_future(self._exchange(TargetRequest(method, url, body), sent))
        deadline = asyncio.ensure_future(self._time.sleep(CLIENT_TIMEOUT))
        try:
            await asyncio.wait({work, deadline}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                for exchange in sent:
                    exchange.failed = True
                raise HttpTimeout("no answer before the client's deadline")
            return work.result()
        finally:
            deadline.cancel()
            work.cancel()

    async def _exchange(self, request: TargetRequest, sent: list[Exchange]) -> Answer:
        if self.hold is not None:
            await self.hold.before_send()
        self.arrivals.append(self._time.now)
        key, attributes = parse_request(request)
        exchange = Exchange(key, attributes, asyncio.get_running_loop().create_future())
        self.exchanges.append(exchange)
        sent.append(exchange)
        if self.mood is not None:
            self.answer_as(exchange, *self.mood)
        try:
            answer = await exchange.answer
        except HttpTimeout:
            exchange.failed = True
            raise
        finally:
            exchange.answer.cancel()  # no-op once answered: a cancelled request is not open
        exchange.failed = is_retryable(answer.status)
        if self.hold is not None:
            self.hold.on_answer(answer.status, answer.headers)
        return answer

    def open(self) -> list[Exchange]:
        return [e for e in self.exchanges if not e.answer.done()]

    def accept(self, exchange: Exchange) -> None:
        self._target.write(exchange.key, exchange.attributes)
        exchange.answer.set_result(Answer(200, {}, SUCCESS))

    def status(self, exchange: Exchange, status: int, retry_after: str | None = None) -> None:
        headers = {} if retry_after is None else {"retry-after": retry_after}
        if retry_after is not None:
            self.asked_to_wait = self._time.now
        exchange.answer.set_result(Answer(status, headers, b""))

    def answer_as(self, exchange: Exchange, how: str, retry_after: str | None) -> None:
        if how == "accept":
            self.accept(exchange)
        elif how == "timeout":
            self.time_out(exchange, applied=False)
        else:
            self.status(exchange, int(how), retry_after if how != "400" else None)

    def time_out(self, exchange: Exchange, applied: bool) -> None:
        """No answer in time; Target may have applied the update all the same."""
        if applied:
            self._target.write(exchange.key, exchange.attributes)
        exchange.answer.set_exception(HttpTimeout("timed out"))

    def failures_carrying(self, marker: str) -> int:
        return sum(1 for e in self.exchanges if e.failed and marker in e.attributes)


class DeliverySchedules(Schedules):
    def build_rig(self) -> Rig:
        self.time = VirtualTime(0.0)
        self.delivery: Delivery | None = None
        self.delivery_gate: QuotaGate | None = None
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
        self.delivery_gate = gate
        self.http.hold = RetryAfterHold(gate, self.time.clock, wall_clock=self.wall)
        metrics = self.rig.metrics
        self.delivery = Delivery(
            client=TargetClient(http=self.http, metrics=metrics, wall_clock=self.wall),
            gate=gate,
            circuit=CircuitBreaker(3, 1.0, self.time.clock, max_open_seconds=8.0),
            metrics=metrics,
            clock=self.time.clock,
            retry_max_seconds=RETRY_MAX,
            base_seconds=0.5,
            cap_seconds=BACKOFF_CAP,
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

    # One rule per kind of answer (as in test_schedules.py): each comes up about as often.
    @precondition(lambda self: self.http.open())
    @rule(index=st.integers(0, 7))
    def accept_request(self, index: int) -> None:
        self.http.accept(pick(self.http.open(), index))
        self.run(self.step(0.0))

    @precondition(lambda self: self.http.open())
    @rule(index=st.integers(0, 7), dlq_answers=st.booleans(), leaves=st.booleans())
    def refuse_request(self, index: int, dlq_answers: bool, leaves: bool) -> None:
        """A 400; unless `dlq_answers`, while the DLQ is slow, so the send then waits in the
        middle of dead-lettering; with `leaves` (drawn less often here than in the pipeline's
        search: revocations cancel the sends this search is about), its partition is then
        revoked."""
        if not dlq_answers:
            self.rig.dlq.hold()
        exchange = pick(self.http.open(), index)
        self.http.status(exchange, 400)
        self.run(self.step(0.0))
        self.leave_with(exchange.attributes, stays=not leaves)

    @precondition(lambda self: self.http.open())
    @rule(
        index=st.integers(0, 7),
        status=st.sampled_from([429, 503]),
        retry_after=st.sampled_from(RETRY_AFTERS),
    )
    def ask_to_wait(self, index: int, status: int, retry_after: str | None) -> None:
        """A 429 or 503, with any Retry-After (or none)."""
        self.http.status(pick(self.http.open(), index), status, retry_after)
        self.run(self.step(0.0))

    @rule(
        how=st.sampled_from(["429", "503", "accept", "timeout", "400", "by the search"]),
        retry_after=st.sampled_from(RETRY_AFTERS),
    )
    def target_mood(self, how: str, retry_after: str | None) -> None:
        """From now on Target answers every request as it arrives (a 429 or 503 with this
        Retry-After, a 200, a 400, no answer in time), or leaves each to the search: so that a
        schedule meets many answers, not only the few it picks one by one."""
        self.http.mood = None if how == "by the search" else (how, retry_after)

    @precondition(lambda self: self.http.open())
    @rule(index=st.integers(0, 7), applied=st.booleans())
    def time_out(self, index: int, applied: bool) -> None:
        """No answer in time; Target may have applied the update all the same."""
        self.http.time_out(pick(self.http.open(), index), applied)
        self.run(self.step(0.0))

    # The first value comes up most: a coalescing window's worth; 70 s passes any hold.
    @rule(seconds=st.sampled_from([1.0, 0.5, 70.0, 0.0, 3.0, 10.0]))
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

    @precondition(lambda self: self.theirs is not None)
    @rule(retry_after=st.sampled_from([r for r in RETRY_AFTERS if r]), capped=st.booleans())
    def their_retry_after(self, retry_after: str, capped: bool) -> None:
        """Target asks the other replica to wait. It holds the fleet through its gate, or,
        as a replica of an older version would, writes the hold to the ledger as Target said
        it (whoever wrote it, a hold lasts at most the cap after it was written)."""
        assert self.theirs is not None and self.ledger is not None
        theirs, ledger = self.theirs, self.ledger
        seconds = parse_retry_after(retry_after, self.wall)
        self.http.asked_to_wait = self.time.now
        if seconds is None:
            return
        if capped:
            transport_hook = RetryAfterHold(theirs, self.time.clock, wall_clock=self.wall)

            async def answer() -> None:  # on the rig's loop: the gate writes to its ledger there
                transport_hook.on_answer(429, {"retry-after": retry_after})

            self.run(answer())
        else:
            hold = Hold("c-older-version", theirs.now() + seconds)
            self.run(ledger.append(key_of(hold), encode(hold)))
        self.run(self.step(0.0))

    async def their_send(self) -> None:
        assert self.theirs is not None
        await self.theirs.acquire()
        self.their_arrivals.append(self.time.now)

    async def step(self, seconds: float) -> None:
        await self.time.run_until(self.time.now + seconds)
        self.rig.pipeline._wake.set()  # its timer runs on real time: let it look at the clock
        # The sends it starts reach Target (or their waits) within this step, not the next.
        await self.time.run_until(self.time.now)

    # --- invariants ---------------------------------------------------------------------------

    @invariant()
    def never_over_the_limit_in_any_window(self) -> None:
        arrivals = self.http.arrivals + self.their_arrivals
        most = max_in_window(arrivals, WINDOW)
        assert most <= LIMIT, f"{most} requests reached Target within {WINDOW}s (limit {LIMIT})"

    @invariant()
    def exhausted_only_after_failing(self) -> None:
        """`retry_max_seconds` counts time spent failing, not waiting (for quota, the circuit
        or a hold): an event dead-lettered as `retries_exhausted` was carried by requests that
        failed at least that many times (a held batch is retried, not dead-lettered)."""
        for record, error in self.rig.dlq.written:
            if error.reason != "retries_exhausted":
                continue
            failures = self.http.failures_carrying(marker(record.partition, record.offset))
            assert failures >= FEWEST_FAILURES_TO_EXHAUST, (
                f"event {record.partition}:{record.offset} dead-lettered as retries_exhausted "
                f"after {failures} failed attempts: time spent waiting counted as failing"
            )

    @invariant()
    def no_hold_outlasts_the_cap(self) -> None:
        """In every replica's view of the ledger, the fleet's hold ends at most
        `retry_after_max_seconds` after the last answer that asked anyone to wait."""
        for gate in (self.delivery_gate, self.theirs):
            if isinstance(gate, SharedQuotaGate):
                latest = self.http.asked_to_wait + RETRY_AFTER_MAX + 1e-6
                assert gate.state.hold_until <= max(latest, 0.0), (
                    f"{gate.replica} holds until {gate.state.hold_until}, the last Retry-After "
                    f"came at {self.http.asked_to_wait} (cap {RETRY_AFTER_MAX}s)"
                )

    def answer_everything(self) -> None:
        """The input has stopped: Target accepts every request, time passes (holds, windows
        and cool-downs end), until nothing is buffered."""
        self.http.mood = ("accept", None)
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


# Two fixed seeds, without the example database: the same schedules on every run and machine.
# One derandomized stream missed a mutant (Delivery's Retry-After cap removed) that seeds 1
# and 2 each catch (seed 3 does not): which schedules a stream draws is luck, two streams
# halve it (docs/reliability.md, the mutant table).
@pytest.mark.parametrize("stream", [1, 2])
def test_delivery_schedules(stream: int) -> None:
    machine = seed(stream)(type(f"DeliverySchedules{stream}", (DeliverySchedules,), {}))
    run_state_machine_as_test(
        machine,
        settings=settings(max_examples=200, stateful_step_count=30, deadline=None, database=None),
    )
