"""Every Prometheus metric the consumer exposes, defined in one place.

Registered on an injected `CollectorRegistry` so tests get a fresh one. Label values come from
small fixed sets (topic, partition, stage, reason, result, method): never a profile id.
`docs/metrics.md` documents each; a test checks that the two agree.
"""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from consumer import __version__

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_END_TO_END_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14_400, 86_400)


class Metrics:
    """The consumer's metrics. One instance per process (per registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        p = "profile_consumer_"
        r = registry
        self.build_info = Info(p + "build", "Version of the running consumer.", registry=r)
        self.build_info.info({"version": __version__, "python": platform.python_version()})

        # Throughput and outcomes.
        self.events_consumed = Counter(
            p + "events_consumed", "Records read from Kafka.", ["topic"], registry=r
        )
        self.events = Counter(
            p + "events",
            "Events by outcome: mapped (an update was built), skipped (no rule matched), "
            "dead_lettered (written to the DLQ).",
            ["outcome"],
            registry=r,
        )
        self.updates_sent = Counter(
            p + "updates_sent",
            "Profile update requests finished, by result (success, rejected, exhausted).",
            ["result"],
            registry=r,
        )
        self.coalesced_events = Counter(
            p + "coalesced_events",
            "Events merged into another event's request for the same profile.",
            registry=r,
        )
        self.split_requests = Counter(
            p + "split_requests",
            "Extra requests made because one update was larger than one POST allows.",
            registry=r,
        )
        self.http_requests = Counter(
            p + "http_requests",
            "HTTP attempts to Target by method and status code class (2xx, 4xx, 5xx, error).",
            ["method", "code"],
            registry=r,
        )
        self.http_duration = Histogram(
            p + "http_request_duration_seconds",
            "Duration of one HTTP attempt to Target.",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.event_to_update = Histogram(
            p + "event_to_update_seconds",
            "From the Kafka record timestamp to Target accepting the update.",
            buckets=_END_TO_END_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            p + "retries",
            "Retried HTTP attempts by reason (http_408, http_429, http_5xx, timeout, connection).",
            ["reason"],
            registry=r,
        )
        self.dlq_events = Counter(
            p + "dlq_events",
            "Events written to the dead-letter topic by stage and reason.",
            ["stage", "reason"],
            registry=r,
        )
        self.dlq_write_failures = Counter(
            p + "dlq_write_failures",
            "Failed attempts to write to the DLQ; commits stop behind the event until it succeeds.",
            registry=r,
        )
        self.commits = Counter(
            p + "commits", "Offset commits by result (ok, error).", ["result"], registry=r
        )

        # State.
        self.in_flight = Gauge(p + "in_flight_requests", "HTTP requests under way.", registry=r)
        self.buffered_events = Gauge(
            p + "buffered_events",
            "Events read from Kafka and not yet finished (sent or dead-lettered).",
            registry=r,
        )
        self.paused_partitions = Gauge(
            p + "paused_partitions", "Assigned partitions paused by backpressure.", registry=r
        )
        self.assigned_partitions = Gauge(
            p + "assigned_partitions", "Partitions assigned to this replica.", registry=r
        )
        self.lag = Gauge(
            p + "consumer_lag_events",
            "High watermark minus committed position, per assigned partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.circuit_open = Gauge(
            p + "circuit_open",
            "1 while the circuit breaker holds sends back after repeated Target failures.",
            registry=r,
        )
        self.ready = Gauge(
            p + "ready",
            "1 when config is loaded, the group joined, the broker reachable.",
            registry=r,
        )
        self.last_poll = Gauge(
            p + "last_poll_timestamp_seconds",
            "Unix time of the poll loop's last turn (liveness).",
            registry=r,
        )

        # Quota (rolling window, all replicas).
        self.quota_limit = Gauge(p + "quota_limit", "Updates allowed per window.", registry=r)
        self.quota_window = Gauge(
            p + "quota_window_seconds", "Length of the rolling quota window.", registry=r
        )
        self.quota_used = Gauge(
            p + "quota_used", "Updates sent in the current window by all replicas.", registry=r
        )
        self.quota_remaining = Gauge(
            p + "quota_remaining", "Updates still allowed in the current window.", registry=r
        )
        self.quota_used_by_replica = Gauge(
            p + "quota_used_by_this_replica",
            "Updates this replica sent in the current window.",
            registry=r,
        )
        self.quota_eta = Gauge(
            p + "quota_exhaustion_eta_seconds",
            "Seconds until the window's budget is spent at the current rate (+Inf: never).",
            registry=r,
        )
        self.quota_wait = Counter(
            p + "quota_wait_seconds",
            "Time sends spent waiting for quota (pacing or exhaustion).",
            registry=r,
        )
        self.quota_ledger_bad_records = Counter(
            p + "quota_ledger_bad_records",
            "Quota ledger records skipped as unreadable or invalid (the rest are still applied).",
            registry=r,
        )
        self.clock_skew = Gauge(
            p + "clock_skew_seconds",
            "This replica's clock minus the quota ledger broker's, as proven by its own records "
            "read back (0 within transit; beyond the margin the replica stops sending).",
            registry=r,
        )
