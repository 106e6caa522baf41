"""A scripted raw HTTP server and the send path's client built as the App builds it."""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from consumer.config import Settings
from consumer.target.http import TargetHttp, open_client
from consumer.target.transport import Hold

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
# The transport `client_for` builds on when a test names none (`each_transport` sets it).
TRANSPORT: str | None = None
# Inside `Script.answer`: which connection (1, 2, ...) the request came on.
CONNECTION: contextvars.ContextVar[int] = contextvars.ContextVar("connection", default=0)


class Tally:
    """A count that a test can await, instead of polling it."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = asyncio.Event()

    def add(self) -> None:
        self.count += 1
        self._changed.set()

    async def reach(self, count: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while self.count < count:
                self._changed.clear()
                await self._changed.wait()


# What the server does with one request: bytes to write back, None to hang up, or a coroutine
# function that writes whatever it likes (endless or trickling answers).
Writer = Callable[[asyncio.StreamWriter], Awaitable[None]]
Answer = bytes | Writer | None


@dataclass
class Script:
    """A raw server: `answer(request_head)` says what to do with each request."""

    answer: Callable[[bytes], Answer]
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    chunk_size: int = 0  # > 0: write the answer in pieces of this size
    close_after: bool = False
    ended: Tally = field(default_factory=Tally)  # connections the server has closed
    received: Tally = field(default_factory=Tally)  # requests read


@asynccontextmanager
async def raw_server(script: Script) -> AsyncIterator[str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script.connections += 1
        CONNECTION.set(script.connections)  # this connection's task only
        script.open_now += 1
        script.most_open = max(script.most_open, script.open_now)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                length = _content_length(head)
                body = await reader.readexactly(length) if length else b""
                script.requests.append(head + body)
                script.received.add()
                data = script.answer(head)
                if data is None:
                    return
                if callable(data):
                    await data(writer)
                else:
                    await _write(writer, data, script.chunk_size)
                if script.close_after:
                    return
        except ConnectionError:
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


@pytest.fixture(autouse=True, params=["aiohttp", "httpcore"])
def each_transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Imported by a test module: its tests run over both transports below httpx."""
    monkeypatch.setattr(sys.modules[__name__], "TRANSPORT", request.param)
    return str(request.param)


def settings_for(url: str, **target: Any) -> Settings:
    chosen = {} if TRANSPORT is None else {"http_transport": TRANSPORT}
    return Settings.model_validate({"target": {"base_url": url, **chosen, **target}})


def client_for(
    url: str,
    *,
    hold: Hold | None = None,
    environ: Mapping[str, str] | None = None,
    **target: Any,
) -> TargetHttp:
    """open_client as the App calls it; no proxy or CA variable unless `environ` gives one."""
    return open_client(settings_for(url, **target), hold=hold, environ=environ or {})
