"""The bulk settings, validated like every section; `quota status` shows the bulk budgets."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.bulk.limits import rows_rule
from consumer.config import Settings, validate_settings
from consumer.quota.ledger import LedgerState
from consumer.quota.messages import LeaseRequest, decode, encode, key_of
from consumer.quota.status import QuotaStatus, render, summarise, summarise_budget

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[3]


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "config.yaml"
    rules = ROOT / "examples" / "mapping.yaml"
    schema = ROOT / "schemas" / "offline_transaction.avsc"
    path.write_text(
        f"mapping:\n  rules: {rules}\navro:\n  writer_schema: {schema}\n{text}", encoding="utf-8"
    )
    return validate_settings(path, environ={}).problems


def test_defaults_match_the_contract() -> None:
    s = Settings()
    assert s.target.transport == "auto"
    b = s.bulk
    assert (b.switch_after_seconds, b.headroom_threshold, b.max_batch_seconds) == (300, 0.05, 60)
    assert (b.max_rows, b.pcid_api, b.daily_rows, b.calls_per_minute) == (500_000, "v2", 10**6, 50)
    assert (b.status_poll_seconds, b.status_timeout_seconds, b.max_resubmits) == (10, 3600, 3)
    assert b.request_timeout_seconds == 300 and b.max_bytes < 50 * 1024 * 1024
    assert 0 < b.switch_back_ratio < 1


def test_a_valid_bulk_section_passes(tmp_path: Path) -> None:
    text = "target:\n  transport: bulk\nbulk:\n  pcid_api: v1\n  max_rows: 1000\n  daily_rows: 10\n"
    assert problems(tmp_path, text) == []


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("bulk:\n  max_rows: 500001\n", "bulk.max_rows"),
        ("bulk:\n  max_bytes: 52428800\n", "bulk.max_bytes"),
        ("bulk:\n  pcid_api: v3\n", "bulk.pcid_api"),
        ("bulk:\n  calls_per_minute: 0\n", "bulk.calls_per_minute"),
        ("bulk:\n  switch_back_ratio: 1.5\n", "bulk.switch_back_ratio"),
        ("bulk:\n  headroom_threshold: -0.1\n", "bulk.headroom_threshold"),
        ("bulk:\n  status_timeout_seconds: .inf\n", "bulk.status_timeout_seconds"),
        ("bulk:\n  batch_size: 10\n", "bulk.batch_size"),
        ("target:\n  transport: fast\n", "target.transport"),
    ],
)
def test_bad_values_name_their_key(tmp_path: Path, text: str, key: str) -> None:
    found = problems(tmp_path, text)
    assert len(found) == 1 and f"{key}:" in found[0], found


def test_a_batch_never_holds_more_rows_than_the_day_allows() -> None:
    assert Settings.model_validate({"bulk": {"daily_rows": 10}}).bulk.batch_rows() == 10
    assert Settings().bulk.batch_rows() == 500_000


def test_quota_status_renders_the_bulk_budgets() -> None:
    settings = Settings.model_validate({"kafka": {"group_id": "g"}, "bulk": {"daily_rows": 900}})
    state = LedgerState(rows_rule(settings))
    request = LeaseRequest("r1", 1, 300, 1000.0)

    state.apply(0, key_of(request), decode(encode(request)))
    row = summarise_budget("rows", "g.quota.bulk-rows", state, True, 1001.0)
    assert (row.used, row.remaining, row.limit) == (300, 600, 900)
    base = summarise(settings, LedgerState(rows_rule(settings)), True, 1001.0)
    status = QuotaStatus(**{**base.__dict__, "bulk": [row]})
    text = render(status)
    assert "BULK BUDGET" in text and "g.quota.bulk-rows" in text
    assert "rows" in text and " 300 " in text and " 600 " in text
