"""`TargetSimulator`: the server itself, its lifecycle and its connections.

The asyncio event loop runs in a background thread, so artificial latency on one connection
never blocks another, and tests steer the server from their own thread.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import threading
import time
from collections.abc import Callable
from types import FrameType

from devtools.service import Service
from devtools.simulator.admin import ADMIN_PREFIX, serve_admin
from devtools.simulator.bulk import bulk_route
from devtools.simulator.bulk_http import serve_bulk
from devtools.simulator.config import SimulatorConfig
from devtools.simulator.http import (
    MAX_HEAD_BYTES,
    _BadRequest,
    _Head,
    _parse_head,
    _read_body,
    _ServerConnection,
)
from devtools.simulator.rules import MAX_POST_BODY_BYTES, _failure
from devtools.simulator.state import SimulatorState

log = logging.getLogger(__name__)


class TargetSimulator(SimulatorState, Service):
    """Adobe Target's Single and Bulk Profile Update APIs on loopback, with quota and faults.

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
        super().__init__(config, clock)
        self.host = host
        self.port = port
        self._ssl = ssl_context
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._connections: set[_ServerConnection] = set()

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

    def configure(self, **changes: object) -> None:
        """Change `SimulatorConfig` fields at run time; `down` resets update connections now."""
        going_down = self._apply_config(changes).down
        if going_down and self._loop is not None:
            self._loop.call_soon_threadsafe(self._reset_update_connections)

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

    # -- connection handling (event-loop thread)

    async def _handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = _ServerConnection(writer)
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

    async def _serve_one(self, reader: asyncio.StreamReader, conn: _ServerConnection) -> bool:
        """Serve one request; False when the connection must close."""
        head = await self._read_head(reader, conn)
        if head is None:
            return False
        if head.path.startswith(ADMIN_PREFIX):
            return await serve_admin(self, reader, conn, head)
        route = bulk_route(head.path)
        if route is not None:
            return await serve_bulk(self, reader, conn, head, route=route, origin=self._origin())
        return await self._serve_update(reader, conn, head)

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader, conn: _ServerConnection) -> _Head | None:
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

    async def _serve_update(
        self, reader: asyncio.StreamReader, conn: _ServerConnection, head: _Head
    ) -> bool:
        conn.serves_updates = True
        at, config, draws = self._arrive()
        if config.down or draws.reset:
            self._note_reset()
            conn.reset()
            return False
        body = await _read_body(reader, head, MAX_POST_BODY_BYTES)
        response, key = self._decide(
            head, body, at, config=config, draws=draws, origin=self._origin()
        )
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
        return await conn.finish(reader, head, response)

    def _origin(self) -> str:
        """Scheme and listening address, counted in a GET's URL when ``Host`` is missing."""
        return f"{'https' if self._ssl else 'http'}://{self.host}:{self.port}"

    def _reset_update_connections(self) -> None:
        for conn in list(self._connections):
            if conn.serves_updates:
                conn.reset()
