"""A faithful stand-in for Adobe Target's Single Profile Update API, served on loopback.

The demo, the integration tests and the benchmarks talk to this server exactly as they would
talk to ``https://<clientCode>.tt.omtrdc.net``: a real HTTP/1.1 server (keep-alive,
``Content-Length`` bodies) running an asyncio event loop in a background thread, so artificial
latency on one connection never blocks another.

What Adobe documents, enforced as documented:

* ``/m2/{client_code}/profile/update``, GET (query string) or POST (query string merged with an
  ``application/x-www-form-urlencoded`` body), parameters URL-encoded as UTF-8.
* Exactly one identity, ``mbox3rdPartyId`` or ``mboxPC``; ``mbox3rdPartyId`` at most 256
  characters without ``+`` or ``/``; attributes are ``profile.<name>`` (names at most 128
  characters).
* 8 KB for a GET, 60 KB for a POST; the XML success response; the optional Bearer token.
* A quota of accepted updates over a rolling window.

Where Adobe documents nothing, the simulator's choices (clients must not rely on them being
Target's, only on them being reasonable):

* Status codes: 404 unknown path or client code, 405 other methods, 401 missing or wrong token,
  400 invalid parameters (XML ``success`` false with a message), 413 POST body over 61,440 bytes
  (the connection is closed, the body is not read), 414 GET whose full URL
  (``scheme://`` + ``Host`` header + request target) exceeds 8,192 bytes, 415 a non-empty body
  that is not form-encoded, 429 over quota with ``Retry-After`` = whole seconds (at least 1)
  until enough in-window updates leave the window, 431 request head over 64 KiB.
* Checks run in this order, first refusal wins: down/reset, 413, injected 429, injected 503,
  405, 404, 401, 414, 415, 400, quota 429; else 200. Every answered update request is recorded
  (``ReceivedUpdate``), with what could be parsed from it; resets are only counted.
* Duplicate parameter names (also across query string and body), unknown non-``profile.``
  parameters and empty attribute names are 400: this is what lets tests detect parameter
  injection. The real API may silently accept some of these.
* Any identity is accepted (the real API only updates profiles that exist).
* Injected faults, drawn per request from ``random.Random(seed)`` in this fixed order, four
  draws per request whatever the ratios (so a seed replays the same sequence): connection
  reset (RST: ``SO_LINGER`` (1, 0) then close; nothing recorded), 429, 503, latency spike.
  ``down`` resets every update connection, including those idle in keep-alive or waiting out
  latency. Latency applies to every update response, injected errors included.
* Injected 429s send ``retry_after_seconds`` as given: an integer when whole, else a decimal
  (``0.25``) so tests can retry quickly; HTTP only defines integers, so clients should parse both.
* ``early_requests``: the server remembers the latest "not before" instant it has told any
  client (time a 429 was written + its Retry-After); an update request arriving before it counts,
  unless it arrived within ``early_grace_seconds`` (default 50 ms) of that 429 being written:
  a client may have started such a request before it could learn of the 429 (even on the same
  connection, when the request was waiting in its pool for a free connection).
* Admin endpoints under ``/_sim/`` (records, profiles, stats, config, reset) are never subject
  to faults, tokens or ``down``, so an out-of-process test can always steer the server.

Run it on its own with ``python -m consumer.simulator --port 8080``: the first line on stdout is
the URL it listens on; SIGINT or SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import dataclasses
import hmac
import json
import logging
import math
import random
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from types import FrameType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit
from xml.sax.saxutils import escape

from consumer.service import Service

__all__ = [
    "ReceivedUpdate",
    "SimulatorConfig",
    "TargetSimulator",
    "main",
]

log = logging.getLogger(__name__)

MAX_GET_URL_BYTES = 8192
MAX_POST_BODY_BYTES = 61440
MAX_HEAD_BYTES = 64 * 1024
MAX_ADMIN_BODY_BYTES = 1024 * 1024
LINGER_BYTES = 16 * 1024 * 1024  # unread request bytes drained after an early refusal
LINGER_SECONDS = 2.0
MAX_THIRD_PARTY_ID_CHARS = 256
MAX_ATTRIBUTE_NAME_CHARS = 128
IDENTITY_PARAMS = ("mbox3rdPartyId", "mboxPC")
PROFILE_PREFIX = "profile."
ADMIN_PREFIX = "/_sim/"
SUCCESS_MESSAGE = "Request successfully submitted"
XML = "text/xml"
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


@dataclass
class SimulatorConfig:
    """Behaviour of the simulator; change it at run time with `TargetSimulator.configure`."""

    client_code: str | None = None  # None: accept any client code in the path
    quota_limit: int | None = None  # rolling quota of ACCEPTED updates; None: unlimited
    quota_window_seconds: float = 86400.0
    latency_seconds: float = 0.0  # added to every update response
    latency_spike_seconds: float = 0.0  # extra latency on a `latency_spike_ratio` share
    latency_spike_ratio: float = 0.0
    error_5xx_ratio: float = 0.0  # share answered 503
    error_429_ratio: float = 0.0  # share answered 429 with Retry-After
    retry_after_seconds: float = 1.0  # Retry-After of injected 429s (quota 429s compute theirs)
    reset_ratio: float = 0.0  # share whose connection is reset (RST, no response)
    require_token: str | None = None  # set: `Authorization: Bearer <token>` required, else 401
    down: bool = False  # True: every update connection is reset at once (an outage)
    seed: int | None = None
    max_records: int | None = None  # keep only the latest N records (long benchmarks); counters
    # and profiles are unaffected
    # Requests arriving this soon after a 429 was written were already on the wire when the
    # client could learn of it: they are not counted as early.
    early_grace_seconds: float = 0.05


_RATIOS = ("latency_spike_ratio", "error_5xx_ratio", "error_429_ratio", "reset_ratio")
_SECONDS = (
    "early_grace_seconds",
    "quota_window_seconds",
    "latency_seconds",
    "latency_spike_seconds",
    "retry_after_seconds",
)
_OPTIONAL_INTS = ("quota_limit", "seed", "max_records")
_OPTIONAL_STRS = ("client_code", "require_token")


def _validate_config(config: SimulatorConfig) -> None:
    """Reject values of the wrong type or range (admin JSON is untrusted input)."""
    problems: list[str] = []
    for name in _RATIOS + _SECONDS:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            problems.append(f"{name} must be a non-negative number, got {value!r}")
        elif name in _RATIOS and value > 1:
            problems.append(f"{name} must be between 0 and 1, got {value!r}")
    for name in _OPTIONAL_INTS:
        value = getattr(config, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(f"{name} must be an integer or null, got {value!r}")
    for name in _OPTIONAL_STRS:
        value = getattr(config, name)
        if value is not None and not isinstance(value, str):
            problems.append(f"{name} must be a string or null, got {value!r}")
    if not isinstance(config.down, bool):
        problems.append(f"down must be a boolean, got {config.down!r}")
    if config.quota_window_seconds == 0:
        problems.append("quota_window_seconds must be positive")
    if problems:
        raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class ReceivedUpdate:
    """One update request the simulator answered (accepted or not)."""

    at: float  # clock() when handled
    method: str  # GET or POST (other methods are recorded as sent, with 405)
    identity_type: str  # "mbox3rdPartyId" or "mboxPC"; "" when the request had none
    identity: str
    attributes: dict[str, str]  # profile.X=v -> {"X": "v"}
    status: int  # HTTP status answered
    accepted: bool  # counted as an applied update (2xx with success true)


# --- HTTP/1.1 plumbing ---------------------------------------------------------------------


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


def _xml(success: bool, message: str, pc_id: str | None = None) -> bytes:
    """The Target response document; pcId only on success, as Adobe shows it."""
    pc = f"<pcId>{escape(pc_id or '')}</pcId>" if success else ""
    flag = "true" if success else "false"
    text = f"<response><success>{flag}</success>{pc}<message>{escape(message)}</message></response>"
    return text.encode("utf-8")


def _failure(status: int, message: str, **headers: str) -> _Response:
    return _Response(status, _xml(False, message), headers=dict(headers))


def _json_response(payload: object, status: int = 200) -> _Response:
    return _Response(status, json.dumps(payload).encode("utf-8"), content_type=JSON)


def _format_retry_after(seconds: float) -> str:
    """Whole seconds as an integer (HTTP's form); fractions kept so tests can retry fast."""
    if float(seconds).is_integer():
        return str(int(seconds))
    return f"{seconds:.3f}".rstrip("0")


class _Connection:
    """One client connection: writes responses and can be reset with an RST."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.serves_updates = False  # `down` resets only connections used for updates

    async def send(self, response: _Response, keep_alive: bool) -> None:
        if self.writer.transport.is_closing():
            raise ConnectionResetError("connection was reset while the response was pending")
        self.writer.write(response.encode(keep_alive))
        await self.writer.drain()

    async def linger(self, reader: asyncio.StreamReader) -> None:
        """Half-close, then drain what the client is still sending (bounded in bytes and time).

        Closing with unread request bytes makes the kernel send an RST that can destroy the
        413/431 we just wrote before the client reads it.
        """
        try:
            if self.writer.can_write_eof():
                self.writer.write_eof()
            async with asyncio.timeout(LINGER_SECONDS):
                remaining = LINGER_BYTES
                while remaining > 0:
                    chunk = await reader.read(min(65536, remaining))
                    if not chunk:
                        break
                    remaining -= len(chunk)
        except (TimeoutError, OSError):
            pass  # the client is gone or too slow: closing is all that is left

    def reset(self) -> None:
        """Abort with an RST rather than a FIN, as a crashed or overloaded peer would."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass  # already closed by the peer: aborting is all that is left
        self.writer.transport.abort()


# --- Target semantics ----------------------------------------------------------------------


@dataclass
class _Update:
    """What a request asked for, parsed best-effort so rejected requests are still recorded."""

    identity_type: str = ""
    identity: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # the 400 message, None when valid


@dataclass
class _Draws:
    """The per-request fault dice, thrown together so a seed replays exactly."""

    reset: bool
    error_429: bool
    error_5xx: bool
    spike: bool


def _parse_update(query: str, body: bytes | None) -> _Update:
    """Apply the documented parameter rules to the query string and the form body."""
    try:
        pairs = _pairs(query) + (_pairs(body.decode("utf-8")) if body else [])
    except UnicodeDecodeError:
        return _Update(error="parameters are not valid UTF-8")
    update = _Update()
    seen: set[str] = set()
    for name, value in pairs:
        if name in seen:
            update.error = update.error or f"duplicate parameter: {name}"
        seen.add(name)
        if name in IDENTITY_PARAMS:
            if update.identity_type and update.identity_type != name:
                update.error = update.error or "exactly one of mbox3rdPartyId or mboxPC is allowed"
            update.identity_type, update.identity = name, value
        elif name.startswith(PROFILE_PREFIX):
            update.attributes[name[len(PROFILE_PREFIX) :]] = value
        else:
            update.error = update.error or f"unknown parameter: {name}"
    update.error = update.error or _identity_error(update) or _attribute_error(update)
    return update


def _pairs(text: str) -> list[tuple[str, str]]:
    return parse_qsl(
        text, keep_blank_values=True, strict_parsing=False, encoding="utf-8", errors="strict"
    )


def _identity_error(update: _Update) -> str | None:
    if not update.identity_type:
        return "mbox3rdPartyId or mboxPC is required"
    if not update.identity:
        return f"{update.identity_type} must not be empty"
    if update.identity_type == "mbox3rdPartyId":
        if len(update.identity) > MAX_THIRD_PARTY_ID_CHARS:
            return f"mbox3rdPartyId is longer than {MAX_THIRD_PARTY_ID_CHARS} characters"
        if "+" in update.identity or "/" in update.identity:
            return "mbox3rdPartyId must not contain '+' or '/'"
    return None


def _attribute_error(update: _Update) -> str | None:
    for name in update.attributes:
        if not name:
            return "empty profile attribute name"
        if len(name) > MAX_ATTRIBUTE_NAME_CHARS:
            return f"profile attribute name longer than {MAX_ATTRIBUTE_NAME_CHARS} characters"
    return None


def _is_update_path(path: str, client_code: str | None) -> bool:
    parts = path.split("/")
    if len(parts) != 5 or parts[0] or parts[1] != "m2" or parts[3:] != ["profile", "update"]:
        return False
    return bool(parts[2]) and (client_code is None or parts[2] == client_code)


def _max_in_window(times: Sequence[float], window: float) -> int:
    """Largest number of sorted `times` inside any interval (t - window, t]."""
    if window <= 0:
        return 0
    best = 0
    start = 0
    for end, t in enumerate(times):
        while times[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


# --- the server ----------------------------------------------------------------------------


class TargetSimulator(Service):
    """Adobe Target Single Profile Update API on loopback, with quota and fault injection.

    Thread-safe: the server runs its own event loop in a background thread; every public
    method may be called from any other thread.
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._config = dataclasses.replace(config) if config else SimulatorConfig()
        _validate_config(self._config)
        self.host = host
        self.port = port
        self._clock = clock
        self._ssl = ssl_context
        # RLock: wait_for evaluates predicates under the lock and they call our getters.
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._rng = random.Random(self._config.seed)  # noqa: S311 - fault dice, not crypto
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._connections: set[_Connection] = set()
        self._clear_state()

    def _clear_state(self) -> None:
        self._records: deque[ReceivedUpdate] = deque(maxlen=self._config.max_records)
        self._profiles: dict[tuple[str, str], dict[str, str]] = {}
        self._accepted_times: list[float] = []  # sorted; drives quota and window stats
        self._received = 0
        self._resets = 0
        self._rejected: Counter[int] = Counter()
        self._not_before = -math.inf
        self._told_at = -math.inf
        self._active: Counter[tuple[str, str]] = Counter()
        self._overlaps = 0
        self._early = 0

    # -- lifecycle

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:43123`` (``https`` with an SSL context)."""
        scheme = "https" if self._ssl else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def start(self) -> None:
        """Start serving; returns once listening. Port 0 picks a free port (kept on restart)."""
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        self._ready.clear()
        self._startup_error = None
        self._thread = threading.Thread(
            target=self._thread_main, name="target-simulator", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError(f"simulator failed to start: {self._startup_error}") from (
                self._startup_error
            )

    def stop(self) -> None:
        """Stop serving and close every connection; records are kept."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None:
            loop.call_soon_threadsafe(stopping.set)
        thread.join()
        self._thread = None
        self._loop = None

    def serve_forever(self) -> None:
        """Start, then block until SIGINT or SIGTERM (main thread only; for the CLI)."""
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            if self._thread is None:
                self.start()
            stop.wait()
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported to start(), or logged once serving
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
            else:
                log.exception("simulator event loop crashed")

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(
            self._handle_connection,
            self.host,
            self.port,
            limit=MAX_HEAD_BYTES,
            ssl=self._ssl,
            backlog=1024,
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for conn in list(self._connections):
                conn.writer.transport.abort()
            await server.wait_closed()

    # -- run-time control and inspection

    def configure(self, **changes: object) -> None:
        """Change `SimulatorConfig` fields at run time; unknown names or bad values raise."""
        known = {f.name for f in dataclasses.fields(SimulatorConfig)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown simulator setting(s): {', '.join(unknown)}")
        with self._lock:
            updated = dataclasses.replace(self._config, **changes)  # type: ignore[arg-type]
            _validate_config(updated)
            self._config = updated
            if "seed" in changes:
                self._rng.seed(updated.seed)
            if "max_records" in changes:
                self._records = deque(self._records, maxlen=updated.max_records)
            going_down = updated.down
        if going_down and self._loop is not None:
            self._loop.call_soon_threadsafe(self._reset_update_connections)

    def config(self) -> SimulatorConfig:
        """A copy of the current configuration."""
        with self._lock:
            return dataclasses.replace(self._config)

    def received(self) -> list[ReceivedUpdate]:
        """Snapshot of the recorded update requests, oldest first."""
        with self._lock:
            return list(self._records)

    def profiles(self) -> dict[tuple[str, str], dict[str, str]]:
        """(identity_type, identity) -> attributes merged from accepted updates, in order."""
        with self._lock:
            return {key: dict(attrs) for key, attrs in self._profiles.items()}

    def accepted_count(self) -> int:
        """Number of accepted updates since start or the last `reset`."""
        with self._lock:
            return len(self._accepted_times)

    def max_accepted_in_window(self, window_seconds: float) -> int:
        """Most accepted updates in any interval (t - window_seconds, t]."""
        with self._lock:
            return _max_in_window(self._accepted_times, window_seconds)

    def early_requests(self) -> int:
        """Update requests that arrived before a Retry-After this server gave had passed."""
        with self._lock:
            return self._early

    def stats(self) -> dict[str, Any]:
        """The counters served by ``GET /_sim/stats``."""
        with self._lock:
            return {
                "received": self._received,
                "accepted": len(self._accepted_times),
                "rejected_by_status": {str(k): v for k, v in sorted(self._rejected.items())},
                "max_accepted_in_window": _max_in_window(
                    self._accepted_times, self._config.quota_window_seconds
                ),
                "early_requests": self._early,
                "overlapping_requests": self._overlaps,
                "resets": self._resets,
            }

    def wait_for(self, predicate: Callable[[TargetSimulator], bool], timeout: float) -> bool:
        """Block until `predicate(self)` holds (re-checked on every request) or `timeout`."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    def reset(self) -> None:
        """Forget records, profiles, quota usage and counters (the configuration stays)."""
        with self._lock:
            self._clear_state()
            self._changed.notify_all()

    # -- connection handling (event-loop thread)

    async def _handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = _Connection(writer)
        self._connections.add(conn)
        try:
            while await self._serve_one(reader, conn):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError):
            pass  # the client went away or we reset it: nothing left to answer
        except asyncio.CancelledError:
            # stop() while this connection waits (latency, keep-alive): ending quietly, since
            # asyncio's stream callback logs an error for every cancelled handler task.
            pass
        except Exception:
            log.exception("simulator failed to serve a request")
        finally:
            self._connections.discard(conn)
            writer.transport.abort()

    async def _serve_one(self, reader: asyncio.StreamReader, conn: _Connection) -> bool:
        """Serve one request; False when the connection must close."""
        head = await self._read_head(reader, conn)
        if head is None:
            return False
        if head.path.startswith(ADMIN_PREFIX):
            return await self._serve_admin(reader, conn, head)
        return await self._serve_update(reader, conn, head)

    async def _read_head(self, reader: asyncio.StreamReader, conn: _Connection) -> _Head | None:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None  # clean close between requests
        except asyncio.LimitOverrunError:
            await conn.send(_failure(431, "request head too large"), keep_alive=False)
            await conn.linger(reader)
            return None
        try:
            return _parse_head(raw)
        except _BadRequest as exc:
            await conn.send(_failure(exc.status, str(exc)), keep_alive=False)
            return None

    @staticmethod
    async def _read_body(reader: asyncio.StreamReader, head: _Head, limit: int) -> bytes | None:
        """The body, or None when it exceeds `limit` (left unread: the connection closes)."""
        if head.content_length > limit:
            return None
        return await reader.readexactly(head.content_length)

    async def _serve_update(
        self, reader: asyncio.StreamReader, conn: _Connection, head: _Head
    ) -> bool:
        conn.serves_updates = True
        at, config, draws = self._arrive()
        if config.down or draws.reset:
            self._note_reset()
            conn.reset()
            return False
        body = await self._read_body(reader, head, MAX_POST_BODY_BYTES)
        response, key = self._decide(head, body, at, config, draws)
        # The request counts as being answered until its response is written: a client that
        # waits for the answer cannot have sent the next one for the profile before that.
        self._begin(key)
        try:
            delay = config.latency_seconds + (config.latency_spike_seconds if draws.spike else 0.0)
            if delay > 0:
                await asyncio.sleep(delay)
        finally:
            self._end(key)
        if response.retry_after is not None:
            self._note_retry_after(response.retry_after)
        await conn.send(response, head.keep_alive)
        if response.close:
            await conn.linger(reader)
        return head.keep_alive and not response.close

    def _arrive(self) -> tuple[float, SimulatorConfig, _Draws]:
        """Timestamp the request, count it early if it is, and throw the fault dice."""
        with self._lock:
            at = self._clock()
            if self._told_at + self._config.early_grace_seconds <= at < self._not_before:
                self._early += 1
            config = self._config
            rng = self._rng
            draws = _Draws(
                reset=rng.random() < config.reset_ratio,
                error_429=rng.random() < config.error_429_ratio,
                error_5xx=rng.random() < config.error_5xx_ratio,
                spike=rng.random() < config.latency_spike_ratio,
            )
            return at, config, draws

    def _note_reset(self) -> None:
        with self._lock:
            self._resets += 1
            self._changed.notify_all()

    def _note_retry_after(self, seconds: float) -> None:
        with self._lock:
            now = self._clock()
            self._told_at = now
            self._not_before = max(self._not_before, now + seconds)

    def _reset_update_connections(self) -> None:
        for conn in list(self._connections):
            if conn.serves_updates:
                conn.reset()

    def _decide(
        self, head: _Head, body: bytes | None, at: float, config: SimulatorConfig, draws: _Draws
    ) -> tuple[_Response, tuple[str, str]]:
        """Answer one update request and record it, atomically with the quota check."""
        update = _parse_update(head.query, body if head.method == "POST" else None)
        with self._lock:
            response = self._check_request(head, body, config, draws, update)
            if response is None:
                response = self._check_quota(at, config)
            accepted = response is None
            if response is None:
                response = _Response(200, _xml(True, SUCCESS_MESSAGE, self._pc_id(update)))
            self._record(at, head.method, update, response.status, accepted)
            return response, (update.identity_type, update.identity)

    def _begin(self, key: tuple[str, str]) -> None:
        """Count a request for a profile that already has one being answered (an overlap)."""
        with self._lock:
            if self._active[key]:
                self._overlaps += 1
            self._active[key] += 1

    def _end(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._active[key] -= 1
            if not self._active[key]:
                del self._active[key]

    def overlapping_requests(self) -> int:
        """Requests that arrived while another for the same profile was still being answered."""
        with self._lock:
            return self._overlaps

    def _check_request(
        self,
        head: _Head,
        body: bytes | None,
        config: SimulatorConfig,
        draws: _Draws,
        update: _Update,
    ) -> _Response | None:
        """Every refusal except the quota, in the order documented above; None: acceptable."""
        if body is None:
            return dataclasses.replace(
                _failure(413, f"body exceeds {MAX_POST_BODY_BYTES} bytes"), close=True
            )
        if draws.error_429:
            seconds = config.retry_after_seconds
            response = _failure(
                429, "too many requests (injected)", **{"Retry-After": _format_retry_after(seconds)}
            )
            return dataclasses.replace(response, retry_after=seconds)
        if draws.error_5xx:
            return _failure(503, "service unavailable (injected)")
        if head.method not in ("GET", "POST"):
            return _failure(405, "only GET and POST are allowed", Allow="GET, POST")
        if not _is_update_path(head.path, config.client_code):
            return _failure(404, "not found")
        if config.require_token is not None and not self._authorized(head, config.require_token):
            return _failure(
                401, "missing or invalid profile API token", **{"WWW-Authenticate": "Bearer"}
            )
        if head.method == "GET" and self._full_url_bytes(head) > MAX_GET_URL_BYTES:
            return _failure(414, f"URL exceeds {MAX_GET_URL_BYTES} bytes")
        content_type = head.headers.get("content-type", "").split(";")[0].strip().lower()
        if head.method == "POST" and body and content_type != FORM:
            return _failure(415, f"POST body must be {FORM}")
        if update.error is not None:
            return _failure(400, update.error)
        return None

    def _check_quota(self, at: float, config: SimulatorConfig) -> _Response | None:
        """429 when the rolling window already holds `quota_limit` accepted updates."""
        limit = config.quota_limit
        if limit is None:
            return None
        times = self._accepted_times
        first_in_window = bisect.bisect_right(times, at - config.quota_window_seconds)
        in_window = len(times) - first_in_window
        if in_window < limit:
            return None
        # One slot frees when enough of the oldest in-window updates leave (limit may have
        # been lowered below the current usage, hence not always the very oldest).
        if limit > 0:
            leaves_at = times[first_in_window + in_window - limit] + config.quota_window_seconds
            seconds = float(max(1, math.ceil(leaves_at - at)))
        else:
            seconds = float(max(1, math.ceil(config.quota_window_seconds)))
        response = _failure(
            429, "profile update quota exceeded", **{"Retry-After": _format_retry_after(seconds)}
        )
        return dataclasses.replace(response, retry_after=seconds)

    @staticmethod
    def _authorized(head: _Head, token: str) -> bool:
        supplied = head.headers.get("authorization", "")
        return hmac.compare_digest(supplied.encode(), f"Bearer {token}".encode())

    def _full_url_bytes(self, head: _Head) -> int:
        scheme = "https" if self._ssl else "http"
        host = head.headers.get("host") or f"{self.host}:{self.port}"
        if "://" in head.target:  # absolute-form already carries scheme and host
            return len(head.target.encode("latin-1"))
        return len(f"{scheme}://{host}{head.target}".encode("latin-1"))

    @staticmethod
    def _pc_id(update: _Update) -> str:
        return update.identity if update.identity_type == "mboxPC" else ""

    def _record(self, at: float, method: str, update: _Update, status: int, accepted: bool) -> None:
        """Store the record and wake waiters; the caller holds the lock."""
        record = ReceivedUpdate(
            at=at,
            method=method,
            identity_type=update.identity_type,
            identity=update.identity,
            attributes=dict(update.attributes),
            status=status,
            accepted=accepted,
        )
        self._records.append(record)
        self._received += 1
        if accepted:
            bisect.insort(self._accepted_times, at)
            key = (update.identity_type, update.identity)
            self._profiles.setdefault(key, {}).update(update.attributes)
        else:
            self._rejected[status] += 1
        self._changed.notify_all()

    # -- admin endpoints (never faulted)

    async def _serve_admin(
        self, reader: asyncio.StreamReader, conn: _Connection, head: _Head
    ) -> bool:
        body = await self._read_body(reader, head, MAX_ADMIN_BODY_BYTES)
        if body is None:
            response = dataclasses.replace(
                _json_response({"error": "body too large"}, 413), close=True
            )
        else:
            response = self._admin(head.method, head.path, body)
        await conn.send(response, head.keep_alive)
        if response.close:
            await conn.linger(reader)
        return head.keep_alive and not response.close

    def _admin(self, method: str, path: str, body: bytes) -> _Response:
        route = (method, path.removeprefix(ADMIN_PREFIX).rstrip("/"))
        if route == ("GET", "records"):
            return _json_response([dataclasses.asdict(r) for r in self.received()])
        if route == ("GET", "profiles"):
            return _json_response({f"{t}:{i}": a for (t, i), a in self.profiles().items()})
        if route == ("GET", "stats"):
            return _json_response(self.stats())
        if route == ("GET", "config"):
            return _json_response(dataclasses.asdict(self.config()))
        if route == ("POST", "config"):
            return self._admin_configure(body)
        if route == ("POST", "reset"):
            self.reset()
            return _json_response({"reset": True})
        return _json_response({"error": f"no admin route {method} {path}"}, 404)

    def _admin_configure(self, body: bytes) -> _Response:
        try:
            changes = json.loads(body or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object of settings")
            self.configure(**changes)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            return _json_response({"error": str(exc)}, 400)
        return _json_response(dataclasses.asdict(self.config()))


# --- command line ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's options, shared by `python -m consumer.simulator` and the CLI."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--client-code")
    parser.add_argument("--quota-limit", type=int)
    parser.add_argument("--quota-window-seconds", type=float, default=86400.0)
    parser.add_argument("--latency-seconds", type=float, default=0.0)
    parser.add_argument("--require-token")
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--config-json", default="{}", help="any other SimulatorConfig fields, as a JSON object"
    )
    parser.add_argument("--ssl-cert", help="PEM certificate: serve https")
    parser.add_argument("--ssl-key", help="PEM private key for --ssl-cert")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator until SIGINT/SIGTERM; prints its URL as the first stdout line."""
    parser = argparse.ArgumentParser(
        prog="python -m consumer.simulator",
        description="Adobe Target Single Profile Update API simulator (loopback).",
    )
    add_arguments(parser)
    return serve(parser.parse_args(argv))


def serve(args: argparse.Namespace) -> int:
    """Run the simulator from parsed options until SIGINT/SIGTERM; prints its URL first."""
    config = SimulatorConfig(
        client_code=args.client_code,
        quota_limit=args.quota_limit,
        quota_window_seconds=args.quota_window_seconds,
        latency_seconds=args.latency_seconds,
        require_token=args.require_token,
        seed=args.seed,
    )
    context = None
    if args.ssl_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.ssl_cert, args.ssl_key)
    simulator = TargetSimulator(config, host=args.host, port=args.port, ssl_context=context)
    simulator.configure(**json.loads(args.config_json))
    simulator.start()
    print(simulator.url, flush=True)
    simulator.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
