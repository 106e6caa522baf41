"""The send path's httpx client against real sockets: a scripted raw server and the simulator."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from consumer.errors import HttpConnectionError, HttpTimeout
from consumer.target import http
from devtools.broker import free_port
from devtools.simulator import SimulatorConfig, TargetSimulator
from tests.raw_http import (
    OK,
    Script,
    Tally,
    client_for,
    each_transport,  # noqa: F401  (autouse: both transports)
    raw_server,
)

pytestmark = pytest.mark.unit


class Hooks:
    """A Hold that records its calls; `gate`, when given, stops before_send until it is set."""

    def __init__(self, seen: list[str], gate: asyncio.Event | None = None) -> None:
        self.seen = seen
        self.gate = gate
        self.answers = Tally()

    async def before_send(self) -> None:
        self.seen.append("before")
        if self.gate is not None:
            await self.gate.wait()

    def on_answer(self, status: int, headers: Mapping[str, str]) -> None:
        self.seen.append(f"answer {status} {headers.get('retry-after')}")
        self.answers.add()


async def test_keep_alive_reuses_one_connection_and_sends_the_exact_request() -> None:
    script = Script(lambda head: OK)
    async with raw_server(script) as url:
        client = client_for(url, token="s3cret")
        for i in range(5):
            answer = await client.request("GET", f"{url}/m2/acme/profile/update?mboxPC=p{i}")
            assert (answer.status, answer.body) == (200, b"ok")
        form = "application/x-www-form-urlencoded"
        await client.request("POST", f"{url}/m2/x", b"a=1&b=%26", form)
        await client.aclose()
    assert script.connections == 1
    first = script.requests[0].decode()
    assert first.startswith("GET /m2/acme/profile/update?mboxPC=p0 HTTP/1.1\r\n")
    assert f"Host: {url.removeprefix('http://')}\r\n" in first
    assert "Authorization: Bearer s3cret\r\n" in first
    assert "Accept-Encoding: identity\r\n" in first
    post = script.requests[-1].decode()
    assert post.startswith("POST /m2/x HTTP/1.1\r\n")
    assert "Content-Type: application/x-www-form-urlencoded\r\n" in post
    assert "Content-Length: 9\r\n" in post and post.endswith("\r\n\r\na=1&b=%26")


@pytest.mark.parametrize("chunk_size", [0, 1, 7])
@pytest.mark.parametrize(
    ("raw", "body"),
    [
        (OK, b"ok"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            b"abcde",
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n1\r\nz\r\n0\r\nX-T: 1\r\n\r\n",
            b"z",
        ),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes", b"yes"),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", b""),
    ],
)
async def test_framing_keeps_the_connection_usable(
    raw: bytes, body: bytes, chunk_size: int
) -> None:
    script = Script(lambda head: raw, chunk_size=chunk_size)
    async with raw_server(script) as url:
        client = client_for(url)
        for _ in range(3):
            assert (await client.request("GET", f"{url}/a")).body == body
        await client.aclose()
    assert script.connections == 1


async def test_connection_close_and_http_1_0_mean_a_fresh_connection() -> None:
    answers = iter(
        [
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na",
            b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nb",
            b"HTTP/1.1 200 OK\r\n\r\nuntil-close",
            OK,
        ]
    )
    script = Script(lambda head: next(answers), close_after=True)
    async with raw_server(script) as url:
        client = client_for(url)
        bodies = [(await client.request("GET", f"{url}/a")).body for _ in range(4)]
        await client.aclose()
    assert bodies == [b"a", b"b", b"until-close", b"ok"]
    assert script.connections == 4


async def test_header_names_are_case_insensitive_and_repeated_ones_joined() -> None:
    raw = (
        b"HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 0\r\n\r\n"
    )
    async with raw_server(Script(lambda head: raw)) as url:
        client = client_for(url)
        answer = await client.request("GET", f"{url}/a")
        await client.aclose()
    assert answer.status == 429
    assert answer.headers["retry-after"] == "7" and answer.headers["x-a"] == "1, 2"


@pytest.mark.parametrize(
    "raw",
    [
        None,  # hang up without a word (on a fresh connection: not retried)
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # then hang up
        b"SPDY/3 200 OK\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        # What the hand-written client used to accept: signs, prefixes, separators in a chunk
        # size, a chunk not followed by CRLF, a transfer coding that only contains "chunked".
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\n" + b"a" * 16 + b"\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunkedx\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ],
)
async def test_a_broken_or_lenient_answer_is_a_connection_error(raw: bytes | None) -> None:
    script = Script(lambda head: raw, close_after=True)
    async with raw_server(script) as url:
        client = client_for(url)
        with pytest.raises(HttpConnectionError) as info:
            await client.request("GET", f"{url}/a?mboxPC=secret-id")
        await client.aclose()
    assert "secret-id" not in str(info.value) and "127.0.0.1" not in str(info.value)
    assert len(script.requests) == 1  # a fresh connection's failure is not retried


async def test_a_slow_answer_times_out_and_its_connection_is_never_reused() -> None:
    slow_first = iter([True, False])
    script = Script(lambda head: b"" if next(slow_first) else OK)  # b"": no answer at all
    async with raw_server(script) as url:
        client = client_for(url, timeout_seconds=0.2)
        with pytest.raises(HttpTimeout, match="no complete answer in 0.2s"):
            await client.request("GET", f"{url}/a")
        assert (await client.request("GET", f"{url}/b")).body == b"ok"
        await client.aclose()
    assert script.connections == 2


async def test_connect_failures_and_a_full_pool() -> None:
    port = free_port()
    client = client_for(f"http://127.0.0.1:{port}")
    with pytest.raises(HttpConnectionError, match="ConnectError"):
        await client.request("GET", f"http://127.0.0.1:{port}/a")
    await client.aclose()
    release = asyncio.Event()

    async def held(writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.write(OK)

    answers = iter([held, OK])
    script = Script(lambda head: next(answers))
    async with raw_server(script) as url:
        client = client_for(url, max_in_flight=1)
        first = asyncio.create_task(client.request("GET", f"{url}/a"))
        await script.received.reach(1)  # the only connection is busy
        second = asyncio.create_task(client.request("GET", f"{url}/b"))
        await asyncio.sleep(0.05)  # time for a second connection, were one allowed
        assert len(script.requests) == 1 and not second.done()
        release.set()
        assert [(await first).status, (await second).status] == [200, 200]
        await client.aclose()
    assert script.connections == 1


async def test_never_more_connections_than_allowed() -> None:
    script = Script(lambda head: OK, chunk_size=1)  # slow writes keep connections busy
    async with raw_server(script) as url:
        client = client_for(url, max_in_flight=4)
        answers = await asyncio.gather(*(client.request("GET", f"{url}/{i}") for i in range(40)))
        await client.aclose()
    assert all(a.status == 200 for a in answers)
    assert script.most_open <= 4 and script.connections <= 4


async def test_the_hold_sees_a_429_when_its_headers_arrive_before_the_body() -> None:
    seen: list[str] = []
    body_may_come = asyncio.Event()

    async def slow_body(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 429 Too Many\r\nRetry-After: 9\r\nContent-Length: 2\r\n\r\n")
        await writer.drain()
        await body_may_come.wait()
        writer.write(b"no")

    def answer(head: bytes) -> bytes | object:
        seen.append("server")
        return slow_body if len(seen) < 3 else OK

    script = Script(answer)  # type: ignore[arg-type]
    async with raw_server(script) as url:
        hooks = Hooks(seen)
        client = client_for(url, hold=hooks)
        task = asyncio.create_task(client.request("GET", f"{url}/a"))
        await hooks.answers.reach(1)  # the hold is set while the body is not yet sent
        assert seen[-1] == "answer 429 9" and not task.done()
        body_may_come.set()
        assert (await task).body == b"no"
        await client.request("GET", f"{url}/b")
        await client.aclose()
    assert seen == ["before", "server", "answer 429 9", "before", "server", "answer 200 None"]


async def test_a_reused_connection_the_peer_dropped_is_retried_once_on_a_fresh_one() -> None:
    answers = iter([OK, None, OK])  # None: read the request, then hang up without a word
    script = Script(lambda head: next(answers))
    async with raw_server(script) as url:
        seen: list[str] = []
        client = client_for(url, hold=Hooks(seen))
        assert (await client.request("GET", f"{url}/a")).body == b"ok"
        assert (await client.request("GET", f"{url}/b")).body == b"ok"
        await client.aclose()
    assert script.connections == 2 and len(script.requests) == 3
    # Checked again before the retry; one answer, seen once.
    assert seen == ["before", "answer 200 None", "before", "before", "answer 200 None"]


async def test_a_reused_connection_that_fails_twice_is_an_error() -> None:
    answers = iter([OK, None, None, OK])
    script = Script(lambda head: next(answers))
    async with raw_server(script) as url:
        client = client_for(url)
        await client.request("GET", f"{url}/a")
        with pytest.raises(HttpConnectionError, match="RemoteProtocolError"):
            await client.request("GET", f"{url}/b")
        await client.aclose()
    assert len(script.requests) == 3


async def test_idle_connections_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "KEEPALIVE_EXPIRY", 0.05)
    script = Script(lambda head: OK)
    async with raw_server(script) as url:
        client = client_for(url)
        await client.request("GET", f"{url}/a")
        await asyncio.sleep(0.2)  # idle time passing is what is under test: no event to await
        await client.request("GET", f"{url}/b")
        await script.ended.reach(1)  # the client closed the expired one
        await client.aclose()
    assert script.connections == 2


async def test_a_body_over_the_cap_is_an_error_and_drops_the_connection() -> None:
    # Far over the cap: aiohttp hands a connection back to its pool once a body has fully
    # arrived, read or not, so a body just over the cap could be complete (and its connection
    # clean) by the time the cap is hit. This one cannot have arrived whole.
    size = 16 * http.MAX_BODY
    big = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size
    answers = iter([big + b"x" * size, OK])
    script = Script(lambda head: next(answers))
    async with raw_server(script) as url:
        client = client_for(url)
        with pytest.raises(HttpConnectionError, match="larger than 65536 bytes"):
            await client.request("GET", f"{url}/a")
        assert (await client.request("GET", f"{url}/b")).body == b"ok"
        await client.aclose()
    assert script.connections == 2


async def test_redirects_are_not_followed() -> None:
    raw = b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere.invalid/\r\nContent-Length: 0\r\n\r\n"
    script = Script(lambda head: raw)
    async with raw_server(script) as url:
        client = client_for(url, token="s3cret")
        assert (await client.request("GET", f"{url}/a")).status == 302
        await client.aclose()
    assert len(script.requests) == 1


async def test_against_the_simulator_get_post_and_its_token_check() -> None:
    with TargetSimulator(SimulatorConfig(seed=1, require_token="s3cret")) as sim:
        client = client_for(sim.url, token="s3cret")
        endpoint = f"{sim.url}/m2/acme/profile/update"
        get = await client.request("GET", f"{endpoint}?mbox3rdPartyId=c1&profile.a=%26x")
        post = await client.request(
            "POST", endpoint, b"mbox3rdPartyId=c2&profile.b=2", "application/x-www-form-urlencoded"
        )
        await client.aclose()
        anonymous = client_for(sim.url)
        refused = await anonymous.request("GET", f"{endpoint}?mbox3rdPartyId=c3&profile.a=1")
        await anonymous.aclose()
        profiles = sim.profiles()
    assert get.status == post.status == 200 and b"<success>true</success>" in get.body
    assert refused.status == 401
    assert profiles[("mbox3rdPartyId", "c1")] == {"a": "&x"}
    assert profiles[("mbox3rdPartyId", "c2")] == {"b": "2"}


async def test_no_request_is_sent_twice_below_our_retry() -> None:
    # aiohttp resends an idempotent request by itself when its connection fails; the send
    # path turns that off (consumer/target/aiohttp_transport.py). An aiohttp whose resend
    # escapes that switch fails here: a GET or a POST on a fresh connection the peer hangs up
    # on must reach it once, and be reported as a hang-up, not as a timeout.
    script = Script(lambda head: None)
    async with raw_server(script) as url:
        client = client_for(url)
        for method in ("GET", "POST"):
            with pytest.raises(HttpConnectionError, match="RemoteProtocolError"):
                await client.request(method, f"{url}/a", b"x=1" if method == "POST" else b"")
        await client.aclose()
    assert [r.split(b" ")[0] for r in script.requests] == [b"GET", b"POST"]
    assert script.connections == 2
