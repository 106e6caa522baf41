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
_BULK_CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_BULK_ROWS_BUCKETS = (1, 10, 100, 1_000, 10_000, 50_000, 100_000, 250_000, 500_000)
_BULK_BYTES_BUCKETS = (1e3, 1e4, 1e5, 1e6, 5e6, 1e7, 2.5e7, 5e7)


class Metrics:
    """The consumer's metrics. One instance per process (per registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.bulk = BulkMetrics(registry)
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
            "Profile update requests finished, by result (success, rejected, exhausted, error).",
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


class BulkMetrics:
    """The Bulk Profile Update API's metrics (consumer/bulk/): calls, batches, rows, budgets."""

    def __init__(self, registry: CollectorRegistry) -> None:
        p = "profile_consumer_bulk_"
        r = registry
        self.requests = Counter(
            p + "requests",
            "HTTP attempts to the bulk API by call (submit, status) and status class.",
            ["call", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            p + "request_duration_seconds",
            "Duration of one HTTP attempt to the bulk API.",
            ["call"],
            buckets=_BULK_CALL_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            p + "retries",
            "Retried bulk calls by call and reason (http_408, http_429, http_503, http_5xx, "
            "timeout, connection, bad_answer).",
            ["call", "reason"],
            registry=r,
        )
        self.batches = Counter(
            p + "batches",
            "Batches by outcome (accepted, rejected, complete, stuck, resubmitted, dead_lettered).",
            ["outcome"],
            registry=r,
        )
        self.rows = Counter(
            p + "rows",
            "Batch rows by result (submitted, succeeded, failed).",
            ["result"],
            registry=r,
        )
        self.batch_rows = Histogram(
            p + "batch_rows", "Rows per submitted batch.", buckets=_BULK_ROWS_BUCKETS, registry=r
        )
        self.batch_bytes = Histogram(
            p + "batch_bytes",
            "Body size of a submitted batch.",
            buckets=_BULK_BYTES_BUCKETS,
            registry=r,
        )
        self.rendered_bytes = Gauge(
            p + "rendered_bytes",
            "Bytes of batch bodies rendered and not yet through their POST (bounded by "
            "bulk.max_rendered_bytes).",
            registry=r,
        )
        self.status_polls = Counter(
            p + "status_polls",
            "batchStatus answers by state (complete, incomplete, stuck, error).",
            ["state"],
            registry=r,
        )
        self.oldest_batch_age = Gauge(
            p + "oldest_batch_age_seconds",
            "Age of the oldest batch this replica submitted whose status is not final (0: none).",
            registry=r,
        )
        self.batches_in_flight = Gauge(
            p + "batches_in_flight",
            "Batches submitted by this replica whose status is not final.",
            registry=r,
        )
        self.transport_mode = Gauge(
            "profile_consumer_transport_mode",
            "1 for the transport this replica uses now (mode: single, bulk), 0 for the other.",
            ["mode"],
            registry=r,
        )
        self.transport_switches = Counter(
            "profile_consumer_transport_switches",
            "Switches between transports, by the mode switched to (single, bulk).",
            ["to"],
            registry=r,
        )
        self.budget_limit = Gauge(
            p + "budget_limit",
            "Bulk limit per rolling window, shared by all replicas (budget: calls, rows).",
            ["budget"],
            registry=r,
        )
        self.budget_used = Gauge(
            p + "budget_used",
            "Bulk budget used in the current window by all replicas (budget: calls, rows).",
            ["budget"],
            registry=r,
        )
        self.budget_remaining = Gauge(
            p + "budget_remaining",
            "Bulk budget left in the current window (budget: calls, rows).",
            ["budget"],
            registry=r,
        )
        self.budget_wait = Counter(
            p + "budget_wait_seconds",
            "Time bulk calls spent waiting for a bulk budget (budget: calls, rows).",
            ["budget"],
            registry=r,
        )
        self.held_events = Gauge(
            p + "held_events",
            "Events in bulk batches not final (filling, queued or submitted): uncommitted.",
            registry=r,
        )
        self.carried_profiles = Gauge(
            p + "carried_profiles",
            "Profiles whose earlier bulk attributes later rows carry again (override caveat).",
            registry=r,
        )
