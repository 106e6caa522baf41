"""`profile-consumer quota status` as a subprocess, against a ledger written by a real gate."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from consumer.kafka.clients import producer_config
from consumer.quota.shared import open_shared_gate

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent / "profile-consumer"


def status(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # our own console script
        [str(BIN), "quota", "status", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def spend(settings, units: int) -> str:  # type: ignore[no-untyped-def]
    gate = await open_shared_gate(
        settings, producer_config(settings), asyncio.get_running_loop().time
    )
    for _ in range(units):
        await gate.acquire()
    await gate.close()
    return gate.replica


async def test_status_reports_what_the_replicas_used(make_settings, tmp_path) -> None:
    settings = make_settings(quota__limit=1000, quota__window_seconds=600, quota__pacing="eager")
    config = tmp_path / "config.yaml"
    before = status(config)
    assert before.returncode == 0
    assert "does not exist yet" in before.stdout
    replica = await spend(settings, 42)

    table = status(config)
    assert table.returncode == 0, table.stderr
    assert "used        42 / 1000 (4.2%)" in table.stdout
    assert "remaining   958" in table.stdout
    assert replica in table.stdout

    report = json.loads(status(config, "--json").stdout)
    assert (report["used"], report["remaining"], report["limit"]) == (42, 958, 1000)
    assert report["ledger_topic"] == settings.ledger_topic()
    assert report["frees_at"] > report["at"] + 590
    assert report["rate_per_second"] == pytest.approx(42 / 60)
    assert [(r["replica"], r["used"]) for r in report["replicas"]] == [(replica, 42)]
