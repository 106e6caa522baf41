"""Coalescing: events per request on a Zipf workload over 10,000 profiles, through the real App.

A backlog of events (profiles drawn from a Zipf law, exponent 1.1, over 10,000 profiles) is
produced to Tansu, then the real `App` (in this process, as `devtools/demo.py` runs it)
consumes it and sends to the Target simulator (its own process, 20 ms latency, no quota) until
every event is finished. Events per request = mapped events / accepted requests.

Two workloads: a backlog (everything produced before the consumer starts, as in a replay) and
a live stream (produced at --rate events/s while the consumer runs, after it joined), where
the window is what lets events of one profile meet.

Baselines in the same run:
- the same workload with `coalesce_window_ms: 0` (no waiting; only events that arrive while
  their profile's request is in flight merge);
- the ideal for this backlog: events / distinct profiles in it (everything for a profile
  merged into one request);
- for the live stream, also the window's own ideal: the requests a window alone would need if
  every request were instant (a profile's batch opens at its first event and takes every event
  of that profile until the window ends), computed from the planned send times.

    .venv/bin/python benchmarks/bench_coalescing.py            # 10,000 events
    .venv/bin/python benchmarks/bench_coalescing.py --full     # 100,000 events
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from pathlib import Path

from common import (
    DLQ,
    TOPIC,
    Simulator,
    config,
    encoder,
    machine,
    produce,
    profile_key,
    settings,
    zipf_events,
)
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from consumer.app import App
from devtools.broker import EmbeddedBroker

PROFILES = 10_000


async def _until_done(
    app: App, produced: int, timeout: float, topic: str, live: list[bytes] | None, rate: float
) -> float:
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    consumed = app.metrics.events_consumed.labels(topic)
    if live is not None:
        while not (app.source and app.source.joined):
            await asyncio.sleep(0.05)
        bootstrap = app.settings.kafka.bootstrap_servers
        threading.Thread(target=_produce_live, args=(bootstrap, topic, live, rate)).start()
    began = time.monotonic()
    try:
        while time.monotonic() - began < timeout and not task.done():
            buffered = app.metrics.buffered_events._value.get()
            if consumed._value.get() >= produced and buffered == 0:
                return time.monotonic() - began
            await asyncio.sleep(0.05)
        raise RuntimeError(f"not finished in {timeout}s")
    finally:
        stop.set()
        await task


def _produce_live(bootstrap: str, topic: str, records: list[bytes], rate: float) -> None:
    """Key-less pre-encoded records at a steady rate (keys do not matter to the consumer)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    began = time.monotonic()
    for index, value in enumerate(records):
        delay = began + index / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        producer.produce(topic, value)
        producer.poll(0)
    producer.flush(30)


def window_ideal(events: list[dict], rate: float, window_ms: int) -> float:
    """Events per request with this window and instant requests, for events sent at `rate`."""
    closes: dict[tuple[bool, str], float] = {}
    batches = 0
    for index, event in enumerate(events):
        at = index / rate
        key = (event["channel"] == "KIOSK", profile_key(event))
        if at > closes.get(key, -1.0):
            batches += 1
            closes[key] = at + window_ms / 1000
    return len(events) / max(batches, 1)


