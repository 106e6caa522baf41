"""A connection pool split into small shards.

httpcore's pool, on every request, scans all its connections for each queued request (and
checks each idle one's socket): the cost per request grows with in-flight x connections. At
max_in_flight 64 that scan was most of the consumer's CPU (benchmarks/bench_kafka_to_target.py).
Shards of 8 keep it small; each request goes to the least busy shard.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable

import httpx

SHARD_SIZE = 8


class _Released(httpx.AsyncByteStream):
    """A response stream that tells its shard when its connection is given back."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._stream, self._release, self._closed = stream, release, False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if not self._closed:
                self._closed = True
                self._release()


class ShardedTransport(httpx.AsyncBaseTransport):
    def __init__(self, max_connections: int, verify: bool | ssl.SSLContext = True) -> None:
        shards = max(1, -(-max_connections // SHARD_SIZE))
        per_shard = -(-max_connections // shards)
        limits = httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)
        # One SSL context for every shard: each costs 20 to 40 ms (it loads the CA bundle), and
        # eight of them were most of App.run()'s time before the ops server started.
        context = httpx.create_ssl_context(verify)  # returns an SSLContext given as it is
        self._pools = [
            httpx.AsyncHTTPTransport(verify=context, limits=limits) for _ in range(shards)
        ]
        self._busy = [0] * shards

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = min(range(len(self._busy)), key=self._busy.__getitem__)
        self._busy[index] += 1

        def release() -> None:
            self._busy[index] -= 1

        try:
            response = await self._pools[index].handle_async_request(request)
        except BaseException:
            release()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)  # noqa: S101
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Released(response.stream, release),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()
