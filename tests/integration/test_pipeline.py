"""The data path on a real broker and the simulator: what Target got, what was committed,
what reached the DLQ."""

from __future__ import annotations

import random

import pytest

from devtools.samples import poison_bytes, poison_event, sample_events
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


@pytest.mark.parametrize("processes", [0, 1], ids=["in-process", "decode-process"])
async def test_valid_events_reach_target_and_offsets_are_committed(
    broker, simulator, topics, make_settings, processes
) -> None:
    settings = make_settings(pipeline__decode_processes=processes)
    enc = encoder(settings)
    events = sample_events(300, profiles=40, seed=3)
    ends = produce(
        broker.bootstrap, topics["topic"], ((event_key(e), enc.encode(e)) for e in events)
    )
    async with running(settings) as app:
        await wait_until(lambda: finished(app, len(events), topics["topic"]), 60)
        sent = app.pool.chunks if app.pool is not None else 0
    assert (sent > 0) == bool(processes)  # the decode process did the work
    assert simulator.profiles() == expected_profiles(events)
    assert_history_clean(simulator, events)
    assert committed(broker.bootstrap, topics["group"], topics["topic"]) == ends
    assert read_all(broker.bootstrap, topics["dlq"]) == []


@pytest.mark.parametrize("processes", [0, 1], ids=["in-process", "decode-process"])
async def test_poison_reaches_the_dlq_with_its_reason_and_the_rest_flows(
    broker, simulator, topics, make_settings, processes
) -> None:
    settings = make_settings(pipeline__decode_processes=processes)
    enc = encoder(settings)
    rng = random.Random(5)
    good = sample_events(60, profiles=10, seed=9)
    records = [(event_key(e), enc.encode(e)) for e in good]
    bad = [
        (b"k1", b""),
        (None, poison_bytes(rng, "random", enc.encode(good[0]))),
        (b"k3", poison_bytes(rng, "truncated", enc.encode(good[1]))),
        (b"k4", poison_bytes(rng, "trailing", enc.encode(good[2]))),
        (b"k5", enc.encode(poison_event(rng, 1, "no_identity"))),
        (b"k6", enc.encode(poison_event(rng, 2, "invalid_identity"))),
    ]
    mixed = records[:30] + bad + records[30:]
    ends = produce(broker.bootstrap, topics["topic"], mixed)
    async with running(settings) as app:
        await wait_until(lambda: finished(app, len(mixed), topics["topic"]), 60)
    dlq = read_all(broker.bootstrap, topics["dlq"], expected=6)
    reasons = sorted(headers_of(m)["error.reason"] for m in dlq)
    assert len(reasons) == 6
    assert {"empty_value", "trailing_bytes", "no_identity", "invalid_identity"} <= set(reasons)
    assert set(reasons) <= {
        "empty_value",
        "malformed_avro",
        "invalid_utf8",
        "trailing_bytes",
        "no_identity",
        "invalid_identity",
    }
    by_key = {m.key(): m for m in dlq}
    h = headers_of(by_key[b"k5"])
    assert h["error.stage"] == "map" and h["error.reason"] == "no_identity"
    assert h["original.topic"] == topics["topic"]
    assert by_key[b"k5"].value() == bad[4][1]  # the original bytes, untouched
    assert int(h["original.offset"]) >= 0 and h["original.partition"].isdigit()
    assert headers_of(by_key[b"k1"])["error.stage"] == "decode"
    assert simulator.profiles() == expected_profiles(good)
    assert_history_clean(simulator, good)
    assert committed(broker.bootstrap, topics["group"], topics["topic"]) == ends


async def test_a_permanent_refusal_is_dead_lettered_with_http_status(
    broker, simulator, topics, make_settings
) -> None:
    settings = make_settings(target__client_code="acme")
    simulator.configure(client_code="someone-else")  # every update answers 404
    enc = encoder(settings)
    events = sample_events(4, profiles=4, seed=1)
    produce(
        broker.bootstrap, topics["topic"], ((event_key(e), enc.encode(e)) for e in events)
    )
    async with running(settings) as app:
        await wait_until(lambda: finished(app, len(events), topics["topic"]), 60)
    dlq = read_all(broker.bootstrap, topics["dlq"], expected=4)
    assert len(dlq) == 4
    for message in dlq:
        h = headers_of(message)
        assert (h["error.stage"], h["error.reason"], h["error.http_status"]) == (
            "send",
            "http_404",
            "404",
        )


@pytest.mark.parametrize("processes", [0, 1], ids=["in-process", "decode-process"])
async def test_skipped_events_are_counted_and_committed(
    broker, simulator, topics, make_settings, tmp_path, processes
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "identity:\n  - mbox3rdPartyId: customer.thirdPartyId\n"
        "rules:\n  - name: loans\n    when: \"channel == 'LOAN'\"\n"
        "    attributes:\n      lastLoanProduct: payload.product\n"
    )
    settings = make_settings(mapping__rules=str(rules), pipeline__decode_processes=processes)
    enc = encoder(settings)
    events = sample_events(40, profiles=5, seed=2)
    ends = produce(
        broker.bootstrap, topics["topic"], ((event_key(e), enc.encode(e)) for e in events)
    )
    async with running(settings) as app:
        await wait_until(lambda: finished(app, len(events), topics["topic"]), 60)
        assert app.metrics.events.labels("skipped")._value.get() == 30
    assert committed(broker.bootstrap, topics["group"], topics["topic"]) == ends
