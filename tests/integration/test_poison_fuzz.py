"""Reliability scenario, poison and fuzz: over 10,000 malformed records interleaved with valid
ones, on the real broker and simulator, with the App running in this process.

Every valid event must reach Target intact, every malformed one must land in the DLQ exactly
once with the stable (stage, reason) of its kind, offsets must be committed to the end, and the
App's run task must never fail (in production: the process never restarts).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from prometheus_client import CollectorRegistry

from consumer.app import App
from consumer.avro import Decoder, load_schema
from consumer.config import Settings
from consumer.errors import DecodeError
from consumer.target.request import build_requests
from devtools.encoder import Encoder
from devtools.samples import poison_bytes, sample_event
from tests.conftest import SCHEMA_PATH
from tests.helpers import assert_history_clean, committed, headers_of, read_all, wait_until
from tests.reference import reference_update

pytestmark = pytest.mark.integration

# Characters that would break a hand-built query string; VALID in values, delivered as sent.
NASTY = ["&", "=", "%", "+", "#", "\n", "\r\n", "?", ";", " ", "%26", "&profile.x=1", "🙂", "東京"]
# Byte sequences that are not UTF-8: lone continuation, bad 2-byte, encoded surrogate,
# 5-byte form, truncated 3-byte, 0xFF.
BAD_UTF8 = [b"\x80", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82", b"\xff"]


@dataclass
class Record:
    kind: str
    key: bytes | None
    value: bytes | None
    event: dict[str, Any] | None = None  # the valid events, to compute what Target must hold
    expected: tuple[str, frozenset[str]] | None = None  # (stage, allowed reasons) if malformed


def _nasty_text(rng: random.Random, length: int) -> str:
    parts: list[str] = []
    size = 0  # a running total: summing the parts on every turn made the corpus quadratic
    while size < length:
        part = rng.choice(NASTY) if rng.random() < 0.6 else rng.choice("abcXYZ019é")
        parts.append(part)
        size += len(part)
    return "".join(parts)


class Corpus:
    """Builds the interleaved records of one run; identities are unique per valid event so
    Target's final state is exactly the union of their updates."""

    def __init__(self, seed: int, enc: Encoder, oracle: Decoder) -> None:
        self.rng = random.Random(seed)  # test data
        self.enc = enc
        self.oracle = oracle
        self.records: list[Record] = []
        self._n = 0

    def _event(self, channel: str | None = None) -> dict[str, Any]:
        self._n += 1
        event = sample_event(self.rng, self._n, 10)
        while channel is not None and event["channel"] != channel:
            self._n += 1
            event = sample_event(self.rng, self._n, 10)
        tag = f"fz{self._n:06d}"
        if event["channel"] == "KIOSK":
            event["customer"] = {"thirdPartyId": None, "pcId": f"{tag}-pc"}
        else:
            event["customer"] = {"thirdPartyId": tag, "pcId": None}
        return event

    def _key(self) -> bytes | None:
        return None if self.rng.random() < 0.3 else f"k{self.rng.randrange(10**6)}".encode()

    def valid(self, kind: str, event: dict[str, Any]) -> None:
        key = None if self.rng.random() < 0.2 else self._key()
        self.records.append(Record(kind, key, self.enc.encode(event), event=event))

    def bad(self, kind: str, value: bytes | None, stage: str, *reasons: str) -> None:
        self.records.append(Record(kind, self._key(), value, expected=(stage, frozenset(reasons))))

    # --- valid events ----------------------------------------------------------------------

    def add_valid(self, count: int) -> None:
        for i in range(count):
            event = self._event()
            flavour = i % 6
            if flavour == 1 and event["channel"] == "CALL_CENTER":
                event["payload"]["reason"] = _nasty_text(self.rng, 80)
            elif flavour == 2:
                event["attributes"] = {"location_label": _nasty_text(self.rng, 60)}
            elif flavour == 3 and event["customer"]["thirdPartyId"]:
                # Allowed in an mbox3rdPartyId: everything but + and /; 256 characters max.
                # Inner space and newline kept; trailing whitespace is trimmed (mapper).
                ident = event["customer"]["thirdPartyId"] + "&=%#?;é🙂 \nz"
                if i % 12 == 3:
                    ident = ident.ljust(256, "x")
                event["customer"]["thirdPartyId"] = ident
            elif flavour == 4 and event["customer"]["pcId"]:
                # Every character a Target visitor id may hold (letters, digits, . _ -).
                event["customer"]["pcId"] += "._-Z9"
            self.valid("valid", event)

    def add_large_valid(self, count: int) -> None:
        """Values between the GET (8 KB) and POST (60 KB) limits: a POST, delivered intact."""
        for _ in range(count):
            event = self._event("CALL_CENTER")
            event["payload"]["reason"] = reason = _nasty_text(self.rng, 12_000)
            # Self-check: above a GET, within one POST.
            (request,) = build_requests("http://h/m2/acme/profile/update", "x", "y", {"a": reason})
            assert request.method == "POST"
            self.valid("valid_post", event)

    # --- malformed -------------------------------------------------------------------------

    def add_random(self, count: int) -> None:
        while count:
            value = poison_bytes(self.rng, "random", b"")
            try:
                self.oracle.decode(value)
            except DecodeError as exc:  # the only expected outcome; the reason is checked
                self.bad("random", value, "decode", exc.reason)
                count -= 1

    def add_truncated(self, count: int) -> None:
        for _ in range(count):
            valid = self.enc.encode(self._event())
            cut = self.rng.randrange(1, len(valid))
            self.bad("truncated", valid[:cut], "decode", "malformed_avro")

    def add_trailing(self, count: int) -> None:
        for _ in range(count):
            value = self.enc.encode(self._event()) + self.rng.randbytes(self.rng.randrange(1, 9))
            self.bad("trailing", value, "decode", "trailing_bytes")

    def add_empty(self, count: int) -> None:
        for i in range(count):
            self.bad("empty", None if i % 2 else b"", "decode", "empty_value")

    def add_bad_utf8(self, count: int) -> None:
        for i in range(count):
            event = self._event("CALL_CENTER")
            marker = f"@@{i:06d}@@"
            field = i % 4
            if field == 0:
                event["eventId"] = marker
            elif field == 1:
                event["payload"]["reason"] = "a" + marker + "z"
            elif field == 2:
                event["attributes"] = {"location_label": marker}
            else:
                event["attributes"] = {marker: "v"}
            raw = self.enc.encode(event)
            assert raw.count(marker.encode()) == 1
            bad = self.rng.choice(BAD_UTF8)
            filler = b"q" * (len(marker) - len(bad))
            self.bad(
                "bad_utf8", raw.replace(marker.encode(), filler + bad), "decode", "invalid_utf8"
            )

    def add_bad_identity(self, count: int) -> None:
        for i in range(count):
            event = self._event("CALL_CENTER")
            base = event["customer"]["thirdPartyId"]
            event["customer"]["thirdPartyId"] = [f"{base}+x", f"a/{base}", base.ljust(300, "x")][
                i % 3
            ]
            self.bad("bad_identity", self.enc.encode(event), "map", "invalid_identity")

    def add_no_identity(self, count: int) -> None:
        for _ in range(count):
            event = self._event()
            event["customer"] = {
                "thirdPartyId": None,
                "pcId": None if self.rng.random() < 0.5 else " ",
            }
            self.bad("no_identity", self.enc.encode(event), "map", "no_identity")

    def add_oversized(self, count: int) -> None:
        """One attribute whose encoded pair alone exceeds a 60 KB POST."""
        for _ in range(count):
            event = self._event("CALL_CENTER")
            event["payload"]["reason"] = "r" * 62_000
            self.bad("oversized", self.enc.encode(event), "send", "payload_too_large")


