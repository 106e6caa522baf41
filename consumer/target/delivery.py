"""Delivering one request until it succeeds, is refused for good, or runs out of time.

Retries use exponential backoff with full jitter, or exactly the Retry-After Target gave (and
that hold applies to every send, through the quota gate). A circuit breaker stops all sends
after repeated failures and lets one probe through after a cool-down, so an outage turns into
paused partitions instead of a flood of doomed requests or a DLQ full of good events.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable

from consumer.errors import PermanentDeliveryError, RetryableDeliveryError
from consumer.metrics import Metrics
from consumer.quota import Clock, QuotaGate, Sleep
from consumer.target.client import TargetClient
from consumer.target.request import TargetRequest

log = logging.getLogger(__name__)


class CircuitBreaker:
    """closed -> (threshold consecutive failures) -> open -> (cool-down) -> one probe."""

    def __init__(
        self,
        threshold: int,
        open_seconds: float,
        clock: Clock,
        on_change: Callable[[bool], None] = lambda is_open: None,
        max_open_seconds: float = 60.0,
    ) -> None:
        self._threshold = threshold
        self._base_open = open_seconds
        self._max_open = max(max_open_seconds, open_seconds)
        self._open_for = open_seconds
        self._clock = clock
        self._on_change = on_change
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False
        self._changed = asyncio.Event()

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    async def wait_allowed(self, sleep: Sleep) -> bool:
        """Return when a send may go: circuit closed (False), or this caller is the probe (True).

        A probe must end in `record_success`, `record_failure` or `abandon_probe`: otherwise no
        other sender would ever be let through again.
        """
        while self._open_until is not None:
            now = self._clock()
            if now < self._open_until:
                await sleep(self._open_until - now)
            elif not self._probing:
                self._probing = True
                return True
            else:
                self._changed.clear()
                await self._changed.wait()
        return False

    def abandon_probe(self) -> None:
        """The probe ended without an answer (cancelled by a handover or a shutdown): let the
        next sender probe instead."""
        if self._probing:
            self._probing = False
            self._changed.set()

    def record_success(self) -> None:
        self._failures = 0
        if self._open_until is not None:
            log.info("circuit closed", extra={"event": "circuit_closed"})
            self._open_until, self._probing = None, False
            self._open_for = self._base_open
            self._on_change(False)
            self._changed.set()

    def record_failure(self) -> None:
        self._failures += 1
        if self._open_until is not None and self._probing:
            # The probe failed: stay open longer, up to the cap.
            self._open_for = min(self._open_for * 2, self._max_open)
            self._open_until, self._probing = self._clock() + self._open_for, False
            self._changed.set()
        elif self._open_until is None and self._failures >= self._threshold:
            log.warning(
                "circuit opened",
                extra={"event": "circuit_opened", "failures": self._failures},
            )
            self._open_until = self._clock() + self._open_for
            self._on_change(True)


class Delivery:
    """Sends a request with the quota gate, the circuit and bounded retries."""

    def __init__(
        self,
        *,
        client: TargetClient,
        gate: QuotaGate,
        circuit: CircuitBreaker,
        metrics: Metrics,
        clock: Clock,
        retry_max_seconds: float,
        base_seconds: float = 0.5,
        cap_seconds: float = 60.0,
        retry_after_max_seconds: float = 3600.0,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self._gate = gate
        self._circuit = circuit
        self._metrics = metrics
        self._clock = clock
        self._retry_max = retry_max_seconds
        self._base = base_seconds
        self._cap = cap_seconds
        self._retry_after_max = retry_after_max_seconds
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    async def deliver(self, request: TargetRequest) -> None:
        """Returns once accepted; raises PermanentDeliveryError when it never will be.

        `retry_max_seconds` counts the time spent failing (failed attempts and backoff), not
        the time spent waiting for quota, for the circuit or for a Retry-After hold: a good
        event is never dead-lettered because budget ran short or Target asked us to wait.
        """
        failing = 0.0
        attempt = 0
        while True:
            await self._attempt_allowed()
            started = self._clock()
            try:
                await self._client.send(request)
            except RetryableDeliveryError as exc:
                self._circuit.record_failure()
                failing += self._clock() - started
                hold = self._retry_after(exc)
                backoff = 0.0 if hold is not None else self._backoff(attempt)
                if failing + backoff > self._retry_max:
                    raise PermanentDeliveryError(
                        "retries_exhausted",
                        f"still failing after {self._retry_max:.0f}s: {exc}",
                    ) from exc
                self._metrics.retries.labels(exc.reason).inc()
                attempt += 1
                failing += backoff
                await self._sleep(hold if hold is not None else backoff)
                continue
            except PermanentDeliveryError:
                # Target answered: it is up, whatever it thinks of this update.
                self._circuit.record_success()
                raise
            except BaseException:
                # Cancelled (handover, shutdown) or a bug: no answer, so no verdict on Target.
                self._circuit.abandon_probe()
                raise
            self._circuit.record_success()
            return

    async def _attempt_allowed(self) -> None:
        """Wait for the circuit, then for one unit of quota; a probe given up on while it
        waits for quota is handed to the next sender."""
        probe = await self._circuit.wait_allowed(self._sleep)
        try:
            await self._gate.acquire()
        except BaseException:
            if probe:
                self._circuit.abandon_probe()
            raise

    def _retry_after(self, exc: RetryableDeliveryError) -> float | None:
        """Target's Retry-After, capped (an absurd value must not freeze the fleet); the hold
        applies to every sender through the gate."""
        if exc.retry_after is None:
            return None
        seconds = exc.retry_after if math.isfinite(exc.retry_after) else self._retry_after_max
        seconds = min(max(0.0, seconds), self._retry_after_max)
        self._gate.hold(self._clock() + seconds)
        return seconds

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter."""
        return self._rng.uniform(0, min(self._cap, self._base * 2**attempt))
