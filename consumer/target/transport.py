"""httpx's own transport, wrapped: the Retry-After hold at the wire, and one stale-connection retry.

The hold is checked right before each request goes to the connection pool and set as soon as
an answer's headers arrive, before its body is read and its connection is free again (a task
that already passed the quota gate could otherwise take that connection and send first).

A request that fails on a reused keep-alive connection before any answer byte (the peer or a
NAT closed it while it was idle) is sent again at once on a fresh connection: a profile update
is idempotent, and the retry happens below the quota gate and the circuit, so it costs neither
a quota unit nor a circuit failure. Only once: a second failure is a real one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import httpx

# What a connection that died while idle looks like at the next request: the write breaks, the
# read finds the end of the stream, or the peer resets it. A timeout is not one of them.
_STALE = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
# A request extension: this request neither waits for nor sets the single-update hold.
UNHELD = "profile_consumer.unheld"


class Hold(Protocol):
    """consumer.target.client.RetryAfterHold, or a stand-in in tests."""

    async def before_send(self) -> None: ...

    def on_answer(self, status: int, headers: Mapping[str, str]) -> None: ...


class _Trace:
    """httpcore's `trace` extension: did this request open its own connection?"""

    __slots__ = ("connected",)

    def __init__(self) -> None:
        self.connected = False

    async def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.started":
            self.connected = True


class HeldTransport(httpx.AsyncBaseTransport):
    """Sends through `pooled`; the one retry goes through `fresh`, which keeps no idle one."""

    def __init__(
        self,
        *,
        pooled: httpx.AsyncBaseTransport,
        fresh: httpx.AsyncBaseTransport,
        hold: Hold | None = None,
    ) -> None:
        self._pooled = pooled
        self._fresh = fresh
        self._hold = hold
        self.stale_retries = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        trace = _Trace()
        request.extensions["trace"] = trace
        # Bulk calls have limits and holds of their own (consumer/bulk/limits.py).
        hold = None if request.extensions.get(UNHELD) else self._hold
        if hold is not None:
            await hold.before_send()
        try:
            response = await self._pooled.handle_async_request(request)
        except _STALE:
            if trace.connected:  # a fresh connection failed: not a stale one
                raise
            self.stale_retries += 1
            if hold is not None:
                await hold.before_send()
            del request.extensions["trace"]
            response = await self._fresh.handle_async_request(request)
        if hold is not None:
            hold.on_answer(response.status_code, response.headers)
        return response

    async def aclose(self) -> None:
        await self._pooled.aclose()
        await self._fresh.aclose()
