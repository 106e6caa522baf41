"""Schema Registry lookups at the edges: a registry that never answers must not freeze the
event loop, and an id it does not know must not be asked for on every record."""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import time
from pathlib import Path

import pytest

from consumer.avro import UNKNOWN_ID_TTL_SECONDS, Decoder
from consumer.errors import DecodeError, RegistryUnavailable
from devtools.encoder import Encoder

pytestmark = pytest.mark.unit
SCHEMA = json.loads(
    (Path(__file__).parents[3] / "schemas" / "offline_transaction.avsc").read_text("utf-8")
)


def framed(schema_id: int, body: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", schema_id) + body


def some_body() -> bytes:
    from devtools.samples import sample_events

    return Encoder(SCHEMA).encode(sample_events(1)[0])


async def test_a_hung_registry_times_out_and_the_loop_keeps_turning() -> None:
    release = threading.Event()

    def hung(schema_id: int) -> str:
        release.wait(10)  # accepts the connection, never answers (until the test ends)
        raise KeyError(schema_id)

    decoder = Decoder(SCHEMA, registry_lookup=hung)
    value = framed(7, some_body())
    assert decoder.schema_to_fetch(value) == 7
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    spinning = asyncio.create_task(ticker())
    started = time.monotonic()
    try:
        with pytest.raises(RegistryUnavailable, match="did not answer within 0.3s"):
            await decoder.fetch(7, timeout=0.3)
    finally:
        release.set()
        spinning.cancel()
    assert time.monotonic() - started < 2.0
    assert ticks >= 5  # the loop ran while the lookup hung in its thread


async def test_an_unknown_id_is_looked_up_once_per_ttl() -> None:
    asked: list[int] = []
    now = [0.0]

    def lookup(schema_id: int) -> str:
        asked.append(schema_id)
        raise KeyError(schema_id)

    decoder = Decoder(SCHEMA, registry_lookup=lookup, clock=lambda: now[0])
    value = framed(99, some_body())
    await decoder.fetch(99, timeout=5)
    for _ in range(100):
        assert decoder.schema_to_fetch(value) is None  # remembered as unknown
        with pytest.raises(DecodeError) as info:
            decoder.decode(value)
        assert info.value.reason == "unknown_schema_id"
    assert asked == [99]
    now[0] += UNKNOWN_ID_TTL_SECONDS + 1
    assert decoder.schema_to_fetch(value) == 99  # asked again: it may have been registered


async def test_a_known_id_is_fetched_once_then_decoded_without_the_registry() -> None:
    asked: list[int] = []

    def lookup(schema_id: int) -> str:
        asked.append(schema_id)
        return json.dumps(SCHEMA)

    decoder = Decoder(SCHEMA, registry_lookup=lookup)
    value = framed(3, some_body())
    await decoder.fetch(3, timeout=5)
    assert decoder.schema_to_fetch(value) is None
    for _ in range(10):
        decoder.decode(value)
    assert asked == [3]


async def test_an_unusable_schema_is_remembered_as_such() -> None:
    asked: list[int] = []

    def lookup(schema_id: int) -> str:
        asked.append(schema_id)
        return "{not json"

    decoder = Decoder(SCHEMA, registry_lookup=lookup)
    value = framed(5, some_body())
    await decoder.fetch(5, timeout=5)
    for _ in range(3):
        with pytest.raises(DecodeError) as info:
            decoder.decode(value)
        assert info.value.reason == "unsupported_schema"
    assert asked == [5]


async def test_a_registry_error_is_unavailable_not_unknown() -> None:
    def down(schema_id: int) -> str:
        raise RegistryUnavailable("schema registry error 503")

    decoder = Decoder(SCHEMA, registry_lookup=down)
    with pytest.raises(RegistryUnavailable):
        await decoder.fetch(4, timeout=5)
    assert decoder.schema_to_fetch(framed(4, some_body())) == 4  # nothing cached
