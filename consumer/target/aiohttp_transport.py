"""httpx-aiohttp below the one httpx.AsyncClient, mended where the send path needs it.

The maintained `httpx_aiohttp.AiohttpTransport` does the work (aiohttp speaks HTTP); this
subclass only builds its `aiohttp.ClientSession` and corrects what the send path relies on:

- **No resend of aiohttp's own.** aiohttp sends an idempotent request (a GET) a second time by
  itself when its connection fails, fresh or reused, below every hook of ours. A client
  middleware (public API) turns those two failures into an error aiohttp does not resend, so
  the one retry stays HeldTransport's: reused connections only, the hold checked first.
- **Reuse is reported** through httpx's `trace` extension, as httpcore reports it: aiohttp's
  `TraceConfig` says when a request opens its own connection (a ContextVar carries the
  request's trace callback there: aiohttp awaits its trace signals in the sending task).
- **Errors mapped by what happened**: a peer that hung up is `RemoteProtocolError` (not the
  `ConnectTimeout` of httpx-aiohttp 0.2), a reset `ReadError`, a framing error
  `RemoteProtocolError`, a timeout a timeout. Messages carry no URL.
- **A body not read to its end drops the connection** (the capped read in http.py).

The session is created on the first request, inside the running loop, as aiohttp requires.
"""

from __future__ import annotations

import contextvars
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any, NoReturn

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream
from multidict import CIMultiDict

Trace = Callable[[str, dict[str, Any]], Awaitable[None]]
# The `trace` extension of the request being sent by this task, if it has one.
_TRACE: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("aiohttp_trace", default=None)
# What httpcore emits when a request opens its own connection: HeldTransport listens for it.
CONNECTING = "connection.connect_tcp.started"


class NotResent(aiohttp.ClientConnectionError):
    """A connection failure aiohttp must not resend by itself (its cause is the real one)."""


async def _no_resend(
    request: aiohttp.ClientRequest,
    handler: Callable[[aiohttp.ClientRequest], Awaitable[aiohttp.ClientResponse]],
) -> aiohttp.ClientResponse:
    # aiohttp resends on exactly these two (aiohttp/client.py, `retry_persistent_connection`);
    # connector errors it never resends, and they keep their class.
    try:
        return await handler(request)
    except aiohttp.ClientConnectorError:
        raise
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
        raise NotResent(str(exc)) from exc


async def _on_connect(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: object
) -> None:
    trace = _TRACE.get()
    if trace is not None:
        await trace(CONNECTING, {})


def _trace_config() -> aiohttp.TraceConfig:
    config = aiohttp.TraceConfig()
    config.on_connection_create_start.append(_on_connect)
    return config


def session_factory(
    *, limit: int, keepalive: float | None, context: ssl.SSLContext
) -> Callable[[], aiohttp.ClientSession]:
    """A ClientSession for the send path; `keepalive=None` closes each connection after use."""

    def create() -> aiohttp.ClientSession:
        if keepalive is None:
            connector = aiohttp.TCPConnector(limit=limit, ssl=context, force_close=True)
        else:
            connector = aiohttp.TCPConnector(limit=limit, ssl=context, keepalive_timeout=keepalive)
        return aiohttp.ClientSession(
            connector=connector,
            trust_env=False,  # the proxy was chosen once, by consumer.target.proxy
            auto_decompress=False,  # we ask for identity and read raw bytes, capped
            cookie_jar=aiohttp.DummyCookieJar(),
            trace_configs=[_trace_config()],
            middlewares=(_no_resend,),
        )

    return create


class SendPathAiohttpTransport(AiohttpTransport):
    """httpx_aiohttp's transport over a session of ours, errors mapped, reuse reported."""

    def __init__(
        self,
        *,
        session: Callable[[], aiohttp.ClientSession],
        context: ssl.SSLContext,
        proxy: httpx.Proxy | None,
    ) -> None:
        super().__init__(verify=context, trust_env=False, proxy=proxy, client=session)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        token = _TRACE.set(request.extensions.get("trace"))
        headers = request.headers
        # httpx.Headers iterate in lower case: aiohttp is handed the names as they were given
        # (as httpcore sends them), for the peers and proxies that still mind.
        request.headers = CIMultiDict(  # type: ignore[assignment]
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in headers.raw
        )
        try:
            response = await super().handle_async_request(request)
        except (httpx.TransportError, aiohttp.ClientError, TimeoutError) as exc:
            _raise_mapped(exc)
        finally:
            request.headers = headers
            _TRACE.reset(token)
        stream = response.stream
        if isinstance(stream, AiohttpResponseStream):
            response.stream = _MappedStream(stream._aiohttp_response)
            # aiohttp's own multidict: httpx.Headers.get decodes and scans every header.
            coding = stream._aiohttp_response.headers.get("Transfer-Encoding")
        else:
            coding = response.headers.get("transfer-encoding")
        if coding is not None and coding.strip().lower() != "chunked":
            # We ask for identity, and h11 refuses any other coding too: aiohttp would read
            # such a body up to the end of the connection, as if it had no framing.
            await response.aclose()
            raise httpx.RemoteProtocolError(f"unsupported Transfer-Encoding: {coding[:40]!r}")
        return response


class _MappedStream(AiohttpResponseStream):
    """The answer's body read from aiohttp directly, its errors mapped (in place of the
    inherited iteration, not around it: one async generator less per answer); closing it
    early drops the connection."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        super().__init__(response)
        self._read_to_end = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._aiohttp_response.content.iter_chunked(self.CHUNK_SIZE):
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            _raise_mapped(exc)
        self._read_to_end = True

    async def aclose(self) -> None:
        if not self._read_to_end:
            # Given up on (over the cap, a timeout): whatever aiohttp has buffered or is still
            # to come, the connection is not trusted with another request.
            self._aiohttp_response.close()
        try:
            await super().aclose()
        except httpx.TransportError as exc:
            _raise_mapped(exc)


def _raise_mapped(exc: BaseException) -> NoReturn:
    """Raise the httpx error for what aiohttp raised (httpx_aiohttp's own mapping undone)."""
    original = exc.__cause__ if isinstance(exc, httpx.TransportError) else exc
    if isinstance(original, NotResent):
        original = original.__cause__
    if original is None or isinstance(original, httpx.TransportError):
        raise exc
    kind, detail = _kind(original)
    raise kind(detail) from original


def _kind(exc: BaseException) -> tuple[type[httpx.TransportError], str]:
    """Most specific aiohttp classes first: several derive from others."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return httpx.ConnectError, str(exc.certificate_error)
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return httpx.ProxyError, str(exc.os_error)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError, str(exc.os_error)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout, "connecting timed out"
    if isinstance(exc, TimeoutError):  # aiohttp's read timeouts derive from it
        return httpx.ReadTimeout, "reading timed out"
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return httpx.ProxyError, f"the proxy answered {exc.status} {exc.message}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError, "server disconnected without sending a complete answer"
    if isinstance(exc, aiohttp.ClientConnectionResetError):
        return httpx.WriteError, str(exc)
    if isinstance(exc, aiohttp.ClientOSError):
        return httpx.ReadError, str(exc)
    if isinstance(exc, aiohttp.ClientResponseError):  # the head did not parse
        return httpx.RemoteProtocolError, exc.message
    if isinstance(exc, aiohttp.ClientPayloadError):  # the body's framing, or cut short
        return httpx.RemoteProtocolError, str(exc)
    return httpx.TransportError, str(exc)
