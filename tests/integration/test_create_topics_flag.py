"""`kafka.create_topics: false` on a real broker: for clusters where applications may not create
topics, the quota ledger and the replay tool's state topic must exist; when one is missing the
error names it and the key, and nothing is created behind the operator's back."""

from __future__ import annotations

import asyncio

import pytest

from consumer.dlq.kafka_io import ReplayState
from consumer.errors import TopicMissing
from consumer.kafka.clients import producer_config
from consumer.preflight import topic_exists
from consumer.quota.shared import open_shared_gate
from tests.conftest import Broker, SettingsFactory

pytestmark = pytest.mark.integration


async def test_a_missing_ledger_topic_is_an_error_and_is_not_created(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(kafka__create_topics=False)
    config = producer_config(settings)
    topic = settings.ledger_topic()
    clock = asyncio.get_running_loop().time
    with pytest.raises(TopicMissing) as info:
        await open_shared_gate(settings, config, clock)
    assert f"topic {topic} does not exist" in str(info.value)
    assert "kafka.create_topics is false" in str(info.value)
    assert not topic_exists(config, topic, 10.0)


async def test_an_existing_ledger_topic_is_used_without_creating_anything(
    broker: Broker, make_settings: SettingsFactory
) -> None:
    settings = make_settings(kafka__create_topics=False)
    broker.create_topics({settings.ledger_topic(): 1})  # what a platform team provisions
    gate = await open_shared_gate(
        settings, producer_config(settings), asyncio.get_running_loop().time
    )
    await gate.acquire()
    await gate.close()


def test_a_missing_replay_state_topic_is_an_error_and_is_not_created(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(kafka__create_topics=False)
    state = ReplayState(settings)
    with pytest.raises(TopicMissing) as info:
        state.ensure_topic(settings)
    assert f"topic {state.topic} does not exist" in str(info.value)
    assert "kafka.create_topics is false" in str(info.value)
    assert not topic_exists(producer_config(settings), state.topic, 10.0)
    # The default creates it: the same check would see it then.
    default = make_settings()
    ReplayState(default).ensure_topic(default)
    assert topic_exists(producer_config(default), state.topic, 10.0)
