"""`profile-consumer bulk status` reads the manifest every replica writes: batches in flight,
from another process, while the consumer runs."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from devtools.samples import sample_events
from tests.bulk_helpers import bulk_settings
from tests.helpers import encoder, event_key, produce, running, wait_until

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).parent / "profile-consumer")


async def bulk_status(config: Path, *extra: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        CLI,
        "bulk",
        "status",
        "--config",
        str(config),
        "--timeout",
        "10",
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_bulk_status_lists_the_batches_in_flight(
    broker, simulator, topics, make_settings, tmp_path: Path
) -> None:
    # Target takes its time: each batch stays incomplete 8 s (fixed when it is submitted).
    simulator.configure(bulk_processing_seconds=8.0)
    settings = bulk_settings(make_settings, transport="bulk")
    config = tmp_path / "config.yaml"  # written by make_settings
    enc = encoder(settings)
    events = sample_events(100, profiles=20, seed=5)
    produce(broker.bootstrap, topics["topic"], ((event_key(e), enc.encode(e)) for e in events))
    async with running(settings) as app:
        await wait_until(lambda: app.bulk is not None, 30)  # set once the App has started

        def submitted() -> list[str]:
            return [b["batch_id"] for b in app.bulk.sender.batches() if b["batch_id"]]  # type: ignore[union-attr]

        await wait_until(lambda: bool(submitted()), 30)
        code, out, err = await bulk_status(config, "--json")
        assert code == 0, err
        listed = json.loads(out)
        assert listed["in_flight"] >= 1
        assert set(submitted()) <= {b["batch_id"] for b in listed["batches"]}
        assert all(b["state"] == "submitted" for b in listed["batches"])
        code, text, _ = await bulk_status(config)
        assert code == 0 and "submitted" in text and submitted()[0] in text
        await wait_until(lambda: app.bulk.sender.held == 0, 30)  # type: ignore[union-attr]
    code, out, _ = await bulk_status(config, "--json")
    assert code == 0 and json.loads(out)["in_flight"] == 0
    code, out, _ = await bulk_status(config, "--json", "--all")
    assert {b["state"] for b in json.loads(out)["batches"]} == {"complete"}


async def test_bulk_status_without_a_broker_is_exit_3(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("kafka: {bootstrap_servers: '127.0.0.1:9'}\nmetrics: {port: 0}\n")
    code, _, err = await bulk_status(config)
    assert code == 3, err
    assert "did not answer" in err
