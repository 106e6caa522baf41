"""Process-wide settings that `profile-consumer run` applies once, after start-up.

CPython's cyclic garbage collector runs a young-generation pass every 700 container objects
allocated and not yet freed. The hot path keeps one batch per waiting profile (a few
containers each) while decoded events die at once, so the surviving batches trigger the
passes, and every tenth young pass also walks the middle generation, where those batches
have been promoted. Counted over 200,000 events of the hot-path benchmark's chain: 87 young
and 7 middle passes with the default threshold, 5 young and none with the settings here:

- `gc.freeze()` after start-up: the modules, compiled rules and parsed schemas live as long
  as the process; the collector stops walking them on every full pass;
- a young threshold of 10,000. The consumer's objects seldom form cycles, so garbage does
  not pile up meanwhile.

The gain is small, 2 to 3 % of the hot path (docs/performance.md); `bench_hot_path.py`
prints the chain under both thresholds.
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
