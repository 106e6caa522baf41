"""Which transport to use now: single updates for live traffic, bulk for a backlog.

`ModeSwitch` is pure apart from its injected clock: the wiring feeds it `Figures` (work waiting,
the single-update quota's state) about once a second and routes mapped updates by `mode`.

- `target.transport: single` or `bulk` pins the mode: `update` never changes it.
- `auto` starts in single and switches to bulk when the work waiting (events buffered in the
  pipeline plus the consumer lag) could not go through single updates within
  `bulk.switch_after_seconds` at the rate the quota allows now, or when the quota's headroom
  (remaining / limit) falls under `bulk.headroom_threshold`. It switches back once the work
  would take less than `switch_after_seconds * switch_back_ratio` and the headroom is back:
  the gap between the two thresholds is the hysteresis, and `bulk.min_dwell_seconds` after any
  switch is a floor on how often it can happen at all.
- In `auto`, the bulk row budget (`bulk.daily_rows`, shared) comes first: once it cannot take
  the rows waiting to be submitted (or none at all), bulk switches back to single at once
  (reason `bulk_budget`, no dwell: waiting would hold every event for hours), and single never
  switches to bulk while it is so. Pinned `bulk` waits for the budget instead.

Events, not calls, are counted: the coalescer may merge several events of a profile into one
single update, so the estimate errs towards bulk, the transport that cannot fall behind.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from consumer.config import Settings
from consumer.metrics import BulkMetrics

log = logging.getLogger(__name__)

SINGLE, BULK = "single", "bulk"
MODES = (SINGLE, BULK)


@dataclass(frozen=True, slots=True)
class Figures:
    """What the decision rests on, as the wiring measured it just now."""

    waiting: int  # events buffered in the pipeline + consumer lag
    rate: float  # single updates a second the quota allows (its pace)
    remaining: int  # single updates left in the rolling window
    limit: int  # the window's limit
    bulk_rows_remaining: int | None = None  # rows left in the bulk budget (None: not known)
    bulk_rows_needed: int = 0  # rows of batches waiting to be submitted

    @property
    def drain_seconds(self) -> float:
        """How long single updates need for the waiting work (+inf: never, within quota)."""
        if self.waiting <= 0:
            return 0.0
        if self.rate <= 0 or self.waiting > self.remaining:
            return math.inf
        return self.waiting / self.rate

    @property
    def headroom(self) -> float:
        return self.remaining / self.limit if self.limit > 0 else 0.0

    @property
    def bulk_exhausted(self) -> bool:
        """The bulk row budget cannot take what waits for it (or any row at all)."""
        remaining = self.bulk_rows_remaining
        return remaining is not None and remaining < max(1, self.bulk_rows_needed)


@dataclass(frozen=True, slots=True)
class Switch:
    """One change of mode, with why and the figures it was decided on."""

    to: str
    reason: str
    figures: Figures


class ModeSwitch:
    """The transport mode and the rule that changes it."""

    def __init__(
        self,
        *,
        transport: str,
        switch_after_seconds: float,
        switch_back_ratio: float,
        headroom_threshold: float,
        min_dwell_seconds: float,
        clock: Callable[[], float],
        metrics: BulkMetrics | None = None,
    ) -> None:
        if transport not in ("auto", *MODES):
            raise ValueError("transport must be auto, single or bulk")
        self.pinned = transport != "auto"
        self._mode = BULK if transport == BULK else SINGLE
        self._after = switch_after_seconds
        self._back = switch_after_seconds * switch_back_ratio
        self._headroom = headroom_threshold
        self._dwell = min_dwell_seconds
        self._clock = clock
        self._metrics = metrics
        self._since = -math.inf  # the first decision may switch at once
        self.switches: list[Switch] = []  # the last few, newest last (for the CLI and tests)
        self._publish()

    @classmethod
    def from_settings(
        cls, settings: Settings, *, clock: Callable[[], float], metrics: BulkMetrics | None
    ) -> ModeSwitch:
        b = settings.bulk
        return cls(
            transport=settings.target.transport,
            switch_after_seconds=b.switch_after_seconds,
            switch_back_ratio=b.switch_back_ratio,
            headroom_threshold=b.headroom_threshold,
            min_dwell_seconds=b.min_dwell_seconds,
            clock=clock,
            metrics=metrics,
        )

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def bulk(self) -> bool:
        return self._mode == BULK

    def update(self, figures: Figures) -> Switch | None:
        """Decide on fresh figures; returns the switch when the mode changed."""
        if self.pinned:
            return None
        if self._mode == BULK and figures.bulk_exhausted:
            switch = Switch(SINGLE, "bulk_budget", figures)
            self._apply(switch)
            return switch
        if self._clock() - self._since < self._dwell:
            return None
        reason = self._to_bulk(figures) if self._mode == SINGLE else self._to_single(figures)
        if reason is None:
            return None
        switch = Switch(BULK if self._mode == SINGLE else SINGLE, reason, figures)
        self._apply(switch)
        return switch

    def _to_bulk(self, f: Figures) -> str | None:
        if f.bulk_exhausted:
            return None
        if f.drain_seconds > self._after:
            return "backlog"
        if f.headroom < self._headroom:
            return "low_headroom"
        return None

    def _to_single(self, f: Figures) -> str | None:
        if f.drain_seconds < self._back and f.headroom >= self._headroom:
            return "drained"
        return None

    def _apply(self, switch: Switch) -> None:
        self._mode = switch.to
        self._since = self._clock()
        self.switches = [*self.switches[-9:], switch]
        f = switch.figures
        drain = "never" if math.isinf(f.drain_seconds) else f"{f.drain_seconds:.0f}s"
        log.info(
            f"transport switched to {switch.to} ({switch.reason}): {f.waiting} events waiting, "
            f"single updates would need {drain}, headroom {f.headroom:.1%}",
            extra={
                "event": "transport_switch",
                "to": switch.to,
                "reason": switch.reason,
                "waiting": f.waiting,
                "rate": f.rate,
                "remaining": f.remaining,
                "limit": f.limit,
                "bulk_rows_remaining": f.bulk_rows_remaining,
            },
        )
        if self._metrics is not None:
            self._metrics.transport_switches.labels(switch.to).inc()
        self._publish()

    def _publish(self) -> None:
        if self._metrics is None:
            return
        for mode in MODES:
            self._metrics.transport_mode.labels(mode).set(int(mode == self._mode))
