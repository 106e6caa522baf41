"""HTTP client cost per request on the send path: httpx's own transport against httpx-aiohttp.

The send path is `httpx.AsyncClient` (consumer/target/http.py); its transport is chosen by this
measurement. Each contender is the App's client as `open_client` builds it (the Retry-After
hold's hooks, the stale-connection retry, the bounded raw read), with only the transport below
httpx changed:

- `httpcore (open_client)`   httpx.AsyncHTTPTransport with tuned Limits: what the App runs
- `httpcore, no trace`       the same without httpcore's `trace` extension (so without the
                             stale-connection retry): what that retry's bookkeeping costs
- `httpx-aiohttp`            httpx_aiohttp.AiohttpTransport, same limits, same TLS context
- `httpx defaults`           a bare `httpx.AsyncClient().get()`, the reference

CPU is this process's (the simulator runs in its own process, --latency, 20 ms by default, as
Target's is far from zero), with IN_FLIGHT
requests in flight over as many keep-alive connections. Each request is a Target profile
update GET for a distinct profile (the URL the App builds for a 6-attribute update).
Contenders are interleaved over --repeat rounds; medians are printed.

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
from httpx_aiohttp import AiohttpTransport

from consumer.config import Settings
from consumer.quota import QuotaGate
from consumer.target.client import RetryAfterHold
from consumer.target.http import KEEPALIVE_EXPIRY, TargetHttp, open_client
from consumer.target.request import build_requests, endpoint
from consumer.target.tls import tls_context
from consumer.target.transport import HeldTransport

IN_FLIGHT = 16
Send = Callable[[str], Awaitable[int]]


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


class UntracedTransport(HeldTransport):
    """HeldTransport without the `trace` extension and so without the stale-connection retry."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._hold is not None:
            await self._hold.before_send()
        response = await self._pooled.handle_async_request(request)
        if self._hold is not None:
            self._hold.on_answer(response.status_code, response.headers)
        return response


def untraced_client(settings: Settings, hold: RetryAfterHold) -> TargetHttp:
    """open_client's client, its transport swapped for UntracedTransport (same pools)."""
    client = open_client(settings, hold=hold, environ={})
    held = client._client._transport
    assert isinstance(held, HeldTransport)
    client._client._transport = UntracedTransport(pooled=held._pooled, fresh=held._fresh, hold=hold)
    return client


def aiohttp_client(settings: Settings, hold: RetryAfterHold) -> TargetHttp:
    """open_client's client with httpx-aiohttp below httpx instead of httpcore."""
    context = tls_context(settings, environ={})

    def transport(keepalive: int) -> AiohttpTransport:
        limits = httpx.Limits(
            max_connections=IN_FLIGHT,
            max_keepalive_connections=keepalive,
            keepalive_expiry=KEEPALIVE_EXPIRY,
        )
        return AiohttpTransport(verify=context, limits=limits, trust_env=False)

    held = HeldTransport(pooled=transport(IN_FLIGHT), fresh=transport(0), hold=hold)
    headers = {"User-Agent": "profile-consumer", "Accept-Encoding": "identity"}
    client = httpx.AsyncClient(transport=held, headers=headers, timeout=10.0, trust_env=False)
    return TargetHttp(client=client, timeout=10.0)


async def contenders(base: str) -> dict[str, tuple[Send, Callable[[], Awaitable[None]]]]:
    settings = Settings.model_validate(
        {"target": {"base_url": base, "max_in_flight": IN_FLIGHT, "timeout_seconds": 10.0}}
    )
    clock = asyncio.get_running_loop().time
    hold = RetryAfterHold(QuotaGate(10**9, 86_400, "eager", clock=clock), clock)
    core = open_client(settings, hold=hold, environ={})
    untraced = untraced_client(settings, hold)
    aio = aiohttp_client(settings, hold)
    plain = httpx.AsyncClient(timeout=10, trust_env=False)

    async def via_core(url: str) -> int:
        return (await core.request("GET", url)).status

    async def via_untraced(url: str) -> int:
        return (await untraced.request("GET", url)).status

    async def via_aio(url: str) -> int:
        return (await aio.request("GET", url)).status

    async def via_plain(url: str) -> int:
        return (await plain.get(url)).status_code

    return {
        "httpcore (open_client)": (via_core, core.aclose),
        "httpcore, no trace": (via_untraced, untraced.aclose),
        "httpx-aiohttp": (via_aio, aio.aclose),
        "httpx defaults": (via_plain, plain.aclose),
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
    parser.add_argument("--latency", type=float, default=0.02, help="simulator latency, s")
    args = parser.parse_args()
    with Simulator(args.latency, max_records=10) as sim:
        results = asyncio.run(main_async(sim.url, args.requests, args.repeat))
    print(f"machine: {machine()}")
    print(
        f"{args.requests:,} GETs per round, {IN_FLIGHT} in flight, "
        f"{args.latency * 1000:.0f} ms latency, median of {args.repeat}"
    )
    medians = {
        label: (statistics.median(r for r, _ in runs), statistics.median(c for _, c in runs))
        for label, runs in results.items()
    }
    core_cpu = medians["httpcore (open_client)"][1]
    for label, (rate, cpu) in medians.items():
        print(
            f"{label:<24}: {rate:8,.0f} requests/s  CPU {cpu:6.0f} us/request  "
            f"CPU ratio to httpcore {cpu / core_cpu:5.2f}"
        )
    candidates = ("httpcore (open_client)", "httpx-aiohttp")
    faster = min(candidates, key=lambda label: medians[label][1])
    print(f"RATIO httpx-aiohttp CPU / httpcore: {medians['httpx-aiohttp'][1] / core_cpu:.2f}")
    print(f"cheaper transport by CPU: {faster} (the App runs httpcore: see docs/performance.md)")


if __name__ == "__main__":
    main()
