"""`profile-consumer preview`: what one event (JSON) would become, as data and as text.

The outcome is one of: `update` (the rules matched: identity, attributes, the exact requests),
`skipped` (no rule matched) or `dead-letter` (with the stage and reason the DLQ would record).
"""

from __future__ import annotations

import json
from typing import Any

from consumer.errors import MappingError, PermanentDeliveryError
from consumer.stages import Stages
from consumer.target.request import build_requests


def preview_event(stages: Stages, text: str) -> dict[str, Any]:
    """The outcome of one event given as JSON text; never raises for a bad event."""
    from consumer.mapping import event_from_json

    try:
        event = event_from_json(json.loads(text), stages.reader_schema)
        update = stages.mapper.map(event)
    except (MappingError, ValueError) as exc:
        reason = getattr(exc, "reason", "invalid_json")
        return _dead_letter("map", reason, exc)
    if update is None:
        return {"outcome": "skipped"}
    result: dict[str, Any] = {
        "outcome": "update",
        "rules": list(update.rules),
        "identity": {"type": update.identity_type, "value": update.identity},
        "attributes": dict(update.attributes),
    }
    try:
        requests = build_requests(
            stages.endpoint_url, update.identity_type, update.identity, update.attributes
        )
    except PermanentDeliveryError as exc:
        return {**result, **_dead_letter("send", exc.reason, exc)}
    result["requests"] = [
        {"method": r.method, "url": r.url, "body": r.body.decode("ascii") or None} for r in requests
    ]
    return result


def _dead_letter(stage: str, reason: str, exc: Exception) -> dict[str, Any]:
    return {"outcome": "dead-letter", "stage": stage, "reason": reason, "message": str(exc)}


def render(result: dict[str, Any]) -> str:
    """The outcome for a terminal (the shape `preview` has always printed)."""
    if result["outcome"] == "skipped":
        return "no rule matched: the event would be skipped (counted, not dead-lettered)"
    lines = []
    if "rules" in result:
        identity = result["identity"]
        lines += [
            f"matched rules: {', '.join(result['rules'])}",
            f"identity: {identity['type']}={identity['value']}",
            "attributes:",
            *(f"  profile.{name} = {value!r}" for name, value in result["attributes"].items()),
        ]
    if result["outcome"] == "dead-letter":
        lines.append(
            f"dead-letter: stage={result['stage']} reason={result['reason']}: {result['message']}"
        )
        return "\n".join(lines)
    lines.append(f"request(s): {len(result['requests'])}")
    for request in result["requests"]:
        lines.append(f"{request['method']} {request['url']}")
        if request["body"]:
            lines.append(f"  body: {request['body']}")
    return "\n".join(lines)
