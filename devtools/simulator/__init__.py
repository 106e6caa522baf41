"""A faithful stand-in for Adobe Target's Single Profile Update API, served on loopback.

The demo, the integration tests and the benchmarks talk to this server exactly as they would
talk to ``https://<clientCode>.tt.omtrdc.net``: a real HTTP/1.1 server (keep-alive,
``Content-Length`` bodies) running an asyncio event loop in a background thread, so artificial
latency on one connection never blocks another.

What Adobe documents, enforced as documented:

* ``/m2/{client_code}/profile/update``, GET (query string) or POST (query string merged with an
  ``application/x-www-form-urlencoded`` body), parameters URL-encoded as UTF-8.
* Exactly one identity, ``mbox3rdPartyId`` or ``mboxPC``; ``mbox3rdPartyId`` at most 256
  characters without ``+`` or ``/``; attributes are ``profile.<name>`` (names at most 128
  characters).
* 8 KB for a GET, 60 KB for a POST; the XML success response; the optional Bearer token.
* A quota of accepted updates over a rolling window.

Where Adobe documents nothing, the simulator's choices (clients must not rely on them being
Target's, only on them being reasonable):

* Status codes: 404 unknown path or client code, 405 other methods, 401 missing or wrong token,
  400 invalid parameters (XML ``success`` false with a message), 413 POST body over 61,440 bytes
  (the connection is closed, the body is not read), 414 GET whose full URL
  (``scheme://`` + ``Host`` header + request target) exceeds 8,192 bytes, 415 a non-empty body
  that is not form-encoded, 429 over quota with ``Retry-After`` = whole seconds (at least 1)
  until enough in-window updates leave the window, 431 request head over 64 KiB.
* Checks run in this order, first refusal wins: down/reset, 413, injected 429, injected 503,
  405, 404, 401, 414, 415, 400, quota 429; else 200. Every answered update request is recorded
  (``ReceivedUpdate``), with what could be parsed from it; resets are only counted.
* Duplicate parameter names (also across query string and body), unknown non-``profile.``
  parameters and empty attribute names are 400: this is what lets tests detect parameter
  injection. The real API may silently accept some of these.
* Any identity is accepted (the real API only updates profiles that exist).
* Injected faults, drawn per request from ``random.Random(seed)`` in this fixed order, four
  draws per request whatever the ratios (so a seed replays the same sequence): connection
  reset (RST: ``SO_LINGER`` (1, 0) then close; nothing recorded), 429, 503, latency spike.
  ``down`` resets every update connection, including those idle in keep-alive or waiting out
  latency. Latency applies to every update response, injected errors included.
* Injected 429s send ``retry_after_seconds`` as given: an integer when whole, else a decimal
  (``0.25``) so tests can retry quickly; HTTP only defines integers, so clients should parse both.
* ``early_requests``: the server remembers the latest "not before" instant it has told any
  client (time a 429 was written + its Retry-After); an update request arriving before it counts,
  unless it arrived within ``early_grace_seconds`` (default 50 ms) of that 429 being written:
  a client may have started such a request before it could learn of the 429 (even on the same
  connection, when the request was waiting in its pool for a free connection).
* Admin endpoints under ``/_sim/`` (records, profiles, stats, config, reset) are never subject
  to faults, tokens or ``down``, so an out-of-process test can always steer the server.

Run it on its own with ``python -m devtools simulate-target --port 8080``: the first line on
stdout is the URL it listens on; SIGINT or SIGTERM stops it.

Modules: ``config`` (settings), ``http`` (HTTP/1.1 plumbing), ``rules`` (Target's parameter
rules and answers), ``state`` (records, profiles, quota window), ``admin`` (``/_sim/``),
``server`` (lifecycle and connections), ``cli`` (command-line options).
"""

from devtools.simulator.cli import add_arguments, serve
from devtools.simulator.config import SimulatorConfig
from devtools.simulator.http import MAX_HEAD_BYTES
from devtools.simulator.rules import (
    MAX_ATTRIBUTE_NAME_CHARS,
    MAX_GET_URL_BYTES,
    MAX_POST_BODY_BYTES,
    MAX_THIRD_PARTY_ID_CHARS,
)
from devtools.simulator.server import TargetSimulator
from devtools.simulator.state import ReceivedUpdate

__all__ = [
    "MAX_ATTRIBUTE_NAME_CHARS",
    "MAX_GET_URL_BYTES",
    "MAX_HEAD_BYTES",
    "MAX_POST_BODY_BYTES",
    "MAX_THIRD_PARTY_ID_CHARS",
    "ReceivedUpdate",
    "SimulatorConfig",
    "TargetSimulator",
    "add_arguments",
    "serve",
]
