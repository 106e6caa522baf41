"""BulkClient: submit a batch and ask for its status, retrying what is worth retrying.

`submit(batch, identity_type)` takes the batch's rows from the shared rows budget once, then
its body's bytes from this process's body budget (consumer/bulk/bodies.py) and only then
renders it, then for every POST attempt one unit of the shared calls budget
(consumer/bulk/limits.py), and returns `Submitted` once Target accepted the batch. A batch
waiting for rows (hours, when the day's are spent) or for room holds no body. `before_post`,
when given, is awaited right before every POST attempt, after that attempt's calls unit is
taken: the caller learns the last moment before a POST may reach Target (the sender writes its
manifest record there, and from then on never cancels the batch); raising RetryableBulkError
there skips that POST and retries it later (the calls unit is spent). `status(submitted)` GETs
the batchStatus URL (on the configured origin, `showDetails=true`) and returns a
`BatchStatus`; status polls take no budget.

Errors (consumer/errors.py):
- PermanentBulkError: `success` false, or a 4xx other than 408/429. For a submit the batch is
  refused (reason `bulk_rejected`: the wiring dead-letters its events); for a status poll,
  reason `bulk_status_refused` (the wiring treats the batch as stuck: resubmit or give up).
- Everything else is retried here, never raised: 408, 429, 503 (Target's answer beyond 50
  batch calls a minute), other 5xx, timeouts, connection errors, unusable answers. Backoff is
  exponential with full jitter (`target.retry_base_seconds` to `target.retry_cap_seconds`),
  or exactly Retry-After capped at `target.retry_after_max_seconds`; a submit's Retry-After
  also holds the calls budget, hence every replica's batch calls. Cancel the call to stop.

Every answer is logged at DEBUG, truncated; no log line or error carries the token (it is a
header of the HTTP client) and the identities in a batch body never reach a log.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from consumer.bulk.answers import (
    BatchStatus,
    Submitted,
    parse_status,
    parse_submitted,
)
from consumer.bulk.bodies import BodyBudget
from consumer.bulk.endpoints import Endpoints
from consumer.bulk.limits import BulkLimits
from consumer.bulk.rows import BatchBuilder
from consumer.config import Settings
from consumer.errors import (
    BulkAnswerError,
    HttpConnectionError,
    HttpTimeout,
    PermanentBulkError,
    RetryableBulkError,
)
from consumer.metrics import BulkMetrics
from consumer.quota import Clock, Sleep
from consumer.target.client import Sender, is_retryable, parse_retry_after
from consumer.target.http import Answer
from consumer.target.request import FORM

log = logging.getLogger(__name__)

LOGGED_BODY_BYTES = 512
T = TypeVar("T")


class BulkClient:
    """Bulk calls to one Target account; share one instance."""

    def __init__(
        self,
        *,
        http: Sender,
        endpoints: Endpoints,
        limits: BulkLimits,
        metrics: BulkMetrics,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
        retry_base_seconds: float = 0.5,
        retry_cap_seconds: float = 60.0,
        retry_after_max_seconds: float = 3600.0,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        bodies: BodyBudget | None = None,
    ) -> None:
        """`bodies`: the body budget (unbounded when not given)."""
        self._http = http
        self.endpoints = endpoints
        self._limits = limits
        self._metrics = metrics
        self._clock = clock
        self._sleep = sleep
        self._base = retry_base_seconds
        self._cap = retry_cap_seconds
        self._retry_after_max = retry_after_max_seconds
        self._wall_clock = wall_clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.bodies = bodies or BodyBudget(2**62)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        http: Sender,
        limits: BulkLimits,
        metrics: BulkMetrics,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
    ) -> BulkClient:
        """`http`: the send path's TargetHttp `.derive(timeout=bulk.request_timeout_seconds,
        max_body=answers.MAX_STATUS_BODY, held=False)` (same pool, own timeout and holds)."""
        t = settings.target
        endpoints = Endpoints(
            base_url=t.url(), client_code=t.client_code, pcid_api=settings.bulk.pcid_api
        )
        return cls(
            http=http,
            endpoints=endpoints,
            limits=limits,
            metrics=metrics,
            clock=clock,
            sleep=sleep,
            retry_base_seconds=t.retry_base_seconds,
            retry_cap_seconds=t.retry_cap_seconds,
            retry_after_max_seconds=t.retry_after_max_seconds,
            bodies=BodyBudget(settings.bulk.max_rendered_bytes, metrics.rendered_bytes.set),
        )

    # --- the calls ---------------------------------------------------------------------------

    async def submit(
        self,
        batch: BatchBuilder[object] | bytes,
        identity_type: str,
        rows: int | None = None,
        *,
        before_post: Callable[[], Awaitable[None]] | None = None,
    ) -> Submitted:
        """Send one batch until Target accepts it; `rows` is required with a raw body."""
        if isinstance(batch, BatchBuilder):
            size, rows = batch.size, batch.row_count
        elif rows is None:
            raise ValueError("rows is required with a raw body")
        else:
            size = len(batch)
        url = self.endpoints.submit_url(identity_type)
        await self._limits.rows.acquire(max(1, rows))
        async with self.bodies.hold(size):
            body = batch.render() if isinstance(batch, BatchBuilder) else batch
            self._metrics.batch_rows.observe(rows)
            self._metrics.batch_bytes.observe(len(body))

            async def attempt() -> Submitted:
                await self._limits.calls.acquire()
                if before_post is not None:
                    await before_post()
                answer = await self._call("submit", "POST", url, body)
                return self._submitted(answer)

            return await self._retrying("submit", attempt)

    async def status(self, submitted: Submitted, *, details: bool = True) -> BatchStatus:
        """The batch's status as Target reports it now (one answer, retried until usable)."""
        url, moved = self.endpoints.status_url(submitted.status_url, details=details)
        if moved:
            log.warning(
                "batchStatus URL on another origin: asked on the configured one instead",
                extra={"event": "bulk_status_moved", "batch_id": submitted.batch_id},
            )

        async def attempt() -> BatchStatus:
            answer = await self._call("status", "GET", url, b"")
            return self._status(answer)

        return await self._retrying("status", attempt)

    # --- one attempt -------------------------------------------------------------------------

    async def _call(self, call: str, method: str, url: str, body: bytes) -> Answer:
        started = time.perf_counter()
        try:
            answer = await self._http.request(method, url, body, FORM if body else None)
        except HttpTimeout as exc:
            self._metrics.requests.labels(call, "error").inc()
            raise RetryableBulkError("timeout", f"bulk {call} timed out: {exc}") from exc
        except HttpConnectionError as exc:
            self._metrics.requests.labels(call, "error").inc()
            raise RetryableBulkError("connection", f"bulk {call} failed: {exc}") from exc
        finally:
            self._metrics.request_duration.labels(call).observe(time.perf_counter() - started)
        self._metrics.requests.labels(call, f"{answer.status // 100}xx").inc()
        log.debug(
            f"bulk {call} answered HTTP {answer.status}",
            extra={
                "event": "bulk_answer",
                "call": call,
                "status": answer.status,
                "body": answer.body[:LOGGED_BODY_BYTES].decode("utf-8", "replace"),
            },
        )
        if is_retryable(answer.status):
            reason = f"http_{answer.status}" if answer.status in (408, 429, 503) else "http_5xx"
            retry_after = parse_retry_after(answer.headers.get("retry-after"), self._wall_clock)
            raise RetryableBulkError(
                reason, f"bulk {call} answered HTTP {answer.status}", retry_after
            )
        return answer

    def _submitted(self, answer: Answer) -> Submitted:
        if not 200 <= answer.status < 300:
            raise PermanentBulkError(
                "bulk_rejected",
                f"bulk submit refused: HTTP {answer.status}",
                http_status=answer.status,
                body=answer.body,
            )
        success, submitted = parse_submitted(answer.body)
        if not success:
            raise PermanentBulkError(
                "bulk_rejected",
                f"bulk submit refused: success is not true ({submitted.message[:200]})",
                http_status=answer.status,
                body=answer.body,
            )
        self.endpoints.status_url(submitted.status_url)  # unusable: retried as a bad answer
        return submitted

    def _status(self, answer: Answer) -> BatchStatus:
        if not 200 <= answer.status < 300:
            raise PermanentBulkError(
                "bulk_status_refused",
                f"bulk status refused: HTTP {answer.status}",
                http_status=answer.status,
                body=answer.body,
            )
        status = parse_status(answer.body)
        self._metrics.status_polls.labels(status.state).inc()
        return status

    # --- retrying ----------------------------------------------------------------------------

    async def _retrying(self, call: str, attempt: Callable[[], Awaitable[T]]) -> T:
        tries = 0
        while True:
            try:
                return await attempt()
            except BulkAnswerError as exc:
                if call == "status":
                    self._metrics.status_polls.labels("error").inc()
                await self._pause(call, exc, tries)
            except RetryableBulkError as exc:
                await self._pause(call, exc, tries)
            tries += 1

    async def _pause(self, call: str, exc: RetryableBulkError, tries: int) -> None:
        self._metrics.retries.labels(call, exc.reason).inc()
        hold = self._retry_after(exc.retry_after)
        if hold is not None and call == "submit":
            # Every replica's batch calls wait: the hold goes through the calls ledger.
            self._limits.calls.hold(self._clock() + hold)
        delay = hold if hold is not None else self._backoff(tries)
        log.info(
            f"bulk {call} retried in {delay:.1f}s: {exc}",
            extra={"event": "bulk_retry", "call": call, "reason": exc.reason},
        )
        await self._sleep(delay)

    def _retry_after(self, seconds: float | None) -> float | None:
        if seconds is None:
            return None
        seconds = seconds if math.isfinite(seconds) else self._retry_after_max
        return min(max(0.0, seconds), self._retry_after_max)

    def _backoff(self, tries: int) -> float:
        return self._rng.uniform(0, min(self._cap, self._base * 2 ** min(tries, 30)))
