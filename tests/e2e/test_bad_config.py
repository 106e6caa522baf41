"""Reliability scenario, bad configuration: `check` and `run` refuse every broken config or
rules file at start-up with exit code 2 and a message naming the key (for rules: the file, the
rule and the key), never with a traceback.

Both commands run as subprocesses, side by side per case (each start costs ~1 s of imports).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from consumer import cli, logs
from tests.conftest import ROOT
from tests.e2e.test_cli import CLI

pytestmark = pytest.mark.e2e

RULES_HEAD = "identity:\n  - mbox3rdPartyId: customer.thirdPartyId\nrules:\n  - name: calls\n"
GOOD_RULE = RULES_HEAD + "    attributes: {a: payload.reason}\n"


@dataclass(frozen=True)
class Case:
    id: str
    config: str | bytes  # the config file's text; {dir} is the case's folder
    expect: tuple[str, ...]  # substrings of stderr ({config} and {dir} expanded)
    rules: str | None = GOOD_RULE  # written as rules.yaml next to the config
    env: dict[str, str] = field(default_factory=dict)
    forbid: tuple[str, ...] = ()  # must not appear anywhere (secrets)
    config_name: str = "config.yaml"


def rules_case(id: str, rules: str, *expect: str) -> Case:
    """A valid config whose rules file is broken: the message names file, rule and key."""
    return Case(id, "mapping: {rules: rules.yaml}\n", ("{dir}/rules.yaml", *expect), rules=rules)


def key_case(id: str, config: str, key: str, line: int | None = 1, **kw: object) -> Case:
    """`FILE:LINE: key:` (`FILE: key:` for a key the environment sets: it has no line)."""
    where = f"{{config}}:{line}" if line is not None else "{config}"
    return Case(id, config, (f"{where}: {key}:",), **kw)  # type: ignore[arg-type]


CASES = [
    # --- the files the config names ----------------------------------------------------------
    Case(
        "config-file-missing",
        "",
        ("{dir}/absent.yaml: cannot read the file",),
        config_name="absent.yaml",
    ),
    key_case("rules-file-missing", "mapping: {rules: nowhere.yaml}\n", "mapping.rules"),
    key_case(
        "writer-schema-missing",
        "avro: {writer_schema: nowhere.avsc}\nmapping: {rules: rules.yaml}\n",
        "avro.writer_schema",
    ),
    Case(
        "writer-schema-not-avro",
        "avro: {writer_schema: rules.yaml}\nmapping: {rules: rules.yaml}\n",
        ("{dir}/rules.yaml", "expected a valid Avro schema"),
    ),
    key_case("ca-bundle-missing", "target: {verify_tls: nowhere.pem}\n", "target.verify_tls"),
    # --- YAML itself -------------------------------------------------------------------------
    Case("invalid-yaml", "kafka: [unclosed\n", ("{config}: not valid YAML", "line 2")),
    Case(
        "duplicate-section",
        "kafka: {group_id: a}\nkafka: {group_id: b}\n",
        ("{config}: line 2: duplicate key 'kafka'",),
    ),
    Case("not-utf8", b'kafka: {group_id: "\xff"}\n', ("{config}: not UTF-8",)),
    Case("top-level-list", "- kafka\n", ("{config}: expected a mapping of sections",)),
    # --- unknown keys and wrong types --------------------------------------------------------
    key_case("unknown-section", "kafak: {group_id: a}\n", "kafak"),
    key_case("unknown-key", "target: {tokn: x}\n", "target.tokn"),
    key_case("section-not-mapping", "kafka: 5\n", "kafka"),
    key_case("wrong-type-int", "target: {max_in_flight: many}\n", "target.max_in_flight"),
    key_case("wrong-type-list", "kafka: {topics: {a: 1}}\n", "kafka.topics"),
    key_case("wrong-type-bool", "target: {verify_tls: maybe}\n", "target.verify_tls"),
    key_case(
        "librdkafka-value-not-scalar",
        "kafka: {config: {session.timeout.ms: [1]}}\n",
        "kafka.config.session.timeout.ms",
    ),
    key_case(
        "librdkafka-unknown-property",
        "kafka: {config: {sesion.timeout.ms: 3000}}\n",
        "kafka.config.sesion.timeout.ms",
    ),
    key_case(
        "librdkafka-bad-value",
        "kafka: {config: {security.protocol: TLS}}\n",
        "kafka.config.security.protocol",
    ),
    key_case(
        "librdkafka-bad-bool",
        "kafka: {config: {enable.partition.eof: perhaps}}\n",
        "kafka.config.enable.partition.eof",
    ),
    key_case(
        "token-wrong-type",
        "target: {token: [s3cret-t0ken]}\n",
        "target.token",
        forbid=("s3cret-t0ken",),
    ),
    key_case(
        "env-override-wrong-type",
        "",
        "quota.limit",
        line=None,
        env={"PROFILE_CONSUMER__QUOTA__LIMIT": "lots"},
    ),
    # --- URLs --------------------------------------------------------------------------------
    key_case("base-url-scheme", "target: {base_url: 'ftp://target.example'}\n", "target.base_url"),
    key_case("base-url-query", "target: {base_url: 'https://t.example/?a=b'}\n", "target.base_url"),
    key_case("base-url-not-a-url", "target: {base_url: 'acme.tt.omtrdc.net'}\n", "target.base_url"),
    key_case("base-url-userinfo", "target: {base_url: 'https://u:p@t.x'}\n", "target.base_url"),
    key_case(
        "registry-url-scheme",
        "avro: {schema_registry_url: 'ftp://u:pw-hunter2@reg'}\nmapping: {rules: rules.yaml}\n",
        "avro.schema_registry_url",
        forbid=("pw-hunter2",),
    ),
    key_case(
        "registry-url-no-scheme",
        "avro: {schema_registry_url: 'registry:8081'}\n",
        "avro.schema_registry_url",
    ),
    key_case("client-code-path", "target: {client_code: 'acme/../x'}\n", "target.client_code"),
    # --- limits ------------------------------------------------------------------------------
    key_case("negative-quota", "quota: {limit: -5}\n", "quota.limit"),
    key_case("zero-buffer", "pipeline: {max_buffered_events: 0}\n", "pipeline.max_buffered_events"),
    key_case("negative-timeout", "target: {timeout_seconds: -1}\n", "target.timeout_seconds"),
    key_case("infinite-retry", "target: {retry_max_seconds: .inf}\n", "target.retry_max_seconds"),
    key_case("nan-window", "quota: {window_seconds: .nan}\n", "quota.window_seconds"),
    key_case("zero-poll-batch", "kafka: {poll_batch_size: 0}\n", "kafka.poll_batch_size"),
    key_case(
        "negative-coalesce", "target: {coalesce_window_ms: -1}\n", "target.coalesce_window_ms"
    ),
    key_case("port-out-of-range", "metrics: {port: 70000}\n", "metrics.port"),
    key_case("zero-burst", "quota: {burst: 0}\n", "quota.burst"),
    # --- enums -------------------------------------------------------------------------------
    key_case("bad-pacing", "quota: {pacing: fast}\n", "quota.pacing"),
    key_case("bad-log-level", "logging: {level: TRACE}\n", "logging.level"),
    # --- topics ------------------------------------------------------------------------------
    key_case("no-topics", "kafka: {topics: []}\n", "kafka.topics"),
    key_case("empty-topic-name", "kafka: {topics: ['']}\n", "kafka.topics.0"),
    key_case("empty-dlq-topic", "kafka: {dlq_topic: ''}\n", "kafka.dlq_topic"),
    key_case("empty-bootstrap", "kafka: {bootstrap_servers: ''}\n", "kafka.bootstrap_servers"),
    Case(
        "dlq-is-a-source-topic",
        "kafka: {topics: [a, b], dlq_topic: b}\n",
        ("{config}:1: kafka.dlq_topic must not be one of kafka.topics",),
    ),
    # --- rules files: file, rule and key -----------------------------------------------------
    rules_case(
        "rules-bad-jmespath",
        RULES_HEAD + '    when: "channel == "\n    attributes: {a: payload.reason}\n',
        "rules[0] (calls): when:",
        "syntax",
    ),
    rules_case(
        "rules-unknown-function",
        RULES_HEAD + "    attributes: {a: frob(payload.reason)}\n",
        "rules[0] (calls): attributes.a:",
        "unknown function frob()",
    ),
    rules_case(
        "rules-wrong-arity",
        RULES_HEAD + "    attributes: {a: \"upper(channel, 'x')\"}\n",
        "rules[0] (calls): attributes.a:",
        "upper()",
    ),
    rules_case(
        "rules-unknown-key",
        RULES_HEAD + "    atributes: {a: payload.reason}\n",
        "rules[0] (calls): atributes:",
    ),
    rules_case(
        "rules-wrong-type",
        RULES_HEAD + "    attributes: [payload.reason]\n",
        "rules[0] (calls): attributes:",
    ),
    rules_case(
        "rules-unknown-field",
        RULES_HEAD + "    attributes: {a: payload.resaon}\n",
        "rules[0] (calls): attributes.a:",
        "payload.resaon",
    ),
    rules_case(
        "rules-bad-attribute-name",
        RULES_HEAD + "    attributes: {'a b': channel}\n",
        "rules[0] (calls): attributes.a b:",
    ),
    rules_case(
        "rules-duplicate-name",
        GOOD_RULE + "  - name: calls\n    attributes: {b: channel}\n",
        "rules[1] (calls): name:",
    ),
    rules_case(
        "rules-bad-identity-type",
        GOOD_RULE.replace("mbox3rdPartyId", "mboxFoo"),
        "identity[0]: mboxFoo:",
    ),
    rules_case("rules-invalid-yaml", RULES_HEAD + "    attributes: {a: [x\n", "YAML"),
    rules_case("rules-empty", "", "expected a mapping with the keys identity and rules"),
]


def _write(case: Case, tmp_path: Path) -> Path:
    if case.rules is not None:
        (tmp_path / "rules.yaml").write_text(case.rules, encoding="utf-8")
    config = tmp_path / case.config_name
    if case.config_name == "config.yaml":
        data = case.config if isinstance(case.config, bytes) else case.config.encode()
        config.write_bytes(data)
    return config


def _run_both(case: Case, tmp_path: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    config = _write(case, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROFILE_CONSUMER__")}
    env.update(case.env)
    procs = {
        command: subprocess.Popen(  # our own console script
            [CLI, command, "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for command in ("check", "run")
    }
    results = {}
    for command, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results[command] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


# One case per kind runs as real subprocesses; the whole table also runs through cli.main in
# this process (the same code from argv on, without ~1 s of interpreter start per command).
SUBPROCESS = {
    "config-file-missing",
    "rules-file-missing",
    "invalid-yaml",
    "not-utf8",
    "unknown-key",
    "wrong-type-int",
    "librdkafka-unknown-property",
    "token-wrong-type",
    "registry-url-scheme",
    "base-url-scheme",
    "negative-quota",
    "infinite-retry",
    "bad-pacing",
    "no-topics",
    "dlq-is-a-source-topic",
    "rules-bad-jmespath",
    "rules-unknown-function",
}


def _check_refusal(case: Case, tmp_path: Path, command: str, code: int, out: str, err: str) -> None:
    config = tmp_path / case.config_name
    shown = out + err
    assert code == 2, f"{command}: exit {code}\n{shown}"
    assert "Traceback" not in shown, f"{command}:\n{shown}"
    assert err.startswith(f"profile-consumer {command}: invalid configuration"), err
    for text in case.expect:
        wanted = text.format(config=config, dir=tmp_path)
        assert wanted in err, f"{command}: {wanted!r} not in:\n{err}"
    for secret in case.forbid:
        assert secret not in shown, f"{command} echoed a secret"


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c.id in SUBPROCESS],
    ids=[c.id for c in CASES if c.id in SUBPROCESS],
)
def test_cli_refuses_a_broken_config_with_exit_2_naming_the_key(case: Case, tmp_path: Path) -> None:
    for command, result in _run_both(case, tmp_path).items():
        _check_refusal(case, tmp_path, command, result.returncode, result.stdout, result.stderr)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_broken_config_is_refused_by_check_and_run(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(case, tmp_path)
    for name in [k for k in os.environ if k.startswith("PROFILE_CONSUMER__")]:
        monkeypatch.delenv(name)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(ROOT)
    # `run` configures JSON logging on the root logger before building the stages.
    monkeypatch.setattr(logs, "configure", lambda *args: None)
    for command in ("check", "run"):
        try:
            code = cli.main([command, "--config", str(tmp_path / case.config_name)])
        except Exception as exc:  # the point: nothing may escape main
            pytest.fail(f"{command}: {type(exc).__name__} escaped: {exc}")
        out, err = capsys.readouterr()
        _check_refusal(case, tmp_path, command, code, out, err)


def test_run_reports_a_librdkafka_conflict_as_a_config_error(tmp_path: Path) -> None:
    """Conflicts between properties are judged by librdkafka when `run` builds its clients:
    `check` validates each property on its own, so that a ConfigMap whose SASL credentials a
    Secret adds at run time passes. Run without them: still exit 2 naming the key."""
    config = (
        "kafka:\n  bootstrap_servers: '127.0.0.1:1'\n  config:\n"
        "    security.protocol: SASL_PLAINTEXT\n    sasl.mechanism: SCRAM-SHA-512\n"
        "metrics: {port: 0}\n"
    )
    results = _run_both(Case("sasl-without-credentials", config, ()), tmp_path)
    assert results["check"].returncode == 0, results["check"].stderr
    result = results["run"]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{tmp_path}/config.yaml: kafka.config: " in result.stderr
    assert "sasl.username and sasl.password must be set" in result.stderr
