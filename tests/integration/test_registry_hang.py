"""A Schema Registry that accepts connections and never answers: the consumer stays live,
says why it is not ready, commits nothing past the waiting record, and stops on request."""

from __future__ import annotations

import asyncio
import struct
import time

import pytest

from consumer.avro import load_schema
from devtools.encoder import Encoder
from devtools.samples import sample_events
from tests.conftest import SCHEMA_PATH, Broker, SettingsFactory
from tests.helpers import committed, produce, running, wait_until

pytestmark = pytest.mark.integration


async def test_a_hung_registry_makes_the_consumer_not_ready_never_frozen(
    broker: Broker, topics: dict[str, str], make_settings: SettingsFactory
) -> None:
    held: list[asyncio.StreamWriter] = []

    async def never_answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # keep the connection open, say nothing

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    body = Encoder(load_schema(SCHEMA_PATH)).encode(sample_events(1)[0])
    produce(broker.bootstrap, topics["topic"], [(b"k", b"\x00" + struct.pack(">I", 1) + body)])
    settings = make_settings(
        avro__schema_registry_url=f"http://127.0.0.1:{port}",
        avro__schema_registry_timeout_seconds=0.5,
    )
    try:
        async with running(settings) as app:
            await wait_until(lambda: "schema registry" in app.ready()[1], 30)
            assert app.ready()[0] is False
            turned = app.live()
            # The loop keeps turning while the lookup hangs in its worker thread.
            before = time.monotonic()
            await wait_until(lambda: time.monotonic() - before > 1.0, 5)
            assert turned == (True, "ok") and app.live() == (True, "ok")
            assert app.metrics.ready._value.get() == 0
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 15  # stopped on request, not stuck on the registry
    finally:
        for writer in held:
            writer.close()
        server.close()
    assert committed(broker.bootstrap, topics["group"], topics["topic"]) in (
        {},
        {0: 0},
        {1: 0},
        {2: 0},
    )
