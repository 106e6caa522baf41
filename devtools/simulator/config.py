"""The simulator's behaviour, and its validation: the admin endpoint feeds it untrusted JSON."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SimulatorConfig:
    """Behaviour of the simulator; change it at run time with `TargetSimulator.configure`."""

    client_code: str | None = None  # None: accept any client code in the path
    quota_limit: int | None = None  # rolling quota of ACCEPTED updates; None: unlimited
    quota_window_seconds: float = 86400.0
    latency_seconds: float = 0.0  # added to every update response
    latency_spike_seconds: float = 0.0  # extra latency on a `latency_spike_ratio` share
    latency_spike_ratio: float = 0.0
    error_5xx_ratio: float = 0.0  # share answered 503
    error_429_ratio: float = 0.0  # share answered 429 with Retry-After
    retry_after_seconds: float = 1.0  # Retry-After of injected 429s (quota 429s compute theirs)
    reset_ratio: float = 0.0  # share whose connection is reset (RST, no response)
    require_token: str | None = None  # set: `Authorization: Bearer <token>` required, else 401
    down: bool = False  # True: every update connection is reset at once (an outage)
    seed: int | None = None
    max_records: int | None = None  # keep only the latest N records (long benchmarks); counters
    # and profiles are unaffected
    # Requests arriving this soon after a 429 was written were already on the wire when the
    # client could learn of it: they are not counted as early.
    early_grace_seconds: float = 0.05
    # Bulk Profile Update API (see the package docstring for what Adobe leaves open).
    bulk_calls_per_minute: int = 50  # batch calls per rolling window; beyond: 503
    bulk_calls_window_seconds: float = 60.0  # that window (shortened by tests)
    bulk_processing_seconds: float = 0.2  # a batch is `incomplete` this long after its submit
    # A batch call is accepted at once but answered this long after (an answer slow on the way
    # back: the batch is processed whatever becomes of the caller).
    bulk_answer_delay_seconds: float = 0.0
    bulk_row_failure_ids: frozenset[str] = frozenset()  # identities whose rows fail
    bulk_row_failure_ratio: float = 0.0  # share of rows failed, from the seeded dice
    bulk_stuck_ratio: float = 0.0  # share of batches that stay `stuck` forever
    bulk_stuck_batches: int = 0  # the next N batches stay `stuck` (counts down as they arrive)


_RATIOS = (
    "latency_spike_ratio",
    "error_5xx_ratio",
    "error_429_ratio",
    "reset_ratio",
    "bulk_row_failure_ratio",
    "bulk_stuck_ratio",
)
_SECONDS = (
    "early_grace_seconds",
    "bulk_calls_window_seconds",
    "bulk_processing_seconds",
    "bulk_answer_delay_seconds",
    "quota_window_seconds",
    "latency_seconds",
    "latency_spike_seconds",
    "retry_after_seconds",
)
_OPTIONAL_INTS = ("quota_limit", "seed", "max_records")
_OPTIONAL_STRS = ("client_code", "require_token")
_COUNTS = ("bulk_calls_per_minute", "bulk_stuck_batches")


def normalise_config(config: SimulatorConfig) -> SimulatorConfig:
    """The same configuration with `bulk_row_failure_ids` as a frozenset (JSON brings a list).

    A string is refused rather than split into characters; other items are checked by
    `validate_config`.
    """
    ids = config.bulk_row_failure_ids
    if isinstance(ids, list | tuple | set):
        config.bulk_row_failure_ids = frozenset(ids)
    return config


def validate_config(config: SimulatorConfig) -> None:
    """Reject values of the wrong type or range (admin JSON is untrusted input)."""
    problems: list[str] = []
    for name in _RATIOS + _SECONDS:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            problems.append(f"{name} must be a non-negative number, got {value!r}")
        elif name in _RATIOS and value > 1:
            problems.append(f"{name} must be between 0 and 1, got {value!r}")
    for name in _OPTIONAL_INTS:
        value = getattr(config, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(f"{name} must be an integer or null, got {value!r}")
    for name in _OPTIONAL_STRS:
        value = getattr(config, name)
        if value is not None and not isinstance(value, str):
            problems.append(f"{name} must be a string or null, got {value!r}")
    for name in _COUNTS:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problems.append(f"{name} must be a non-negative integer, got {value!r}")
    ids = config.bulk_row_failure_ids
    if not isinstance(ids, frozenset) or not all(isinstance(i, str) for i in ids):
        problems.append(f"bulk_row_failure_ids must be a list of strings, got {ids!r}")
    if not isinstance(config.down, bool):
        problems.append(f"down must be a boolean, got {config.down!r}")
    for name in ("quota_window_seconds", "bulk_calls_window_seconds"):
        if getattr(config, name) == 0:
            problems.append(f"{name} must be positive")
    if problems:
        raise ValueError("; ".join(problems))
