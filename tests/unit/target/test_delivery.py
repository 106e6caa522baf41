"""Classification of Target's answers, retries, Retry-After and the circuit (fake time)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from consumer.errors import (
    HttpConnectionError,
    HttpTimeout,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from consumer.metrics import Metrics
from consumer.quota import QuotaGate
from consumer.target.client import RetryAfterHold, TargetClient, parse_retry_after
from consumer.target.delivery import CircuitBreaker, Delivery
from consumer.target.http import Answer
from consumer.target.request import TargetRequest

pytestmark = pytest.mark.unit
OK = (
    b"<response><success>true</success><pcId></pcId>"
    b"<message>Request successfully submitted</message></response>"
)
REQ = TargetRequest("GET", "https://acme.tt.omtrdc.net/m2/acme/profile/update?mboxPC=p&profile.a=1")


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class Sent:
    method: str
    url: str
    body: bytes
    content_type: str | None


def answer(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, {k.lower(): v for k, v in (headers or {}).items()}, body)


class FakeSender:
    """Stands in for TargetHttp: hands each request to `handler`, which answers or raises."""

    def __init__(self, handler: Callable[[Sent], Answer]) -> None:
        self.handler = handler

    async def request(
        self, method: str, url: str, body: bytes = b"", content_type: str | None = None
    ) -> Answer:
        return self.handler(Sent(method, url, body, content_type))


def client(handler: Callable[[Sent], Answer]) -> TargetClient:
    return TargetClient(
        http=FakeSender(handler),
        metrics=Metrics(CollectorRegistry()),
        wall_clock=lambda: 1_000_000.0,
    )


async def test_success_needs_the_xml_success_flag() -> None:
    await client(lambda r: answer(200, OK)).send(REQ)
    with pytest.raises(PermanentDeliveryError) as info:
        await client(lambda r: answer(200, OK.replace(b"true", b"false"))).send(REQ)
    assert info.value.reason == "rejected" and info.value.http_status == 200
    with pytest.raises(PermanentDeliveryError):
        await client(lambda r: answer(200, b"trueRequest successfully submitted")).send(REQ)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 414])
async def test_other_4xx_are_permanent_with_status_and_body(status: int) -> None:
    body = b"x" * 1000
    with pytest.raises(PermanentDeliveryError) as info:
        await client(lambda r: answer(status, body)).send(REQ)
    assert info.value.reason == f"http_{status}" and info.value.http_status == status
    assert info.value.body == body[:512]


@pytest.mark.parametrize(
    ("status", "reason"),
    [(408, "http_408"), (429, "http_429"), (500, "http_5xx"), (503, "http_5xx")],
)
async def test_408_429_and_5xx_are_retryable(status: int, reason: str) -> None:
    with pytest.raises(RetryableDeliveryError) as info:
        await client(lambda r: answer(status)).send(REQ)
    assert info.value.reason == reason


def test_retry_after_in_seconds_or_http_date() -> None:
    def now() -> float:
        return 1_000_000.0  # 1970-01-12T13:46:40Z

    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after("0.25", now) == 0.25
    assert parse_retry_after("Mon, 12 Jan 1970 13:47:10 GMT", now) == pytest.approx(30.0)
    assert parse_retry_after("soon", now) is None


async def test_the_hold_hooks_apply_retry_after_to_the_next_send() -> None:
    t = FakeTime()
    gate = QuotaGate(10**9, 86400, "eager", clock=t.clock, sleep=t.sleep)
    hold = RetryAfterHold(gate, t.clock, wall_clock=lambda: 1_000_000.0)
    await hold.before_send()
    hold.on_answer(429, {"retry-after": "5"})
    assert t.now == 0.0
    await hold.before_send()  # the next request waits out the hold on its connection
    assert t.now == 5.0
    hold.on_answer(200, {"retry-after": "5"})  # not a retryable status: no hold
    hold.on_answer(503, {})  # no Retry-After: no hold
    await hold.before_send()
    assert t.now == 5.0


async def test_transport_errors_are_retryable_and_say_nothing_of_the_url() -> None:
    def boom(request: Sent) -> Answer:
        raise HttpConnectionError("connect failed: ConnectionRefusedError")

    def slow(request: Sent) -> Answer:
        raise HttpTimeout("no complete answer in time")

    with pytest.raises(RetryableDeliveryError) as info:
        await client(boom).send(REQ)
    assert info.value.reason == "connection" and "mboxPC" not in str(info.value)
    with pytest.raises(RetryableDeliveryError) as info:
        await client(slow).send(REQ)
    assert info.value.reason == "timeout" and "mboxPC" not in str(info.value)


async def test_a_post_is_a_form_and_a_get_has_no_content_type() -> None:
    seen: list[Sent] = []

    def handler(request: Sent) -> Answer:
        seen.append(request)
        return answer(200, OK)

    await client(handler).send(REQ)
    await client(handler).send(TargetRequest("POST", "https://t/m2/acme/profile/update", b"a=1"))
    assert [(r.method, r.content_type, r.body) for r in seen] == [
        ("GET", None, b""),
        ("POST", "application/x-www-form-urlencoded", b"a=1"),
    ]


def delivery(handler, t: FakeTime, retry_max: float = 3600.0, threshold: int = 100):  # type: ignore[no-untyped-def]
    gate = QuotaGate(10**9, 86400, "eager", clock=t.clock, sleep=t.sleep)
    circuit = CircuitBreaker(threshold, 5.0, t.clock)
    metrics = Metrics(CollectorRegistry())
    d = Delivery(
        client=client(handler),
        gate=gate,
        circuit=circuit,
        metrics=metrics,
        clock=t.clock,
        retry_max_seconds=retry_max,
        sleep=t.sleep,
        rng=random.Random(1),
    )
    return d, circuit, gate


async def test_retries_until_success_honouring_retry_after_exactly() -> None:
    t = FakeTime()
    attempts: list[float] = []

    def handler(request: Sent) -> Answer:
        attempts.append(t.now)
        if len(attempts) == 1:
            return answer(429, headers={"Retry-After": "12"})
        if len(attempts) == 2:
            return answer(503)
        return answer(200, OK)

    d, _, gate = delivery(handler, t)
    await d.deliver(REQ)
    assert len(attempts) == 3
    assert attempts[1] == 12.0  # exactly the Retry-After, not earlier
    assert 12.0 <= attempts[2] <= 12.5  # full jitter under the 0.5 s base


async def test_retries_are_bounded_by_time_then_permanent() -> None:
    t = FakeTime()
    d, _, _ = delivery(lambda r: answer(503), t, retry_max=120.0)
    with pytest.raises(PermanentDeliveryError) as info:
        await d.deliver(REQ)
    assert info.value.reason == "retries_exhausted"
    assert t.now <= 120.0


async def test_circuit_opens_after_repeated_failures_and_closes_on_a_good_probe() -> None:
    t = FakeTime()
    calls: list[float] = []
    healthy_at = 30.0

    def handler(request: Sent) -> Answer:
        calls.append(t.now)
        return answer(200, OK) if t.now >= healthy_at else answer(503)

    d, circuit, _ = delivery(handler, t, threshold=3)
    opened: list[bool] = []
    circuit._on_change = opened.append
    await d.deliver(REQ)
    assert opened == [True, False]
    assert not circuit.is_open
    # While open, attempts are spaced by the open period (5 s, doubling), not by backoff.
    gaps = [b - a for a, b in zip(calls[3:], calls[4:], strict=False)]
    assert all(g >= 5.0 for g in gaps)
