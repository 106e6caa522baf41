"""Every command, as a user runs it (the console script in a subprocess), against what goes wrong
on a first day: a missing config file, a broken config, a missing event file, a broker that is
not there, a Schema Registry that is not there. Each failure is an exit code (README: 1 failure,
2 configuration or usage, 3 a dependency unreachable) and one paragraph on stderr naming what
failed, never a traceback. Commands that do not use a dependency must not wait for it either.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, Broker
from tests.e2e.test_cli import CLI

pytestmark = pytest.mark.e2e

EVENT = str(ROOT / "examples" / "events" / "loan.json")
RULES = str(ROOT / "examples" / "mapping.yaml")
WAIT = "2"  # seconds a command may wait on an absent dependency: keeps the test fast
# Each command with the options it needs (a short wait wherever it talks to Kafka).
COMMANDS = {
    "run": ["run", "--timeout", WAIT],
    "check": ["check"],
    "preview": ["preview", "--event", EVENT],
    "quota status": ["quota", "status", "--timeout", WAIT],
    "dlq inspect": ["dlq", "inspect", "--timeout", WAIT],
    "dlq replay": ["dlq", "replay", "--timeout", WAIT],
}


@dataclass(frozen=True)
class Expect:
    code: int
    stderr: str = ""  # a substring of stderr ("" with code 0: stderr may hold anything)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_all(argvs: dict[str, list[str]], timeout: float = 60) -> dict[str, tuple[int, str, str]]:
    """Start every command at once (each pays ~1 s of imports), then collect them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROFILE_CONSUMER")}
    procs = {
        name: subprocess.Popen(  # our own console script
            [CLI, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for name, argv in argvs.items()
    }
    results = {}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"{name} did not end within {timeout} s:\n{err}")
        results[name] = (proc.returncode, out, err)
    return results


def assert_one_paragraph(name: str, code: int, err: str, expect: Expect) -> None:
    assert code == expect.code, f"{name}: exit {code}, expected {expect.code}\n{err}"
    assert "Traceback" not in err, f"{name}:\n{err}"
    if expect.code == 0:
        return
    text = err.strip()
    assert text.startswith("profile-consumer "), f"{name}: not our message:\n{err}"
    assert "\n\n" not in text, f"{name}: more than one paragraph:\n{err}"
    assert expect.stderr in text, f"{name}: {expect.stderr!r} not in:\n{err}"


def drive(config: Path, expected: dict[str, Expect], *extra: str) -> dict[str, str]:
    argvs = {name: [*COMMANDS[name], "--config", str(config), *extra] for name in expected}
    outputs = {}
    for name, (code, out, err) in run_all(argvs).items():
        assert_one_paragraph(name, code, err, expected[name])
        outputs[name] = out
    return outputs


def write(tmp_path: Path, text: str) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(text, encoding="utf-8")
    return config


def test_a_missing_config_file_is_exit_2_for_every_command(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    expect = Expect(2, f"{missing}: cannot read the file: No such file or directory")
    drive(missing, dict.fromkeys(COMMANDS, expect))


def test_a_bad_config_is_exit_2_naming_file_line_and_key_for_every_command(
    tmp_path: Path,
) -> None:
    config = write(tmp_path, f"mapping: {{rules: {RULES}}}\nquota:\n  limit: -5\n")
    expect = Expect(2, f"{config}:3: quota.limit: Input should be greater than or equal to 1")
    drive(config, dict.fromkeys(COMMANDS, expect))


def test_a_missing_event_file_is_exit_2(tmp_path: Path) -> None:
    config = write(tmp_path, f"mapping: {{rules: {RULES}}}\n")
    missing = tmp_path / "event.json"
    code, _, err = run_all(
        {"preview": ["preview", "--config", str(config), "--event", str(missing)]}
    )["preview"]
    expect = Expect(2, f"cannot read the event file {missing}: No such file or directory")
    assert_one_paragraph("preview", code, err, expect)


def test_an_unreachable_broker_is_exit_3_and_offline_commands_do_not_wait(
    tmp_path: Path,
) -> None:
    port = closed_port()
    config = write(
        tmp_path,
        f"kafka: {{bootstrap_servers: '127.0.0.1:{port}'}}\nmapping: {{rules: {RULES}}}\n"
        "metrics: {port: 0}\n",
    )
    unreachable = Expect(3, f"the Kafka broker(s) at 127.0.0.1:{port} did not answer within 2 s")
    expected = dict.fromkeys(["run", "quota status", "dlq inspect", "dlq replay"], unreachable)
    # check and preview are offline by design: they pass without any broker.
    expected.update({"check": Expect(0), "preview": Expect(0)})
    drive(config, expected)


def test_an_unreachable_schema_registry_is_exit_3_where_events_are_decoded(
    broker: Broker, topics: dict[str, str], tmp_path: Path
) -> None:
    config = write(
        tmp_path,
        f"kafka: {{bootstrap_servers: '{broker.bootstrap}', group_id: {topics['group']}, "
        f"topics: [{topics['topic']}], dlq_topic: {topics['dlq']}}}\n"
        f"avro: {{schema_registry_url: 'http://127.0.0.1:{closed_port()}'}}\n"
        f"mapping: {{rules: {RULES}}}\nmetrics: {{port: 0}}\n",
    )
    unreachable = Expect(3, "the Schema Registry (avro.schema_registry_url) did not answer")
    expected = {"run": unreachable, "dlq inspect": unreachable}
    # The others never decode an event: the registry's absence changes nothing for them.
    expected.update(dict.fromkeys(["check", "preview", "quota status", "dlq replay"], Expect(0)))
    outputs = drive(config, expected)
    assert "does not exist yet" in outputs["quota status"]
    assert "nothing new in the DLQ" in outputs["dlq replay"]


def test_development_commands_refuse_bad_usage_with_exit_2() -> None:
    results = run_all(
        {
            "demo": ["demo", "--events", "many"],
            "simulate-target": ["simulate-target", "--port", "x"],
            "no command": ["frobnicate"],
        }
    )
    for name, (code, _, err) in results.items():
        assert code == 2 and "Traceback" not in err, f"{name}: {code}\n{err}"
        assert err.startswith("usage: profile-consumer"), err
        assert "error: " in err.splitlines()[-1], err


def test_check_and_preview_print_one_json_document(tmp_path: Path) -> None:
    bad = write(tmp_path, "kafka:\n  topcs: [a]\nmapping:\n  rules: nowhere.yaml\n")
    results = run_all(
        {
            "bad": ["check", "--config", str(bad), "--json"],
            "good": ["check", "--config", "examples/config.yaml", "--json"],
            "preview": ["preview", "--config", "examples/config.yaml", "--event", EVENT, "--json"],
        }
    )
    code, out, err = results["bad"]
    assert code == 2 and err == "", err
    assert json.loads(out) == {
        "config": str(bad),
        "ok": False,
        "problems": [
            f"{bad}:2: kafka.topcs: no such key (unknown keys are errors; check the spelling)",
            f"{bad}:4: mapping.rules: expected an existing file, 'nowhere.yaml' not found",
        ],
    }
    code, out, _ = results["good"]
    assert code == 0 and json.loads(out)["ok"] is True
    code, out, _ = results["preview"]
    report = json.loads(out)
    assert code == 0 and report["outcome"] == "update"
    assert report["rules"] == ["loan-funded", "loan-funded-details"]
    assert report["identity"] == {"type": "mbox3rdPartyId", "value": "CUST-100234"}
    assert report["requests"][0]["method"] == "GET"


def test_preview_json_of_an_event_that_would_be_dead_lettered_exits_1(tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text('{"channel": "LOAN"}', encoding="utf-8")
    code, out, _ = run_all(
        {"p": ["preview", "--config", "examples/config.yaml", "--event", str(event), "--json"]}
    )["p"]
    report = json.loads(out)
    assert code == 1
    assert (report["outcome"], report["stage"], report["reason"]) == (
        "dead-letter",
        "map",
        "invalid_event",
    )


def test_check_reports_rules_errors_together_with_field_errors(tmp_path: Path) -> None:
    """The rules used to be read only once every field error was fixed."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "identity:\n  - mbox3rdPartyId: customer.thirdPartyId\nrules:\n"
        "  - name: calls\n    attributes: {a: payload.resaon}\n"
    )
    config = write(tmp_path, "mapping: {rules: rules.yaml}\nquota: {limit: 0}\n")
    code, _, err = run_all({"check": ["check", "--config", str(config)]})["check"]
    assert code == 2, err
    assert f"{config}:2: quota.limit:" in err
    assert "payload.resaon" in err and str(rules) in err
