"""A lean HTTP/1.1 keep-alive client for one origin: the consumer's HTTP hot path to Target.

Why not httpx here: the consumer sends one request shape (a GET with a percent-encoded query,
or a form POST) to one origin, thousands of times a second. httpx spent about 0.65 ms of CPU on
each (URL parsing and validation, its pool's scans, h11, anyio wrappers), which capped one
process near 1,000 updates/s whatever `max_in_flight` asked for (docs/performance.md). This
client writes the request bytes itself and parses the answer with a small state machine on an
`asyncio.Protocol`: a few tens of µs per request.

What it does: keep-alive connections (at most `max_connections`, idle ones reused newest first,
dropped as soon as the peer closes them), TLS through an `ssl.SSLContext`, responses framed by
Content-Length, chunked transfer coding or the end of the connection, 1xx interim answers
skipped, `Connection: close` and HTTP/1.0 honoured. One timeout bounds each stage: waiting for
a connection, connecting (TLS included) and the exchange (writing the request and reading the
whole answer). What it does not: redirects, proxies, compression, HTTP/2; Target needs none.

Hooks, both optional: `before_send` is awaited before a connection is taken, and again once
one is held, right before the request is written; `on_answer` sees each answer before its
connection is free again. The quota uses them to apply Retry-After at the connection
(consumer/target/client.py).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from consumer.errors import HttpConnectionError, HttpTimeout

MAX_HEAD = 65_536  # status line and headers
MAX_BODY = 1 << 20  # Target answers are a few hundred bytes; the DLQ keeps 512 of them

# What a request target may hold: RFC 3986 path and query characters, nothing that could end
# the request line or start a header (our values are percent-encoded; this is the guard).
_TARGET = re.compile(r"/[A-Za-z0-9\-._~%!$&'()*+,;=:@/?]*\Z")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*\Z")


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes


class _ProtocolViolation(Exception):
    """The peer's bytes are not an HTTP/1.1 answer we can read."""


