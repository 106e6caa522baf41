"""`SharedQuotaGate.snapshot()` with a full day of leases in the window (no broker, no sleep).

The App publishes the quota gauges from `snapshot()` once a second on the event loop; at
1,000,000 updates a day in leases of about four units, the window holds ~259,000 leases. The
ledger is filled through the replay rule itself (requests and releases in log order), then
`snapshot()` is timed while the clock moves one second per call, as the publisher sees it.

    .venv/bin/python benchmarks/bench_quota_snapshot.py [--leases 259000] [--calls 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

from consumer.quota.ledger import QuotaRule
from consumer.quota.log import MemoryLog
from consumer.quota.messages import LeaseRequest, Release, key_of
from consumer.quota.shared import SharedQuotaGate

DAY = 86_400.0
T0 = 1_800_000_000.0


def filled_gate(leases: int, now: list[float]) -> SharedQuotaGate:
    rule = QuotaRule(limit=1_000_000, window=DAY)
    gate = SharedQuotaGate(rule, MemoryLog(), "observer", clock=lambda: now[0], wall=lambda: now[0])
    step = 0.9 * DAY / leases  # every lease still in the window at the end
    offset = 0
    for i in range(leases):
        at = T0 + i * step
        request = LeaseRequest(f"r{i % 3}", i, 3, at)
        release = Release(request.replica, i, at, 3, at + 0.05)
        for record in (request, release):
            gate.state.apply(offset, key_of(record), record)
            offset += 1
    now[0] = T0 + leases * step + 1.0
    return gate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=259_000)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    now = [T0]
    started = time.perf_counter()
    gate = filled_gate(args.leases, now)
    fill = time.perf_counter() - started
    times = []
    for _ in range(args.calls):
        now[0] += 1.0
        started = time.perf_counter()
        snap = gate.snapshot()
        times.append(time.perf_counter() - started)
    print(
        f"leases {args.leases}, fill {fill:.1f}s; snapshot() over {args.calls} calls: "
        f"median {statistics.median(times) * 1000:.3f} ms, "
        f"max {max(times) * 1000:.3f} ms; used {snap.used}, remaining {snap.remaining}"
    )


if __name__ == "__main__":
    main()
