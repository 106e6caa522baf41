"""Start and stop: `profile-consumer run` from exec to serving, to ready, and SIGTERM to exit.

The consumer runs as a child process against Tansu and the simulator. Per round:
- metrics up: exec -> first HTTP 200 on /metrics (config, schemas, rules, ops server: start-up
  without the group join);
- ready: exec -> /readyz 200 (joined the consumer group; Tansu holds a first JoinGroup for half
  of `session.timeout.ms`, 3 s here);
- stop: SIGTERM (idle, nothing buffered) -> process exit (commit, leave the group, close).

Baselines in the same run: `python -c "import consumer.app"` (interpreter + imports, the floor
of any start), and a bare confluent-kafka Consumer on the same broker and settings: subscribe ->
first assignment (the join), and close() (leaving the group).

    .venv/bin/python benchmarks/bench_start_stop.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    DLQ,
    TOPIC,
    Simulator,
    config,
    consumer_process,
    free_port,
    http_get,
    machine,
    wait_for,
    write_config,
)
from confluent_kafka import Consumer

from devtools.broker import EmbeddedBroker


def one_round(work: Path, bootstrap: str, url: str, n: int) -> dict[str, float]:
    port = free_port()
    cfg = config(bootstrap, url, f"start-{n}", metrics={"host": "127.0.0.1", "port": port})
    path = write_config(work, cfg, f"start-{n}.yaml")
    began = time.perf_counter()
    with consumer_process(path, work / f"start-{n}.log") as proc:
        base = f"http://127.0.0.1:{port}"
        if not wait_for(lambda: http_get(base + "/metrics", 0.5)[0] == 200, 30, 0.005):
            raise RuntimeError("metrics endpoint never answered")
        metrics_up = time.perf_counter() - began
        if not wait_for(lambda: http_get(base + "/readyz", 0.5)[0] == 200, 60, 0.005):
            raise RuntimeError("never ready")
        ready = time.perf_counter() - began
        time.sleep(1.0)  # idle for a moment: nothing buffered
        sent = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        stop = time.perf_counter() - sent
    return {"metrics_up": metrics_up, "ready": ready, "stop": stop, "exit_code": code}


def import_floor() -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import consumer.app"], check=True)
    return time.perf_counter() - began


def bare_consumer(bootstrap: str, n: int) -> tuple[float, float]:
    """(subscribe -> first assignment, close()) of a bare confluent-kafka Consumer."""
    assigned: list[float] = []
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bare-{n}",
            "session.timeout.ms": 3000,
            "heartbeat.interval.ms": 300,
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.auto.commit": False,
        }
    )
    began = time.perf_counter()
    consumer.subscribe([TOPIC], on_assign=lambda c, p: assigned.append(time.perf_counter()))
    while not assigned and time.perf_counter() - began < 60:
        consumer.poll(0.05)
    join = assigned[0] - began if assigned else float("nan")
    closing = time.perf_counter()
    consumer.close()
    return join, time.perf_counter() - closing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows: list[dict[str, float]] = []
    floors: list[float] = []
    bare: list[tuple[float, float]] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(log_path=Path(tmp) / "broker.log") as broker,
        Simulator(0.0) as sim,
    ):
        broker.create_topics({TOPIC: 3, DLQ: 1})
        for n in range(args.rounds):
            floors.append(import_floor())
            rows.append(one_round(Path(tmp), broker.bootstrap, sim.url, n))
            bare.append(bare_consumer(broker.bootstrap, n))

    med = {key: statistics.median(r[key] for r in rows) for key in ("metrics_up", "ready", "stop")}
    floor = statistics.median(floors)
    join = statistics.median(b[0] for b in bare)
    close = statistics.median(b[1] for b in bare)
    print(f"machine: {machine()}; medians of {args.rounds} rounds")
    print(f"start -> /metrics 200 (no group join) : {med['metrics_up']:6.2f}s")
    print(f"start -> /readyz 200 (with join)      : {med['ready']:6.2f}s")
    print(f"  of which joining (ready - metrics)  : {med['ready'] - med['metrics_up']:6.2f}s")
    print(
        f"SIGTERM (idle) -> exit                : {med['stop']:6.2f}s  "
        f"exit codes {[int(r['exit_code']) for r in rows]}"
    )
    print(f"baseline: python -c 'import consumer.app'      : {floor:6.2f}s")
    print(f"baseline: bare Consumer subscribe -> assigned  : {join:6.2f}s")
    print(f"baseline: bare Consumer close()                : {close:6.2f}s")
    print(f"RATIO metrics up / import floor : {med['metrics_up'] / floor:5.2f}")
    print(f"RATIO join / bare join          : {(med['ready'] - med['metrics_up']) / join:5.2f}")
    print(f"RATIO stop / bare close         : {med['stop'] / close:5.2f}")


if __name__ == "__main__":
    main()
