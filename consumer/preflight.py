"""Is a dependency there? The broker, a topic, the Schema Registry, each within a time limit.

The commands ask before they start real work, so an unreachable broker or registry ends them
with one sentence naming it (exit 3), not a traceback or a wait without end.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, KafkaException

from consumer.errors import TopicMissing, Unreachable

_quiet = logging.Logger("preflight")
_quiet.disabled = True  # librdkafka's "connection refused" lines: the error says it once


def broker_metadata(config: dict[str, Any], timeout: float, topic: str | None = None) -> Any:
    """Cluster metadata (of one topic, or all); Unreachable when no broker answers in time."""
    probe = Consumer(
        {
            **config,
            "group.id": "profile-consumer.preflight",
            # A metadata request must never create the topic it asks about.
            "allow.auto.create.topics": False,
            "logger": _quiet,
        }
    )
    try:
        return probe.list_topics(topic, timeout=timeout)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else exc
        reason = error.str() if hasattr(error, "str") else str(error)
        servers = config.get("bootstrap.servers", "?")
        raise Unreachable(
            f"the Kafka broker(s) at {servers} did not answer within {timeout:g} s ({reason})"
        ) from exc
    finally:
        probe.close()


def topic_exists(config: dict[str, Any], topic: str, timeout: float) -> bool:
    meta = broker_metadata(config, timeout, topic)
    found = meta.topics.get(topic)
    return found is not None and found.error is None and bool(found.partitions)


def require_topic(config: dict[str, Any], topic: str, what: str, timeout: float) -> None:
    """Used when `kafka.create_topics` is false: the topic must have been created for us."""
    if not topic_exists(config, topic, timeout):
        raise TopicMissing(
            f"the {what} topic {topic} does not exist and kafka.create_topics is false: "
            "create it (see docs/deploy.md) or set kafka.create_topics: true"
        )


def require_registry(url: str, timeout: float) -> None:
    """One cheap request (the subject list); Unreachable when it fails or takes too long."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    client = SchemaRegistryClient({"url": url, "timeout": max(1, round(timeout)), "max.retries": 0})
    try:
        client.get_subjects()
    except Exception as exc:  # transport errors of requests/httpx, or an HTTP error status
        # The URL is not repeated: it may carry credentials.
        raise Unreachable(
            f"the Schema Registry (avro.schema_registry_url) did not answer within {timeout:g} s "
            f"({type(exc).__name__})"
        ) from exc
