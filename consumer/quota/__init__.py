"""The quota: no update leaves unless the rolling window, the pacing and Target's holds allow it.

`QuotaGate` (local.py) counts one process's sends: unit tests, `check` and `preview` use it.
`SharedQuotaGate` (shared.py) spends only budget leased through the Kafka ledger topic, so every
replica together stays within the limit: the App uses it. Design and worst case: docs/quota.md.
"""

from consumer.quota.local import Clock, QuotaGate, QuotaSnapshot, Sleep, WindowCounter

__all__ = ["Clock", "QuotaGate", "QuotaSnapshot", "Sleep", "WindowCounter"]
