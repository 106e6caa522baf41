"""Target's Bulk Profile Update API: the second transport, for backlogs (docs/design.md).

Modules, by stage:
- `transport.BulkTransport`: what the App wires (`open_bulk_transport`): the mode switch
  (`mode`), the sender, the shared budgets; what the pipeline and the intake see of bulk.
- `sender.BulkSender`: mapped events into batches, batches through Target, outcomes back to
  offsets (acks, DLQ); the order and override-caveat rules live here.
- `rows.BatchBuilder`: one batch for one identity type; `size` is exactly `len(render())`.
  Pure; `ref` is whatever compact handle the caller keeps per event (`held` packs them).
- `client.BulkClient`, `endpoints`, `answers`: the batchUpdate and batchStatus calls, retried,
  and their answers parsed.
- `limits.BulkLimits`: the calls-a-minute and rows-a-day budgets, shared through ledger topics;
  `bodies.BodyBudget`: this process's bound on rendered bodies.
- `held.Carry` and `carry_log`: what earlier batches set per profile, kept in Kafka for
  restarts and the other replicas; `manifest` and `foreign`: batches in flight, and the other
  members' batches that hold a partition back; `follow`: how both topics are read back.
- `fallback`: a batch the rows budget cannot take, sent as single updates; `reread`: records
  of failed rows read again for the DLQ; `cli`: `profile-consumer bulk status`.
"""
