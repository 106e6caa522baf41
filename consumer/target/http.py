"""The send path's HTTP client: one httpx.AsyncClient for the process, HTTP/1.1, bounded.

httpx is its API; the protocol is done by the transport `target.http_transport` names below it:
aiohttp (the default, consumer/target/aiohttp_transport.py, about 0.4x the CPU per request) or
httpcore with h11 (httpx's own). This module chooses their settings and bounds, alike for both:
- at most `target.max_in_flight` connections; idle ones expire after KEEPALIVE_EXPIRY;
- one deadline, `target.timeout_seconds`, for the whole exchange (waiting for a connection,
  connecting, sending, reading the answer), so a peer trickling bytes cannot hold a request;
- answers are read raw (no decompression: we ask for `identity`) up to MAX_BODY bytes, then
  the connection is dropped; h11 bounds heads and chunk-size lines (100 KB in httpcore),
  aiohttp's parser header lines (8,190 bytes);
- TLS through consumer.target.tls; a forward proxy chosen by consumer.target.proxy.
It raises HttpTimeout or HttpConnectionError (consumer.errors); an HTTP error status is an
Answer like any other. Error messages carry no URL: it holds the profile identity.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from consumer.config import Settings
from consumer.errors import HttpConnectionError, HttpTimeout
from consumer.target.aiohttp_transport import SendPathAiohttpTransport, session_factory
from consumer.target.proxy import choose_proxy, mask
from consumer.target.tls import tls_context
from consumer.target.transport import UNHELD, HeldTransport, Hold

log = logging.getLogger(__name__)

# Target answers in a few hundred bytes; response.py reads no more than this either.
MAX_BODY = 65_536
# Shorter than the idle timeouts of the NATs, load balancers and proxies between a pod and
# Target (4 minutes and more), so we drop a flow before a middlebox can silently forget it.
KEEPALIVE_EXPIRY = 15.0
_URL = re.compile(r"\S+://\S*")
_NO_PHASE_TIMEOUTS = httpx.Timeout(None).as_dict()


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]  # case-insensitive names (httpx.Headers)
    body: bytes


class _NoCookies(httpx.Cookies):
    """A cookie store that stays empty: answers are not read for Set-Cookie at all."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


_NO_COOKIES = _NoCookies()


class SendPathClient(httpx.AsyncClient):
    """httpx.AsyncClient that keeps no cookie.

    Target sets no cookie the send path needs, and one set on an answer (by Target, a load
    balancer or a proxy) must not ride along with the next profile's update. httpx reads every
    answer for Set-Cookie through urllib's cookie machinery even when none is ever set (two
    compatibility objects and a jar pass per answer: about 5 % of the CPU per update).
    """

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        raise TypeError("the send path keeps no cookies")


class TargetHttp:
    """Sends one request and reads its bounded answer; share one instance (one pool).

    What is the same for every request is prepared once here rather than rebuilt per request by
    `AsyncClient.build_request` (the client's headers merged, a `Timeout` parsed): each request
    is an `httpx.Request` given to `AsyncClient.send`, the documented pair for prepared requests.
    """

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        timeout: float,
        max_body: int = MAX_BODY,
        held: bool = True,
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._max_body = max_body
        # The client's headers (its defaults, ours and the token) as build_request would merge
        # them; a Content-Type is added per kind of body, once.
        self._headers: dict[str | None, httpx.Headers] = {None: httpx.Headers(client.headers)}
        # No per-phase timeouts below the one deadline of `request`: it starts first and bounds
        # every phase (the wait for a connection, connecting, sending, reading), so a phase's
        # timeout of the same length could never fire first, while each costs the transport
        # timers to arm and cancel on every request.
        self._extensions: dict[str, Any] = {"timeout": _NO_PHASE_TIMEOUTS}
        if not held:
            self._extensions[UNHELD] = True

    def derive(self, *, timeout: float, max_body: int, held: bool) -> TargetHttp:
        """Another view of the same pool (the bulk API: longer timeout, larger answers, and
        no single-update Retry-After hold, `held=False`)."""
        return TargetHttp(client=self._client, timeout=timeout, max_body=max_body, held=held)

    async def request(
        self, method: str, url: str, body: bytes = b"", content_type: str | None = None
    ) -> Answer:
        # httpx.Request copies the extensions: the transport's own entries stay per request.
        request = httpx.Request(
            method,
            url,
            content=body or None,
            headers=self._headers_for(content_type),
            extensions=self._extensions,
        )
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._client.send(request, stream=True)
                try:
                    data = await self._read(response)
                finally:
                    await response.aclose()  # unread bytes left: httpcore drops the connection
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise HttpTimeout(f"no complete answer in {self._timeout:g}s: {_name(exc)}") from None
        except httpx.TransportError as exc:
            raise HttpConnectionError(_describe(exc)) from exc
        return Answer(response.status_code, response.headers, data)

    def _headers_for(self, content_type: str | None) -> httpx.Headers:
        headers = self._headers.get(content_type)
        if headers is None:
            headers = httpx.Headers(self._headers[None])
            headers["Content-Type"] = str(content_type)
            self._headers[content_type] = headers
        return headers

    async def _read(self, response: httpx.Response) -> bytes:
        data = bytearray()
        async for piece in response.aiter_raw():
            data += piece
            if len(data) > self._max_body:
                raise HttpConnectionError(f"answer body larger than {self._max_body} bytes")
        return bytes(data)

    async def aclose(self) -> None:
        await self._client.aclose()


