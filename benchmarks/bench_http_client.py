"""HTTP client cost per request on the send path: httpx over httpcore against httpx over aiohttp.

The send path is `httpx.AsyncClient` (consumer/target/http.py); its transport is chosen by this
measurement. Each contender is the App's client as `open_client` builds it (the Retry-After
hold's hooks, the stale-connection retry, the bounded raw read), with only the transport below
httpx changed:

- `httpcore (open_client)`   `target.http_transport: httpcore`: httpx.AsyncHTTPTransport with
                             tuned Limits (the fallback)
- `aiohttp (open_client)`    `target.http_transport: aiohttp` (the default):
                             consumer/target/aiohttp_transport.py over our aiohttp session
- `httpx-aiohttp as shipped` httpx_aiohttp.AiohttpTransport unmended, same limits and TLS
                             context: what the mending costs
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
CORE = "httpcore (open_client)"
AIO = "aiohttp (open_client)"
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


def as_shipped(settings: Settings, hold: RetryAfterHold) -> TargetHttp:
    """open_client's client over httpx_aiohttp.AiohttpTransport as it ships (its own session,
    its error mapping, aiohttp's own resend on): what our mending costs or saves."""
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
    def settings(transport: str) -> Settings:
        target = {"base_url": base, "max_in_flight": IN_FLIGHT, "timeout_seconds": 10.0}
        return Settings.model_validate({"target": {**target, "http_transport": transport}})

    clock = asyncio.get_running_loop().time
    hold = RetryAfterHold(QuotaGate(10**9, 86_400, "eager", clock=clock), clock)
    clients = {
        CORE: open_client(settings("httpcore"), hold=hold, environ={}),
        AIO: open_client(settings("aiohttp"), hold=hold, environ={}),
        "httpx-aiohttp as shipped": as_shipped(settings("aiohttp"), hold),
    }
    plain = httpx.AsyncClient(timeout=10, trust_env=False)

    def via(client: TargetHttp) -> Send:
        async def send(url: str) -> int:
            return (await client.request("GET", url)).status

        return send

    async def via_plain(url: str) -> int:
        return (await plain.get(url)).status_code

    runs = {label: (via(client), client.aclose) for label, client in clients.items()}
    return {**runs, "httpx defaults": (via_plain, plain.aclose)}


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
    core_cpu = medians[CORE][1]
    for label, (rate, cpu) in medians.items():
        print(
            f"{label:<24}: {rate:8,.0f} requests/s  CPU {cpu:6.0f} us/request  "
            f"CPU ratio to httpcore {cpu / core_cpu:5.2f}"
        )
    faster = min((CORE, AIO), key=lambda label: medians[label][1])
    print(f"RATIO aiohttp CPU / httpcore: {medians[AIO][1] / core_cpu:.2f}")
    default = Settings().target.http_transport
    print(f"cheaper transport by CPU: {faster}; the App's default: {default}")


if __name__ == "__main__":
    main()
