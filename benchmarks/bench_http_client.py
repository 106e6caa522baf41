"""HTTP client cost per request: the consumer's HttpPool against httpx, same requests, same run.

Why the consumer has its own HTTP/1.1 client (consumer/target/http11.py): this prints the CPU
each contender spends per request in this process (the simulator runs in its own process, at
0 ms latency), with 64 requests in flight over 64 keep-alive connections, as the App sends:

- `HttpPool`                          the consumer's client
- `httpx.AsyncClient` over `HttpPool`  httpx's client API on the same connection layer (what
                                      keeping `httpx.AsyncClient` on top would cost)
- `httpx.AsyncClient`                 httpx with its default transport (httpcore), the baseline

Each request is a Target profile update GET for a distinct profile (the URL the App builds for
a 6-attribute update). Contenders are interleaved over --repeat rounds; medians are printed.

    .venv/bin/python benchmarks/bench_http_client.py [--requests N] [--repeat R]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import httpx
from common import Simulator, machine

from consumer.target.http11 import HttpPool
from consumer.target.request import build_requests, endpoint

IN_FLIGHT = 64
Send = Callable[[str], Awaitable[int]]


class OverPool(httpx.AsyncBaseTransport):
    """httpx's client API on top of HttpPool: the cheapest way to keep httpx.AsyncClient."""

    def __init__(self, pool: HttpPool) -> None:
        self._pool = pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        answer = await self._pool.request(request.method, str(request.url))
        return httpx.Response(answer.status, headers=answer.headers, content=answer.body)


def urls(base: str, count: int, round_: int) -> list[str]:
    attributes = {
        "lastStoreVisitAt": "2026-11-28T10:00:00.000Z",
        "lastStoreId": "S-0042",
        "lastPointsEarned": "120",
        "lastBasketTotal": "123.45",
        "lastContactChannel": "store",
        "loyaltyTier": "gold",
    }
    url = endpoint(base, "acme")
    return [
        build_requests(url, "mbox3rdPartyId", f"c-{round_}-{i}", attributes)[0].url
        for i in range(count)
    ]


async def drive(send: Send, targets: list[str]) -> tuple[float, float]:
    """Requests/s and CPU µs per request, IN_FLIGHT at a time."""
    queue = iter(targets)

    async def worker() -> None:
        for url in queue:
            if await send(url) != 200:
                raise RuntimeError("the simulator refused a request")

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return len(targets) / wall, cpu / len(targets) * 1e6


async def contenders(base: str) -> dict[str, tuple[Send, Callable[[], Awaitable[None]]]]:
    pool = HttpPool(base, IN_FLIGHT, 10.0)
    over = httpx.AsyncClient(transport=OverPool(HttpPool(base, IN_FLIGHT, 10.0)), timeout=10)
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    plain = httpx.AsyncClient(limits=limits, timeout=10)

    async def via_pool(url: str) -> int:
        return (await pool.request("GET", url)).status

    async def via_over(url: str) -> int:
        return (await over.get(url)).status_code

    async def via_httpx(url: str) -> int:
        return (await plain.get(url)).status_code

    return {
        "HttpPool": (via_pool, pool.aclose),
        "httpx.AsyncClient over HttpPool": (via_over, over.aclose),
        "httpx.AsyncClient (httpcore)": (via_httpx, plain.aclose),
    }


async def main_async(base: str, requests: int, repeat: int) -> dict[str, list[tuple[float, float]]]:
    runs = await contenders(base)
    results: dict[str, list[tuple[float, float]]] = {label: [] for label in runs}
    for round_ in range(repeat):
        for label, (send, _) in runs.items():
            await drive(send, urls(base, 200, -1 - round_))  # warm the connections
            results[label].append(await drive(send, urls(base, requests, round_)))
    for _, close in runs.values():
        await close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with Simulator(0.0, max_records=10) as sim:
        results = asyncio.run(main_async(sim.url, args.requests, args.repeat))
    print(f"machine: {machine()}")
    print(f"{args.requests:,} GETs per round, {IN_FLIGHT} in flight, median of {args.repeat}")
    medians = {
        label: (statistics.median(r for r, _ in runs), statistics.median(c for _, c in runs))
        for label, runs in results.items()
    }
    base_cpu = medians["httpx.AsyncClient (httpcore)"][1]
    for label, (rate, cpu) in medians.items():
        print(
            f"{label:<32}: {rate:8,.0f} requests/s  CPU {cpu:6.0f} us/request  "
            f"CPU ratio to httpx {cpu / base_cpu:5.2f}"
        )
    pool_cpu = medians["HttpPool"][1]
    print(f"RATIO httpx CPU per request / HttpPool: {base_cpu / pool_cpu:.1f}x")


if __name__ == "__main__":
    main()
