"""A faithful stand-in for Adobe Target's Single and Bulk Profile Update APIs, on loopback.

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
* Admin endpoints under ``/_sim/`` (records, profiles, stats, bulk, config, reset) are never subject
  to faults, tokens or ``down``, so an out-of-process test can always steer the server.

Bulk Profile Update API, what Adobe documents, enforced as documented:

* ``POST /m2/{client_code}/v2/profile/batchUpdate`` (v2) and ``/m2/{client_code}/profile/
  batchUpdate`` (v1), ``application/x-www-form-urlencoded``, body ``batch=`` then CSV text:
  rows end with ``\n`` (``\r\n`` accepted), cells are separated by ``,`` and URL-encoded as
  UTF-8 (decoded like `urllib.parse.unquote`). A raw ``&`` or ``+``, or a ``%`` that does not
  start a two-hex-digit escape, refuses the whole batch: Adobe says they corrupt it.
* Header: ``thirdPartyId`` (stored as ``mbox3rdPartyId``, like single updates) or ``pcId``
  (``mboxPC``), then attribute names without ``profile.`` (at most 128 characters). One row per
  profile; an empty value updates nothing (Target ignores empty values: an attribute cannot be
  cleared).
* Under 50 MB (the request body, ``batch=`` included, must be under 52,428,800 bytes: 413 at
  that size or more, the body left unread, the connection closed) and at most 500,000 data
  rows (400). The single-update path keeps its 61,440-byte limit.
* At most ``bulk_calls_per_minute`` (50) batch calls per rolling ``bulk_calls_window_seconds``
  (60): beyond, 503 with ``Retry-After`` = whole seconds (at least 1) until the oldest call
  leaves the window; a 503 is not counted as a call.
* The answer ``<response><success>true</success><batchId>ID</batchId><message>Batch submitted
  for processing</message><batchStatus>URL</batchStatus></response>``, URL = scheme + ``Host``
  + ``/m2/{cc}[/v2]/profile/batchStatus?batchId=ID``. ``GET`` it: ``<response><batchId>``,
  ``<status>`` (``incomplete``, ``complete`` or ``stuck``), ``<batchSize>`` (data rows); with
  ``showDetails=true`` a v2 batch adds ``<rows><row><rowNumber>`` (1 = first data row)
  ``<id><status>`` (``success`` or ``failed``) ``<message></row>...</rows>``.
* v2 creates the profiles it does not find; v1 updates existing profiles only.
* The override caveat: consecutive v2 batches for one ``thirdPartyId`` with no mbox call (here:
  an accepted single update) in between: the later batch's row replaces what the earlier one
  set, so attributes the earlier row set and the later one does not carry are removed from the
  profile (counted in ``bulk_attributes_overridden``).

Where Adobe documents nothing about bulk, the simulator's choices:

* Checks run in this order, first refusal wins: ``down`` (reset), 413, 405 (batchUpdate is
  POST only, batchStatus GET only), 404 (client code), 401 (the same optional Bearer token as
  single updates, on submit and status), then for a submit: 503 over the call rate, 415 a
  non-empty body that is not form-encoded, 400 an unreadable batch; else 200. A call counts
  against the rate once it passes the 401 check, whatever its answer (a 400 too); status polls
  never count. The single-update faults (reset, 429, 503, latency ratios) do not apply to the
  bulk paths; ``down`` does (an outage of the whole API).
* 400 (XML ``success`` false with a message) also for: no ``batch=`` prefix, a body or a
  decoded cell that is not UTF-8, a raw carriage return outside a CRLF, a header without an
  attribute, an empty, over-long, duplicate or ``profile.``-prefixed name, and no data rows.
* A failed row does not fail the batch (v2 reports it): a row whose cell count differs from the
  header's, an empty identity, a ``thirdPartyId`` over 256 characters or holding ``+`` or
  ``/`` (decoded), and a second row for an identity (one row per profile).
* Processing: a batch is ``incomplete`` for ``bulk_processing_seconds`` (0.2, fixed at submit)
  after its submit, then it is applied all at once and is ``complete``. It is applied by a
  timer, and also by any getter or update that comes later (so a test's hand-moved clock
  works): the rows are recorded with ``at`` = the clock when applied, before any single update
  that arrives later. Per-row detail appears once complete; never for v1. Unknown ``batchId``:
  404; missing: 400. The batch id is ``<sequence>-<random hex>``.
  ``bulk_answer_delay_seconds`` holds the answer to an accepted batch call that long (the batch
  is accepted and processed from its arrival, whatever becomes of the caller).
* v1 "updates existing profiles only", but the simulator, as for single updates, treats every
  identity as an existing profile, so a v1 row applies to any identity. The override caveat is
  applied to v2 ``thirdPartyId`` rows only (Adobe names only those); v1 rows and ``pcId`` rows
  neither trigger it nor end it; a rejected single update does not end it.
* Injected bulk faults, with their own ``random.Random(seed)`` so bulk traffic never shifts
  the single-update fault sequence: per batch one die for ``bulk_stuck_ratio``, then one die
  per data row for ``bulk_row_failure_ratio`` (whatever the ratios); ``bulk_stuck_batches`` makes
  the next N batches stuck (the setting counts down); rows whose identity is in
  ``bulk_row_failure_ids`` fail. Injected failures read "row rejected". A stuck batch is
  ``incomplete`` until its processing time, then ``stuck`` forever, and never applied.
  Row failures are decided at submit (visible in ``GET /_sim/bulk``), reported once complete.
* History: every applied row is a `ReceivedUpdate` (method POST, status 200, accepted, the
  non-empty attributes, ``batch_id`` and ``batch_row`` set) in the same records as single
  updates (``max_records`` bounds both), so the history checkers read one history. Bulk rows
  are not update requests: they use no single-update quota and no ``received`` count.
  `TargetSimulator.bulk_batches` and ``GET /_sim/bulk`` list the batches; ``stats()`` adds
  ``bulk_calls``, ``bulk_503s``, ``bulk_refused_by_status``, ``bulk_batches_accepted``,
  ``bulk_rows_applied``, ``bulk_rows_failed`` and ``bulk_attributes_overridden``.
* Speed: a batch is parsed and applied in a worker thread; applying holds the simulator's lock,
  so single updates wait while a large batch is applied (seconds for 500,000 rows).

Run it on its own with ``python -m devtools simulate-target --port 8080``: the first line on
stdout is the URL it listens on; SIGINT or SIGTERM stops it.

Modules: ``config`` (settings), ``http`` (HTTP/1.1 plumbing), ``rules`` (Target's parameter
rules and answers), ``state`` (records, profiles, quota window), ``bulk`` (the batch body,
rows and XML answers), ``bulk_state`` (batches, call window, applying rows), ``bulk_http``
(the bulk endpoints), ``admin`` (``/_sim/``), ``server`` (lifecycle and connections), ``cli``
(command-line options).
"""

from devtools.simulator.bulk import MAX_BULK_BODY_BYTES, MAX_BULK_ROWS
from devtools.simulator.bulk_state import BulkBatch
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
    "MAX_BULK_BODY_BYTES",
    "MAX_BULK_ROWS",
    "MAX_GET_URL_BYTES",
    "MAX_HEAD_BYTES",
    "MAX_POST_BODY_BYTES",
    "MAX_THIRD_PARTY_ID_CHARS",
    "BulkBatch",
    "ReceivedUpdate",
    "SimulatorConfig",
    "TargetSimulator",
    "add_arguments",
    "serve",
]
