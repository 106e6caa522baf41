"""The CLI as a user drives it: subprocesses, exit codes, signals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devtools.samples import sample_events
from tests.conftest import ROOT
from tests.helpers import (
    assert_history_clean,
    committed,
    encoder,
    event_key,
    expected_profiles,
    produce,
)

pytestmark = pytest.mark.e2e
CLI = str(Path(sys.executable).parent / "profile-consumer")


def cli(
    *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, input=stdin, timeout=timeout, cwd=ROOT
    )


def test_check_accepts_the_example_config() -> None:
    result = cli("check", "--config", "examples/config.yaml")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_check_lists_every_problem_with_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "kafka:\n  bootstrap: x\ntarget:\n  max_in_flight: zero\nquota:\n  limit: -5\n"
    )
    result = cli("check", "--config", str(config))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for line, key in ((2, "kafka.bootstrap"), (4, "target.max_in_flight"), (6, "quota.limit")):
        assert f"{config}:{line}: {key}:" in result.stderr


def test_check_names_the_rule_and_field_of_a_bad_rules_file(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "identity:\n  - mbox3rdPartyId: customer.thirdPartyId\nrules:\n"
        "  - name: calls\n    when: \"channel == 'CALL_CENTER'\"\n"
        "    attributes:\n      lastReason: payload.resaon\n"
    )
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"mapping": {"rules": str(rules)}}))
    result = cli("check", "--config", str(config))
    assert result.returncode == 2
    assert str(rules) in result.stderr and "calls" in result.stderr
    assert "payload.resaon" in result.stderr


def test_preview_shows_the_rules_and_the_exact_request() -> None:
    event = {
        "eventId": "e1",
        "occurredAt": "2026-11-28T17:02:50.123Z",
        "channel": "LOAN",
        "customer": {"thirdPartyId": "c&1", "pcId": None},
        "payload": {"loanId": "L1", "product": "mortgage", "amount": "1234.50", "currency": "EUR"},
        "attributes": {},
    }
    result = cli(
        "preview", "--config", "examples/config.yaml", "--event", "-", stdin=json.dumps(event)
    )
    assert result.returncode == 0, result.stderr
    assert "loan-funded" in result.stdout
    assert (
        "GET https://acme.tt.omtrdc.net/m2/acme/profile/update?mbox3rdPartyId=c%261"
        in result.stdout
    )
    assert "profile.lastLoanAmount=1234.50" in result.stdout


def test_help_on_every_command() -> None:
    commands = [
        "run",
        "check",
        "preview",
        "simulate-target",
        "demo",
        "quota status",
        "dlq inspect",
        "dlq replay",
    ]
    for command in commands:
        result = cli(*command.split(), "--help")
        assert result.returncode == 0 and "usage:" in result.stdout, command


def test_run_stopped_by_sigterm_mid_stream_loses_nothing(
    broker, simulator, topics, make_settings, tmp_path: Path
) -> None:
    # A small buffer, so the drain on SIGTERM cannot finish the whole stream.
    settings = make_settings(
        pipeline__shutdown_timeout_seconds=10, pipeline__max_buffered_events=200
    )
    config = tmp_path / "config.yaml"  # written by make_settings
    simulator.configure(latency_seconds=0.01)
    enc = encoder(settings)
    events = sample_events(3000, profiles=300, seed=11)
    ends = produce(
        broker.bootstrap, topics["topic"], ((event_key(e), enc.encode(e)) for e in events)
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [CLI, "run", "--config", str(config)], stderr=subprocess.PIPE, text=True, env=env
        )

    proc = start()
    assert simulator.wait_for(lambda s: s.accepted_count() >= 50, timeout=60)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert '"event": "stopped"' in stderr
    first_run = simulator.accepted_count()
    # Restart: it resumes from the commit and finishes the stream.
    proc = start()
    expected = expected_profiles(events)
    assert simulator.wait_for(lambda s: s.profiles() == expected, timeout=90)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert committed(broker.bootstrap, topics["group"], topics["topic"]) == ends
    assert first_run < simulator.accepted_count()
    assert_history_clean(simulator, events)


def test_demo_runs_the_whole_story_and_checks_itself() -> None:
    result = cli("demo", "--events", "600", "--profiles", "100", timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "events consumed         600" in out
    assert "result                  OK" in out
    verified = next(line for line in out.splitlines() if line.startswith("profiles verified"))
    matched, total = verified.split()[2].split("/")
    assert matched == total and int(total) > 0
    assert "profile-consumer dlq inspect" in out
    # Judged here, not taken from the demo's verdict: every event is accounted for exactly
    # once, the DLQ holds exactly the poison produced, and Target's whole history (every
    # write, in arrival order) was checked and never went back to an older value.
    figures = summary_figures(out)
    poison = int(re.search(r"produced 600 events \((\d+) poison\)", out).group(1))  # type: ignore[union-attr]
    assert figures["mapped"] + figures["skipped (no rule)"] + figures["dead-lettered"] == 600
    assert figures["dead-lettered"] == poison > 0
    history = re.search(r"^history +(\d+) writes checked, no stale overwrite$", out, re.M)
    assert history is not None, out
    assert int(history.group(1)) >= figures["updates accepted"] > 0


def summary_figures(out: str) -> dict[str, int]:
    """`label   number ...` lines of the demo's summary, by label."""
    figures = {}
    for line in out.splitlines():
        match = re.match(r"^\s*([a-z][a-z ()-]*?)\s{2,}(\d+)\b", line)
        if match:
            figures[match.group(1)] = int(match.group(2))
    return figures
