"""examples/strimzi/: valid Strimzi resources that grant exactly what the code needs.

The KafkaTopic and KafkaUser documents are validated with jsonschema against the CRD schemas
vendored (hand-written from the Strimzi docs, see tests/fixtures/strimzi/README.md). The topics
and ACLs are checked against the names the code derives from the chart's default config: the
quota ledger's compaction settings come from consumer/quota/log.py itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from consumer.dlq.kafka_io import REPLAY_SUFFIX
from consumer.quota.log import topic_config

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "strimzi"
SCHEMAS = ROOT / "tests" / "fixtures" / "strimzi"
VALUES = yaml.safe_load((ROOT / "helm" / "profile-consumer" / "values.yaml").read_text())
KAFKA = VALUES["config"]["kafka"]
GROUP = KAFKA["group_id"]
LEDGER = f"{GROUP}.quota"
REPLAY = GROUP + REPLAY_SUFFIX
# The bulk transport's topics: its two budget ledgers (window, ledger topic), manifest, carry.
BULK_LEDGERS = {f"{LEDGER}.bulk-calls": 60.0, f"{LEDGER}.bulk-rows": 86_400.0}
BULK_STATE = {f"{GROUP}.bulk", f"{GROUP}.bulk-carry"}


def load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text(encoding="utf-8")) if d]


def schema(kind: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(
        (SCHEMAS / f"{kind.lower()}.v1beta2.yaml").read_text(encoding="utf-8")
    )
    return data


def validate(doc: dict[str, Any]) -> None:
    jsonschema.validate(doc, schema(doc["kind"]), cls=jsonschema.Draft7Validator)


def topic_name(doc: dict[str, Any]) -> str:
    return str(doc["spec"].get("topicName", doc["metadata"]["name"]))


def granted(user: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for acl in user["spec"]["authorization"]["acls"]:
        key = (acl["resource"]["type"], acl["resource"]["name"])
        out.setdefault(key, set()).update(acl.get("operations", [acl.get("operation")]))
    return out


@pytest.mark.parametrize("name", ["kafkatopics.yaml", "kafkauser.yaml"])
def test_examples_match_the_crd_schemas(name: str) -> None:
    docs = load(name)
    assert docs
    for doc in docs:
        validate(doc)


@pytest.mark.parametrize(
    "broken",
    [
        {"spec": {"partitions": 0}},
        {"spec": {"partitons": 1}},
        {"metadata": {"name": "x", "labels": {}}},
    ],
)
def test_the_schema_refuses_broken_topics(broken: dict[str, Any]) -> None:
    doc = load("kafkatopics.yaml")[0]
    for key, value in broken.items():
        doc[key] = {**doc[key], **value} if key == "spec" else value
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)


def test_the_schema_refuses_an_unknown_acl_operation() -> None:
    user = load("kafkauser.yaml")[0]
    user["spec"]["authorization"]["acls"][0]["operations"] = ["Consume"]
    with pytest.raises(jsonschema.ValidationError):
        validate(user)


def test_topics_are_the_ones_the_code_uses() -> None:
    topics = {topic_name(d): d for d in load("kafkatopics.yaml")}
    assert set(topics) == {KAFKA["dlq_topic"], LEDGER, REPLAY, *BULK_LEDGERS, *BULK_STATE}
    for name, window in BULK_LEDGERS.items():
        spec = topics[name]["spec"]
        assert spec["partitions"] == 1
        assert {k: str(v) for k, v in spec["config"].items() if k in topic_config(window)} == (
            topic_config(window)
        )
    for name in BULK_STATE:
        assert topics[name]["spec"]["partitions"] == 1
        assert "compact" in topics[name]["spec"]["config"]["cleanup.policy"]
    ledger = topics[LEDGER]["spec"]
    assert ledger["partitions"] == 1
    expected = topic_config(VALUES["config"]["quota"]["window_seconds"])
    assert {k: str(v) for k, v in ledger["config"].items() if k in expected} == expected
    assert topics[REPLAY]["spec"]["partitions"] == 1
    assert topics[REPLAY]["spec"]["config"]["cleanup.policy"] == "compact"


def test_user_is_granted_what_the_consumer_and_tools_need() -> None:
    acls = granted(load("kafkauser.yaml")[0])
    need = {("group", GROUP): {"Read"}, ("group", REPLAY): {"Read"}}
    for topic in KAFKA["topics"]:
        need[("topic", topic)] = {"Read", "Describe", "Write"}
    for topic in (KAFKA["dlq_topic"], LEDGER, REPLAY, *BULK_LEDGERS, *BULK_STATE):
        need[("topic", topic)] = {"Read", "Write", "Describe"}
    for resource, operations in need.items():
        assert operations <= acls.get(resource, set()), resource
    assert set(acls) == set(need), "grants beyond what the code uses"
    assert not any("All" in ops for ops in acls.values())
