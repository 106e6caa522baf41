"""One HTTP attempt to Target, classified: success, retryable or permanent.

Retrying, pacing and the circuit live in `delivery.py`; this module only knows HTTP. The token
goes in a header and nowhere else: error messages carry the status and method, never the URL
(it holds the identity) nor the headers.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable

import httpx

from consumer.errors import PermanentDeliveryError, RetryableDeliveryError
from consumer.metrics import Metrics
from consumer.quota import QuotaGate
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


class HoldingTransport(httpx.AsyncBaseTransport):
    """Applies Retry-After at the connection level.

    The hold is set as soon as the answer's headers arrive, while its connection is still
    busy, and checked right before a request takes a connection. Applied only after the
    response was read, a task that had already passed the quota gate could take the freed
    connection and send before the hold existed.
    """

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        gate: QuotaGate,
        clock: Callable[[], float],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._inner = inner
        self._gate = gate
        self._clock = clock
        self._wall_clock = wall_clock

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._gate.wait_hold()
        response = await self._inner.handle_async_request(request)
        if is_retryable(response.status_code):
            seconds = parse_retry_after(response.headers.get("Retry-After"), self._wall_clock)
            if seconds:
                self._gate.hold(self._clock() + seconds)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class TargetClient:
    """Sends one request at a time per call; share one instance (one connection pool)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        metrics: Metrics,
        token: str | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._metrics = metrics
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._wall_clock = wall_clock

    async def send(self, request: TargetRequest) -> None:
        """Returns when Target accepted the update; raises a typed DeliveryError otherwise."""
        headers = dict(self._headers)
        if request.method == "POST":
            headers["Content-Type"] = FORM
        started = time.perf_counter()
        try:
            response = await self._http.request(
                request.method, request.url, content=request.body or None, headers=headers
            )
        except httpx.TimeoutException as exc:
            self._count(request.method, "error")
            raise RetryableDeliveryError("timeout", f"{request.method} timed out") from exc
        except httpx.TransportError as exc:
            self._count(request.method, "error")
            raise RetryableDeliveryError(
                "connection", f"{request.method} failed: {type(exc).__name__}"
            ) from exc
        finally:
            self._metrics.http_duration.labels(request.method).observe(
                time.perf_counter() - started
            )
        self._count(request.method, f"{response.status_code // 100}xx")
        self._classify(request.method, response)

    def _classify(self, method: str, response: httpx.Response) -> None:
        status = response.status_code
        if is_retryable(status):
            raise RetryableDeliveryError(
                f"http_{status}" if status < 500 else "http_5xx",
                f"{method} answered HTTP {status}",
                retry_after=parse_retry_after(
                    response.headers.get("Retry-After"), self._wall_clock
                ),
            )
        answer = parse_answer(response.content)
        if 200 <= status < 300 and answer is not None and answer.success:
            return
        if 200 <= status < 300:
            reason, why = "rejected", "success is not true" if answer else "not the documented XML"
        else:
            reason, why = f"http_{status}", f"HTTP {status}"
        raise PermanentDeliveryError(
            reason, f"{method} refused: {why}", http_status=status, body=response.content
        )

    def _count(self, method: str, code: str) -> None:
        self._metrics.http_requests.labels(method, code).inc()
