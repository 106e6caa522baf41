"""Progress of the DLQ tools' long reads, on a terminal only (stderr, redrawn in place)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """A one-line bar on stderr, redrawn at most 10 times a second; silent when not a tty.

    `total` None: the end is not known in advance (a DLQ is read to a quiet period, not to an
    offset), so the line counts what was read instead of drawing a bar.
    """

    def __init__(
        self,
        total: int | None,
        stream: TextIO | None = None,
        width: int = 30,
        label: str = "replay",
    ) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.width = width
        self.label = label
        self.enabled = self.stream.isatty()
        self._drawn = 0.0

    def render(self, done: int) -> str:
        if self.total is None:
            return f"{self.label}: {done} record(s) read"
        share = done / self.total if self.total else 1.0
        filled = round(self.width * min(share, 1.0))
        bar = "#" * filled + "-" * (self.width - filled)
        return f"{self.label} [{bar}] {done}/{self.total} ({share:.0%})"

    def update(self, done: int, force: bool = False) -> None:
        if not self.enabled or (not force and time.monotonic() - self._drawn < 0.1):
            return
        self._drawn = time.monotonic()
        self.stream.write("\r\033[K" + self.render(done))
        self.stream.flush()

    def finish(self, done: int) -> None:
        if self.enabled:
            self.update(done, force=True)
            self.stream.write("\n")

    def message(self, text: str) -> None:
        """A line above the bar (the bar is redrawn on the next update)."""
        prefix = "\r\033[K" if self.enabled else ""
        self.stream.write(f"{prefix}{text}\n")
        self.stream.flush()
