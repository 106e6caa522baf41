"""Delivery at the edges: a cancelled circuit probe, quota waits against the retry budget, and
absurd Retry-After values. Fake time throughout; each test failed on the code before its fix."""

from __future__ import annotations

import asyncio
import math

import pytest
from prometheus_client import CollectorRegistry

from consumer.errors import PermanentDeliveryError, RetryableDeliveryError
from consumer.metrics import Metrics
from consumer.quota import QuotaGate
from consumer.target.delivery import CircuitBreaker, Delivery
from consumer.target.request import TargetRequest

pytestmark = pytest.mark.unit
REQ = TargetRequest("GET", "https://acme.tt.omtrdc.net/m2/acme/profile/update?mboxPC=p&profile.a=1")


class FakeTime:
    """A clock that only moves when someone sleeps; sleeping yields to the loop."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


class ScriptedClient:
    """Answers each send with the next scripted outcome: None (accepted) or an exception."""

    def __init__(self, outcomes: list[BaseException | None], time: FakeTime | None = None):
        self.outcomes = list(outcomes)
        self.sent = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()
        self.time = time

    async def send(self, request: TargetRequest) -> None:
        self.sent += 1
        self.started.set()
        await self.release.wait()
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome


class SlowQuota(QuotaGate):
    """Every acquire() waits `wait` seconds of fake time (the budget is short)."""

    def __init__(self, time: FakeTime, wait: float) -> None:
        super().__init__(1_000_000, 86_400.0, clock=time.clock, sleep=time.sleep)
        self._fake = time
        self._wait = wait

    async def acquire(self) -> None:
        await self._fake.sleep(self._wait)


def delivery(
    client: ScriptedClient,
    time: FakeTime,
    *,
    gate: QuotaGate | None = None,
    circuit: CircuitBreaker | None = None,
    retry_max: float = 60.0,
) -> Delivery:
    return Delivery(
        client=client,  # type: ignore[arg-type]
        gate=gate or QuotaGate(1_000_000, 86_400.0, clock=time.clock, sleep=time.sleep),
        circuit=circuit or CircuitBreaker(100, 5.0, time.clock),
        metrics=Metrics(CollectorRegistry()),
        clock=time.clock,
        retry_max_seconds=retry_max,
        base_seconds=0.5,
        cap_seconds=4.0,
        sleep=time.sleep,
    )


def retryable(retry_after: float | None = None) -> RetryableDeliveryError:
    return RetryableDeliveryError("http_5xx", "503", retry_after=retry_after)


async def test_a_cancelled_probe_lets_the_next_sender_probe() -> None:
    time = FakeTime()
    circuit = CircuitBreaker(1, 5.0, time.clock)
    circuit.record_failure()  # open
    time.now = 10.0  # cool-down over: the next sender is the probe
    hanging = ScriptedClient([None])
    hanging.release.clear()  # the probe's request never answers
    probe = asyncio.create_task(delivery(hanging, time, circuit=circuit).deliver(REQ))
    await hanging.started.wait()
    probe.cancel()  # a rebalance hands the partition over mid-probe
    with pytest.raises(asyncio.CancelledError):
        await probe
    healthy = ScriptedClient([None])
    await asyncio.wait_for(delivery(healthy, time, circuit=circuit).deliver(REQ), 5)
    assert healthy.sent == 1 and not circuit.is_open


async def test_a_probe_cancelled_while_waiting_for_quota_is_given_back() -> None:
    time = FakeTime()
    circuit = CircuitBreaker(1, 5.0, time.clock)
    circuit.record_failure()
    time.now = 10.0
    blocked = asyncio.Event()

    class NoBudget(QuotaGate):
        async def acquire(self) -> None:
            await blocked.wait()

    gate = NoBudget(1, 1.0, clock=time.clock, sleep=time.sleep)
    waiting = asyncio.create_task(
        delivery(ScriptedClient([None]), time, gate=gate, circuit=circuit).deliver(REQ)
    )
    for _ in range(5):
        await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    healthy = ScriptedClient([None])
    await asyncio.wait_for(delivery(healthy, time, circuit=circuit).deliver(REQ), 5)
    assert healthy.sent == 1


async def test_time_waiting_for_quota_does_not_count_as_failing() -> None:
    time = FakeTime()
    # Each attempt waits 10 minutes for budget; the retry budget is 60 s of failing.
    client = ScriptedClient([retryable(), retryable(), None])
    await delivery(client, time, gate=SlowQuota(time, 600.0), retry_max=60.0).deliver(REQ)
    assert client.sent == 3
    assert time.now >= 1800.0  # three quota waits really happened


async def test_failing_longer_than_the_budget_is_exhausted() -> None:
    time = FakeTime()
    client = ScriptedClient([retryable()] * 1000)
    with pytest.raises(PermanentDeliveryError) as info:
        await delivery(client, time, retry_max=30.0).deliver(REQ)
    assert info.value.reason == "retries_exhausted"
    assert 30.0 - 4.0 <= time.now <= 30.0  # backoff counted, never past the budget


@pytest.mark.parametrize("absurd", [math.inf, 1e12, 10 * 365 * 86_400.0])
async def test_an_absurd_retry_after_is_capped_and_the_update_retried(absurd: float) -> None:
    time = FakeTime()
    gate = QuotaGate(1_000_000, 86_400.0, clock=time.clock, sleep=time.sleep)
    client = ScriptedClient([retryable(retry_after=absurd), None])
    await delivery(client, time, gate=gate, retry_max=60.0).deliver(REQ)
    assert client.sent == 2  # retried, not dead-lettered
    assert time.now == pytest.approx(3600.0)  # held for the cap, not for `absurd`


async def test_retry_after_holds_do_not_count_as_failing() -> None:
    time = FakeTime()
    # Five 429s asking for 100 s each: 500 s of holds against a 60 s failing budget.
    client = ScriptedClient([retryable(retry_after=100.0)] * 5 + [None])
    await delivery(client, time, retry_max=60.0).deliver(REQ)
    assert client.sent == 6
