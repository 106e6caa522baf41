from pathlib import Path

import pytest

from consumer.config import load_settings
from consumer.errors import ConfigError
from tests.conftest import ROOT

pytestmark = pytest.mark.unit
EXAMPLE = ROOT / "examples" / "config.yaml"


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path, env or {})
    return info.value.problems


def test_the_example_config_loads_with_its_documented_defaults() -> None:
    s = load_settings(EXAMPLE, {})
    assert s.kafka.topics == ["offline-transactions"] and s.target.max_in_flight == 64
    assert s.target.url() == "https://acme.tt.omtrdc.net"
    assert s.ledger_topic() == "profile-consumer.quota"
    assert s.quota.burst_allowance() == 10_000


def test_env_overrides_any_key_and_librdkafka_names(tmp_path: Path) -> None:
    s = load_settings(
        EXAMPLE,
        {
            "PROFILE_CONSUMER__KAFKA__BOOTSTRAP_SERVERS": "b:9093",
            "PROFILE_CONSUMER__KAFKA__TOPICS": "[a, b]",
            "PROFILE_CONSUMER__KAFKA__CONFIG__SASL_PASSWORD": "0123",
            "PROFILE_CONSUMER__TARGET__TOKEN": "0123",
            "PROFILE_CONSUMER__QUOTA__LIMIT": "300",
        },
    )
    assert s.kafka.bootstrap_servers == "b:9093" and s.kafka.topics == ["a", "b"]
    assert s.kafka.config["sasl.password"] == "0123"  # stays a string
    assert s.target.token is not None and s.target.token.get_secret_value() == "0123"
    assert s.quota.limit == 300


def test_every_problem_is_listed_with_file_key_and_expectation(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("kafka:\n  topcs: [x]\ntarget:\n  max_in_flight: 0\n  base_url: ftp://x\n")
    found = problems(path)
    assert any(p.startswith(f"{path}:2: kafka.topcs: no such key") for p in found)
    assert any(p.startswith(f"{path}:4: target.max_in_flight:") for p in found)
    assert any(p.startswith(f"{path}:5: target.base_url:") for p in found)


def test_missing_files_named_in_the_config_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("mapping:\n  rules: nowhere.yaml\n")
    assert problems(path) == [
        f"{path}:2: mapping.rules: expected an existing file, 'nowhere.yaml' not found"
    ]


def test_a_token_value_never_appears_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("target:\n  token: [not, a, string]\n")
    assert all("not" not in p.split(":", 2)[-1] or "token" in p for p in problems(path))


def test_dlq_topic_cannot_be_a_source_topic(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("kafka:\n  topics: [a]\n  dlq_topic: a\n")
    assert any("dlq_topic" in p for p in problems(path))


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("kafka: [\n")
    assert problems(path)[0].startswith(f"{path}: not valid YAML")


def test_field_errors_cross_checks_and_files_are_reported_in_one_run(tmp_path: Path) -> None:
    """Cross-checks and file checks used to appear only once every field error was fixed."""
    path = tmp_path / "c.yaml"
    path.write_text(
        "kafka:\n  bootstrap: x\n  topics: [a, b]\n  dlq_topic: b\n"
        "  config: {sesion.timeout.ms: 1}\n"
        "target:\n  max_in_flight: zero\nmapping:\n  rules: nowhere.yaml\n"
    )
    assert problems(path) == [
        f"{path}:2: kafka.bootstrap: no such key (unknown keys are errors; check the spelling)",
        f"{path}:7: target.max_in_flight: Input should be a valid integer, unable to parse "
        "string as an integer (got 'zero')",
        f"{path}:4: kafka.dlq_topic must not be one of kafka.topics (it would loop)",
        f"{path}:9: mapping.rules: expected an existing file, 'nowhere.yaml' not found",
        f"{path}:5: kafka.config.sesion.timeout.ms: No such configuration property: "
        '"sesion.timeout.ms"',
    ]


def test_a_key_set_by_the_environment_has_no_line_number(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("quota:\n  limit: 5\n")
    found = problems(path, {"PROFILE_CONSUMER__QUOTA__LIMIT": "lots"})
    assert found[0].startswith(f"{path}: quota.limit: Input should be a valid integer")


def test_a_list_item_is_located_at_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("kafka:\n  topics:\n    - a\n    - ''\n")
    assert problems(path)[0].startswith(f"{path}:4: kafka.topics.1:")


def test_duplicate_keys_do_not_hide_the_other_problems(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("quota: {limit: 1}\nquota: {limit: 0}\n")
    found = problems(path)
    assert found[0] == f"{path}: line 2: duplicate key 'quota' (each key may appear once)"
    assert found[1].startswith(f"{path}:2: quota.limit: Input should be greater than")


def test_create_topics_defaults_to_true_and_takes_a_bool(tmp_path: Path) -> None:
    assert load_settings(EXAMPLE, {}).kafka.create_topics is True
    path = tmp_path / "c.yaml"
    path.write_text("kafka:\n  create_topics: perhaps\n")
    assert problems(path)[0].startswith(f"{path}:2: kafka.create_topics: Input should be a valid")
    off = load_settings(EXAMPLE, {"PROFILE_CONSUMER__KAFKA__CREATE_TOPICS": "false"})
    assert off.kafka.create_topics is False
