"""The lean HTTP/1.1 client against real sockets: a scripted raw server and the simulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from consumer.embedded import free_port
from consumer.errors import HttpConnectionError, HttpTimeout
from consumer.simulator import SimulatorConfig, TargetSimulator
from consumer.target import http11
from consumer.target.http11 import Answer, HttpPool

pytestmark = pytest.mark.unit
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Tally:
    """A count that a test can await, instead of polling it."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = asyncio.Event()

    def add(self) -> None:
        self.count += 1
        self._changed.set()

    async def reach(self, count: int) -> None:
        async with asyncio.timeout(5):
            while self.count < count:
                self._changed.clear()
                await self._changed.wait()


class Hold:
    """A before_send hook that stops its n-th call until `go` is set; `reached` says it got there.

    The pool calls before_send twice per request: before taking a connection, then holding it.
    """

    def __init__(self, call: int) -> None:
        self.calls = Tally()
        self.go = asyncio.Event()
        self._call = call

    async def __call__(self) -> None:
        self.calls.add()
        if self.calls.count == self._call:
            await self.go.wait()

    async def reached(self) -> None:
        await self.calls.reach(self._call)


@pytest.fixture
def fins(monkeypatch: pytest.MonkeyPatch) -> Tally:
    """Counts the FINs the client's connections receive (the peer closed its side)."""
    tally = Tally()
    original = http11._Connection.eof_received  # noqa: SLF001

    def eof_received(self: http11._Connection) -> bool:  # noqa: SLF001
        tally.add()
        return original(self)

    monkeypatch.setattr(http11._Connection, "eof_received", eof_received)  # noqa: SLF001
    return tally


@dataclass
class Script:
    """A raw server: `answer(request_head)` gives the bytes to write back (None: hang up)."""

    answer: Callable[[bytes], bytes | None]
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    chunk_size: int = 0  # > 0: write the answer in pieces of this size
    close_after: bool = False
    close_when: asyncio.Event | None = None  # with close_after: wait for it, then hang up
    ended: Tally = field(default_factory=Tally)  # connections the server has closed


@asynccontextmanager
async def raw_server(script: Script) -> AsyncIterator[str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script.connections += 1
        script.open_now += 1
        script.most_open = max(script.most_open, script.open_now)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = _content_length(head)
                body = await reader.readexactly(length) if length else b""
                script.requests.append(head + body)
                data = script.answer(head)
                if data is None:
                    return
                await _write(writer, data, script.chunk_size)
                if script.close_after:
                    if script.close_when is not None:
                        await script.close_when.wait()
                    return
        finally:
            script.open_now -= 1
            writer.close()
            script.ended.add()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            return int(value)
    return 0


async def _write(writer: asyncio.StreamWriter, data: bytes, chunk: int) -> None:
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] if chunk > 0 else [data]
    for piece in pieces:
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0)


async def test_keep_alive_reuses_one_connection_and_sends_the_exact_request() -> None:
    script = Script(lambda head: OK)
    async with raw_server(script) as url:
        pool = HttpPool(url, 8, 5.0, headers={"Authorization": "Bearer s3cret"})
        for i in range(5):
            answer = await pool.request("GET", f"{url}/m2/acme/profile/update?mboxPC=p{i}")
            assert (answer.status, answer.body) == (200, b"ok")
        await pool.request("POST", f"{url}/m2/x", b"a=1&b=%26", "application/x-www-form-urlencoded")
        await pool.aclose()
    assert script.connections == 1
    first = script.requests[0].decode()
    assert first.startswith("GET /m2/acme/profile/update?mboxPC=p0 HTTP/1.1\r\n")
    assert f"Host: {url.removeprefix('http://')}\r\n" in first
    assert "Authorization: Bearer s3cret\r\n" in first
    post = script.requests[-1].decode()
    assert post.startswith("POST /m2/x HTTP/1.1\r\n")
    assert "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 9\r\n" in post
    assert post.endswith("\r\n\r\na=1&b=%26")


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
        pool = HttpPool(url, 1, 5.0)
        for _ in range(3):
            assert (await pool.request("GET", f"{url}/a")).body == body
        await pool.aclose()
    assert script.connections == 1


