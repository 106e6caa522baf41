"""Wiring and lifecycle: builds every stage from the settings, runs them, stops them cleanly.

Stop order on SIGTERM: stop polling, send what is buffered (coalescing windows end at once),
wait up to `pipeline.shutdown_timeout_seconds`, abandon what is still in flight (its offsets
stay uncommitted: it is re-sent after restart), commit, leave the group.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import certifi
from prometheus_client import CollectorRegistry

from consumer.avro import Decoder, load_schema, registry_client, registry_lookup
from consumer.config import Settings
from consumer.errors import RegistryUnavailable
from consumer.http_server import OpsServer
from consumer.kafka.dlq import DeadLetterWriter, SourceRecord
from consumer.kafka.offsets import OffsetTracker, TopicPartition
from consumer.kafka.source import KafkaSource
from consumer.mapping import Mapper, load_rules
from consumer.metrics import Metrics
from consumer.pipeline import Pipeline, source_record
from consumer.quota import QuotaGate
from consumer.quota.shared import open_shared_gate
from consumer.target.client import RetryAfterHold, TargetClient
from consumer.target.delivery import CircuitBreaker, Delivery
from consumer.target.http11 import HttpPool
from consumer.target.request import endpoint

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stages:
    """The static, validated parts: what `check` and `preview` build without any network."""

    decoder: Decoder
    mapper: Mapper
    endpoint_url: str
    reader_schema: dict[str, Any]  # the schema the rules read (and `preview` parses JSON with)


def build_stages(settings: Settings, schema_registry: SchemaRegistryClient | None = None) -> Stages:
    """Load schemas and rules; raises ConfigError naming files and keys.

    `schema_registry` replaces the client built from `avro.schema_registry_url` (tests).
    """
    avro = settings.avro
    reader_path = settings.resolve(avro.reader_schema or avro.writer_schema)
    reader = load_schema(reader_path, f"avro.reader_schema ({reader_path})")
    rules_path = settings.resolve(settings.mapping.rules)
    rules = load_rules(rules_path, reader, str(rules_path))
    if avro.schema_registry_url:
        client = schema_registry or registry_client(avro.schema_registry_url)
        decoder = Decoder(reader, registry_lookup=registry_lookup(client))
    else:
        writer_path = settings.resolve(avro.writer_schema)
        writer = load_schema(writer_path, f"avro.writer_schema ({writer_path})")
        decoder = Decoder(reader, writer_schema=writer)
    url = endpoint(settings.target.url(), settings.target.client_code)
    return Stages(decoder, Mapper(rules), url, reader)


def producer_config(settings: Settings) -> dict[str, Any]:
    """The DLQ producer shares the connection and security settings of the consumer."""
    consumer_only = ("session.", "heartbeat.", "group.", "auto.offset", "max.poll", "fetch.")
    extra = {k: v for k, v in settings.kafka.config.items() if not k.startswith(consumer_only)}
    return {"bootstrap.servers": settings.kafka.bootstrap_servers, **extra}


class App:
    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        schema_registry: SchemaRegistryClient | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.stages = build_stages(settings, schema_registry)
        self._loop_turned = time.monotonic()
        self.ops: OpsServer | None = None
        self.source: KafkaSource | None = None

    # --- probes (called from the ops server thread) --------------------------------------

    def live(self) -> tuple[bool, str]:
        idle = time.monotonic() - self._loop_turned
        if idle > self.settings.pipeline.stuck_after_seconds:
            return False, f"poll loop has not turned for {idle:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if self.source is None or not self.source.joined:
            return False, "not yet in the consumer group"
        if not self.source.broker_up:
            return False, f"broker unreachable: {self.source.last_error or 'unknown'}"
        return True, "ok"

    # --- run -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        clock = loop.time
        # First, so probes answer (not ready) while the broker is still out of reach.
        self.ops = OpsServer(s.metrics.host, s.metrics.port, self.registry, self.live, self.ready)
        self.ops.start()
        log.info("starting", extra={"event": "starting", "metrics_port": self.ops.port})
        # Shared by every replica through the ledger topic (docs/quota.md).
        gate = await open_shared_gate(s, producer_config(s), clock)
        self._publish_quota_static(gate)
        hold = RetryAfterHold(gate, clock)
        token = s.target.token.get_secret_value() if s.target.token else None
        http = HttpPool(
            s.target.url(),
            s.target.max_in_flight,
            s.target.timeout_seconds,
            _tls_context(s),
            {"Authorization": f"Bearer {token}"} if token else None,
            before_send=hold.before_send,
            on_answer=hold.on_answer,
        )
        circuit = CircuitBreaker(
            s.target.circuit_failure_threshold,
            s.target.circuit_open_seconds,
            clock,
            on_change=lambda is_open: self.metrics.circuit_open.set(int(is_open)),
        )
        delivery = Delivery(
            TargetClient(http, self.metrics),
            gate,
            circuit,
            self.metrics,
            clock,
            s.target.retry_max_seconds,
            s.target.retry_base_seconds,
            s.target.retry_cap_seconds,
        )
        tracker = OffsetTracker()
        dlq = DeadLetterWriter(producer_config(s), s.kafka.dlq_topic, self.metrics)
        self.source = source = KafkaSource(s.kafka, tracker, self.metrics)
        pipeline = Pipeline(
            self.stages.decoder,
            self.stages.mapper,
            delivery.deliver,
            dlq,
            tracker,
            self.metrics,
            self.stages.endpoint_url,
            s.target.coalesce_window_ms / 1000,
            s.target.max_in_flight,
            clock,
        )
        await source.start()
        background = [
            asyncio.create_task(pipeline.run()),
            asyncio.create_task(self._publish_quota(gate)),
        ]
        try:
            await self._poll_loop(stop, source, pipeline, circuit, tracker)
        finally:
            log.info("stopping", extra={"event": "stopping", "buffered": pipeline.buffered})
            if not await pipeline.drain(s.pipeline.shutdown_timeout_seconds):
                log.warning(
                    "shutdown timeout: abandoning in-flight work (it will be re-sent)",
                    extra={"event": "abandoned", "buffered": pipeline.buffered},
                )
            await pipeline.abandon()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await gate.close()  # gives back the unspent part of its lease
            await source.close()
            dlq.close()
            await http.aclose()
            self.ops.stop()
            log.info("stopped", extra={"event": "stopped"})

    async def _poll_loop(
        self,
        stop: asyncio.Event,
        source: KafkaSource,
        pipeline: Pipeline,
        circuit: CircuitBreaker,
        tracker: OffsetTracker,
    ) -> None:
        s = self.settings
        limit = s.pipeline.max_buffered_events
        paused = False
        last_commit = time.monotonic()
        # Revocations run on the Kafka thread, inside consume(): they wait there for the
        # revoked partitions' sends in flight before committing (issue 8, rebalance storm).
        source.on_revoked = _handover(
            pipeline, asyncio.get_running_loop(), s.pipeline.shutdown_timeout_seconds
        )
        while not stop.is_set():
            self._loop_turned = time.monotonic()
            self.metrics.ready.set(int(self.ready()[0]))
            # Hysteresis: pause when full (or Target is down), resume at half.
            if not paused and (pipeline.buffered >= limit or circuit.is_open):
                paused = True
            elif paused and not circuit.is_open and pipeline.buffered <= limit // 2:
                paused = False
            await source.set_paused(paused)  # also applies to newly assigned partitions
            room = max(0, min(s.kafka.poll_batch_size, limit - pipeline.buffered))
            messages = await source.poll(max(1, room), 0.2 if paused else 0.5)
            for message in messages:
                if not await self._submit(pipeline, source_record(message), stop):
                    return
            if time.monotonic() - last_commit >= s.kafka.commit_interval_seconds:
                await source.commit(tracker.committable())
                last_commit = time.monotonic()

    async def _submit(self, pipeline: Pipeline, record: SourceRecord, stop: asyncio.Event) -> bool:
        """Hand a record over, waiting out a Schema Registry outage; False when stopping.

        A record not handed over is not tracked, so no commit can pass it.
        """
        delay = 0.5
        while True:
            try:
                pipeline.submit(record)
                return True
            except RegistryUnavailable as exc:
                log.warning(
                    "schema registry unavailable, retrying",
                    extra={"event": "registry_unavailable", "error": str(exc), "retry_in": delay},
                )
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return False
            except TimeoutError:
                delay = min(delay * 2, 30.0)

    def _publish_quota_static(self, gate: QuotaGate) -> None:
        self.metrics.quota_limit.set(gate.limit)
        self.metrics.quota_window.set(gate.window)
        self.metrics.quota_remaining.set(gate.limit)
        self.metrics.quota_used.set(0)
        self.metrics.quota_eta.set(math.inf)

    async def _publish_quota(self, gate: QuotaGate) -> None:
        waited = 0.0
        while True:
            snap = gate.snapshot()
            m = self.metrics
            m.quota_used.set(snap.used)
            m.quota_remaining.set(snap.remaining)
            m.quota_used_by_replica.set(snap.used_by_this_replica)
            m.quota_eta.set(snap.exhaustion_eta_seconds)
            m.quota_wait.inc(gate.waited_seconds - waited)
            waited = gate.waited_seconds
            await asyncio.sleep(1.0)


def _handover(
    pipeline: Pipeline, loop: asyncio.AbstractEventLoop, timeout: float
) -> Callable[[list[TopicPartition], bool], None]:
    """The source's revocation hook: runs `pipeline.handover` on the event loop and waits.

    The loop is free meanwhile (it awaits the consume() call that runs the callback). Lost
    partitions may already be another member's: their sends are cancelled without waiting.
    """

    def handover(tps: list[TopicPartition], lost: bool) -> None:
        wait = 0.0 if lost else timeout
        future = asyncio.run_coroutine_threadsafe(pipeline.handover(set(tps), wait), loop)
        try:
            future.result(wait + 5.0)  # handover() itself gives up after `wait`
        except TimeoutError:
            future.cancel()
            log.warning("handover did not finish", extra={"event": "handover_timeout"})

    return handover


def _tls_context(settings: Settings) -> ssl.SSLContext:
    """Verify against certifi's bundle (as httpx did), a configured CA bundle, or not at all."""
    tls = settings.target.verify_tls
    cafile = certifi.where() if isinstance(tls, bool) else str(settings.resolve(tls))
    context = ssl.create_default_context(cafile=cafile)
    if tls is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context