def produce_indexed(bootstrap: str, topic: str, records: list[Record]) -> list[tuple[int, int]]:
    """Produce in order; returns each record's (partition, offset)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    where: list[tuple[int, int]] = [(-1, -1)] * len(records)

    def on_delivery(index: int) -> Any:
        def delivered(err: Any, msg: Any) -> None:
            assert err is None, err
            where[index] = (msg.partition(), msg.offset())

        return delivered

    for index, record in enumerate(records):
        producer.produce(topic, value=record.value, key=record.key, on_delivery=on_delivery(index))
        producer.poll(0)
    assert producer.flush(60) == 0
    return where


@asynccontextmanager
async def running_task(settings: Settings) -> AsyncIterator[tuple[App, asyncio.Task[None]]]:
    """Like helpers.running, but hands out the run task so a test can see it never failed."""
    app = App(settings, registry=CollectorRegistry())
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        yield app, task
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


def expected_target(records: Iterable[Record]) -> dict[tuple[str, str], dict[str, str]]:
    """From the reference interpreter (tests/reference.py), not the product's mapper."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    for record in records:
        if record.event is not None:
            update = reference_update(record.event)
            assert update is not None
            key, attributes = update
            assert key not in out  # identities are unique per valid event
            out[key] = attributes
    return out