async def test_a_body_delimited_by_close_and_connection_close_mean_a_fresh_connection() -> None:
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
        pool = HttpPool(url, 1, 5.0)
        bodies = [(await pool.request("GET", f"{url}/a")).body for _ in range(4)]
        await pool.aclose()
    assert bodies == [b"a", b"b", b"until-close", b"ok"]
    assert script.connections == 4


async def test_headers_are_lower_case_and_repeated_ones_joined() -> None:
    raw = (
        b"HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 0\r\n\r\n"
    )
    async with raw_server(Script(lambda head: raw)) as url:
        pool = HttpPool(url, 1, 5.0)
        answer = await pool.request("GET", f"{url}/a")
        await pool.aclose()
    assert answer.status == 429
    assert answer.headers["retry-after"] == "7" and answer.headers["x-a"] == "1, 2"


@pytest.mark.parametrize(
    "raw",
    [
        None,  # hang up without a word
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # then hang up
        b"SPDY/3 200 OK\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_a_broken_answer_is_a_connection_error(raw: bytes | None) -> None:
    script = Script(lambda head: raw, close_after=True)
    async with raw_server(script) as url:
        pool = HttpPool(url, 1, 5.0)
        with pytest.raises(HttpConnectionError):
            await pool.request("GET", f"{url}/a")
        await pool.aclose()


async def test_a_slow_answer_times_out_and_its_connection_is_never_reused() -> None:
    slow_first = iter([True, False])
    script = Script(lambda head: b"" if next(slow_first) else OK)  # b"": no answer at all
    async with raw_server(script) as url:
        pool = HttpPool(url, 1, 0.2)
        with pytest.raises(HttpTimeout):
            await pool.request("GET", f"{url}/a")
        assert (await pool.request("GET", f"{url}/b")).body == b"ok"
        await pool.aclose()
    assert script.connections == 2


async def test_connect_failures_and_a_full_pool() -> None:
    port = free_port()
    pool = HttpPool(f"http://127.0.0.1:{port}", 1, 5.0)
    with pytest.raises(HttpConnectionError, match="connect failed"):
        await pool.request("GET", f"http://127.0.0.1:{port}/a")
    hold = Hold(2)  # the first request, holding the only connection
    async with raw_server(Script(lambda head: OK)) as url:
        pool = HttpPool(url, 1, 0.3, before_send=hold)
        first = asyncio.create_task(pool.request("GET", f"{url}/a"))
        await hold.reached()
        with pytest.raises(HttpTimeout, match="no free connection"):
            await pool.request("GET", f"{url}/b")
        hold.go.set()
        assert (await first).status == 200
        await pool.aclose()


async def test_never_more_connections_than_allowed() -> None:
    script = Script(lambda head: OK, chunk_size=1)  # slow writes keep connections busy
    async with raw_server(script) as url:
        pool = HttpPool(url, 4, 5.0)
        answers = await asyncio.gather(*(pool.request("GET", f"{url}/{i}") for i in range(40)))
        await pool.aclose()
    assert all(a.status == 200 for a in answers)
    assert script.most_open <= 4 and script.connections <= 4


async def test_an_idle_connection_the_server_closed_is_dropped_not_used(fins: Tally) -> None:
    script = Script(lambda head: OK, close_after=True)  # closes after each answer
    async with raw_server(script) as url:
        pool = HttpPool(url, 1, 5.0)
        for sent in range(1, 4):
            await pool.request("GET", f"{url}/a")
            await fins.reach(sent)  # the FIN arrived while the connection was idle
        await pool.aclose()
    assert script.connections == 3 and len(script.requests) == 3


async def test_hooks_run_around_each_exchange_in_order() -> None:
    seen: list[str] = []

    async def before_send() -> None:
        seen.append("before")

    def on_answer(answer: Answer) -> None:
        seen.append(f"answer {answer.status}")

    script = Script(lambda head: seen.append("server") or OK)  # type: ignore[func-returns-value]
    async with raw_server(script) as url:
        pool = HttpPool(url, 1, 5.0, before_send=before_send, on_answer=on_answer)
        await pool.request("GET", f"{url}/a")
        await pool.request("GET", f"{url}/b")
        await pool.aclose()
    assert seen == ["before", "before", "server", "answer 200"] * 2


@pytest.mark.parametrize(
    "url",
    [
        "http://elsewhere:1/m2",
        "{url}/a b",
        "{url}/a\r\nX-Evil: 1",
        "{url}/a\nb",
        "{url}@evil/a",
        "{url}",
    ],
)
async def test_nothing_but_a_clean_path_on_the_origin_reaches_the_request_line(url: str) -> None:
    script = Script(lambda head: OK)
    async with raw_server(script) as base:
        pool = HttpPool(base, 1, 5.0)
        with pytest.raises(ValueError, match="origin or holds unsafe characters"):
            await pool.request("GET", url.format(url=base))
        with pytest.raises(ValueError, match="control characters"):
            await pool.request("POST", f"{base}/a", b"", "text/plain\r\nX-Evil: 1")
        await pool.aclose()
    assert script.requests == []


def test_bad_static_headers_are_refused_without_echoing_the_value() -> None:
    with pytest.raises(ValueError, match="control characters") as info:
        HttpPool("http://t", 1, 1.0, headers={"Authorization": "Bearer s3cret\r\nX: 1"})
    assert "s3cret" not in str(info.value)
    with pytest.raises(ValueError, match="bad header name"):
        HttpPool("http://t", 1, 1.0, headers={"Bad Name": "x"})
    for url in ("ftp://t", "https://user:s3cret@t", "http:///path"):
        with pytest.raises(ValueError, match="not an http") as info:
            HttpPool(url, 1, 1.0)
        assert "s3cret" not in str(info.value)


async def test_against_the_simulator_get_post_and_its_token_check() -> None:
    with TargetSimulator(SimulatorConfig(seed=1, require_token="s3cret")) as sim:
        pool = HttpPool(sim.url, 4, 5.0, headers={"Authorization": "Bearer s3cret"})
        endpoint = f"{sim.url}/m2/acme/profile/update"
        get = await pool.request("GET", f"{endpoint}?mbox3rdPartyId=c1&profile.a=%26x")
        post = await pool.request(
            "POST", endpoint, b"mbox3rdPartyId=c2&profile.b=2", "application/x-www-form-urlencoded"
        )
        await pool.aclose()
        anonymous = HttpPool(sim.url, 1, 5.0)
        refused = await anonymous.request("GET", f"{endpoint}?mbox3rdPartyId=c3&profile.a=1")
        await anonymous.aclose()
        profiles = sim.profiles()
    assert get.status == post.status == 200 and b"<success>true</success>" in get.body
    assert refused.status == 401
    assert profiles[("mbox3rdPartyId", "c1")] == {"a": "&x"}
    assert profiles[("mbox3rdPartyId", "c2")] == {"b": "2"}


async def test_a_connection_busy_when_the_pool_closes_is_closed_after_its_answer() -> None:
    hold = Hold(2)  # holding the connection, right before writing
    script = Script(lambda head: OK)
    async with raw_server(script) as url:
        pool = HttpPool(url, 1, 5.0, before_send=hold)
        busy = asyncio.create_task(pool.request("GET", f"{url}/a"))
        await hold.reached()
        await pool.aclose()
        hold.go.set()
        assert (await busy).status == 200
        await script.ended.reach(1)  # the client closed it: the server sees the end
        with pytest.raises(HttpConnectionError, match="closed"):
            await pool.request("GET", f"{url}/b")


async def test_a_connection_the_peer_closes_during_a_hold_is_replaced_not_used(
    fins: Tally,
) -> None:
    hang_up, hold = asyncio.Event(), Hold(4)  # the second request, holding the idle connection
    script = Script(lambda head: OK, close_after=True, close_when=hang_up)
    async with raw_server(script) as url:
        pool = HttpPool(url, 1, 5.0, before_send=hold)
        await pool.request("GET", f"{url}/a")
        second = asyncio.create_task(pool.request("GET", f"{url}/b"))
        await hold.reached()
        hang_up.set()  # the server closes the connection the second request holds
        await fins.reach(1)  # and the client has seen it
        hold.go.set()
        answer = await asyncio.wait_for(second, 2)  # not the 5 s timeout
        await pool.aclose()
    assert answer.status == 200 and script.connections == 2
