"""Process-wide settings that `profile-consumer run` applies once, after start-up.

CPython's cyclic garbage collector runs a young-generation pass every 700 container objects
allocated and not yet freed. The hot path keeps one batch per waiting profile (a few
containers each) while decoded events die at once, so at a backlog's pace the default
threshold starts a pass every few hundred events, and each promotes the waiting batches
towards the old generation, whose full passes walk all of them. Two settings fix that:

- `gc.freeze()` after start-up: the modules, compiled rules and parsed schemas live as long
  as the process; the collector stops walking them on every full pass;
- a young threshold of 10,000: a pass every few thousand events instead. The consumer's
  objects seldom form cycles, so garbage does not pile up meanwhile.

Measured by `benchmarks/bench_hot_path.py`, which prints the hot path with and without them
(docs/performance.md).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Collect start-up garbage, freeze what is left, raise the young threshold."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
