"""Response parsing: Target answers with a small XML document; read `success`, not strings."""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree import ElementTree

# Only the start of the body is read: a success document is ~120 bytes.
MAX_BODY = 65_536


@dataclass(frozen=True, slots=True)
class TargetAnswer:
    success: bool
    message: str


def parse_answer(body: bytes) -> TargetAnswer | None:
    """The parsed answer, or None when the body is not the documented XML."""
    try:
        # Target's own response over TLS; expat in CPython >= 3.11 refuses entity expansion
        # bombs and never resolves external entities, which is what defusedxml guards against.
        root = ElementTree.fromstring(body[:MAX_BODY])  # noqa: S314
    except ElementTree.ParseError:
        return None
    if root.tag != "response":
        return None
    success = (root.findtext("success") or "").strip().lower() == "true"
    return TargetAnswer(success=success, message=(root.findtext("message") or "").strip())
