"""The command line's exit codes, and the one paragraph on stderr that goes with each failure.

Scripts branch on the code; people read the paragraph. No traceback reaches either: an error we
did not foresee is still one paragraph (PROFILE_CONSUMER_DEBUG=1 shows its traceback).
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from consumer.errors import ConfigError, ProfileConsumerError, Unreachable

OK = 0
FAILURE = 1  # the work failed, or the event would be dead-lettered
CONFIG = 2  # invalid configuration or usage (argparse uses 2 for usage too)
UNREACHABLE = 3  # a dependency did not answer: the broker or the Schema Registry

EPILOG = """\
exit codes:
  0  success
  1  failure (preview: the event would be dead-lettered; dlq replay: a produce failed)
  2  invalid configuration or usage (a missing or broken file, a bad option)
  3  a dependency is unreachable (the Kafka broker, the Schema Registry)

Human text goes to stdout, diagnostics to stderr; --json (check, preview, quota status,
bulk status, dlq inspect, dlq replay) prints one JSON document on stdout instead of the text.
"""


class UsageError(ProfileConsumerError):
    """A command was given something it cannot use (a missing event file): exit 2."""


def report(command: str, exc: BaseException, err: TextIO | None = None) -> int:
    """Print what failed, in one paragraph, and return the exit code it means."""
    err = err or sys.stderr
    prefix = f"profile-consumer {command}"
    if isinstance(exc, ConfigError):
        print(f"{prefix}: invalid configuration", file=err)
        for problem in exc.problems:
            print(f"  error: {problem}", file=err)
        return CONFIG
    if isinstance(exc, UsageError):
        print(f"{prefix}: {exc}", file=err)
        return CONFIG
    if isinstance(exc, Unreachable):
        print(f"{prefix}: unreachable: {exc}", file=err)
        return UNREACHABLE
    if isinstance(exc, ProfileConsumerError):
        print(f"{prefix}: error: {exc}", file=err)
        return FAILURE
    if os.environ.get("PROFILE_CONSUMER_DEBUG") == "1":
        raise exc
    print(
        f"{prefix}: unexpected error: {type(exc).__name__}: {exc} "
        "(set PROFILE_CONSUMER_DEBUG=1 to see where)",
        file=err,
    )
    return FAILURE
