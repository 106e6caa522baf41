"""Dead-letter producer: the record as it came, plus headers saying where and why it failed.

A write is retried until the broker confirms it; until then the event is not acked, so its
offset (and every later one of its partition) stays uncommitted: nothing is lost if the DLQ is
unavailable, and the `dlq_write_failures_total` counter rises for the alert.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from consumer.dlq.headers import dlq_headers
from consumer.errors import EventError
from consumer.metrics import Metrics
from consumer.record import Headers, SourceRecord

log = logging.getLogger(__name__)


class DeadLetterWriter:
    def __init__(
        self,
        producer_config: dict[str, Any],
        topic: str,
        metrics: Metrics,
        retry_base_seconds: float = 0.5,
        retry_cap_seconds: float = 10.0,
    ) -> None:
        config = {
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            # Fail (and retry, and count) within a minute rather than librdkafka's 5: the
            # dlq_write_failures alert looks at a 5-minute window.
            "message.timeout.ms": 60_000,
            **producer_config,
        }
        config.setdefault("logger", log)
        self._producer = Producer(config)
        self._topic = topic
        self._metrics = metrics
        self._base = retry_base_seconds
        self._cap = retry_cap_seconds
        self._closed = threading.Event()
        # Delivery callbacks fire inside poll(); a thread keeps them flowing.
        self._poller = threading.Thread(target=self._poll, name="dlq-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.1)

    async def write(self, record: SourceRecord, error: EventError) -> None:
        """Returns once the broker has the DLQ record; retries forever (until cancelled)."""
        headers = dlq_headers(record, error)
        delay = self._base
        while True:
            failure = await self._produce_once(record, headers)
            if failure is None:
                self._metrics.dlq_events.labels(error.stage, error.reason).inc()
                self._metrics.events.labels("dead_lettered").inc()
                log.info(
                    "dead-lettered",
                    extra={
                        "event": "dead_lettered",
                        "stage": error.stage,
                        "reason": error.reason,
                        "topic": record.topic,
                        "partition": record.partition,
                        "offset": record.offset,
                    },
                )
                return
            self._metrics.dlq_write_failures.inc()
            log.warning(
                "DLQ write failed, retrying",
                extra={"event": "dlq_write_failed", "error": failure, "retry_in": delay},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._cap)

    async def _produce_once(self, record: SourceRecord, headers: Headers) -> str | None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str | None] = loop.create_future()

        def on_delivery(err: KafkaError | None, _msg: object) -> None:
            outcome = None if err is None else err.str()
            loop.call_soon_threadsafe(_resolve, done, outcome)

        try:
            self._producer.produce(
                self._topic,
                value=record.value,
                key=record.key,
                headers=headers,
                on_delivery=on_delivery,
            )
        except (BufferError, KafkaException) as exc:
            return str(exc)
        return await done

    def close(self, timeout: float = 5.0) -> None:
        self._producer.flush(timeout)
        self._closed.set()
        self._poller.join(timeout=1.0)


def _resolve(future: asyncio.Future[str | None], outcome: str | None) -> None:
    if not future.done():
        future.set_result(outcome)
