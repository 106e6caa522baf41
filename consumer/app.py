"""Wiring and lifecycle: builds every stage from the settings, runs them, stops them cleanly.

The stages themselves live in their own modules (`intake`, `pipeline`, `target/`, `quota/`,
`dlq/`); this module only connects them. Stop order on SIGTERM: stop polling, send what is
buffered (coalescing windows end at once), wait up to `pipeline.shutdown_timeout_seconds`,
abandon what is still in flight (its offsets stay uncommitted: it is re-sent after restart),
commit, leave the group.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from consumer.bulk.transport import BulkTransport, open_bulk_transport
from consumer.config import Settings
from consumer.decode_pool import DecodePool
from consumer.dlq.writer import DeadLetterWriter
from consumer.intake import Intake
from consumer.kafka.clients import producer_config
from consumer.kafka.offsets import OffsetTracker
from consumer.kafka.source import KafkaSource
from consumer.metrics import Metrics
from consumer.ops_server import OpsServer
from consumer.pipeline import Pipeline
from consumer.quota.publisher import publish_forever, publish_static
from consumer.quota.shared import SharedQuotaGate, open_shared_gate, replica_id
from consumer.stages import build_stages
from consumer.target.client import RetryAfterHold, TargetClient
from consumer.target.delivery import CircuitBreaker, Delivery
from consumer.target.http import TargetHttp, open_client

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient

log = logging.getLogger(__name__)


class App:
    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        schema_registry: SchemaRegistryClient | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.stages = build_stages(settings, schema_registry=schema_registry)
        self.ops: OpsServer | None = None
        self.source: KafkaSource | None = None
        self.bulk: BulkTransport | None = None
        self.pool: DecodePool | None = None
        self._intake: Intake | None = None
        self._quota_health: Callable[[], tuple[bool, str]] = lambda: (True, "ok")
        self._started = time.monotonic()

    # --- probes (called from the ops server thread) --------------------------------------

    def live(self) -> tuple[bool, str]:
        turned = self._intake.turned if self._intake else self._started
        idle = time.monotonic() - turned
        if idle > self.settings.pipeline.stuck_after_seconds:
            return False, f"poll loop has not turned for {idle:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if self.source is None or not self.source.joined:
            return False, "not yet in the consumer group"
        if not self.source.broker_up:
            return False, f"broker unreachable: {self.source.last_error or 'unknown'}"
        if self._intake is not None and self._intake.registry_problem:
            return False, f"schema registry: {self._intake.registry_problem}"
        return self._quota_health()  # e.g. a clock too far from the ledger broker's

    def _publish_ready(self) -> None:
        self.metrics.ready.set(int(self.ready()[0]))

    # --- bulk ------------------------------------------------------------------------------

    async def _open_bulk(
        self,
        http: TargetHttp,
        gate: SharedQuotaGate,
        tracker: OffsetTracker,
        dlq: DeadLetterWriter,
        source: KafkaSource,
        clock: Callable[[], float],
        delivery: Delivery,
    ) -> BulkTransport | None:
        """The bulk transport, unless `target.transport: single` (then nothing of it runs)."""
        if self.settings.target.transport == "single":
            return None
        return await open_bulk_transport(
            self.settings,
            http=http,
            gate=gate,
            tracker=tracker,
            dlq=dlq,
            metrics=self.metrics.bulk,
            kafka_config=producer_config(self.settings),
            lag=source.unread_by_partition,
            clock=clock,
            replica=replica_id(),
            deliver=delivery.deliver,
            endpoint_url=self.stages.endpoint_url,
        )

    async def _open_pool(
        self, source: KafkaSource, bulk: BulkTransport | None
    ) -> DecodePool | None:
        """The decode processes, if configured; if they cannot start, what opened is closed."""
        processes = self.settings.pipeline.decode_processes
        if not processes:
            return None
        try:
            return await DecodePool.start(self.stages.spec, processes)
        except BaseException:
            if bulk is not None:
                await bulk.close()
            await source.close()
            raise

    async def _stop_bulk(self, bulk: BulkTransport, timeout: float) -> None:
        """Batches not final by then stay unacked: their events are read and sent again."""
        if not await bulk.drain(timeout):
            log.warning(
                "shutdown timeout: bulk batches not final (their events will be re-sent)",
                extra={"event": "bulk_abandoned", "held": bulk.sender.held},
            )
        await bulk.close()

    # --- run -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        clock = asyncio.get_running_loop().time
        # First, so probes answer (not ready) while the broker is still out of reach.
        self.ops = OpsServer(s.metrics.host, s.metrics.port, self.registry, self.live, self.ready)
        self.ops.start()
        log.info("starting", extra={"event": "starting", "metrics_port": self.ops.port})
        # Shared by every replica through the ledger topic (docs/quota.md).
        gate = await open_shared_gate(s, producer_config(s), clock)
        self._quota_health = gate.health
        publish_static(gate, self.metrics)
        http = open_client(s, hold=RetryAfterHold(gate, clock))
        circuit = CircuitBreaker(
            s.target.circuit_failure_threshold,
            s.target.circuit_open_seconds,
            clock,
            on_change=lambda is_open: self.metrics.circuit_open.set(int(is_open)),
        )
        delivery = Delivery(
            client=TargetClient(http=http, metrics=self.metrics),
            gate=gate,
            circuit=circuit,
            metrics=self.metrics,
            clock=clock,
            retry_max_seconds=s.target.retry_max_seconds,
            base_seconds=s.target.retry_base_seconds,
            cap_seconds=s.target.retry_cap_seconds,
            retry_after_max_seconds=s.target.retry_after_max_seconds,
        )
        tracker = OffsetTracker()
        dlq = DeadLetterWriter(producer_config(s), s.kafka.dlq_topic, self.metrics)
        self.source = source = KafkaSource(s.kafka, tracker, self.metrics)
        # Subscribed before the bulk side opens (its ledgers, manifest and carry take a while):
        # librdkafka joins the group meanwhile, and nothing is read (nor any rebalance callback
        # served) before the intake's first poll.
        await source.start()
        try:
            bulk = await self._open_bulk(http, gate, tracker, dlq, source, clock, delivery)
        except BaseException:
            await source.close()
            raise
        self.bulk = bulk
        if bulk is not None:
            # Not ready while a bulk budget's ledger is unusable (e.g. a skewed clock), as for
            # the single-update quota.
            self._quota_health = lambda: _first_problem(gate.health(), bulk.health())
        pipeline = Pipeline(
            decoder=self.stages.decoder,
            mapper=self.stages.mapper,
            deliver=delivery.deliver,
            dlq=dlq,
            tracker=tracker,
            metrics=self.metrics,
            endpoint_url=self.stages.endpoint_url,
            coalesce_window_seconds=s.target.coalesce_window_ms / 1000,
            max_in_flight=s.target.max_in_flight,
            clock=clock,
            bulk=bulk,
        )
        if bulk is not None:
            bulk.attach(pipeline)
        self.pool = pool = await self._open_pool(source, bulk)
        self._intake = Intake(
            settings=s,
            source=source,
            pipeline=pipeline,
            circuit=circuit,
            tracker=tracker,
            on_turn=self._publish_ready,
            bulk=bulk,
            pool=pool,
        )
        background = [
            asyncio.create_task(pipeline.run()),
            asyncio.create_task(publish_forever(gate, self.metrics)),
        ]
        if bulk is not None:
            background.append(asyncio.create_task(bulk.run()))
        try:
            await self._intake.run(stop)
        finally:
            log.info("stopping", extra={"event": "stopping", "buffered": pipeline.buffered})
            drained = pipeline.drain(s.pipeline.shutdown_timeout_seconds)
            if not await source.serve_during(drained):
                log.warning(
                    "shutdown timeout: abandoning in-flight work (it will be re-sent)",
                    extra={"event": "abandoned", "buffered": pipeline.buffered},
                )
            await pipeline.abandon()
            if bulk is not None:
                await source.serve_during(
                    self._stop_bulk(bulk, s.pipeline.shutdown_timeout_seconds)
                )
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if pool is not None:
                await pool.close()
            await gate.close()  # gives back the unspent part of its lease
            await source.close()
            dlq.close()
            await http.aclose()
            self.ops.stop()
            log.info("stopped", extra={"event": "stopped"})


def _first_problem(*checks: tuple[bool, str]) -> tuple[bool, str]:
    return next((check for check in checks if not check[0]), (True, "ok"))