def check_outcomes(
    app: App, simulator: Any, records: list[Record], where: list[tuple[int, int]], dlq: list[Any]
) -> Counter[tuple[str, str]]:
    """The shared assertions: Target got every valid update intact, the DLQ every malformed
    record once, byte for byte, with its kind's reason. Returns the (stage, reason) counts."""
    by_position = {pos: rec for pos, rec in zip(where, records, strict=True)}
    malformed = [r for r in records if r.expected is not None]
    seen: set[tuple[int, int]] = set()
    reasons: Counter[tuple[str, str]] = Counter()
    for message in dlq:
        h = headers_of(message)
        pos = (int(h["original.partition"]), int(h["original.offset"]))
        assert pos not in seen, f"dead-lettered twice: {pos}"
        seen.add(pos)
        record = by_position[pos]
        assert record.expected is not None, f"a valid {record.kind} record was dead-lettered: {h}"
        stage, allowed = record.expected
        assert (h["error.stage"], h["error.reason"]) in {(stage, r) for r in allowed}, (
            record.kind,
            h,
        )
        assert message.value() == record.value, record.kind  # original bytes, untouched
        assert message.key() == record.key
        reasons[(h["error.stage"], h["error.reason"])] += 1
    assert len(seen) == len(malformed)

    expected = expected_target(records)
    profiles = simulator.profiles()
    assert profiles == expected
    # The whole history too, not only the final state: no value ever went back.
    assert_history_clean(simulator, [r.event for r in records if r.event is not None])
    # Nothing malformed (nor any injected parameter) reached Target: every request was accepted.
    assert all(r.status == 200 for r in simulator.received())
    # The nasty values arrived exactly as the events carried them.
    for record in records:
        if record.event is not None and record.event["channel"] == "CALL_CENTER":
            ident = record.event["customer"]["thirdPartyId"]
            got = profiles[("mbox3rdPartyId", ident)]
            assert got["lastCallCentreReason"] == record.event["payload"]["reason"]
        elif record.event is not None and record.event["channel"] == "KIOSK":
            got = profiles[("mboxPC", record.event["customer"]["pcId"])]
            assert got["kioskLocation"] == record.event["attributes"]["location_label"]
    m = app.metrics
    assert m.events.labels("dead_lettered")._value.get() == len(malformed)
    for (stage, reason), count in reasons.items():
        assert m.dlq_events.labels(stage, reason)._value.get() == count
    return reasons


