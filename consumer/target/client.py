"""One HTTP attempt to Target, classified: success, retryable or permanent.

Retrying, pacing and the circuit live in `delivery.py`; this module only knows HTTP. The token
goes in a header and nowhere else: error messages carry the status and method, never the URL
(it holds the identity) nor the headers.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from prometheus_client import Counter, Histogram

from consumer.errors import (
    HttpConnectionError,
    HttpTimeout,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from consumer.metrics import Metrics
from consumer.quota import QuotaGate
from consumer.target.http import Answer
from consumer.target.request import FORM, TargetRequest
from consumer.target.response import parse_answer

RETRYABLE_STATUS = frozenset({408, 429})


def is_retryable(status: int) -> bool:
    """408, 429 and every 5xx are worth another attempt; Target documents nothing else."""
    return status in RETRYABLE_STATUS or status >= 500


def parse_retry_after(value: str | None, wall_clock: Callable[[], float]) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        # RFC 9110 says whole seconds; a decimal is read too rather than ignored.
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - wall_clock())


class Sender(Protocol):
    """What TargetClient sends through: consumer.target.http.TargetHttp, or a fake in tests."""

    async def request(
        self, method: str, url: str, body: bytes = b"", content_type: str | None = None
    ) -> Answer: ...


class RetryAfterHold:
    """Applies Retry-After at the transport, through its two hooks (consumer/target/transport.py).

    The hold is set as soon as an answer's headers arrive, before its body is read and its
    connection is free again, and checked right before each request goes to the pool.
    Applied only after the answer reached the caller, a task that had already passed the quota
    gate could take the freed connection and send before the hold existed.
    """

    def __init__(
        self,
        gate: QuotaGate,
        clock: Callable[[], float],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._gate = gate
        self._clock = clock
        self._wall_clock = wall_clock

    async def before_send(self) -> None:
        await self._gate.wait_hold()

    def on_answer(self, status: int, headers: Mapping[str, str]) -> None:
        if is_retryable(status):
            seconds = parse_retry_after(headers.get("retry-after"), self._wall_clock)
            if seconds:
                self._gate.hold(self._clock() + seconds)


class TargetClient:
    """Sends one request per call; share one instance (one connection pool).

    The token is not its business: the HTTP client carries it as a static header, set once.
    """

    def __init__(
        self,
        *,
        http: Sender,
        metrics: Metrics,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._metrics = metrics
        self._wall_clock = wall_clock
        # Labelled children looked up once: prometheus_client's labels() validates and locks
        # on every call, and there are a handful of (method, code) pairs.
        self._durations: dict[str, Histogram] = {}
        self._counts: dict[tuple[str, str], Counter] = {}

    async def send(self, request: TargetRequest) -> None:
        """Returns when Target accepted the update; raises a typed DeliveryError otherwise."""
        method = request.method
        started = time.perf_counter()
        try:
            answer = await self._http.request(
                method, request.url, request.body, FORM if method == "POST" else None
            )
        except HttpTimeout as exc:
            self._count(method, "error")
            raise RetryableDeliveryError("timeout", f"{method} timed out: {exc}") from exc
        except HttpConnectionError as exc:
            self._count(method, "error")
            raise RetryableDeliveryError("connection", f"{method} failed: {exc}") from exc
        finally:
            self._duration(method).observe(time.perf_counter() - started)
        self._count(method, f"{answer.status // 100}xx")
        self._classify(method, answer)

    def _classify(self, method: str, answer: Answer) -> None:
        status = answer.status
        if is_retryable(status):
            raise RetryableDeliveryError(
                f"http_{status}" if status < 500 else "http_5xx",
                f"{method} answered HTTP {status}",
                retry_after=parse_retry_after(answer.headers.get("retry-after"), self._wall_clock),
            )
        parsed = parse_answer(answer.body)
        if 200 <= status < 300 and parsed is not None and parsed.success:
            return
        if 200 <= status < 300:
            reason, why = "rejected", "success is not true" if parsed else "not the documented XML"
        else:
            reason, why = f"http_{status}", f"HTTP {status}"
        raise PermanentDeliveryError(
            reason, f"{method} refused: {why}", http_status=status, body=answer.body
        )

    def _duration(self, method: str) -> Histogram:
        child = self._durations.get(method)
        if child is None:
            child = self._durations[method] = self._metrics.http_duration.labels(method)
        return child

    def _count(self, method: str, code: str) -> None:
        child = self._counts.get((method, code))
        if child is None:
            child = self._counts[method, code] = self._metrics.http_requests.labels(method, code)
        child.inc()
