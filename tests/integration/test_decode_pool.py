"""Decode processes on a real broker and the simulator: a child killed mid-backlog stops the
consumer, and the restart loses nothing and overwrites nothing with an older value."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from prometheus_client import CollectorRegistry

from consumer.app import App
from consumer.decode_pool import DecodeProcessLost
from devtools.samples import sample_events
from tests.helpers import (
    assert_history_clean,
    committed,
    encoder,
    event_key,
    expected_profiles,
    produce,
    read_all,
    running,
    wait_until,
)

pytestmark = pytest.mark.integration


async def test_a_decode_process_killed_stops_the_consumer_and_the_restart_loses_nothing(
    broker, simulator, topics, make_settings
) -> None:
    settings = make_settings(pipeline__decode_processes=1)
    enc = encoder(settings)
    events = sample_events(4_000, profiles=300, seed=21)
    ends = produce(
        broker.bootstrap, topics["topic"], ((event_key(e), enc.encode(e)) for e in events)
    )
    app = App(settings, registry=CollectorRegistry())
    task = asyncio.create_task(app.run(asyncio.Event()))
    await wait_until(lambda: app.pool is not None and app.pool.chunks > 0, 30)
    assert app.pool is not None
    os.kill(app.pool.pids[0], signal.SIGKILL)
    with pytest.raises(DecodeProcessLost):
        await asyncio.wait_for(task, 60)
    assert committed(broker.bootstrap, topics["group"], topics["topic"]) != ends
    async with running(settings):
        await wait_until(
            lambda: committed(broker.bootstrap, topics["group"], topics["topic"]) == ends, 60
        )
    assert simulator.profiles() == expected_profiles(events)
    assert_history_clean(simulator, events)
    assert read_all(broker.bootstrap, topics["dlq"]) == []
