"""Client configuration shared by every Kafka client the product builds besides the consumer."""

from __future__ import annotations

from typing import Any

from consumer.config import Settings

# Properties only a consumer understands: a producer or admin client would warn on them.
_CONSUMER_ONLY = ("session.", "heartbeat.", "group.", "auto.offset", "max.poll", "fetch.")


def producer_config(settings: Settings) -> dict[str, Any]:
    """The connection and security settings of the consumer, for producers and admin clients
    (DLQ writer, quota ledger, operator tools)."""
    extra = {k: v for k, v in settings.kafka.config.items() if not k.startswith(_CONSUMER_ONLY)}
    return {"bootstrap.servers": settings.kafka.bootstrap_servers, **extra}
