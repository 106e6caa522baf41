"""Shared plumbing of the benchmarks: real parts (Tansu, the simulator process), configs, data.

Not a benchmark itself (`make bench` runs `bench_*.py` only). Everything here starts real
processes on loopback: the broker (Tansu), the Target simulator (`python -m devtools
simulate-target`, its own process so it does not share the consumer's GIL), and, for the
process benchmarks, the consumer itself (`profile-consumer run --config F`).
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Producer

from consumer.avro import load_schema
from consumer.config import Settings, load_settings
from devtools.broker import free_port as free_port  # re-exported for the benchmarks
from devtools.encoder import Encoder
from devtools.samples import sample_event

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "schemas/offline_transaction.avsc"
RULES = ROOT / "examples/mapping.yaml"
TOPIC = "offline-transactions"
DLQ = "offline-transactions.dlq"
BIN = Path(sys.executable).parent


def machine() -> str:
    return f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, load {_load()}"


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


# --- configuration -----------------------------------------------------------------------


def config(bootstrap: str, target_url: str, group: str, **sections: dict[str, Any]) -> dict:
    """The consumer's config as a dict: absolute paths, fast Tansu group join, overrides."""
    cfg: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": bootstrap,
            "group_id": group,
            "topics": [TOPIC],
            "dlq_topic": DLQ,
            # Tansu holds a first JoinGroup for half the session timeout.
            "config": {"session.timeout.ms": 3000, "heartbeat.interval.ms": 300},
        },
        "avro": {"writer_schema": str(SCHEMA)},
        "target": {"base_url": target_url, "client_code": "acme"},
        "quota": {"limit": 1_000_000_000, "pacing": "eager"},
        "mapping": {"rules": str(RULES)},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "logging": {"level": "WARNING"},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def write_config(directory: Path, cfg: dict[str, Any], name: str = "config.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def settings(directory: Path, cfg: dict[str, Any]) -> Settings:
    return load_settings(write_config(directory, cfg), environ={})


# --- data ---------------------------------------------------------------------------------


def encoder() -> Encoder:
    return Encoder(load_schema(SCHEMA))


def distinct_events(count: int, prefix: str = "u", seed: int = 11) -> Iterator[dict[str, Any]]:
    """Sample events over the four channels, each for a profile no other event touches."""
    rng = random.Random(seed)
    for index in range(count):
        event = sample_event(rng, index, 1000)
        _set_profile(event, f"{prefix}{index}", index)
        yield event


def zipf_events(
    count: int, profiles: int, exponent: float = 1.1, seed: int = 13
) -> Iterator[dict[str, Any]]:
    """Sample events whose profile is drawn from a Zipf law over `profiles` profiles."""
    rng = random.Random(seed)
    weights = [1 / (rank**exponent) for rank in range(1, profiles + 1)]
    cumulative = list(_accumulate(weights))
    for index in range(count):
        who = rng.choices(range(profiles), cum_weights=cumulative, k=1)[0]
        event = sample_event(rng, index, profiles)
        _set_profile(event, f"z{who}", who)
        yield event


def _accumulate(values: list[float]) -> Iterator[float]:
    total = 0.0
    for value in values:
        total += value
        yield total


def _set_profile(event: dict[str, Any], name: str, number: int) -> None:
    # Kiosk events are mapped to mboxPC, the others to mbox3rdPartyId (examples/mapping.yaml).
    if event["channel"] == "KIOSK":
        event["customer"] = {"thirdPartyId": None, "pcId": f"{10**12 + number}-575948.01_00"}
    else:
        event["customer"] = {"thirdPartyId": name, "pcId": None}


def profile_key(event: dict[str, Any]) -> str:
    customer = event["customer"]
    return str(customer["thirdPartyId"] or customer["pcId"])


def produce(bootstrap: str, events: Iterable[dict[str, Any]], topic: str = TOPIC) -> int:
    """Encode and produce; returns how many the broker acknowledged."""
    enc = encoder()
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 50,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 500_000,
            "compression.type": "none",
        }
    )
    delivered = 0

    def on_delivery(err: Any, _msg: Any) -> None:
        nonlocal delivered
        if err is None:
            delivered += 1

    for event in events:
        while True:
            try:
                producer.produce(
                    topic, enc.encode(event), profile_key(event).encode(), on_delivery=on_delivery
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(120)
    return delivered


# --- processes ----------------------------------------------------------------------------


class Simulator:
    """The Target simulator in its own process; `stats()` reads its counters over HTTP."""

    def __init__(self, latency: float = 0.0, **config: Any) -> None:
        self.latency = latency
        self.config = {"max_records": 1000, **config}
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Simulator:
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "devtools",
                "simulate-target",
                "--latency-seconds",
                str(self.latency),
                "--config-json",
                json.dumps(self.config),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        self.url = self._proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError("the simulator did not start")
        return self

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/_sim/stats", timeout=10) as answer:  # noqa: S310
            return dict(json.load(answer))

    def accepted(self) -> int:
        return int(self.stats()["accepted"])

    def configure(self, **changes: Any) -> None:
        request = urllib.request.Request(  # noqa: S310 - our own loopback simulator
            self.url + "/_sim/config",
            method="POST",
            data=json.dumps(changes).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=10).close()  # noqa: S310

    def reset(self) -> None:
        url = self.url + "/_sim/reset"
        request = urllib.request.Request(url, method="POST", data=b"")  # noqa: S310
        urllib.request.urlopen(request, timeout=10).close()  # noqa: S310

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


@contextmanager
def consumer_process(config_path: Path, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`profile-consumer run --config F` as a child process; SIGTERM (then kill) on exit."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [str(BIN / "profile-consumer"), "run", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """(status, body); (0, error) when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def scrape(port: int) -> dict[str, float]:
    """The consumer's /metrics as {name{labels}: value} (unlabelled names as they are)."""
    status, text = http_get(f"http://127.0.0.1:{port}/metrics")
    if status != 200:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in kB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def wait_for(predicate: Any, timeout: float, tick: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(tick)
    return False
