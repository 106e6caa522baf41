"""The bulk endpoints over HTTP: ``batchUpdate`` (submit) and ``batchStatus`` (poll).

Checks run in the order the package docstring documents, first refusal wins. Parsing a large
batch, building a large status answer and applying a due batch run in worker threads, so a
50 MB batch does not stall the single-update connections served by the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
from urllib.parse import parse_qsl

from devtools.simulator.bulk import (
    MAX_BULK_BODY_BYTES,
    BatchError,
    BulkRoute,
    parse_batch,
    submit_xml,
)
from devtools.simulator.config import SimulatorConfig
from devtools.simulator.http import _Head, _read_body, _Response, _ServerConnection
from devtools.simulator.rules import FORM, MAX_POST_BODY_BYTES, _authorized, _failure
from devtools.simulator.state import SimulatorState

# Refusing an oversized batch leaves its body unread: drain it (bounded) so the client reads
# the 413 instead of an RST.
OVERSIZE_DRAIN_BYTES = 2 * MAX_BULK_BODY_BYTES


async def serve_bulk(
    sim: SimulatorState,
    reader: asyncio.StreamReader,
    conn: _ServerConnection,
    head: _Head,
    *,
    route: BulkRoute,
    origin: str,
) -> bool:
    """Answer one bulk request; False when the connection must close.

    `origin` (``scheme://host:port``) builds the batchStatus URL when ``Host`` is missing.
    """
    conn.serves_updates = True  # `down` is an outage of the whole API, bulk included
    config = sim.config()
    if config.down:
        sim._note_reset()
        conn.reset()
        return False
    submit = route.action == "batchUpdate"
    limit = MAX_BULK_BODY_BYTES - 1 if submit else MAX_POST_BODY_BYTES
    body = await _read_body(reader, head, limit)
    response = _refusal(head, body, route, config)
    if response is None and body is not None:
        if submit:
            response = await _submit(sim, head, body, route, _status_base(head, origin))
            if response.status == 200 and config.bulk_answer_delay_seconds > 0:
                await asyncio.sleep(config.bulk_answer_delay_seconds)
        else:
            response = await _status(sim, head)
    assert response is not None  # noqa: S101 - body None is always refused with a 413
    if submit and response.status != 200:
        sim._note_bulk_refusal(response.status)
    return await conn.finish(reader, head, response, linger_bytes=OVERSIZE_DRAIN_BYTES)


def _refusal(
    head: _Head, body: bytes | None, route: BulkRoute, config: SimulatorConfig
) -> _Response | None:
    """413, 405, 404 and 401, in that order; None: go on."""
    if body is None:
        limit = MAX_BULK_BODY_BYTES if route.action == "batchUpdate" else MAX_POST_BODY_BYTES
        return dataclasses.replace(_failure(413, f"body must be under {limit} bytes"), close=True)
    method = "POST" if route.action == "batchUpdate" else "GET"
    if head.method != method:
        return _failure(405, f"only {method} is allowed", Allow=method)
    if config.client_code is not None and route.client_code != config.client_code:
        return _failure(404, "not found")
    if config.require_token is not None and not _authorized(head, config.require_token):
        return _failure(
            401, "missing or invalid profile API token", **{"WWW-Authenticate": "Bearer"}
        )
    return None


async def _submit(
    sim: SimulatorState, head: _Head, body: bytes, route: BulkRoute, base: str
) -> _Response:
    """503 over the call rate, 415, 400 for an unreadable batch; else accept it."""
    too_many = sim._bulk_admit()
    if too_many is not None:
        return too_many
    content_type = head.headers.get("content-type", "").split(";")[0].strip().lower()
    if body and content_type != FORM:
        return _failure(415, f"POST body must be {FORM}")
    try:
        parsed = await asyncio.to_thread(parse_batch, body)
    except BatchError as exc:
        return _failure(400, str(exc))
    batch = await asyncio.to_thread(sim._bulk_accept, route.version, parsed)
    delay = batch.due_at - batch.submitted_at
    _schedule_tick(asyncio.get_running_loop(), sim, batch.id, delay)
    status_url = f"{base}{route.status_path()}?batchId={batch.id}"
    return _Response(200, submit_xml(batch.id, status_url))


async def _status(sim: SimulatorState, head: _Head) -> _Response:
    params = dict(parse_qsl(head.query, keep_blank_values=True))
    batch_id = params.get("batchId", "")
    if not batch_id:
        return _failure(400, "batchId is required")
    details = params.get("showDetails", "").lower() == "true"
    return await asyncio.to_thread(sim._bulk_status, batch_id, details)


def _status_base(head: _Head, origin: str) -> str:
    """``scheme://host[:port]`` as the client addressed this server."""
    scheme, _, default_host = origin.partition("://")
    return f"{scheme}://{head.headers.get('host') or default_host}"


def _schedule_tick(
    loop: asyncio.AbstractEventLoop, sim: SimulatorState, batch_id: str, delay: float
) -> None:
    """Apply the batch when its processing time is up, so `wait_for` waiters wake then.

    Getters apply due batches too, which is what a test's hand-moved clock relies on: the tick
    is only rescheduled when the clock moves (it fired a hair early), never for a frozen clock.
    """

    def fire() -> None:
        loop.run_in_executor(None, sim._bulk_tick, batch_id).add_done_callback(after)

    def after(future: asyncio.Future[float]) -> None:
        remaining = future.result()
        if 0 < remaining < delay:
            _schedule_tick(loop, sim, batch_id, remaining)

    loop.call_later(max(delay, 0.0), fire)
