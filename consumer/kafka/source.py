"""The Kafka source: a confluent-kafka Consumer driven from one dedicated thread.

librdkafka's consumer is not meant for concurrent calls, so every call (consume, pause, resume,
commit, close) goes through a single-thread executor; the event loop awaits them. Rebalance
callbacks run on that thread inside consume(): on revocation the finished offsets of the lost
partitions are committed at once, so the next owner starts where we really stopped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from consumer.config import KafkaSettings
from consumer.kafka.offsets import OffsetTracker
from consumer.kafka.offsets import TopicPartition as TP
from consumer.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

# Settings the pipeline's correctness rests on: user config cannot turn them off.
_FORCED = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
}
_DEFAULTS: dict[str, Any] = {
    "auto.offset.reset": "earliest",
    "partition.assignment.strategy": "cooperative-sticky",
    "statistics.interval.ms": 5000,
    "enable.partition.eof": False,
}


class KafkaSource:
    def __init__(
        self,
        settings: KafkaSettings,
        tracker: OffsetTracker,
        metrics: Metrics,
        on_revoked: Callable[[list[TP]], None] = lambda tps: None,
    ) -> None:
        self._settings = settings
        self._tracker = tracker
        self._metrics = metrics
        self._on_revoked = on_revoked
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="kafka")
        self._consumer: Consumer | None = None
        self._paused: set[TP] = set()
        self.joined = False
        self.broker_up = False
        self.last_error: str | None = None

    def consumer_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            **_DEFAULTS,
            "bootstrap.servers": self._settings.bootstrap_servers,
            "group.id": self._settings.group_id,
            **self._settings.config,
            **_FORCED,
        }
        config.update(logger=log, error_cb=self._on_error, stats_cb=self._on_stats)
        return config

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def start(self) -> None:
        await self._call(self._start)

    def _start(self) -> None:
        self._consumer = Consumer(self.consumer_config())
        self._consumer.subscribe(
            list(self._settings.topics),
            on_assign=self._assigned,
            on_revoke=self._revoked,
            on_lost=self._lost,
        )

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            raise RuntimeError("KafkaSource.start() was not awaited")
        return self._consumer

    async def poll(self, max_messages: int, timeout: float) -> list[Message]:
        messages: list[Message] = await self._call(self.consumer.consume, max_messages, timeout)
        self._metrics.last_poll.set(time.time())
        good = []
        for message in messages:
            err = message.error()
            if err is None:
                good.append(message)
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("consume error", extra={"event": "consume_error", "error": err.str()})
        if good:
            self.broker_up = True
        return good

    async def commit(self, offsets: dict[TP, int]) -> bool:
        return await self._call(self._commit, offsets)

    def _commit(self, offsets: dict[TP, int]) -> bool:
        if not offsets:
            return True
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            self.consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            self._metrics.commits.labels("error").inc()
            log.warning("commit failed", extra={"event": "commit_failed", "error": str(exc)})
            return False
        self._metrics.commits.labels("ok").inc()
        self._tracker.mark_committed(offsets)
        return True

    async def set_paused(self, paused: bool) -> None:
        """Pause (or resume) every assigned partition; new assignments follow the state."""
        await self._call(self._set_paused, paused)

    def _set_paused(self, paused: bool) -> None:
        assigned = set(self._tracker.assigned())
        target = assigned if paused else set()
        to_pause = [TopicPartition(t, p) for t, p in target - self._paused]
        to_resume = [TopicPartition(t, p) for t, p in (self._paused & assigned) - target]
        if to_pause:
            self.consumer.pause(to_pause)
        if to_resume:
            self.consumer.resume(to_resume)
        self._paused = target
        self._metrics.paused_partitions.set(len(self._paused))

    async def close(self) -> None:
        """Commit what is finished, leave the group, stop the thread."""
        if self._consumer is not None:
            await self._call(self._commit, self._tracker.committable())
            await self._call(self._consumer.close)
        self._executor.shutdown(wait=True)

    # --- callbacks, on the Kafka thread -------------------------------------------------

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        self._tracker.assign(tps)
        self.joined = True
        self.broker_up = True
        self._metrics.assigned_partitions.set(len(self._tracker.assigned()))
        log.info("partitions assigned", extra={"event": "assigned", "partitions": _names(tps)})

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        final = self._tracker.revoke(tps)
        if final:
            self._commit(final)
        self._forget(tps)
        log.info("partitions revoked", extra={"event": "revoked", "partitions": _names(tps)})

    def _lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        self._tracker.revoke(tps)  # another member owns them now: committing would be wrong
        self._forget(tps)
        log.warning("partitions lost", extra={"event": "lost", "partitions": _names(tps)})

    def _forget(self, tps: list[TP]) -> None:
        self._paused -= set(tps)
        for topic, partition in tps:
            try:
                self._metrics.lag.remove(topic, str(partition))
            except KeyError:
                pass  # no lag reported yet for it
        self._metrics.assigned_partitions.set(len(self._tracker.assigned()))
        self._metrics.paused_partitions.set(len(self._paused))
        self._on_revoked(tps)

    def _on_error(self, error: KafkaError) -> None:
        self.last_error = error.str()
        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self.broker_up = False
        log.warning("kafka error", extra={"event": "kafka_error", "error": error.str()})

    def _on_stats(self, stats_json: str) -> None:
        """librdkafka's statistics: broker state and per-partition lag, every 5 s."""
        stats = json.loads(stats_json)
        self.broker_up = any(
            b.get("state") == "UP" and b.get("nodeid", -1) >= 0
            for b in stats.get("brokers", {}).values()
        )
        assigned = set(self._tracker.assigned())
        for topic, tstats in stats.get("topics", {}).items():
            for pid, pstats in tstats.get("partitions", {}).items():
                if (topic, int(pid)) not in assigned:
                    continue
                high = pstats.get("hi_offset", -1)
                position = pstats.get("committed_offset", -1)
                if position < 0:
                    position = pstats.get("app_offset", -1)
                if high >= 0 and position >= 0:
                    self._metrics.lag.labels(topic, pid).set(max(0, high - position))


def _names(tps: list[TP]) -> list[str]:
    return [f"{t}[{p}]" for t, p in tps]
