"""The Kafka source: a confluent-kafka Consumer driven from one dedicated thread.

librdkafka's consumer is not meant for concurrent calls, so every call (consume, pause, resume,
commit, close) goes through a single-thread executor; the event loop awaits them. Rebalance
callbacks run on that thread inside consume(): on revocation the partitions are sealed (none of
their waiting events is sent any more), `on_revoked` lets their sends in flight finish (bounded),
and then their finished offsets are committed at once, so the next owner starts where we really
stopped and no older update of ours lands after its newer one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from consumer.config import KafkaSettings
from consumer.kafka.offsets import OffsetTracker
from consumer.kafka.offsets import TopicPartition as TP
from consumer.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")
SERVE_POLL_SECONDS = 0.1
SERVE_BATCH = 100
CLOSE_TIMEOUT_SECONDS = 15.0
LEAVE_SECONDS = 5.0
# A broker connection waiting this long for any answer is hung (a stopped process, a black-holed
# network): TCP stays up, so librdkafka would only notice after socket.timeout.ms (60 s).
# Fetches are answered within fetch.wait.max.ms (500 ms by default), so 10 s is far beyond a
# healthy connection.
STALLED_SECONDS = 10.0
# on_revoked(partitions, lost): lost means another member may own them already (no waiting).
# A periodic commit whose result has not arrived after this long no longer holds the next back.
COMMIT_PATIENCE_SECONDS = 30.0
Handover = Callable[[list[TP], bool], None]

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
    # librdkafka prefetches up to queued.min.messages (100k) per partition, held in memory
    # even while the pipeline is full: peak RSS grew with the backlog (bench_backlog.py).
    # The kilobytes bound is the one that holds memory (it wins over the count); a count of
    # 2,000 (~600 KB of our events) stopped the fetcher so early that a busy consumer waited
    # on Tansu for 26 % of a drain (docs/performance.md, section 7).
    "queued.min.messages": 20000,
    "queued.max.messages.kbytes": 4096,
}


class KafkaSource:
    def __init__(
        self,
        settings: KafkaSettings,
        tracker: OffsetTracker,
        metrics: Metrics,
        on_revoked: Handover = lambda tps, lost: None,
    ) -> None:
        self._settings = settings
        self._tracker = tracker
        self._metrics = metrics
        self.on_revoked = on_revoked  # called on the Kafka thread, before the final commit
        # Called on the Kafka thread after an assignment; may wait there (bounded) before any
        # record of the new partitions is read (bulk: consumer/bulk/foreign.py, catch-up).
        self.on_assigned: Callable[[list[TP]], None] = lambda tps: None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="kafka")
        self._consumer: Consumer | None = None
        self._paused: set[TP] = set()
        self.joined = False
        self.broker_up = False
        self.last_error: str | None = None
        self._commit_busy_until = 0.0  # a periodic commit is on its way until then
        # Per partition: records in Kafka not yet read (high watermark - position), from the
        # statistics. Not the committed lag: bulk holds commits back for events it has read.
        self._unread: dict[TP, int] = {}

    def consumer_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            **_DEFAULTS,
            "bootstrap.servers": self._settings.bootstrap_servers,
            "group.id": self._settings.group_id,
            **self._settings.config,
            **_FORCED,
        }
        config.update(
            logger=log,
            error_cb=self._on_error,
            stats_cb=self._on_stats,
            on_commit=self._on_commit,
        )
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
        messages: list[Message] = await self._call(self._consume, max_messages, timeout)
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
        """The poll loop's periodic commit: sent without waiting (one at a time), its result
        reaches the tracker through `_on_commit` on a later poll.

        Issue 8 (broker hang): a synchronous commit held the Kafka thread for as long as the
        broker hung, so the poll loop stopped turning and nothing (statistics, lost partitions,
        /readyz) could notice the hang. Final commits (revocation, close) still wait.
        """
        return await self._call(self._commit_async, offsets)

    def _commit_async(self, offsets: dict[TP, int]) -> bool:
        now = time.monotonic()
        if not offsets or now < self._commit_busy_until:
            return True
        if not self._send_commit(offsets, asynchronous=True):
            return False
        self._commit_busy_until = now + COMMIT_PATIENCE_SECONDS
        return True

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The result of an asynchronous commit (served by consume(), on the Kafka thread)."""
        self._commit_busy_until = 0.0
        if error is not None:
            self._commit_failed(error.str())
            return
        self._metrics.commits.labels("ok").inc()
        self._tracker.mark_committed(
            {(tp.topic, tp.partition): tp.offset for tp in partitions if tp.error is None}
        )

    def _commit(self, offsets: dict[TP, int]) -> bool:
        """A commit that waits for the broker: revocation and close."""
        if not offsets:
            return True
        if not self._send_commit(offsets, asynchronous=False):
            return False
        self._metrics.commits.labels("ok").inc()
        self._tracker.mark_committed(offsets)
        return True

    def _send_commit(self, offsets: dict[TP, int], asynchronous: bool) -> bool:
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            if asynchronous:  # two calls: the stubs type each flag value separately
                self.consumer.commit(offsets=tps, asynchronous=True)
            else:
                self.consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            self._commit_failed(str(exc))
            return False
        return True

    def _commit_failed(self, error: str) -> None:
        self._metrics.commits.labels("error").inc()
        log.warning("commit failed", extra={"event": "commit_failed", "error": error})

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

    async def serve_during(self, work: Awaitable[T]) -> T:
        """Await `work` (a drain) while the group is still served: every partition paused, a
        short poll in a loop, so a rebalance that starts meanwhile runs its callbacks here
        rather than inside close(). A member that stopped polling during its drain got the
        assignment of a rebalance inside close() and sometimes never left it (seen in the
        storm scenario). Records read meanwhile (a partition assigned between two polls) are
        dropped: never tracked, never committed, read again by their next owner."""
        task = asyncio.ensure_future(work)
        if self._consumer is None:
            return await task
        while not task.done():
            await self.set_paused(True)
            await self.poll(SERVE_BATCH, SERVE_POLL_SECONDS)
        return task.result()

    async def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Commit what is finished, leave the group, stop the thread."""
        if self._consumer is not None:
            self._report_gap(self._tracker.assigned())
            await self._call(self._commit, self._tracker.committable())
            try:
                await self._leave(LEAVE_SECONDS)
            except KafkaException as exc:  # close() still leaves the group its own way
                log.warning(
                    "unsubscribe failed", extra={"event": "leave_failed", "error": str(exc)}
                )
            # librdkafka's close() sometimes never returned when a rebalance met it (storm
            # scenario, cooperative-sticky): on a daemon thread, bounded, so the process still
            # exits. Everything finished is committed already; the group notices our absence
            # after the session timeout.
            if not await _bounded_on_daemon_thread(self._consumer.close, timeout):
                log.error(
                    "Kafka consumer close did not return",
                    extra={"event": "close_timeout", "timeout_seconds": timeout},
                )
        self._executor.shutdown(wait=True)

    async def _leave(self, timeout: float) -> None:
        """Unsubscribe and serve the revocation that follows before close(): close() then
        has no assignment left to give up (the hangs came with an assignment pending)."""
        await self._call(self.consumer.unsubscribe)
        deadline = time.monotonic() + timeout
        while self._tracker.assigned() and time.monotonic() < deadline:
            await self.poll(SERVE_BATCH, SERVE_POLL_SECONDS)

    # --- callbacks, on the Kafka thread -------------------------------------------------

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        self._tracker.assign(tps)
        self.joined = True
        self.broker_up = True
        self._metrics.assigned_partitions.set(len(self._tracker.assigned()))
        log.info("partitions assigned", extra={"event": "assigned", "partitions": _names(tps)})
        try:
            self.on_assigned(tps)
        except Exception:  # a failing hook must not kill the Kafka thread mid-rebalance
            log.exception("assignment hook failed", extra={"event": "assigned_hook_failed"})

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        # Without the handover and the seal, this process went on sending the buffered events
        # of a revoked partition while its next owner re-read and sent them with newer ones,
        # so an older value could be the last to reach Target.
        # Still ours until this returns: the handover sends what they hold, then the seal
        # stops anything else of theirs from starting before the final commit.
        self._handover(tps, lost=False)
        self._tracker.seal(tps)
        self._report_gap(tps)
        final = self._tracker.revoke(tps)
        if final:
            self._commit(final)
        self._forget(tps)
        log.info("partitions revoked", extra={"event": "revoked", "partitions": _names(tps)})

    def _lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions]
        self._tracker.seal(tps)
        self._handover(tps, lost=True)
        self._tracker.revoke(tps)  # another member owns them now: committing would be wrong
        self._forget(tps)
        # Out of the group (session timed out, e.g. the broker hung): not ready until a new
        # assignment arrives (tests/reliability/test_broker_outage.py).
        self.joined = False
        log.warning("partitions lost", extra={"event": "lost", "partitions": _names(tps)})

    def _report_gap(self, tps: list[TP]) -> None:
        """Events finished above a final commit are sent again by the next owner, after
        the newer ones of their profiles that we delivered: worth a warning (the hand-over
        or the drain was cut at its timeout)."""
        gap = self._tracker.finished_above_commit(tps)
        if gap:
            log.warning(
                "events finished above the final commit",
                extra={
                    "event": "commit_gap",
                    "partitions": {f"{t}[{p}]": n for (t, p), n in gap.items()},
                },
            )

    def _handover(self, tps: list[TP], lost: bool) -> None:
        try:
            self.on_revoked(tps, lost)
        except Exception:  # a failing hook must not kill the Kafka thread mid-rebalance
            log.exception("handover failed", extra={"event": "handover_failed"})

    def _consume(self, max_messages: int, timeout: float) -> list[Message]:
        """On the Kafka thread: consume, then note what is left to read (`unread`)."""
        messages: list[Message] = self.consumer.consume(max_messages, timeout)
        self._measure_unread()
        return messages

    def _measure_unread(self) -> None:
        """Per assigned partition: the high watermark of the last fetch answer minus the
        position, both kept by librdkafka (no request), so a drained backlog shows at once and
        not at the next statistics (5 s later: bulk's caught-up flush waited for them). Asked
        here, on the Kafka thread: asked from the event loop, a call that waits for librdkafka
        while a rebalance callback holds the Kafka thread waiting for the loop would block
        both."""
        consumer = self._consumer
        assigned = self._tracker.assigned()
        if consumer is None or not assigned:
            return
        try:
            positions = consumer.position([TopicPartition(t, p) for t, p in assigned])
            for tp in positions:
                high = consumer.get_watermark_offsets(tp, cached=True)[1]
                if high >= 0 and tp.offset >= 0:
                    self._unread[(tp.topic, tp.partition)] = max(0, high - tp.offset)
        except KafkaException:
            return  # the statistics still say it, 5 s later

    def unread(self) -> int:
        """Records waiting in Kafka on the assigned partitions, as of the last consume (or the
        last statistics for a partition not read from yet; 0 before either)."""
        return sum(self._unread.values())

    def unread_by_partition(self) -> dict[TP, int]:
        """Like `unread`, per partition (one not measured yet is absent)."""
        return dict(self._unread)

    def _forget(self, tps: list[TP]) -> None:
        self._paused -= set(tps)
        for tp in tps:
            self._unread.pop(tp, None)
        for topic, partition in tps:
            try:
                self._metrics.lag.remove(topic, str(partition))
            except KeyError:
                pass  # no lag reported yet for it
        self._metrics.assigned_partitions.set(len(self._tracker.assigned()))
        self._metrics.paused_partitions.set(len(self._paused))

    def _on_error(self, error: KafkaError) -> None:
        self.last_error = error.str()
        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self.broker_up = False
        log.warning("kafka error", extra={"event": "kafka_error", "error": error.str()})

    def _on_stats(self, stats_json: str) -> None:
        """librdkafka's statistics: broker state and per-partition lag, every 5 s."""
        stats = json.loads(stats_json)
        brokers = [b for b in stats.get("brokers", {}).values() if b.get("nodeid", -1) >= 0]
        self.broker_up = any(b.get("state") == "UP" for b in brokers)
        stalled = [b.get("name", "?") for b in brokers if _stalled(b)]
        if stalled:
            # Issue 8 (broker hang): a SIGSTOPped broker kept its TCP connections, so it was
            # reported UP (and /readyz 200) for the whole hang.
            self.broker_up = False
            self.last_error = f"no answer for {STALLED_SECONDS:.0f}s from {', '.join(stalled)}"
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
                read_up_to = pstats.get("app_offset", -1)
                if high >= 0:
                    # Fetch responses carry the true high watermark, also on Tansu (only its
                    # ListOffsets answer is off): nothing read yet counts from the position.
                    start = read_up_to if read_up_to >= 0 else position
                    self._unread[(topic, int(pid))] = max(0, high - max(0, start))


def _stalled(broker: dict[str, Any]) -> bool:
    """Requests are waiting on a connection that has received nothing for STALLED_SECONDS."""
    idle_us = broker.get("rxidle", -1)
    return (
        broker.get("state") == "UP"
        and broker.get("waitresp_cnt", 0) > 0
        and idle_us >= STALLED_SECONDS * 1_000_000
    )


def _names(tps: list[TP]) -> list[str]:
    return [f"{t}[{p}]" for t, p in tps]


async def _bounded_on_daemon_thread(fn: Callable[[], object], timeout: float) -> bool:
    """Run `fn` on a daemon thread; False if it has not returned within `timeout` (the thread
    is then left behind: a daemon thread does not keep the process from exiting)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def finished() -> None:
        if not done.done():
            done.set_result(None)

    def run() -> None:
        try:
            fn()
        except Exception:
            log.exception("Kafka consumer close failed", extra={"event": "close_failed"})
        try:
            loop.call_soon_threadsafe(finished)
        except RuntimeError:  # the loop is gone: we were given up on long ago
            pass

    threading.Thread(target=run, name="kafka-close", daemon=True).start()
    try:
        await asyncio.wait_for(asyncio.shield(done), timeout)
    except TimeoutError:
        return False
    return True
