"""Shared fixtures: a real broker (Tansu, or $KAFKA_BOOTSTRAP_SERVERS), the simulator, settings."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumer.config import Settings, load_settings
from devtools.broker import EmbeddedBroker, create_topics
from devtools.simulator import SimulatorConfig, TargetSimulator

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "schemas" / "offline_transaction.avsc"
RULES_PATH = ROOT / "examples" / "mapping.yaml"

# Tansu answers a first JoinGroup after half the session timeout: keep it short in tests.
FAST_GROUP = {"session.timeout.ms": 3000, "heartbeat.interval.ms": 300}


class Broker:
    def __init__(self, bootstrap: str, embedded: EmbeddedBroker | None) -> None:
        self.bootstrap = bootstrap
        self.embedded = embedded

    def create_topics(self, topics: dict[str, int]) -> None:
        create_topics(self.bootstrap, topics)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield Broker(external, None)
        return
    embedded = EmbeddedBroker(log_path=tmp_path_factory.mktemp("tansu") / "broker.log")
    embedded.start()
    try:
        yield Broker(embedded.bootstrap, embedded)
    finally:
        embedded.stop()


@pytest.fixture
def simulator() -> Iterator[TargetSimulator]:
    with TargetSimulator(SimulatorConfig(seed=1)) as sim:
        yield sim


@pytest.fixture
def topics(broker: Broker) -> dict[str, str]:
    """Fresh topic names per test, so tests never see each other's records."""
    tag = uuid.uuid4().hex[:8]
    names = {"topic": f"offline-{tag}", "dlq": f"offline-{tag}.dlq", "group": f"pc-{tag}"}
    broker.create_topics({names["topic"]: 3, names["dlq"]: 1})
    return names


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(
    broker: Broker, simulator: TargetSimulator, topics: dict[str, str], tmp_path: Path
) -> SettingsFactory:
    def factory(**overrides: Any) -> Settings:
        raw: dict[str, Any] = {
            "kafka": {
                "bootstrap_servers": broker.bootstrap,
                "group_id": topics["group"],
                "topics": [topics["topic"]],
                "dlq_topic": topics["dlq"],
                "config": dict(FAST_GROUP),
                "commit_interval_seconds": 0.2,
            },
            "avro": {"writer_schema": str(SCHEMA_PATH)},
            # The single-update path unless a test asks for another (a few thousand events
            # would make `auto` switch to bulk under the default quota).
            "target": {"base_url": simulator.url, "coalesce_window_ms": 20, "transport": "single"},
            "mapping": {"rules": str(RULES_PATH)},
            "metrics": {"host": "127.0.0.1", "port": 0},
            "pipeline": {"shutdown_timeout_seconds": 5},
        }
        for dotted, value in overrides.items():
            section, key = dotted.split("__", 1)
            raw.setdefault(section, {})[key] = value
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(raw))
        return load_settings(path, environ={})

    return factory
