"""External tools the tests need (Debian's `prometheus` brings both prometheus and promtool)."""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str) -> str:
    """The tool's path; missing: a failure under CI (which installs it), a skip elsewhere."""
    path = shutil.which(name)
    if path is None:
        reason = (
            f"{name} not found on PATH: install the Debian package `prometheus` "
            "(apt-get install prometheus), as .ci/run does"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path
