"""`dlq inspect` and `dlq replay` on a real broker, with the real App dead-lettering first."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from consumer.cli import main
from consumer.config import Settings
from consumer.dlq.headers import dlq_headers
from consumer.errors import EventError, MappingError, PermanentDeliveryError
from consumer.record import SourceRecord
from devtools.samples import poison_event, sample_events
from tests.helpers import (
    assert_history_clean,
    committed,
    encoder,
    event_key,
    expected_profiles,
    finished,
    headers_of,
    produce,
    read_all,
    running,
    wait_until,
)

pytestmark = pytest.mark.integration


def config_path(settings: Settings) -> str:
    source = settings._source
    assert source is not None
    return str(source)


def cli(capsys: pytest.CaptureFixture[str], settings: Settings, *args: str) -> tuple[int, str]:
    """Run `profile-consumer dlq ...` in process; returns (exit code, stdout)."""
    capsys.readouterr()
    code = main(["dlq", *args, "--config", config_path(settings)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


async def dead_letter(
    broker: Any, topics: dict[str, str], settings: Settings, records: list[Any], dlq_total: int
) -> None:
    """Produce, run the App until it has read everything, wait for `dlq_total` DLQ records."""
    produce(broker.bootstrap, topics["topic"], records)
    async with running(settings) as app:
        await wait_until(lambda: finished(app, len(records), topics["topic"]), 60)
    assert len(read_all(broker.bootstrap, topics["dlq"], expected=dlq_total)) == dlq_total


def replayed(broker: Any, topic: str) -> list[Any]:
    """Records of the original topic that the replay tool produced."""
    return [m for m in read_all(broker.bootstrap, topic) if "replay.count" in headers_of(m)]


def no_identity_records(settings: Settings, n: int, seed: int) -> list[tuple[bytes, bytes]]:
    enc, rng = encoder(settings), random.Random(seed)
    return [(f"p{i}".encode(), enc.encode(poison_event(rng, i, "no_identity"))) for i in range(n)]


async def test_inspect_counts_reasons_and_decodes_a_sample(
    broker, simulator, topics, make_settings, capsys
) -> None:
    settings = make_settings()
    enc = encoder(settings)
    good = [(event_key(e), enc.encode(e)) for e in sample_events(10, profiles=5, seed=1)]
    records = good[:5] + [(b"e1", b""), (b"e2", b"")] + no_identity_records(settings, 3, 2)
    await dead_letter(broker, topics, settings, records + good[5:], dlq_total=5)

    code, out = cli(capsys, settings, "inspect", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["total"] == 5 and report["pending"] == 5
    assert report["by_stage"] == {"decode": 2, "map": 3}
    assert report["by_reason"] == [
        {"stage": "decode", "reason": "empty_value", "count": 2, "pending": 2},
        {"stage": "map", "reason": "no_identity", "count": 3, "pending": 3},
    ]
    assert report["oldest"] <= report["newest"]
    by_reason = {s["reason"]: s for s in report["sample"]}
    assert by_reason["no_identity"]["event"]["customer"] == {"thirdPartyId": None, "pcId": None}
    assert by_reason["no_identity"]["headers"]["original.topic"] == topics["topic"]
    assert by_reason["empty_value"]["event"] is None
    assert by_reason["empty_value"]["decode_error"].startswith("empty_value")

    code, out = cli(capsys, settings, "inspect", "--reason", "no_identity", "--limit", "1")
    assert code == 0
    assert "3 record(s), 3 pending replay" in out and "empty_value" not in out
    assert "sample (1 record(s))" in out


async def test_replay_one_reason_once_and_the_fixed_events_reach_target(
    broker, simulator, topics, make_settings, capsys
) -> None:
    settings = make_settings()
    enc = encoder(settings)
    events = sample_events(6, profiles=6, seed=4)
    good = [(event_key(e), enc.encode(e)) for e in events]
    simulator.configure(client_code="other")  # the outage: every update answers 404
    poison = no_identity_records(settings, 2, 3)
    await dead_letter(broker, topics, settings, good[:3] + poison + good[3:], dlq_total=8)
    simulator.configure(client_code=None)  # fixed

    code, out = cli(capsys, settings, "replay", "--reason", "http_404")
    assert code == 0, out
    assert "selected 6, replayed 6, refused 0" in out
    moved = replayed(broker, topics["topic"])
    assert sorted((m.key(), m.value()) for m in moved) == sorted(good)
    for message in moved:
        h = headers_of(message)
        assert h["replay.count"] == "1"
        assert not any(k.startswith(("error.", "original.")) for k in h)

    code, out = cli(capsys, settings, "replay", "--reason", "http_404")
    assert code == 0 and "replayed 0" in out
    assert len(replayed(broker, topics["topic"])) == 6  # not twice

    async with running(settings) as app:
        await wait_until(lambda: finished(app, 6, topics["topic"]), 60)
    assert simulator.profiles() == expected_profiles(events)
    assert_history_clean(simulator, events)

    # The filtered replay did not mark the other reason as handled: it is still there.
    code, out = cli(capsys, settings, "replay", "--reason", "no_identity")
    assert code == 0 and "selected 2, replayed 2" in out
    assert len(replayed(broker, topics["topic"])) == 8


async def test_dry_run_changes_nothing(broker, simulator, topics, make_settings, capsys) -> None:
    settings = make_settings()
    await dead_letter(broker, topics, settings, no_identity_records(settings, 3, 5), dlq_total=3)

    code, out = cli(capsys, settings, "replay", "--dry-run")
    assert code == 0
    assert "dry run: selected 3, would replay 3, would refuse 0" in out
    assert replayed(broker, topics["topic"]) == []
    group = settings.kafka.group_id + ".dlq-replay"
    assert committed(broker.bootstrap, group, topics["dlq"], partitions=1) == {}

    code, out = cli(capsys, settings, "replay", "--limit", "2")
    assert code == 0 and "selected 2, replayed 2" in out
    assert committed(broker.bootstrap, group, topics["dlq"], partitions=1) == {0: 2}


async def test_a_record_replayed_max_times_is_refused(
    broker, simulator, topics, make_settings, capsys
) -> None:
    settings = make_settings()
    await dead_letter(broker, topics, settings, no_identity_records(settings, 2, 7), dlq_total=2)
    code, out = cli(capsys, settings, "replay", "--max-replays", "1")
    assert code == 0 and "replayed 2" in out

    # Still poison: the App dead-letters the replayed events again, carrying replay.count=1.
    async with running(settings) as app:
        await wait_until(lambda: finished(app, 2, topics["topic"]), 60)
    again = read_all(broker.bootstrap, topics["dlq"], expected=4)
    assert sorted(headers_of(m).get("replay.count", "-") for m in again) == ["-", "-", "1", "1"]

    code, out = cli(capsys, settings, "replay", "--max-replays", "1")
    assert code == 0
    assert "selected 2, replayed 0, refused 2" in out
    assert out.count("already replayed 1 time(s) (--max-replays 1)") == 2
    assert len(replayed(broker, topics["topic"])) == 2

    code, out = cli(capsys, settings, "replay")
    assert code == 0 and "selected 0" in out  # refused records count as handled


def test_interleaved_reasons_filtered_replays_never_hide_each_other(
    broker, topics, make_settings, capsys
) -> None:
    settings = make_settings()
    reasons = ["http_404", "no_identity", "http_404", "no_identity", "http_404"]
    produce_dlq(broker, topics, reasons)
    group = settings.kafka.group_id + ".dlq-replay"

    code, out = cli(capsys, settings, "replay", "--reason", "http_404")
    assert "selected 3, replayed 3" in out
    # Offset 1 (no_identity) was left alone: the commit stops before it; the state topic
    # remembers offsets 2 and 4.
    assert committed(broker.bootstrap, group, topics["dlq"], partitions=1) == {0: 1}

    code, out = cli(capsys, settings, "replay", "--reason", "http_404")
    assert "selected 0, replayed 0, refused 0, skipped 2 (already replayed)" in out

    code, out = cli(capsys, settings, "inspect", "--json")
    pending = {r["reason"]: r["pending"] for r in json.loads(out)["by_reason"]}
    assert pending == {"http_404": 0, "no_identity": 2}

    code, out = cli(capsys, settings, "replay")
    assert "selected 2, replayed 2" in out
    assert committed(broker.bootstrap, group, topics["dlq"], partitions=1) == {0: 5}
    moved = sorted((m.value(), m.partition()) for m in replayed(broker, topics["topic"]))
    # Each exactly once, back on the partition it came from.
    assert moved == [(f"v{i}".encode(), i % 3) for i in range(5)]


def test_replay_ends_while_the_app_keeps_dead_lettering(
    broker, topics, make_settings, capsys
) -> None:
    settings = make_settings()
    produce_dlq(broker, topics, ["http_404"] * 3)
    stop = threading.Event()

    def trickle() -> None:  # a steady trickle of poison: the DLQ never falls quiet
        n = 3
        while not stop.wait(0.05):
            produce_dlq(broker, topics, ["no_identity"], first=n)
            n += 1

    writer = threading.Thread(target=trickle)
    writer.start()
    try:
        time.sleep(0.5)
        started = time.monotonic()
        code, out = cli(capsys, settings, "replay", "--reason", "http_404")
        assert time.monotonic() - started < 30
    finally:
        stop.set()
        writer.join()
    assert code == 0 and "selected 3, replayed 3" in out


def produce_dlq(broker: Any, topics: dict[str, str], reasons: list[str], first: int = 0) -> None:
    """DLQ records as the App writes them, one per reason, in order, on partition 0."""
    records = []
    for i, reason in enumerate(reasons, first):
        key, value = f"k{i}".encode(), f"v{i}".encode()
        source = SourceRecord(topics["topic"], i % 3, i, key, value, [], None)
        error: EventError = (
            MappingError(reason, "test")
            if reason == "no_identity"
            else PermanentDeliveryError(reason, "refused", 404)
        )
        records.append((source, dlq_headers(source, error)))
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for source, headers in records:
        producer.produce(topics["dlq"], source.value, source.key, 0, headers=headers)
    assert producer.flush(15) == 0


def test_a_missing_dlq_topic_is_a_clear_error(make_settings, capsys, tmp_path: Path) -> None:
    settings = make_settings(kafka__dlq_topic="no-such-topic-dlq")
    code, out = cli(capsys, settings, "inspect")
    assert code == 1 and "no-such-topic-dlq does not exist" in out
