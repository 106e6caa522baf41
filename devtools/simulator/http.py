"""The simulator's HTTP/1.1 server plumbing: request heads, responses, one client connection.

Only what Target's clients use: ``Content-Length`` bodies (no chunked requests) and keep-alive.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import unquote, urlsplit

MAX_HEAD_BYTES = 64 * 1024
LINGER_BYTES = 16 * 1024 * 1024  # unread request bytes drained after an early refusal
LINGER_SECONDS = 2.0
XML = "text/xml"
JSON = "application/json"


class _BadRequest(Exception):
    """The request head is not HTTP we can serve; answered, then the connection is closed."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


@dataclass
class _Head:
    method: str
    target: str  # raw request target, e.g. "/m2/cc/profile/update?x=1"
    path: str  # percent-decoded path
    query: str  # raw query string
    headers: dict[str, str]  # lower-cased names
    content_length: int
    keep_alive: bool


@dataclass
class _Response:
    status: int
    body: bytes
    content_type: str = XML
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False
    retry_after: float | None = None  # set on 429s: the "not before" we tell the client

    def encode(self, keep_alive: bool) -> bytes:
        """Serialise status line, headers and body in one buffer (one write per response)."""
        reason = HTTPStatus(self.status).phrase
        lines = [
            f"HTTP/1.1 {self.status} {reason}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: " + ("keep-alive" if keep_alive and not self.close else "close"),
        ]
        lines.extend(f"{name}: {value}" for name, value in self.headers.items())
        head = "\r\n".join(lines) + "\r\n\r\n"
        return head.encode("latin-1") + self.body


def _json_response(payload: object, status: int = 200) -> _Response:
    return _Response(status, json.dumps(payload).encode("utf-8"), content_type=JSON)


def _parse_head(raw: bytes) -> _Head:
    """Parse the request line and headers of one request (terminated by CRLF CRLF)."""
    text = raw.decode("latin-1").lstrip("\r\n")  # RFC 9112: ignore leading empty lines
    request_line, _, header_block = text.partition("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(400, "malformed request line")
    method, target, version = parts
    headers = _parse_headers(header_block)
    if "transfer-encoding" in headers:
        raise _BadRequest(501, "Transfer-Encoding is not supported; send Content-Length")
    split = urlsplit(target)
    return _Head(
        method=method,
        target=target,
        path=unquote(split.path),
        query=split.query,
        headers=headers,
        content_length=_content_length(headers),
        keep_alive=_keep_alive(version, headers.get("connection", "")),
    )


def _parse_headers(block: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split("\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(400, "malformed header line")
        key = name.lower()
        value = value.strip()
        if key == "content-length" and key in headers and headers[key] != value:
            raise _BadRequest(400, "conflicting Content-Length headers")
        headers[key] = value
    return headers


def _content_length(headers: dict[str, str]) -> int:
    raw = headers.get("content-length", "0")
    if not raw.isdigit():
        raise _BadRequest(400, "invalid Content-Length")
    return int(raw)


def _keep_alive(version: str, connection: str) -> bool:
    tokens = {token.strip().lower() for token in connection.split(",")}
    if version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


async def _read_body(reader: asyncio.StreamReader, head: _Head, limit: int) -> bytes | None:
    """The body, or None when it exceeds `limit` (left unread: the connection closes)."""
    if head.content_length > limit:
        return None
    return await reader.readexactly(head.content_length)


class _ServerConnection:
    """One client connection: writes responses and can be reset with an RST."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.serves_updates = False  # `down` resets only connections used for updates

    async def send(self, response: _Response, keep_alive: bool) -> None:
        if self.writer.transport.is_closing():
            raise ConnectionResetError("connection was reset while the response was pending")
        self.writer.write(response.encode(keep_alive))
        await self.writer.drain()

    async def linger(self, reader: asyncio.StreamReader, max_bytes: int = LINGER_BYTES) -> None:
        """Half-close, then drain what the client is still sending (bounded in bytes and time).

        Closing with unread request bytes makes the kernel send an RST that can destroy the
        413/431 we just wrote before the client reads it.
        """
        try:
            if self.writer.can_write_eof():
                self.writer.write_eof()
            async with asyncio.timeout(LINGER_SECONDS):
                remaining = max_bytes
                while remaining > 0:
                    chunk = await reader.read(min(65536, remaining))
                    if not chunk:
                        break
                    remaining -= len(chunk)
        except (TimeoutError, OSError):
            pass  # the client is gone or too slow: closing is all that is left

    async def finish(
        self,
        reader: asyncio.StreamReader,
        head: _Head,
        response: _Response,
        linger_bytes: int = LINGER_BYTES,
    ) -> bool:
        """Send `response`; True when the connection stays open for the next request."""
        await self.send(response, head.keep_alive)
        if response.close:
            await self.linger(reader, linger_bytes)
        return head.keep_alive and not response.close

    def reset(self) -> None:
        """Abort with an RST rather than a FIN, as a crashed or overloaded peer would."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass  # already closed by the peer: aborting is all that is left
        self.writer.transport.abort()