def failures_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("processes", [0, 1], ids=["in-process", "decode-process"])
async def test_ten_thousand_malformed_records_never_stop_the_pipeline(
    broker, simulator, topics, make_settings, caplog, processes
) -> None:
    caplog.set_level(logging.WARNING)
    settings = make_settings(pipeline__decode_processes=processes)
    schema = load_schema(SCHEMA_PATH)
    corpus = Corpus(seed=66, enc=Encoder(schema), oracle=Decoder(schema, writer_schema=schema))
    corpus.add_valid(1_500)
    corpus.add_large_valid(40)
    corpus.add_random(3_000)
    corpus.add_truncated(2_500)
    corpus.add_trailing(500)
    corpus.add_empty(1_000)
    corpus.add_bad_utf8(1_000)
    corpus.add_bad_identity(1_200)
    corpus.add_no_identity(600)
    corpus.add_oversized(200)
    records = corpus.records
    corpus.rng.shuffle(records)
    malformed = sum(r.expected is not None for r in records)
    assert malformed >= 10_000

    started = time.monotonic()
    where = produce_indexed(broker.bootstrap, topics["topic"], records)
    produced_at = time.monotonic()
    async with running_task(settings) as (app, task):
        m = app.metrics

        def done() -> bool:
            assert not task.done(), "the App's run task ended"  # never restarts
            consumed = m.events_consumed.labels(topics["topic"])._value.get()
            return consumed >= len(records) and m.buffered_events._value.get() == 0

        await wait_until(done, 150)
        processed_at = time.monotonic()
        assert not task.done()
    assert failures_logged(caplog) == []
    dlq = read_all(broker.bootstrap, topics["dlq"], expected=malformed)
    reasons = check_outcomes(app, simulator, records, where, dlq)
    ends: dict[int, int] = {}
    for partition, offset in where:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    assert committed(broker.bootstrap, topics["group"], topics["topic"]) == ends
    print(  # figures for docs/reliability.md (pytest -s)
        json.dumps(
            {
                "records": len(records),
                "malformed": malformed,
                "valid": len(records) - malformed,
                "produce_seconds": round(produced_at - started, 1),
                "process_seconds": round(processed_at - produced_at, 1),
                "reasons": {f"{s}/{r}": n for (s, r), n in sorted(reasons.items())},
                "kinds": dict(Counter(r.kind for r in records)),
            }
        )
    )


# --- the Confluent wire format, with confluent-kafka's mock Schema Registry ---------------


