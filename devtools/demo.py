"""`profile-consumer demo`: the whole story on this machine, with nothing else installed.

Starts Tansu and the Target simulator, produces sample events over the four channels (some of
them poison), runs the real consumer until every record is finished, then checks the outcome
from the outside: the simulator's profiles against the events, the DLQ topic's records against
the poison sent, and prints a summary.

`--backlog N` adds a second phase: a burst of N events lands at once, more than single updates
could send within `bulk.switch_after_seconds` under the quota, so the consumer
(`target.transport: auto`) switches to the Bulk Profile Update API, drains the backlog in a few
batches, and switches back to single updates; the switches, batches and rows are printed and
every profile is verified again.
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
from devtools.history import Update, accepted_writes, stale_overwrites
from devtools.samples import poison_bytes, poison_event, sample_events
from devtools.simulator import SimulatorConfig, TargetSimulator
from devtools.simulator.state import ReceivedUpdate

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


def run_demo(
    events: int = 3000, profiles: int = 500, poison: float = 0.03, backlog: int = 0
) -> int:
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
        code = _summary(app, sim, valid, sent_poison, dlq, elapsed)
        if backlog > 0:
            code = max(
                code, _backlog_phase(broker.bootstrap, sim, schema, valid, backlog, profiles)
            )
        return code


# Phase two's settings: statistics (the lag auto reads) every second, quick batches and polls,
# a short dwell, so the demo shows the whole cycle in seconds rather than minutes.
BACKLOG_ENV = {
    "PROFILE_CONSUMER__KAFKA__CONFIG__STATISTICS_INTERVAL_MS": "1000",
    "PROFILE_CONSUMER__BULK__MAX_BATCH_SECONDS": "5",
    "PROFILE_CONSUMER__BULK__STATUS_POLL_SECONDS": "0.5",
    "PROFILE_CONSUMER__BULK__MIN_DWELL_SECONDS": "5",
}


def _backlog_phase(
    bootstrap: str,
    sim: TargetSimulator,
    schema: dict[str, Any],
    earlier: list[dict[str, Any]],
    backlog: int,
    profiles: int,
) -> int:
    """A burst of `backlog` valid events after the first phase, drained through bulk."""
    print(f"\n=== backlog phase: {backlog} events at once (target.transport: auto) ===")
    encoder = Encoder(schema)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    burst = sample_events(backlog, profiles, seed=8)
    for event in burst:
        key = (event["customer"]["thirdPartyId"] or event["customer"]["pcId"]).encode()
        producer.produce(TOPIC, value=encoder.encode(event), key=key)
        producer.poll(0)
    producer.flush(60)
    os.environ.update(BACKLOG_ENV)  # read by demo_settings (the process is the demo's own)
    settings = demo_settings(bootstrap, sim.url)
    app = App(settings, registry=CollectorRegistry())
    started = time.monotonic()
    asyncio.run(_run_until_drained(app, backlog, timeout=300))
    return _backlog_summary(app, sim, earlier + burst, time.monotonic() - started)


async def _run_until_drained(app: App, produced: int, timeout: float) -> None:
    """Until the burst is read, every batch final, and auto is back to single updates."""
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    consumed = app.metrics.events_consumed.labels(TOPIC)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not task.done():
        bulk = app.bulk
        held = bulk.sender.held if bulk is not None else 0
        drained = consumed._value.get() >= produced and held == 0
        if drained and app.metrics.buffered_events._value.get() == 0:
            if bulk is None or not bulk.mode.bulk:
                break
        await asyncio.sleep(0.2)
    stop.set()
    await task


def _backlog_summary(
    app: App, sim: TargetSimulator, events: list[dict[str, Any]], elapsed: float
) -> int:
    bulk = app.bulk
    switches = bulk.mode.switches if bulk is not None else []
    for switch in switches:
        f = switch.figures
        print(
            f"switch to {switch.to:<6} ({switch.reason}): {f.waiting} events waiting, "
            f"quota pace {f.rate:.1f}/s, single updates would need "
            f"{f.drain_seconds:.0f}s"
        )
    m = app.metrics.bulk
    batches = int(m.batches.labels("complete")._value.get())
    rows = int(m.rows.labels("submitted")._value.get())
    failed = int(m.rows.labels("failed")._value.get())
    stats = sim.stats()
    print(f"bulk batches complete   {batches} ({stats['bulk_calls']} batch calls)")
    print(f"bulk rows               {rows} submitted, {failed} failed")
    print(f"single updates accepted {stats['accepted']} (both phases)")
    expected = expected_profiles(app.stages.mapper, events)
    received = sim.profiles()
    matching = sum(1 for key, attrs in expected.items() if received.get(key) == attrs)
    print(f"profiles verified       {matching}/{len(expected)} match the last event's values")
    print(f"elapsed                 {elapsed:.1f}s")
    went_bulk = any(s.to == "bulk" for s in switches) and batches > 0
    back = bool(switches) and switches[-1].to == "single"
    ok = matching == len(expected) and went_bulk and back
    print("result                  " + ("OK" if ok else "MISMATCH"))
    return 0 if ok else 1


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
    history = sim.received()
    stale = stale_overwrites(history, mapped_updates(app.stages.mapper, valid))
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
    print("history                 " + _history_line(history, stale))
    print("DLQ by reason           " + ", ".join(f"{r}={n}" for r, n in sorted(dlq.items())))
    limit = int(m.quota_limit._value.get())
    print(f"quota headroom          {limit - requests}/{limit} left in the rolling window")
    print(f"elapsed                 {elapsed:.1f}s")
    poison_total = sum(sent_poison.values())
    ok = matching == len(expected) and sum(dlq.values()) == poison_total and not stale
    print("result                  " + ("OK" if ok else "MISMATCH"))
    print(
        "\nInspect and replay what was dead-lettered (against your own cluster):\n"
        "  profile-consumer dlq inspect --config examples/config.yaml\n"
        "  profile-consumer dlq replay --config examples/config.yaml --reason REASON --dry-run"
    )
    return 0 if ok else 1


def _history_line(history: list[ReceivedUpdate], stale: list[str]) -> str:
    """Every value Target accepted, in arrival order, judged: none may go back to an older
    event's value once a newer one was written (devtools/history.py)."""
    writes = len(accepted_writes(history))
    if not stale:
        return f"{writes} writes checked, no stale overwrite"
    return f"{writes} writes checked, {len(stale)} STALE OVERWRITE(S): " + "; ".join(stale[:3])


def mapped_updates(mapper: Mapper, events: list[dict[str, Any]]) -> list[Update]:
    """The valid events' updates, in the order produced."""
    updates = (mapper.map(event) for event in events)
    return [((u.identity_type, u.identity), u.attributes) for u in updates if u is not None]


def expected_profiles(
    mapper: Mapper, events: list[dict[str, Any]]
) -> dict[tuple[str, str], dict[str, str]]:
    """What Target should hold after these valid events: their updates merged in order."""
    expected: dict[tuple[str, str], dict[str, str]] = {}
    for key, attributes in mapped_updates(mapper, events):
        expected.setdefault(key, {}).update(attributes)
    return expected