def run(
    work: Path,
    bootstrap: str,
    url: str,
    topic: str,
    produced: int,
    window_ms: int,
    live: list[bytes] | None = None,
    rate: float = 0.0,
) -> dict:
    cfg = config(bootstrap, url, f"group-{topic}", target={"coalesce_window_ms": window_ms})
    cfg["kafka"]["topics"] = [topic]
    app = App(settings(work, cfg), registry=CollectorRegistry())
    seconds = asyncio.run(_until_done(app, produced, 600, topic, live, rate))
    m = app.metrics
    mapped = m.events.labels("mapped")._value.get()
    requests = m.updates_sent.labels("success")._value.get()
    return {
        "seconds": seconds,
        "mapped": mapped,
        "requests": requests,
        "coalesced": m.coalesced_events._value.get(),
        "per_request": mapped / max(requests, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--full", action="store_true", help="100,000 events")
    parser.add_argument("--exponent", type=float, default=1.1, help="Zipf exponent")
    parser.add_argument("--window-ms", type=int, default=500, help="coalesce window under test")
    parser.add_argument("--latency", type=float, default=0.02, help="simulator latency (s)")
    parser.add_argument("--rate", type=float, default=500.0, help="live stream events/s")
    parser.add_argument("--live-seconds", type=float, default=10.0, help="live stream length")
    args = parser.parse_args()
    count = 100_000 if args.full else args.events
    events = list(zipf_events(count, PROFILES, args.exponent))
    distinct = len({(e["channel"] == "KIOSK", profile_key(e)) for e in events})
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(log_path=Path(tmp) / "broker.log") as broker,
        Simulator(args.latency, max_records=100) as sim,
    ):
        work = Path(tmp)
        broker.create_topics({TOPIC: 3, TOPIC + "-w0": 3, DLQ: 1, "live-a": 3, "live-0": 3})
        produced = produce(broker.bootstrap, events)
        produce(broker.bootstrap, events, TOPIC + "-w0")
        window = run(work, broker.bootstrap, sim.url, TOPIC, produced, args.window_ms)
        zero = run(work, broker.bootstrap, sim.url, TOPIC + "-w0", produced, 0)
        live_count = int(args.rate * args.live_seconds)
        enc = encoder()
        live_events = list(zipf_events(live_count, PROFILES, args.exponent, seed=17))
        live = [enc.encode(e) for e in live_events]
        live_distinct = len({(e["channel"] == "KIOSK", profile_key(e)) for e in live_events})
        b, u = broker.bootstrap, sim.url
        live_window = run(work, b, u, "live-a", live_count, args.window_ms, live, args.rate)
        live_zero = run(work, b, u, "live-0", live_count, 0, live, args.rate)

    print(f"machine: {machine()}")
    print(
        f"{produced:,} events, Zipf s={args.exponent} over {PROFILES:,} profiles "
        f"({distinct:,} distinct in the backlog), simulator latency {args.latency * 1000:.0f} ms"
    )
    print("backlog (replay):")
    for label, r in ((f"window {args.window_ms} ms", window), ("window 0 ms", zero)):
        print(
            f"  {label:<14}: {r['per_request']:6.2f} events/request  ({r['mapped']:,.0f} events, "
            f"{r['requests']:,.0f} requests, {r['coalesced']:,.0f} coalesced) "
            f"in {r['seconds']:.1f}s"
        )
    ideal = produced / distinct
    print(f"  ideal (one request per distinct profile): {ideal:.2f} events/request")
    print(f"live stream: {live_count:,} events at {args.rate:.0f}/s ({live_distinct:,} distinct)")
    for label, r in ((f"window {args.window_ms} ms", live_window), ("window 0 ms", live_zero)):
        print(
            f"  {label:<14}: {r['per_request']:6.2f} events/request  ({r['mapped']:,.0f} events, "
            f"{r['requests']:,.0f} requests, {r['coalesced']:,.0f} coalesced)"
        )
    live_ideal = window_ideal(live_events, args.rate, args.window_ms)
    print(f"  ideal (one request per distinct profile): {live_count / live_distinct:.2f}")
    print(f"  ideal of a {args.window_ms} ms window with instant requests: {live_ideal:.2f}")
    for label, a, z, best in (
        ("backlog", window, zero, ideal),
        ("live", live_window, live_zero, live_count / live_distinct),
    ):
        print(
            f"RATIO {label} window {args.window_ms} ms / window 0: "
            f"{a['per_request'] / z['per_request']:.2f}x;  "
            f"of the ideal: {a['per_request'] / best:.2f}"
        )
    print(
        f"RATIO live window {args.window_ms} ms / its window's ideal: "
        f"{live_window['per_request'] / live_ideal:.2f}"
    )


if __name__ == "__main__":
    main()
