"""Kafka to Target: updates/s of the real App against the bound and against a naive consumer.

Real parts: Tansu (broker), the Target simulator in its own process, the real `App` in this
process (as `devtools/demo.py` runs it). Every event is for a distinct profile and coalescing
is off (`coalesce_window_ms: 0`), so each event is exactly one request; the quota is unlimited
(`limit` 1e9, `eager`). The rate is measured from the first accepted update to the last (group
join excluded); CPU is this process's (all threads) over the same interval.

Baselines measured in the same run:
- the bound `max_in_flight / latency` (at 0 ms there is none: only the naive ratio is printed);
- a naive consumer written here: poll one message, decode, map, one synchronous httpx request,
  synchronous commit, next message. It does the same decode/map/request building work.

Issue 9/4 goals: App >= 0.8 of the bound, >= 20x the naive consumer at 20 ms.

The App's HTTP path is its default one: `consumer.target.http.open_client` (one httpx
client, at most `max_in_flight` keep-alive connections) with the quota's Retry-After hooks.
The naive consumer uses
`httpx.Client`, as the simplest code would.
`--profile FILE` writes a cProfile (pstats) of the App's first 20 ms run (event-loop thread).

    .venv/bin/python benchmarks/bench_kafka_to_target.py          # 10,000 events per App run
    .venv/bin/python benchmarks/bench_kafka_to_target.py --full   # 50,000
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import tempfile
import time
from pathlib import Path

import httpx
from common import DLQ, TOPIC, Simulator, config, distinct_events, machine, produce, settings
from confluent_kafka import Consumer
from prometheus_client import CollectorRegistry

from consumer.app import App
from consumer.errors import MappingError
from consumer.stages import build_stages
from consumer.target.request import build_requests
from devtools.broker import EmbeddedBroker


async def _drive(app: App, expected: int, timeout: float, window: float | None) -> dict[str, float]:
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    success = app.metrics.updates_sent.labels("success")
    first: tuple[float, float, float] | None = None  # (wall, cpu, count)
    deadline = time.monotonic() + timeout
    result: dict[str, float] = {}
    try:
        while time.monotonic() < deadline and not task.done():
            sent = success._value.get()
            now, cpu = time.perf_counter(), time.process_time()
            if first is None and sent > 0:
                first = (now, cpu, sent)
            if first is not None and (
                sent >= expected or (window is not None and now - first[0] >= window)
            ):
                wall = now - first[0]
                result = {
                    "updates": sent - first[2],
                    "seconds": wall,
                    "rate": (sent - first[2]) / wall,
                    "cpu_us_per_update": (cpu - first[1]) / (sent - first[2]) * 1e6,
                    "cpu_share": (cpu - first[1]) / wall,
                }
                break
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await task
    if not result:
        raise RuntimeError(f"only {success._value.get():.0f}/{expected} updates in {timeout}s")
    return result


def run_app(
    workdir: Path,
    bootstrap: str,
    url: str,
    group: str,
    expected: int,
    in_flight: int,
    window: float | None,
    profile: Path | None = None,
) -> dict[str, float]:
    cfg = config(
        bootstrap,
        url,
        group,
        target={"coalesce_window_ms": 0, "max_in_flight": in_flight},
        # What is still buffered when the window ends is abandoned, not drained.
        pipeline={"shutdown_timeout_seconds": 0.5},
    )
    app = App(settings(workdir, cfg), registry=CollectorRegistry())
    if profile is None:
        return asyncio.run(_drive(app, expected, 300, window))
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        return asyncio.run(_drive(app, expected, 300, window))
    finally:
        profiler.disable()
        profiler.dump_stats(profile)


def run_naive(workdir: Path, bootstrap: str, url: str, group: str, count: int) -> dict[str, float]:
    """poll -> decode -> map -> one synchronous request -> synchronous commit, per message."""
    stages = build_stages(settings(workdir, config(bootstrap, url, group)))
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 3000,
            "heartbeat.interval.ms": 300,
        }
    )
    consumer.subscribe([TOPIC])
    done, began, cpu0 = 0, 0.0, 0.0
    with httpx.Client(timeout=10) as http:
        while done < count:
            message = consumer.poll(1.0)
            if message is None or message.error() is not None:
                continue
            if done == 0:
                began, cpu0 = time.perf_counter(), time.process_time()
            try:
                update = stages.mapper.map(stages.decoder.decode(message.value()))
            except MappingError:
                update = None
            if update is not None:
                for request in build_requests(
                    stages.endpoint_url, update.identity_type, update.identity, update.attributes
                ):
                    answer = http.request(request.method, request.url, content=request.body or None)
                    answer.raise_for_status()
            consumer.commit(message=message, asynchronous=False)
            done += 1
    wall = time.perf_counter() - began
    cpu = time.process_time() - cpu0
    consumer.close()
    # The clock starts at the first message: `done - 1` messages were handled after it.
    return {
        "updates": done - 1,
        "seconds": wall,
        "rate": (done - 1) / wall,
        "cpu_us_per_update": cpu / done * 1e6,
        "cpu_share": cpu / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--window", type=float, default=8.0, help="seconds measured per App run")
    parser.add_argument("--full", action="store_true", help="50,000 events, no time window")
    parser.add_argument("--profile", type=Path, help="cProfile the first 20 ms App run to FILE")
    parser.add_argument("--in-flight", default="64,16", help="max_in_flight values at 20 ms")
    parser.add_argument("--naive-events", type=int, default=300, help="naive run at 20 ms")
    args = parser.parse_args()
    events = 50_000 if args.full else args.events
    window = None if args.full else args.window
    flights = [int(x) for x in args.in_flight.split(",")]
    rows: list[tuple[str, dict[str, float], float | None]] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(log_path=Path(tmp) / "broker.log") as broker,
        Simulator(0.0, max_records=100) as sim,
    ):
        work = Path(tmp)
        broker.create_topics({TOPIC: 3, DLQ: 1})
        began = time.perf_counter()
        produced = produce(broker.bootstrap, distinct_events(events))
        print(f"machine: {machine()}")
        print(
            f"produced {produced:,} events (distinct profiles) in "
            f"{time.perf_counter() - began:.1f}s"
        )
        plan = [(0.0, flights[0])] + [(0.02, f) for f in flights]
        for n, (latency, flight) in enumerate(plan):
            sim.configure(latency_seconds=latency)
            profile = args.profile if n == 1 else None
            result = run_app(
                work, broker.bootstrap, sim.url, f"app-{n}", produced, flight, window, profile
            )
            bound = flight / latency if latency else None
            label = f"App {latency * 1000:.0f} ms, in-flight {flight}"
            rows.append((label, result, bound))
        naive: dict[float, dict[str, float]] = {}
        for latency, count in ((0.0, min(3000, produced)), (0.02, args.naive_events)):
            sim.configure(latency_seconds=latency)
            naive[latency] = run_naive(work, broker.bootstrap, sim.url, f"naive-{latency}", count)
            rows.append((f"naive {latency * 1000:.0f} ms", naive[latency], None))

    for label, result, _bound in rows:
        print(
            f"{label:<30}: {result['rate']:8,.0f} updates/s  over {result['seconds']:5.1f}s  "
            f"CPU {result['cpu_us_per_update']:5.0f} us/update  "
            f"({result['cpu_share'] * 100:3.0f}% of a core)"
        )
    for label, result, bound in rows:
        if label.startswith("naive"):
            continue
        latency = 0.02 if " 20 ms" in label else 0.0
        parts = [f"RATIO {label}: vs naive {result['rate'] / naive[latency]['rate']:6.1f}x"]
        parts.append("(goal >= 20x)" if latency else "")
        if bound is not None:
            parts.append(f"vs bound {bound:,.0f}/s {result['rate'] / bound:5.2f} (goal >= 0.8)")
        print("  ".join(p for p in parts if p))


if __name__ == "__main__":
    main()
