"""Target's Bulk Profile Update API: the second transport, for backlogs (the core, unwired).

Modules, each usable on its own:
- `rows.BatchBuilder`: one batch for one identity type. `try_add(identity, attributes, ref)`
  merges an event into its profile's row (False when the batch is full: render it, start the
  next); `size` is exactly `len(render())`; `rows()` / `refs_by_row()` map Target's rowNumber
  back to the refs of the events that row carries (for the DLQ), `refs()` gives all of them.
  Pure; `ref` is whatever compact handle the caller keeps per event.
- `answers`: `parse_submitted` -> `Submitted(batch_id, status_url)`, `parse_status` ->
  `BatchStatus(state, size, rows, succeeded)` (rows: only those that did not succeed).
- `endpoints.Endpoints`: batchUpdate URLs (v2; v1 for pcId with `bulk.pcid_api: v1`) and the
  batchStatus URL rebuilt on the configured origin (the token never goes elsewhere).
- `limits.BulkLimits`: the calls-a-minute and rows-a-day budgets, shared by replicas through
  their own ledger topics (`open_shared_limits`) or local (`local_limits`).
- `client.BulkClient`: `submit(builder, identity_type) -> Submitted` and
  `status(submitted) -> BatchStatus`, retrying everything retryable, raising
  PermanentBulkError (`bulk_rejected`, `bulk_status_refused`) for refusals.

Wiring sketch (the pipeline's job): `http = open_client(...)`; `bulk_http = http.derive(
timeout=settings.bulk.request_timeout_seconds, max_body=answers.MAX_STATUS_BODY, held=False)`;
`limits = await open_shared_limits(settings, kafka_config, loop.time)`;
`client = BulkClient.from_settings(settings, http=bulk_http, limits=limits,
metrics=metrics.bulk, clock=loop.time)`; a builder per identity type with
`max_rows=settings.bulk.batch_rows()`, `max_bytes=settings.bulk.max_bytes`; publish
`limits.publish(metrics.bulk, waited)` once a second; `await limits.close()` at shutdown.
"""
