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


_RATIOS = ("latency_spike_ratio", "error_5xx_ratio", "error_429_ratio", "reset_ratio")
_SECONDS = (
    "early_grace_seconds",
    "quota_window_seconds",
    "latency_seconds",
    "latency_spike_seconds",
    "retry_after_seconds",
)
_OPTIONAL_INTS = ("quota_limit", "seed", "max_records")
_OPTIONAL_STRS = ("client_code", "require_token")


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
    if not isinstance(config.down, bool):
        problems.append(f"down must be a boolean, got {config.down!r}")
    if config.quota_window_seconds == 0:
        problems.append("quota_window_seconds must be positive")
    if problems:
        raise ValueError("; ".join(problems))
