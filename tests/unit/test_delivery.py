"""Classification of Target's answers, retries, Retry-After and the circuit (fake time)."""

from __future__ import annotations

import random

import httpx
import pytest
from prometheus_client import CollectorRegistry

from consumer.errors import PermanentDeliveryError, RetryableDeliveryError
from consumer.metrics import Metrics
from consumer.quota import QuotaGate
from consumer.target.client import HoldingTransport, TargetClient, parse_retry_after
from consumer.target.delivery import CircuitBreaker, Delivery
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


def client(handler, token: str | None = None) -> TargetClient:  # type: ignore[no-untyped-def]
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return TargetClient(http, Metrics(CollectorRegistry()), token, wall_clock=lambda: 1_000_000.0)


async def test_success_needs_the_xml_success_flag() -> None:
    await client(lambda r: httpx.Response(200, content=OK)).send(REQ)
    with pytest.raises(PermanentDeliveryError) as info:
        await client(lambda r: httpx.Response(200, content=OK.replace(b"true", b"false"))).send(REQ)
    assert info.value.reason == "rejected" and info.value.http_status == 200
    with pytest.raises(PermanentDeliveryError):
        await client(
            lambda r: httpx.Response(200, content=b"trueRequest successfully submitted")
        ).send(REQ)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 414])
async def test_other_4xx_are_permanent_with_status_and_body(status: int) -> None:
    body = b"x" * 1000
    with pytest.raises(PermanentDeliveryError) as info:
        await client(lambda r: httpx.Response(status, content=body)).send(REQ)
    assert info.value.reason == f"http_{status}" and info.value.http_status == status
    assert info.value.body == body[:512]


@pytest.mark.parametrize(
    ("status", "reason"),
    [(408, "http_408"), (429, "http_429"), (500, "http_5xx"), (503, "http_5xx")],
)
async def test_408_429_and_5xx_are_retryable(status: int, reason: str) -> None:
    with pytest.raises(RetryableDeliveryError) as info:
        await client(lambda r: httpx.Response(status)).send(REQ)
    assert info.value.reason == reason


def test_retry_after_in_seconds_or_http_date() -> None:
    def now() -> float:
        return 1_000_000.0  # 1970-01-12T13:46:40Z

    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after("0.25", now) == 0.25
    assert parse_retry_after("Mon, 12 Jan 1970 13:47:10 GMT", now) == pytest.approx(30.0)
    assert parse_retry_after("soon", now) is None


async def test_the_hold_is_set_before_the_answering_connection_is_free() -> None:
    t = FakeTime()
    gate = QuotaGate(10**9, 86400, "eager", clock=t.clock, sleep=t.sleep)
    answers = iter([httpx.Response(429, headers={"Retry-After": "5"}), httpx.Response(200)])
    inner = httpx.MockTransport(lambda r: next(answers))
    transport = HoldingTransport(inner, gate, t.clock)
    async with httpx.AsyncClient(transport=transport) as http:
        first = await http.get("http://target/a")
        assert first.status_code == 429 and t.now == 0.0
        await http.get("http://target/b")  # waits out the hold before taking a connection
    assert t.now == 5.0


async def test_transport_errors_are_retryable_and_say_nothing_of_the_url() -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(RetryableDeliveryError) as info:
        await client(boom).send(REQ)
    assert info.value.reason == "connection" and "mboxPC" not in str(info.value)


async def test_the_token_goes_in_the_authorization_header_only() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=OK)

    await client(handler, token="s3cret").send(REQ)
    assert seen[0].headers["Authorization"] == "Bearer s3cret"
    assert "s3cret" not in str(seen[0].url)


def delivery(handler, t: FakeTime, retry_max: float = 3600.0, threshold: int = 100):  # type: ignore[no-untyped-def]
    gate = QuotaGate(10**9, 86400, "eager", clock=t.clock, sleep=t.sleep)
    circuit = CircuitBreaker(threshold, 5.0, t.clock)
    metrics = Metrics(CollectorRegistry())
    d = Delivery(
        client(handler),
        gate,
        circuit,
        metrics,
        t.clock,
        retry_max,
        sleep=t.sleep,
        rng=random.Random(1),
    )
    return d, circuit, gate


async def test_retries_until_success_honouring_retry_after_exactly() -> None:
    t = FakeTime()
    attempts: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append(t.now)
        if len(attempts) == 1:
            return httpx.Response(429, headers={"Retry-After": "12"})
        if len(attempts) == 2:
            return httpx.Response(503)
        return httpx.Response(200, content=OK)

    d, _, gate = delivery(handler, t)
    await d.deliver(REQ)
    assert len(attempts) == 3
    assert attempts[1] == 12.0  # exactly the Retry-After, not earlier
    assert 12.0 <= attempts[2] <= 12.5  # full jitter under the 0.5 s base


async def test_retries_are_bounded_by_time_then_permanent() -> None:
    t = FakeTime()
    d, _, _ = delivery(lambda r: httpx.Response(503), t, retry_max=120.0)
    with pytest.raises(PermanentDeliveryError) as info:
        await d.deliver(REQ)
    assert info.value.reason == "retries_exhausted"
    assert t.now <= 120.0


async def test_circuit_opens_after_repeated_failures_and_closes_on_a_good_probe() -> None:
    t = FakeTime()
    calls: list[float] = []
    healthy_at = 30.0

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(t.now)
        return httpx.Response(200, content=OK) if t.now >= healthy_at else httpx.Response(503)

    d, circuit, _ = delivery(handler, t, threshold=3)
    opened: list[bool] = []
    circuit._on_change = opened.append
    await d.deliver(REQ)
    assert opened == [True, False]
    assert not circuit.is_open
    # While open, attempts are spaced by the open period (5 s, doubling), not by backoff.
    gaps = [b - a for a, b in zip(calls[3:], calls[4:], strict=False)]
    assert all(g >= 5.0 for g in gaps)
