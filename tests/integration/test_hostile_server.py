"""Misbehaving peers on the send path: bounded memory, clear errors, nothing lost.

Each server is a real socket on loopback; the client is the App's (open_client), and where it
matters the whole send stage (TargetClient, Delivery, the quota gate, the circuit).
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import Awaitable, Callable

import pytest
from prometheus_client import CollectorRegistry

from consumer.errors import HttpConnectionError, HttpTimeout, PermanentDeliveryError
from consumer.metrics import Metrics
from consumer.quota import QuotaGate
from consumer.target.client import TargetClient
from consumer.target.delivery import CircuitBreaker, Delivery
from consumer.target.http import TargetHttp
from consumer.target.request import TargetRequest
from tests.raw_http import (
    CONNECTION,
    Script,
    client_for,
    each_transport,  # noqa: F401  (autouse: both transports)
    raw_server,
)

pytestmark = pytest.mark.integration
MIB = 1 << 20
SENT_AT_MOST = 64 * MIB  # what a hostile server here may write before it gives up
XML_OK = b"<response><success>true</success><message>ok</message></response>"
TARGET_OK = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(XML_OK), XML_OK)


def endless(head: bytes, piece: bytes) -> Callable[[asyncio.StreamWriter], Awaitable[None]]:
    """Writes `head`, then `piece` again and again until the client hangs up (or 64 MiB)."""

    async def write(writer: asyncio.StreamWriter) -> None:
        writer.write(head)
        sent = 0
        while sent < SENT_AT_MOST:
            writer.write(piece)
            await writer.drain()  # raises once the client has dropped the connection
            sent += len(piece)

    return write


async def peak_while(work: Awaitable[object]) -> tuple[BaseException | None, int]:
    """The exception `work` raised and the peak of Python allocations meanwhile."""
    tracemalloc.start()
    try:
        await work
    except Exception as exc:  # the caller asserts on it
        return exc, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return None, 0


@pytest.mark.parametrize(
    ("head", "piece", "error"),
    [
        # A chunk that claims 2 GiB and never ends.
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7fffffff\r\n",
            b"x" * MIB,
            "larger than 65536 bytes",
        ),
        # A body delimited by the end of the connection, which never comes.
        (b"HTTP/1.1 200 OK\r\n\r\n", b"x" * MIB, "larger than 65536 bytes"),
        # A header line that never ends.
        (b"HTTP/1.1 200 OK\r\nX-Big: ", b"a" * MIB, "RemoteProtocolError"),
        # Endless chunk-size line and endless trailers.
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"0" * MIB, "Protocol"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: ",
            b"t" * MIB,
            "Protocol",
        ),
    ],
    ids=["endless-chunk", "until-close", "huge-header", "huge-chunk-size", "huge-trailer"],
)
async def test_endless_answers_are_cut_off_with_bounded_memory(
    head: bytes, piece: bytes, error: str
) -> None:
    script = Script(lambda _: endless(head, piece), close_after=True)
    async with raw_server(script) as url:
        client = client_for(url)
        began = time.monotonic()
        exc, peak = await peak_while(client.request("GET", f"{url}/a?mboxPC=someone"))
        await script.ended.reach(1)  # the client dropped the connection: the server stopped
        await client.aclose()
    assert isinstance(exc, HttpConnectionError) and error in str(exc), exc
    assert "someone" not in str(exc)
    assert peak < 8 * MIB, f"peak {peak / MIB:.1f} MiB"
    assert time.monotonic() - began < 5


async def test_a_trickling_answer_is_bounded_by_the_timeout() -> None:
    async def trickle(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):  # a byte every 50 ms: each read is quick, the whole is not
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.05)

    script = Script(lambda _: trickle, close_after=True)
    async with raw_server(script) as url:
        client = client_for(url, timeout_seconds=0.5)
        with pytest.raises(HttpTimeout, match=r"no complete answer in 0\.5s"):
            await client.request("GET", f"{url}/a")
        await script.ended.reach(1)
        await client.aclose()


def send_stage(http: TargetHttp, *, retry_max: float = 60.0) -> tuple[Delivery, QuotaGate]:
    clock = asyncio.get_running_loop().time
    gate = QuotaGate(1_000_000, 86_400, "eager", clock=clock)
    metrics = Metrics(CollectorRegistry())
    delivery = Delivery(
        client=TargetClient(http=http, metrics=metrics),
        gate=gate,
        circuit=CircuitBreaker(3, 0.05, clock),
        metrics=metrics,
        clock=clock,
        retry_max_seconds=retry_max,
        base_seconds=0.01,
        cap_seconds=0.05,
    )
    return delivery, gate


async def test_a_server_that_closes_idle_connections_loses_nothing_and_costs_no_quota() -> None:
    # Every second request on a connection: read, then hang up without a word (as a peer that
    # closed the idle connection just as the request went out).
    per_connection: dict[int, int] = {}

    def answer(head: bytes) -> bytes | None:
        key = CONNECTION.get()
        per_connection[key] = per_connection.get(key, 0) + 1
        return None if per_connection[key] == 2 else TARGET_OK

    script = Script(answer)
    async with raw_server(script) as url:
        http = client_for(url, max_in_flight=1)
        delivery, gate = send_stage(http)
        for i in range(10):
            await delivery.deliver(TargetRequest("GET", f"{url}/m2/acme/profile/update?p={i}"))
        await http.aclose()
    answered = [r for r in script.requests if b"?p=" in r]
    assert len({r.split(b" ")[1] for r in answered}) == 10  # every update arrived
    assert gate.snapshot().used == 10  # the silent retries took no quota unit
    assert script.connections > 1


async def test_a_server_that_never_answers_ends_in_a_clear_permanent_error() -> None:
    script = Script(lambda _: b"")  # reads every request, answers none
    async with raw_server(script) as url:
        http = client_for(url, timeout_seconds=0.1, max_in_flight=2)
        delivery, gate = send_stage(http, retry_max=0.6)
        with pytest.raises(PermanentDeliveryError) as info:
            await delivery.deliver(TargetRequest("GET", f"{url}/m2/acme/profile/update?p=1"))
        await http.aclose()
    # retries_exhausted goes to the DLQ with the cause: the update is not lost.
    assert info.value.reason == "retries_exhausted" and "timed out" in str(info.value)
    assert len(script.requests) >= 2 and script.most_open <= 2
