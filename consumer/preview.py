"""`profile-consumer preview`: what one event (JSON) would become, as data and as text.

The outcome is one of: `update` (the rules matched: identity, attributes, the exact requests),
`skipped` (no rule matched) or `dead-letter` (with the stage and reason the DLQ would record).
An update also shows the bulk row it would be (header + row, as a batch of its own would send
them) when the bulk transport carries it.
"""

from __future__ import annotations

import json
from typing import Any

from consumer.bulk.endpoints import Endpoints
from consumer.bulk.rows import BatchBuilder
from consumer.errors import InvalidBulkRow, MappingError, PermanentDeliveryError
from consumer.stages import Stages
from consumer.target.request import build_requests


def preview_event(stages: Stages, text: str, bulk: Endpoints | None = None) -> dict[str, Any]:
    """The outcome of one event given as JSON text; never raises for a bad event. With
    `bulk`, an update also shows its bulk row."""
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
    if bulk is not None:
        result["bulk"] = bulk_row(bulk, update.identity_type, update.identity, update.attributes)
    return result


def bulk_row(
    endpoints: Endpoints, identity_type: str, identity: str, attributes: dict[str, str]
) -> dict[str, Any]:
    """The batch a single event makes: where it goes, and its body (header, then the row)."""
    builder: BatchBuilder[None] = BatchBuilder(identity_type=identity_type)
    try:
        builder.add(identity, attributes, None)
    except InvalidBulkRow as exc:
        return {"error": str(exc), "reason": exc.reason}
    header, _, row = builder.render().decode("ascii").partition("\n")
    return {
        "method": "POST",
        "url": endpoints.submit_url(identity_type),
        "api": endpoints.version(identity_type),
        "header": header,
        "row": row,
    }


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
    bulk = result.get("bulk")
    if bulk and "error" in bulk:
        lines.append(f"bulk: no batch may carry it ({bulk['reason']}: {bulk['error']})")
    elif bulk:
        lines += [
            f"bulk row ({bulk['api']}, when the bulk transport carries it):",
            f"{bulk['method']} {bulk['url']}",
            f"  {bulk['header']}",
            f"  {bulk['row']}",
        ]
    return "\n".join(lines)