def open_client(
    settings: Settings, *, hold: Hold | None, environ: Mapping[str, str] | None = None
) -> TargetHttp:
    """The process's client to Target, from `target.*` and the proxy and CA variables."""
    target = settings.target
    environ = os.environ if environ is None else environ
    configured = target.proxy.get_secret_value() if target.proxy is not None else None
    proxy = choose_proxy(target.url(), configured, environ)
    context = tls_context(settings, environ=environ)

    via = _proxy(proxy, context) if proxy else None
    build = _aiohttp if target.http_transport == "aiohttp" else _httpcore
    # The pool, and a second one for the one retry after a reused connection failed: it keeps
    # no idle connection, so that retry cannot land on another stale one.
    held = HeldTransport(
        pooled=build(target.max_in_flight, context, via, keepalive=True),
        fresh=build(target.max_in_flight, context, via, keepalive=False),
        hold=hold,
    )
    token = target.token.get_secret_value() if target.token is not None else None
    headers = {"User-Agent": "profile-consumer", "Accept-Encoding": "identity"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    client = SendPathClient(
        transport=held,
        headers=headers,
        timeout=None,  # TargetHttp's one deadline bounds each exchange
        follow_redirects=False,  # a redirect would carry the token elsewhere
        trust_env=False,  # the proxy and CA variables were read above, once
    )
    log.info(
        "target client ready",
        extra={
            "event": "target_client",
            "proxy": mask(proxy) if proxy else "none",
            "http_transport": target.http_transport,
        },
    )
    return TargetHttp(client=client, timeout=target.timeout_seconds)


def _httpcore(
    size: int, context: ssl.SSLContext, proxy: httpx.Proxy | None, *, keepalive: bool
) -> httpx.AsyncBaseTransport:
    limits = httpx.Limits(
        max_connections=size,
        max_keepalive_connections=size if keepalive else 0,
        keepalive_expiry=KEEPALIVE_EXPIRY,
    )
    # HTTP/1.1 only, as the ALPN offer in tls.py says; no retries of httpcore's own: the one
    # retry we allow is HeldTransport's, on a reused connection only.
    return httpx.AsyncHTTPTransport(
        verify=context, limits=limits, proxy=proxy, http1=True, http2=False, retries=0
    )


def _aiohttp(
    size: int, context: ssl.SSLContext, proxy: httpx.Proxy | None, *, keepalive: bool
) -> httpx.AsyncBaseTransport:
    # KEEPALIVE_EXPIRY is read here, not bound at import, so tests can shorten it.
    expiry = KEEPALIVE_EXPIRY if keepalive else None
    session = session_factory(limit=size, keepalive=expiry, context=context)
    return SendPathAiohttpTransport(session=session, context=context, proxy=proxy)


def _proxy(url: str, context: ssl.SSLContext) -> httpx.Proxy:
    # An https:// proxy's own certificate is verified like Target's.
    return httpx.Proxy(url, ssl_context=context if url.startswith("https:") else None)


def _name(exc: BaseException) -> str:
    return type(exc).__name__


def _describe(exc: httpx.TransportError) -> str:
    """The error's class and h11's or the OS's words, with any URL in them left out."""
    detail = _URL.sub("<url>", str(exc)).strip()[:200]
    return f"{_name(exc)}: {detail}" if detail else _name(exc)
