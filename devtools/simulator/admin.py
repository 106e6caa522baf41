"""The ``/_sim/`` admin endpoints: records, profiles, stats, bulk batches, config, reset.

Never subject to faults, tokens or ``down``, so an out-of-process test can always steer the
server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

from devtools.simulator.config import SimulatorConfig
from devtools.simulator.http import _Head, _json_response, _read_body, _Response, _ServerConnection
from devtools.simulator.state import SimulatorState

ADMIN_PREFIX = "/_sim/"
MAX_ADMIN_BODY_BYTES = 1024 * 1024


async def serve_admin(
    simulator: SimulatorState,
    reader: asyncio.StreamReader,
    conn: _ServerConnection,
    head: _Head,
) -> bool:
    """Answer one admin request; False when the connection must close."""
    body = await _read_body(reader, head, MAX_ADMIN_BODY_BYTES)
    if body is None:
        response = dataclasses.replace(_json_response({"error": "body too large"}, 413), close=True)
    else:
        response = _admin(simulator, head.method, head.path, body)
    return await conn.finish(reader, head, response)


def _admin(simulator: SimulatorState, method: str, path: str, body: bytes) -> _Response:
    route = (method, path.removeprefix(ADMIN_PREFIX).rstrip("/"))
    if route == ("GET", "records"):
        return _json_response([dataclasses.asdict(r) for r in simulator.received()])
    if route == ("GET", "profiles"):
        return _json_response({f"{t}:{i}": a for (t, i), a in simulator.profiles().items()})
    if route == ("GET", "stats"):
        return _json_response(simulator.stats())
    if route == ("GET", "bulk"):
        return _json_response([dataclasses.asdict(b) for b in simulator.bulk_batches()])
    if route == ("GET", "config"):
        return _json_response(_config_json(simulator.config()))
    if route == ("POST", "config"):
        return _admin_configure(simulator, body)
    if route == ("POST", "reset"):
        simulator.reset()
        return _json_response({"reset": True})
    return _json_response({"error": f"no admin route {method} {path}"}, 404)


def _admin_configure(simulator: SimulatorState, body: bytes) -> _Response:
    try:
        changes = json.loads(body or b"{}")
        if not isinstance(changes, dict):
            raise ValueError("the body must be a JSON object of settings")
        simulator.configure(**changes)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError too
        return _json_response({"error": str(exc)}, 400)
    return _json_response(_config_json(simulator.config()))


def _config_json(config: SimulatorConfig) -> dict[str, Any]:
    """The configuration as JSON can carry it: the failure ids set as a sorted list."""
    fields = dataclasses.asdict(config)
    fields["bulk_row_failure_ids"] = sorted(config.bulk_row_failure_ids)
    return fields
