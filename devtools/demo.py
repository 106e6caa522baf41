"""`profile-consumer demo`: the whole story on this machine, with nothing else installed.

Starts Tansu and the Target simulator, produces sample events over the four channels (some of
them poison), runs the real consumer until every record is finished, then checks the outcome
from the outside: the simulator's profiles against the events, the DLQ topic's records against
the poison sent, and prints a summary.
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from consumer.app import App
from consumer.avro import load_schema
from consumer.config import Settings, load_settings
from consumer.mapping import Mapper
from devtools.broker import EmbeddedBroker, read_topic
from devtools.encoder import Encoder
from devtools.samples import poison_bytes, poison_event, sample_events
from devtools.simulator import SimulatorConfig, TargetSimulator

TOPIC = "offline-transactions"
DLQ = "offline-transactions.dlq"
POISON_KINDS = ("random", "truncated", "trailing", "no_identity", "invalid_identity")
# devtools/ sits beside examples/ and schemas/ in a checkout: the demo runs from any directory.
REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


def demo_settings(bootstrap: str, target_url: str) -> Settings:
    """examples/config.yaml pointed at the embedded broker and simulator."""
    env = {
        "PROFILE_CONSUMER__KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "PROFILE_CONSUMER__TARGET__BASE_URL": target_url,
        "PROFILE_CONSUMER__TARGET__COALESCE_WINDOW_MS": "100",
        "PROFILE_CONSUMER__METRICS__PORT": "0",
        # Tansu holds a first JoinGroup for half the session timeout.
        "PROFILE_CONSUMER__KAFKA__CONFIG__SESSION_TIMEOUT_MS": "6000",
        "PROFILE_CONSUMER__KAFKA__CONFIG__HEARTBEAT_INTERVAL_MS": "500",
    }
    return load_settings(EXAMPLES / "config.yaml", {**os.environ, **env})


def produce_demo_records(
    bootstrap: str, schema: dict[str, Any], events: int, profiles: int, poison: float
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Produce the sample stream; returns the valid events and the poison sent by kind."""
    rng = random.Random(42)  # noqa: S311 - sample data
    encoder = Encoder(schema)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    valid: list[dict[str, Any]] = []
    sent_poison: Counter[str] = Counter()
    for index, event in enumerate(sample_events(events, profiles, seed=7)):
        key = (event["customer"]["thirdPartyId"] or event["customer"]["pcId"]).encode()
        if rng.random() < poison:
            kind = POISON_KINDS[index % len(POISON_KINDS)]
            if kind in ("no_identity", "invalid_identity"):
                value = encoder.encode(poison_event(rng, index, kind))
            else:
                value = poison_bytes(rng, kind, encoder.encode(event))
            sent_poison[kind] += 1
        else:
            value = encoder.encode(event)
            valid.append(event)
        producer.produce(TOPIC, value=value, key=key)
        producer.poll(0)
    producer.flush(30)
    return valid, sent_poison


def read_dlq(bootstrap: str, expected: int) -> Counter[str]:
    """Every DLQ record's `error.reason`, read back from the topic."""
    reasons: Counter[str] = Counter()
    for message in read_topic(bootstrap, DLQ, expected=expected):
        reason = dict(message.headers() or []).get("error.reason")
        reasons[reason.decode() if isinstance(reason, bytes) else "?"] += 1
    return reasons


async def _run_until_done(app: App, produced: int, timeout: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    consumed = app.metrics.events_consumed.labels(TOPIC)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not task.done():
        if consumed._value.get() >= produced and app.metrics.buffered_events._value.get() == 0:
            break
        await asyncio.sleep(0.2)
    stop.set()
    await task


def run_demo(events: int = 3000, profiles: int = 500, poison: float = 0.03) -> int:
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(log_path=Path(tmp) / "broker.log") as broker,
        TargetSimulator(SimulatorConfig()) as sim,
    ):
        print(f"broker {broker.bootstrap} (Tansu), Target simulator {sim.url}")
        broker.create_topics({TOPIC: 3, DLQ: 1})
        settings = demo_settings(broker.bootstrap, sim.url)
        schema = load_schema(settings.resolve(settings.avro.writer_schema))
        valid, sent_poison = produce_demo_records(
            broker.bootstrap, schema, events, profiles, poison
        )
        print(f"produced {events} events ({sum(sent_poison.values())} poison)")
        app = App(settings, registry=CollectorRegistry())
        asyncio.run(_run_until_done(app, events, timeout=120))
        elapsed = time.monotonic() - started
        dlq = read_dlq(broker.bootstrap, sum(sent_poison.values()))
        return _summary(app, sim, valid, sent_poison, dlq, elapsed)


def _summary(
    app: App,
    sim: TargetSimulator,
    valid: list[dict[str, Any]],
    sent_poison: Counter[str],
    dlq: Counter[str],
    elapsed: float,
) -> int:
    expected = expected_profiles(app.stages.mapper, valid)
    received = sim.profiles()
    matching = sum(1 for key, attrs in expected.items() if received.get(key) == attrs)
    m = app.metrics
    requests = sim.accepted_count()
    mapped = int(m.events.labels("mapped")._value.get())
    print("\n=== profile-consumer demo summary ===")
    print(f"events consumed         {int(m.events_consumed.labels(TOPIC)._value.get())}")
    print(f"  mapped                {mapped}")
    print(f"  skipped (no rule)     {int(m.events.labels('skipped')._value.get())}")
    print(f"  dead-lettered         {sum(dlq.values())}")
    print(f"updates accepted        {requests}  ({mapped / max(1, requests):.2f} events/request)")
    print(f"profiles verified       {matching}/{len(expected)} match the last event's values")
    print("DLQ by reason           " + ", ".join(f"{r}={n}" for r, n in sorted(dlq.items())))
    limit = int(m.quota_limit._value.get())
    print(f"quota headroom          {limit - requests}/{limit} left in the rolling window")
    print(f"elapsed                 {elapsed:.1f}s")
    poison_total = sum(sent_poison.values())
    ok = matching == len(expected) and sum(dlq.values()) == poison_total
    print("result                  " + ("OK" if ok else "MISMATCH"))
    print(
        "\nInspect and replay what was dead-lettered (against your own cluster):\n"
        "  profile-consumer dlq inspect --config examples/config.yaml\n"
        "  profile-consumer dlq replay --config examples/config.yaml --reason REASON --dry-run"
    )
    return 0 if ok else 1


def expected_profiles(
    mapper: Mapper, events: list[dict[str, Any]]
) -> dict[tuple[str, str], dict[str, str]]:
    """What Target should hold after these valid events: their updates merged in order."""
    expected: dict[tuple[str, str], dict[str, str]] = {}
    for event in events:
        update = mapper.map(event)
        if update is not None:
            key = (update.identity_type, update.identity)
            expected.setdefault(key, {}).update(update.attributes)
    return expected
