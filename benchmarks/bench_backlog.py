"""Backlog: memory and CPU of the consumer process while the quota is exhausted.

`profile-consumer run --config F` runs as a child process against Tansu and the simulator, with
`quota.limit: 10` (eager): ten updates go, then every send waits for the 24 h window while the
backlog sits in Kafka. Once the consumer has filled its buffer (`pipeline.max_buffered_events`)
and paused its partitions, this reads /proc/PID/status (VmRSS, VmHWM: peak RSS) and the CPU it
uses over a fixed interval (/proc/PID/stat utime + stime, all threads).

Baseline in the same run: the same process on an empty topic (joined, nothing to do). Figures
for a backlog of N and 10N events; flat memory means RSS(10N) / RSS(N) close to 1.
Issue 9 goals: peak RSS <= 200 MB, flat as the backlog grows tenfold; CPU while waiting near 0.

    .venv/bin/python benchmarks/bench_backlog.py            # N = 20,000 and 200,000
    .venv/bin/python benchmarks/bench_backlog.py --full     # N = 100,000 and 1,000,000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    DLQ,
    Simulator,
    config,
    consumer_process,
    cpu_seconds,
    distinct_events,
    free_port,
    machine,
    proc_status,
    produce,
    scrape,
    wait_for,
    write_config,
)

from devtools.broker import EmbeddedBroker

MAX_BUFFERED = 10_000


def measure(
    work: Path,
    bootstrap: str,
    url: str,
    topic: str,
    expected_buffer: int,
    interval: float,
    kafka_extra: dict[str, Any],
) -> dict[str, float]:
    port = free_port()
    cfg = config(
        bootstrap,
        url,
        f"group-{topic}",
        quota={"limit": 10, "pacing": "eager"},
        metrics={"host": "127.0.0.1", "port": port},
        pipeline={"max_buffered_events": MAX_BUFFERED, "shutdown_timeout_seconds": 1},
    )
    cfg["kafka"]["topics"] = [topic]
    cfg["kafka"]["config"].update(kafka_extra)
    path = write_config(work, cfg, f"{topic}.yaml")
    with consumer_process(path, work / f"{topic}.log") as proc:
        started = time.monotonic()

        def settled() -> bool:
            m = scrape(port)
            if m.get("profile_consumer_assigned_partitions", 0) < 1:
                return False
            if expected_buffer == 0:
                return True
            consumed = m.get(f'profile_consumer_events_consumed_total{{topic="{topic}"}}', 0)
            paused = m.get("profile_consumer_paused_partitions", 0)
            return paused >= 1 and consumed >= min(expected_buffer, MAX_BUFFERED)

        if not wait_for(settled, 120, tick=0.2):
            raise RuntimeError(f"{topic}: the consumer did not fill its buffer: {scrape(port)}")
        filled = time.monotonic() - started
        time.sleep(2.0)  # let the last poll batch land and librdkafka settle
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        peak_rss = 0
        while time.monotonic() - t0 < interval:
            peak_rss = max(peak_rss, proc_status(proc.pid)["VmRSS"])
            time.sleep(0.25)
        cpu = cpu_seconds(proc.pid) - cpu0
        wall = time.monotonic() - t0
        status = proc_status(proc.pid)
        m = scrape(port)
    return {
        "ready_and_filled_s": filled,
        "rss_mb": status["VmRSS"] / 1024,
        "hwm_mb": status["VmHWM"] / 1024,
        "cpu_s": cpu,
        "cpu_pct": 100 * cpu / wall,
        "interval_s": wall,
        "buffered": m.get("profile_consumer_buffered_events", 0),
        "sent": m.get('profile_consumer_updates_sent_total{result="success"}', 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="N (10N is run too)")
    parser.add_argument("--full", action="store_true", help="N = 100,000 (10N = 1,000,000)")
    parser.add_argument("--interval", type=float, default=10.0, help="CPU sampling seconds")
    parser.add_argument(
        "--kafka-config", default="{}", help="extra librdkafka settings (JSON), to try a fix"
    )
    args = parser.parse_args()
    n = 100_000 if args.full else args.events
    sizes = [0, n, 10 * n]
    extra = json.loads(args.kafka_config)
    results: dict[int, dict[str, float]] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(log_path=Path(tmp) / "broker.log") as broker,
        Simulator(0.0, max_records=100) as sim,
    ):
        work = Path(tmp)
        broker.create_topics({f"backlog-{size}": 3 for size in sizes} | {DLQ: 1})
        for size in sizes:
            topic = f"backlog-{size}"
            began = time.perf_counter()
            produced = produce(broker.bootstrap, distinct_events(size, prefix=f"b{size}-"), topic)
            print(f"produced {produced:,} events to {topic} in {time.perf_counter() - began:.1f}s")
            results[size] = measure(
                work, broker.bootstrap, sim.url, topic, size, args.interval, extra
            )

    print(f"machine: {machine()}")
    print(f"max_buffered_events {MAX_BUFFERED:,}; quota.limit 10 (exhausted after 10 sends)")
    if extra:
        print(f"extra kafka.config: {extra}")
    for size, r in results.items():
        label = "idle (empty topic)" if size == 0 else f"backlog {size:,}"
        print(
            f"{label:<20}: RSS {r['rss_mb']:6.1f} MB  peak (VmHWM) {r['hwm_mb']:6.1f} MB  "
            f"CPU {r['cpu_s']:5.2f}s over {r['interval_s']:4.1f}s ({r['cpu_pct']:4.1f}%)  "
            f"buffered {r['buffered']:,.0f}  sent {r['sent']:.0f}  "
            f"up+filled in {r['ready_and_filled_s']:4.1f}s"
        )
    idle, small, big = (results[s] for s in sizes)
    print(f"RATIO peak RSS {10 * n:,} / {n:,}: {big['hwm_mb'] / small['hwm_mb']:.2f} (flat: ~1)")
    print(f"RATIO peak RSS {10 * n:,} / idle: {big['hwm_mb'] / idle['hwm_mb']:.2f}")
    print(f"RATIO CPU waiting {10 * n:,} / idle: {big['cpu_s'] / max(idle['cpu_s'], 0.01):.2f}")
    print(
        f"peak RSS at {10 * n:,}: {big['hwm_mb']:.0f} MB (goal <= 200 MB); "
        f"CPU while waiting {big['cpu_pct']:.1f}% of a core (goal ~0)"
    )


if __name__ == "__main__":
    main()
