"""Single updates for a batch the bulk row budget cannot take (`target.transport: auto`).

`bulk.daily_rows` is a rolling 24 h budget shared by every replica: once spent, a submit would
wait for rows to leave the window, hours maybe, with its events held and the partitions paused.
In `auto` the consumer falls back to single updates instead: the mode switch goes back to
single (reason `bulk_budget`, logged and counted as any switch, consumer/bulk/mode.py) and a
batch already built whose rows the budget cannot take now is sent row by row as single updates
(a row is one profile's merged update: exactly what the coalescer would have sent), through the
single-update quota gate, retries and circuit breaker of the send path.

With `target.transport: bulk` the operator chose bulk whatever it costs: the batch waits for
the budget (`claim` always grants), as it does for the calls budget.

Left open: the rows budget is shared through a ledger, so two replicas can see the same room
at the same instant; the one that loses waits for the budget like pinned bulk (claims keep
this replica's own concurrent submits apart).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from consumer.bulk.mode import ModeSwitch
from consumer.quota.local import QuotaGate
from consumer.target.request import TargetRequest, build_requests


class SingleFallback:
    """Whether a batch may be submitted (`claim`, `release`), and how each row of one that may
    not is sent instead (`send`)."""

    def __init__(
        self,
        *,
        mode: ModeSwitch,
        rows: QuotaGate,
        deliver: Callable[[TargetRequest], Awaitable[None]],
        endpoint_url: str,
    ) -> None:
        self._mode = mode
        self._rows = rows
        self._deliver = deliver
        self._endpoint = endpoint_url
        self._claimed = 0

    def claim(self, rows: int) -> bool:
        """Whether a batch of `rows` may be submitted: always when pinned; in auto, when the
        shared rows budget can take it now, counting the rows of this replica's submits that
        have claimed it and not yet acquired it (they run concurrently: without the claim,
        several would see the same room and all but one wait). True claims `rows` until
        `release`; False: send the batch as single updates."""
        if self._mode.pinned:
            return True
        if rows > self._rows.snapshot().remaining - self._claimed:
            return False
        self._claimed += rows
        return True

    def release(self, rows: int) -> None:
        """The submit that claimed `rows` is over (its rows acquired, or refused)."""
        if not self._mode.pinned:
            self._claimed = max(0, self._claimed - rows)

    async def send(self, identity_type: str, identity: str, attributes: dict[str, str]) -> None:
        """One profile's update through the send path; raises PermanentDeliveryError when
        Target refuses it for good (or retries ran out)."""
        for request in build_requests(self._endpoint, identity_type, identity, attributes):
            await self._deliver(request)
