"""Structured JSON logs: one line per event of note, stable keys, identities masked.

Keys: ts, level, logger, msg, event, plus whatever `extra=` a call site passes. Values under
keys that can carry an identity are masked unless `logging.mask_identities` is false; tokens
are never passed to a logger at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}
IDENTITY_KEYS = frozenset({"identity", "mbox3rdPartyId", "mboxPC", "url"})


def mask(value: str) -> str:
    """A stable, non-reversible stand-in: the same identity always masks the same way."""
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:12]


class JsonFormatter(logging.Formatter):
    def __init__(self, mask_identities: bool = True) -> None:
        super().__init__()
        self._mask = mask_identities

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD or key.startswith("_"):
                continue
            if self._mask and key in IDENTITY_KEYS and isinstance(value, str):
                value = mask(value)
            line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure(level: str = "INFO", mask_identities: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(mask_identities))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The Schema Registry client runs on httpx, which logs every request at INFO: noise.
    # Target requests go through httpx too: their URLs hold identities, so never at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