class _AnswerReader:
    """Incremental parser of one answer; feed() consumes from a shared buffer."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = True
        self._length: int | None = None  # None: chunked or until close
        self._chunked = False
        self._body = bytearray()
        self._head_done = False

    def feed(self, buf: bytearray, closed: bool) -> Answer | None:
        """The answer once complete; None while more bytes are needed."""
        while not self._head_done:
            if not self._read_head(buf, closed):
                return None
        if self._chunked:
            done = self._read_chunks(buf, closed)
        elif self._length is not None:
            done = self._read_fixed(buf, closed)
        else:
            done = self._read_until_close(buf, closed)
        if not done:
            return None
        return Answer(self.status, self.headers, bytes(self._body))

    def _read_head(self, buf: bytearray, closed: bool) -> bool:
        """Parse one head if complete (False: more bytes needed); an interim one is skipped."""
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                raise _ProtocolViolation("answer head too large")
            if closed:
                raise _ProtocolViolation("connection closed before the answer")
            return False
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        del buf[: end + 4]
        version, status = _status_line(lines[0])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _ProtocolViolation("malformed header line")
            key, value = name.lower(), value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        if not 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            self._frame(version, status, headers)
        return True

    def _frame(self, version: str, status: int, headers: dict[str, str]) -> None:
        self.status, self.headers, self._head_done = status, headers, True
        connection = headers.get("connection", "").lower()
        self.keep_alive = version == "HTTP/1.1" and "close" not in connection
        if status in (204, 304):  # no body, whatever the headers say (we never send HEAD)
            self._length = 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._chunked = True
        elif "content-length" in headers:
            try:
                self._length = int(headers["content-length"])
            except ValueError:
                raise _ProtocolViolation("bad Content-Length") from None
            if self._length < 0:
                raise _ProtocolViolation("bad Content-Length")
        else:
            self.keep_alive = False  # the body ends with the connection

    def _read_fixed(self, buf: bytearray, closed: bool) -> bool:
        assert self._length is not None  # noqa: S101 - set by _frame
        if self._length > MAX_BODY:
            raise _ProtocolViolation("answer body too large")
        if len(buf) < self._length:
            if closed:
                raise _ProtocolViolation("connection closed inside the answer body")
            return False
        self._body += buf[: self._length]
        del buf[: self._length]
        return True

    def _read_until_close(self, buf: bytearray, closed: bool) -> bool:
        self._body += buf
        del buf[:]
        if len(self._body) > MAX_BODY:
            raise _ProtocolViolation("answer body too large")
        return closed

    def _read_chunks(self, buf: bytearray, closed: bool) -> bool:
        while True:
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                break
            size_text = bytes(buf[:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _ProtocolViolation("bad chunk size") from None
            if size == 0:
                trailer_end = buf.find(b"\r\n\r\n", line_end)
                if trailer_end == line_end:  # no trailers: "0\r\n\r\n"
                    del buf[: line_end + 4]
                    return True
                if trailer_end < 0:
                    break
                del buf[: trailer_end + 4]
                return True
            if len(buf) < line_end + 2 + size + 2:
                break
            self._body += buf[line_end + 2 : line_end + 2 + size]
            if len(self._body) > MAX_BODY:
                raise _ProtocolViolation("answer body too large")
            del buf[: line_end + 2 + size + 2]
        if closed:
            raise _ProtocolViolation("connection closed inside a chunked body")
        return False


def _status_line(line: str) -> tuple[str, int]:
    version, _, rest = line.partition(" ")
    code = rest[:3]
    if version not in ("HTTP/1.1", "HTTP/1.0") or not code.isdigit() or rest[3:4] not in ("", " "):
        raise _ProtocolViolation("malformed status line")
    return version, int(code)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one exchange at a time."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._reader: _AnswerReader | None = None
        self._waiter: asyncio.Future[Answer] | None = None
        self.closed = False

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 - stream transports only
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._reader is None:  # bytes nobody asked for: the connection is unusable
            self.close()
            return
        self._buffer += data
        self._advance(closed=False)

    def eof_received(self) -> bool:
        self._end()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()

    # --- used by the pool -----------------------------------------------------------------

    async def exchange(self, data: bytes, timeout: float) -> Answer:
        assert self._transport is not None and self._waiter is None  # noqa: S101
        if self.closed:  # a write would vanish and the answer never come: fail now
            raise HttpConnectionError("the connection closed before the request was sent")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Answer] = loop.create_future()
        self._waiter = waiter
        self._reader = _AnswerReader()
        timer = loop.call_later(timeout, self._time_out, waiter)
        try:
            self._transport.write(data)
            return await waiter
        finally:
            timer.cancel()
            self._waiter = self._reader = None

    @property
    def reusable(self) -> bool:
        return not self.closed and self._transport is not None and not self._buffer

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    # --- internals ------------------------------------------------------------------------

    def _end(self) -> None:
        self.closed = True
        if self._reader is not None:
            self._advance(closed=True)

    def _advance(self, closed: bool) -> None:
        waiter, reader = self._waiter, self._reader
        if waiter is None or reader is None or waiter.done():
            return
        try:
            answer = reader.feed(self._buffer, closed)
        except _ProtocolViolation as exc:
            self.close()
            waiter.set_exception(HttpConnectionError(f"protocol error: {exc}"))
            return
        if answer is None:
            return
        if not reader.keep_alive or self._buffer:
            self.close()
        self._reader = None
        waiter.set_result(answer)

    def _time_out(self, waiter: asyncio.Future[Answer]) -> None:
        if not waiter.done():
            waiter.set_exception(HttpTimeout("no complete answer in time"))
        if self._transport is not None:
            self._transport.abort()  # the answer may still come: never reuse this one
        self.closed = True


BeforeSend = Callable[[], Awaitable[None]]
OnAnswer = Callable[[Answer], None]


class HttpPool:
    """Keep-alive connections to one origin; `request()` sends one request and reads its answer.

    Share one instance: it bounds the connections. Raises HttpTimeout or HttpConnectionError
    (both in consumer.errors); an HTTP error status is an Answer like any other.
    """

    def __init__(
        self,
        base_url: str,
        max_connections: int,
        timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        headers: dict[str, str] | None = None,
        before_send: BeforeSend | None = None,
        on_answer: OnAnswer | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
            raise ValueError("not an http(s) URL with a host and no user:password@")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = f"{parts.scheme}://{parts.netloc}"
        self._ssl = ssl_context if self._https else None
        if self._https and self._ssl is None:
            self._ssl = ssl.create_default_context()
        self._timeout = timeout
        self._head = _static_head(parts.netloc, headers or {})
        self._before_send = before_send
        self._on_answer = on_answer
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._closed = False

    async def request(
        self, method: str, url: str, body: bytes = b"", content_type: str | None = None
    ) -> Answer:
        """Send `method url` (an absolute URL on this pool's origin) and read the answer."""
        data = self._encode(method, url, body, content_type)
        if self._before_send is not None:
            await self._before_send()  # first without a connection, so a long wait holds none
        await self._acquire()
        try:
            connection = await self._connection()
            try:
                if self._before_send is not None:
                    await self._before_send()  # again: it may have changed while we waited
                    if not connection.reusable:  # the peer closed it meanwhile
                        connection.close()
                        connection = await self._connection()
                answer = await connection.exchange(data, self._timeout)
            except BaseException:
                connection.close()
                raise
            if self._on_answer is not None:
                self._on_answer(answer)
            if connection.reusable and not self._closed:
                self._idle.append(connection)
            else:
                connection.close()  # spent, or the pool closed while it was busy
            return answer
        finally:
            self._slots.release()

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    # --- internals ------------------------------------------------------------------------

    def _encode(self, method: str, url: str, body: bytes, content_type: str | None) -> bytes:
        target = url[len(self._prefix) :] if url.startswith(self._prefix) else ""
        if not _TARGET.match(target):
            raise ValueError("the URL is not on this pool's origin or holds unsafe characters")
        head = f"{method} {target} HTTP/1.1\r\n{self._head}"
        if content_type is not None:
            head += f"Content-Type: {_checked(content_type)}\r\n"
        if body or method in ("POST", "PUT", "PATCH"):
            head += f"Content-Length: {len(body)}\r\n"
        return (head + "\r\n").encode("ascii") + body

    async def _acquire(self) -> None:
        if not self._slots.locked():  # the common case: no suspension, no timer
            await self._slots.acquire()
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise HttpTimeout("no free connection in time") from None

    async def _connection(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable:
                return connection
        if self._closed:
            raise HttpConnectionError("the pool is closed")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                _, protocol = await loop.create_connection(
                    _Connection,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except TimeoutError:
            raise HttpTimeout("connect timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise HttpConnectionError(f"connect failed: {type(exc).__name__}") from exc
        return protocol


def _checked(value: str) -> str:
    if not _HEADER_VALUE.match(value):
        raise ValueError("a header value holds control characters")
    return value


def _static_head(netloc: str, headers: dict[str, str]) -> str:
    lines = [f"Host: {netloc}", "User-Agent: profile-consumer", "Accept-Encoding: identity"]
    for name, value in headers.items():
        if not re.fullmatch(r"[A-Za-z0-9-]+", name):
            raise ValueError(f"bad header name {name!r}")
        lines.append(f"{name}: {_checked(value)}")
    return "".join(f"{line}\r\n" for line in lines)