@pytest.mark.parametrize("processes", [0, 1], ids=["in-process", "decode-process"])
async def test_registry_mode_dead_letters_bad_magic_and_unknown_schema_ids(
    broker, simulator, topics, make_settings, caplog, monkeypatch, processes
) -> None:
    """`mock://` registries are per client instance: the test hands the App the client it
    registered the schemas in, through SchemaRegistryClient.new_client (which
    consumer.avro.registry_lookup calls), so the App's real lookup code path runs."""
    caplog.set_level(logging.WARNING)
    registry = SchemaRegistryClient.new_client({"url": "mock://fuzz"})
    monkeypatch.setattr(SchemaRegistryClient, "new_client", staticmethod(lambda conf: registry))
    schema = load_schema(SCHEMA_PATH)
    good_id = registry.register_schema("offline-value", Schema(json.dumps(schema), "AVRO"))
    other = {"type": "record", "name": "Other", "fields": [{"name": "x", "type": "long"}]}
    other_id = registry.register_schema("other-value", Schema(json.dumps(other), "AVRO"))
    not_avro = {"type": "object", "properties": {"x": {"type": "string"}}}
    json_id = registry.register_schema("json-value", Schema(json.dumps(not_avro), "JSON"))
    settings = make_settings(
        avro__schema_registry_url="mock://fuzz", pipeline__decode_processes=processes
    )

    enc = Encoder(schema, schema_id=good_id)
    corpus = Corpus(seed=67, enc=enc, oracle=Decoder(schema, writer_schema=schema))
    corpus.add_valid(200)
    corpus.add_no_identity(20)
    for _ in range(200):  # a valid body behind a magic byte other than 0
        value = enc.encode(corpus._event())
        corpus.bad(
            "bad_magic",
            bytes([corpus.rng.randrange(1, 256)]) + value[1:],
            "decode",
            "bad_magic_byte",
        )
    for i in range(50):  # shorter than the 5-byte header
        corpus.bad("short", b"\x00" * (1 + i % 4), "decode", "bad_magic_byte")
    for _ in range(200):  # well-formed header, id the registry does not know
        value = enc.encode(corpus._event())
        unknown = corpus.rng.choice([0, 999, 2**31 - 1, 12345]).to_bytes(4, "big")
        corpus.bad("unknown_id", b"\x00" + unknown + value[5:], "decode", "unknown_schema_id")
    for _ in range(50):  # an id of another record type: the reader schema cannot resolve it
        value = enc.encode(corpus._event())
        corpus.bad(
            "other_schema",
            b"\x00" + other_id.to_bytes(4, "big") + value[5:],
            "decode",
            "malformed_avro",
            "trailing_bytes",
        )
    for _ in range(50):  # an id of a schema that is not Avro at all
        value = enc.encode(corpus._event())
        corpus.bad(
            "json_schema",
            b"\x00" + json_id.to_bytes(4, "big") + value[5:],
            "decode",
            "unsupported_schema",
        )
    for _ in range(100):  # a correct header before a truncated body
        value = enc.encode(corpus._event())
        corpus.bad(
            "truncated", value[: corpus.rng.randrange(5, len(value))], "decode", "malformed_avro"
        )
    records = corpus.records
    corpus.rng.shuffle(records)
    malformed = sum(r.expected is not None for r in records)

    where = produce_indexed(broker.bootstrap, topics["topic"], records)
    async with running_task(settings) as (app, task):
        m = app.metrics

        def done() -> bool:
            assert not task.done(), "the App's run task ended"
            consumed = m.events_consumed.labels(topics["topic"])._value.get()
            return consumed >= len(records) and m.buffered_events._value.get() == 0

        await wait_until(done, 90)
    assert failures_logged(caplog) == []
    dlq = read_all(broker.bootstrap, topics["dlq"], expected=malformed)
    reasons = check_outcomes(app, simulator, records, where, dlq)
    assert {r for _, r in reasons} >= {
        "bad_magic_byte",
        "unknown_schema_id",
        "unsupported_schema",
        "malformed_avro",
        "no_identity",
    }
    print(json.dumps({"registry_mode_reasons": {f"{s}/{r}": n for (s, r), n in reasons.items()}}))


async def test_an_oversized_event_does_not_take_a_valid_one_of_its_profile_with_it(
    broker, simulator, topics, make_settings
) -> None:
    settings = make_settings(target__coalesce_window_ms=300)  # read in one poll: coalesced
    schema = load_schema(SCHEMA_PATH)
    enc = Encoder(schema)
    rng = random.Random(1)  # test data
    valid = sample_event(rng, 1, 10)  # index 1: LOAN
    oversized = sample_event(rng, 0, 10)  # index 0: CALL_CENTER
    for event in (valid, oversized):
        event["customer"] = {"thirdPartyId": "same-profile", "pcId": None}
    oversized["payload"]["reason"] = "r" * 62_000
    records = [(b"same-profile", enc.encode(valid)), (b"same-profile", enc.encode(oversized))]
    produce_indexed(broker.bootstrap, topics["topic"], [Record("x", k, v) for k, v in records])
    async with running_task(settings) as (app, _):
        await wait_until(
            lambda: (
                app.metrics.buffered_events._value.get() == 0
                and app.metrics.events_consumed.labels(topics["topic"])._value.get() == 2
            ),
            30,
        )
    dlq = read_all(broker.bootstrap, topics["dlq"], idle=1.0)
    assert [m.value() for m in dlq] == [records[1][1]]  # only the oversized one
    assert ("mbox3rdPartyId", "same-profile") in simulator.profiles()
