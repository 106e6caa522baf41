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

import ctypes
import gc
import os

YOUNG_THRESHOLD = 10_000
# glibc's mallopt() parameters (malloc.h).
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
ARENA_MAX = 2
MMAP_THRESHOLD = 256 * 1024


def tune_gc() -> None:
    """Collect start-up garbage, freeze what is left, raise the young threshold."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


def tune_malloc() -> bool:
    """Before any thread starts: at most ARENA_MAX glibc malloc arenas, and a fixed mmap
    threshold. Every librdkafka client runs threads of its own (about 50 in bulk mode), and
    glibc gives threads up to 8 arenas a core, each keeping its freed memory; its threshold also
    rises after each large block freed (a rendered batch, a status answer), so the next such
    blocks come from the heap and stay resident. Measured by benchmarks/bench_bulk.py: peak RSS
    187 -> 169 MB at 400,000 events, CPU unchanged (docs/performance.md, section 7). The
    MALLOC_ARENA_MAX / MALLOC_MMAP_THRESHOLD_ environment variables still win. False where
    there is no glibc (musl ignores mallopt)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    done = True
    if "MALLOC_ARENA_MAX" not in os.environ:
        done = bool(mallopt(_M_ARENA_MAX, ARENA_MAX)) and done
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and done
    return done
