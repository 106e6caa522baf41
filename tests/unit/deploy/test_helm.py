"""The Helm chart, rendered in-process by Helm's own engine (helm-python-sdk).

Every case (the default values and each `ci/*-values.yaml`) is linted with strict on, rendered,
and its built-in manifests validated by kubernetes-validate (strict) for 1.29 and the newest
version it knows. Custom resources are checked for the fields their operators require; the
ConfigMap's config is loaded by the consumer's own settings loader.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kv_utils

from consumer.config import Settings, load_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "helm" / "profile-consumer"
CI_FILES = sorted(CHART.glob("ci/*-values.yaml"))
CASES: dict[str, dict[str, Any]] = {"default": {}} | {
    p.name.removesuffix("-values.yaml"): yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    for p in CI_FILES
}
RELEASE = "pc"
NAMESPACE = "consumers"
FULLNAME = f"{RELEASE}-profile-consumer"
K8S_VERSIONS = ["1.29", kv_utils.latest_version()]
CUSTOM_API_GROUPS = ("monitoring.coreos.com/", "keda.sh/")
CONFIG_DIR = "/etc/profile-consumer"
# Environment variables that carry secrets; they must come from a Secret, never a literal.
SECRET_ENV = {
    "PROFILE_CONSUMER__TARGET__TOKEN",
    "PROFILE_CONSUMER__TARGET__PROXY",
    "PROFILE_CONSUMER__KAFKA__CONFIG__SASL_USERNAME",
    "PROFILE_CONSUMER__KAFKA__CONFIG__SASL_PASSWORD",
    "PROFILE_CONSUMER__KAFKA__CONFIG__SSL_KEY_PASSWORD",
    "PROFILE_CONSUMER__KAFKA__CONFIG__SSL_CA_PEM",
    "PROFILE_CONSUMER__KAFKA__CONFIG__SSL_CERTIFICATE_PEM",
    "PROFILE_CONSUMER__KAFKA__CONFIG__SSL_KEY_PEM",
}


# --- helpers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render_raw(chart: helm.Chart, values: dict[str, Any]) -> dict[str, str]:
    return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def render(chart: helm.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object the chart renders (NOTES.txt left out)."""
    docs = []
    for path, text in render_raw(chart, values).items():
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


@pytest.fixture(scope="module")
def rendered(chart: helm.Chart) -> dict[str, list[dict[str, Any]]]:
    return {name: render(chart, values) for name, values in CASES.items()}


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def main_configmap(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "ConfigMap", FULLNAME)


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = pod_spec(docs)["containers"]
    assert len(containers) == 1
    return containers[0]


def rendered_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(main_configmap(docs)["data"]["config.yaml"])


def merged_values(chart: helm.Chart, case: str) -> dict[str, Any]:
    return chart.merge_values(CASES[case])


def secret_values(values: dict[str, Any]) -> list[str]:
    return [v for v in values.get("secrets", {}).get("values", {}).values() if v]


def profile_consumer_cli() -> Path | None:
    found = Path(sys.executable).parent / "profile-consumer"
    if found.exists():
        return found
    which = shutil.which("profile-consumer")
    return Path(which) if which else None


# --- the cases themselves -------------------------------------------------------------------


def test_one_ci_values_file_per_opt_in_feature() -> None:
    expected = {
        "servicemonitor", "prometheusrule", "dashboard", "pdb", "hpa", "keda",
        "networkpolicy", "existing-secret", "created-secret", "kafka-sasl", "strimzi-scram",
    }  # fmt: skip
    assert expected <= set(CASES), f"missing ci values: {sorted(expected - set(CASES))}"


@pytest.mark.parametrize("kube_version", [None, "v1.29.0"])
@pytest.mark.parametrize("case", CASES)
def test_lint_strict(case: str, kube_version: str | None) -> None:
    report = helm.lint(
        CHART, CASES[case], strict=True, namespace=NAMESPACE, kube_version=kube_version
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("case", CASES)
def test_builtin_manifests_are_valid_kubernetes(
    rendered: dict[str, list[dict[str, Any]]], case: str, version: str
) -> None:
    builtin = [d for d in rendered[case] if not d["apiVersion"].startswith(CUSTOM_API_GROUPS)]
    assert builtin
    for doc in builtin:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{case}: {doc['kind']} invalid for {version} at {where}: {exc.message}")


def test_kubernetes_validation_is_strict() -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"replicaz": 1, "selector": {}, "template": {"spec": {"containers": []}}},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.29", strict=True)


@pytest.mark.parametrize("case", CASES)
def test_every_object_is_labelled_and_namespaced(
    rendered: dict[str, list[dict[str, Any]]], case: str
) -> None:
    for doc in rendered[case]:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "profile-consumer"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert (
            labels["helm.sh/chart"]
            == "profile-consumer-" + yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
        )
        assert doc["metadata"]["namespace"]


def test_default_renders_only_the_core_objects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The PodDisruptionBudget is on by default: the default runs two replicas."""
    assert kinds(rendered["default"]) == [
        "ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceAccount",
    ]  # fmt: skip


# --- Deployment ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_security_defaults(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    spec = pod_spec(rendered[case])
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = container(rendered[case])["securityContext"]
    assert ctx["runAsNonRoot"] is True
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert "add" not in ctx["capabilities"]
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    for sa in (d for d in rendered[case] if d["kind"] == "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False


@pytest.mark.parametrize("case", CASES)
def test_rollout_probes_and_ports(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    docs = rendered[case]
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    c = container(docs)
    assert c["args"] == ["run", "--config", f"{CONFIG_DIR}/config.yaml"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http-metrics": rendered_config(docs)["metrics"]["port"]}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    assert c["startupProbe"]["httpGet"]["port"] == "http-metrics"
    service = one(docs, "Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http-metrics"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts[CONFIG_DIR]["readOnly"] is True
    assert "/tmp" in mounts  # noqa: S108 - the one writable path, an emptyDir
    spread = pod_spec(docs)["topologySpreadConstraints"]
    assert {t["topologyKey"] for t in spread} >= {"kubernetes.io/hostname"}


@pytest.mark.parametrize("case", CASES)
def test_checksum_annotation_tracks_the_configmap(chart: helm.Chart, case: str) -> None:
    raw = render_raw(chart, CASES[case])
    configmap_text = raw["profile-consumer/templates/configmap.yaml"]
    deployment = yaml.safe_load(raw["profile-consumer/templates/deployment.yaml"])
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/config"] == hashlib.sha256(configmap_text.encode()).hexdigest()


def test_checksum_changes_with_config_and_mapping(chart: helm.Chart) -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = one(render(chart, values), "Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    base = checksum({})
    assert checksum({"config": {"quota": {"limit": 5}}}) != base
    assert checksum({"mapping": {"rules": "rules: []\n"}}) != base
    assert checksum({"replicaCount": 5}) == base


@pytest.mark.parametrize("case", CASES)
def test_grace_period_exceeds_drain_timeout(
    rendered: dict[str, list[dict[str, Any]]], case: str
) -> None:
    drain = rendered_config(rendered[case])["pipeline"]["shutdown_timeout_seconds"]
    assert pod_spec(rendered[case])["terminationGracePeriodSeconds"] > drain


def test_grace_period_follows_drain_timeout_and_refuses_too_short(chart: helm.Chart) -> None:
    long_drain = {"config": {"pipeline": {"shutdown_timeout_seconds": 90.5}}}
    assert pod_spec(render(chart, long_drain))["terminationGracePeriodSeconds"] == 101
    with pytest.raises(helm.HelmRenderError, match="terminationGracePeriodSeconds"):
        render(chart, long_drain | {"terminationGracePeriodSeconds": 60})


def test_replicas_left_to_the_autoscaler(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert one(rendered["default"], "Deployment")["spec"]["replicas"] == 2
    for case in ("hpa", "keda"):
        assert "replicas" not in one(rendered[case], "Deployment")["spec"]


def test_hpa_and_keda_are_exclusive(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match="exclusive"):
        render(chart, {"autoscaling": {"enabled": True}, "keda": {"enabled": True}})


# --- config, mapping and secrets -----------------------------------------------------------


def check_configmap(data: dict[str, str], tmp_path: Path) -> None:
    """Lay the ConfigMap out as the pod sees it, in a temp dir, and validate it as the consumer
    does: load_settings, then `profile-consumer check` (mapping rules included)."""
    config = yaml.safe_load(data["config.yaml"])
    assert config["mapping"]["rules"] == f"{CONFIG_DIR}/mapping.yaml"
    (tmp_path / "mapping.yaml").write_text(data["mapping.yaml"], encoding="utf-8")
    for key, content in data.items():
        if key.startswith("schema-"):
            (tmp_path / "schemas").mkdir(exist_ok=True)
            (tmp_path / "schemas" / key.removeprefix("schema-")).write_text(content)
    config["mapping"]["rules"] = str(tmp_path / "mapping.yaml")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")

    settings = load_settings(path, environ={})
    assert settings.target.token is None

    cli = profile_consumer_cli()
    assert cli is not None, "the profile-consumer console script is not installed (make install)"
    result = subprocess.run(  # noqa: S603 - our own console script
        [str(cli), "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PATH": str(cli.parent)},
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("case", CASES)
def test_configmap_config_passes_check(
    rendered: dict[str, list[dict[str, Any]]],
    case: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The repository's schemas/ stands in for the copy packaged in the image.
    monkeypatch.chdir(ROOT)
    check_configmap(main_configmap(rendered[case])["data"], tmp_path)


def test_example_rules_given_with_set_file_pass_check(
    chart: helm.Chart, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--set-file mapping.rules=examples/mapping.yaml`, as docs/deploy.md suggests."""
    monkeypatch.chdir(ROOT)
    text = (ROOT / "examples" / "mapping.yaml").read_text(encoding="utf-8")
    data = main_configmap(render(chart, {"mapping": {"rules": text}}))["data"]
    assert yaml.safe_load(data["mapping.yaml"]) == yaml.safe_load(text)
    check_configmap(data, tmp_path)


def test_default_mapping_rules_are_the_reference_rules(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """The chart carries the four reference rules, the same as the start of examples/."""
    rules = yaml.safe_load(main_configmap(rendered["default"])["data"]["mapping.yaml"])
    names = [r["name"] for r in rules["rules"]]
    assert names == ["call-centre", "loan-funded", "big-basket", "kiosk"]
    example = yaml.safe_load((ROOT / "examples" / "mapping.yaml").read_text(encoding="utf-8"))
    assert rules["identity"] == example["identity"]
    assert rules["rules"] == example["rules"][: len(names)]


def test_large_numbers_reach_the_config_exactly(chart: helm.Chart) -> None:
    docs = render(
        chart, {"config": {"quota": {"limit": 123_456_789_012, "window_seconds": 3600.5}}}
    )
    quota = rendered_config(docs)["quota"]
    assert quota["limit"] == 123_456_789_012 and quota["window_seconds"] == 3600.5


@pytest.mark.parametrize("case", CASES)
def test_secrets_never_reach_a_configmap(
    chart: helm.Chart, rendered: dict[str, list[dict[str, Any]]], case: str
) -> None:
    docs = rendered[case]
    secrets = secret_values(merged_values(chart, case))
    configmaps = json.dumps([d for d in docs if d["kind"] == "ConfigMap"])
    for secret in secrets:
        for line in secret.strip().splitlines():
            assert line not in configmaps
    config = rendered_config(docs)
    assert "token" not in config.get("target", {})
    assert not [k for k in config["kafka"].get("config", {}) if re.search("password|key.pem", k)]
    # Secret settings are env variables read from a Secret, never literals.
    # Keys of the chart's Secret are each optional; a Secret named in kafka.secrets is required.
    named = {e["name"] for e in merged_values(chart, case)["kafka"]["secrets"]}
    for env in container(docs).get("env", []):
        if env["name"] in SECRET_ENV:
            assert set(env) == {"name", "valueFrom"}
            ref = env["valueFrom"]["secretKeyRef"]
            assert ref["optional"] is (ref["name"] not in named)
    text = json.dumps([d for d in docs if d["kind"] != "Secret"])
    for secret in secrets:
        assert secret not in text


def test_created_secret_holds_the_values_and_feeds_the_env(
    chart: helm.Chart, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    for case in ("created-secret", "kafka-sasl", "kafka-mtls"):
        values = merged_values(chart, case)
        docs = rendered[case]
        secret = one(docs, "Secret", FULLNAME)
        decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        keys = values["secrets"]["keys"]
        expected = {keys[s]: v for s, v in values["secrets"]["values"].items() if v}
        assert decoded == expected
        refs = {
            e["name"]: e["valueFrom"]["secretKeyRef"]
            for e in container(docs)["env"]
            if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
        }
        assert set(refs) == SECRET_ENV
        assert {r["name"] for r in refs.values()} == {FULLNAME}
        annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        assert "checksum/secret" in annotations


def test_existing_secret_is_referenced_not_created(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["existing-secret"]
    assert "Secret" not in kinds(docs)
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container(docs)["env"]
        if e["name"] in SECRET_ENV
    }
    assert refs["PROFILE_CONSUMER__TARGET__TOKEN"]["name"] == "profile-consumer-credentials"
    assert refs["PROFILE_CONSUMER__TARGET__TOKEN"]["key"] == "token"
    assert "PROFILE_CONSUMER__TARGET__TOKEN" not in {
        e["name"] for e in container(rendered["default"])["env"]
    }


def test_secret_env_names_reach_the_right_settings(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """The env names the chart uses are the ones consumer.config maps to each setting."""
    (tmp_path / "mapping.yaml").write_text("rules: []\n")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"mapping": {"rules": str(tmp_path / "mapping.yaml")}}))
    names = [e["name"] for e in container(rendered["kafka-mtls"])["env"] if e["name"] in SECRET_ENV]
    environ = {name: f"v-{name}" for name in names}
    proxy_url = "http://user:v-secret@proxy.corp:3128"
    environ["PROFILE_CONSUMER__TARGET__PROXY"] = proxy_url  # validated as a proxy URL
    settings = load_settings(path, environ=environ)
    assert settings.target.token is not None
    assert settings.target.token.get_secret_value() == "v-PROFILE_CONSUMER__TARGET__TOKEN"
    assert settings.target.proxy is not None
    assert settings.target.proxy.get_secret_value() == proxy_url
    assert settings.kafka.config == {
        "sasl.username": "v-PROFILE_CONSUMER__KAFKA__CONFIG__SASL_USERNAME",
        "sasl.password": "v-PROFILE_CONSUMER__KAFKA__CONFIG__SASL_PASSWORD",
        "ssl.key.password": "v-PROFILE_CONSUMER__KAFKA__CONFIG__SSL_KEY_PASSWORD",
        "ssl.ca.pem": "v-PROFILE_CONSUMER__KAFKA__CONFIG__SSL_CA_PEM",
        "ssl.certificate.pem": "v-PROFILE_CONSUMER__KAFKA__CONFIG__SSL_CERTIFICATE_PEM",
        "ssl.key.pem": "v-PROFILE_CONSUMER__KAFKA__CONFIG__SSL_KEY_PEM",
    }


def test_templates_refuse_secrets_even_without_the_schema(tmp_path: Path) -> None:
    """Defence in depth: `--skip-schema-validation` must not let a secret into the ConfigMap."""
    copy = shutil.copytree(CHART, tmp_path / "chart")
    (copy / "values.schema.json").unlink()
    with helm.Chart.load(copy) as schemaless:
        for values in (
            {"config": {"kafka": {"config": {"sasl.password": "hunter2"}}}},
            {"config": {"target": {"token": "hunter2"}}},
        ):
            with pytest.raises(helm.HelmRenderError, match="Secret"):
                render(schemaless, values)


# --- custom resources ----------------------------------------------------------------------


def test_servicemonitor(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["servicemonitor"]
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert NAMESPACE in monitor["spec"]["namespaceSelector"]["matchNames"]
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"]
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
        assert re.fullmatch(r"\d+(ms|s|m|h)", endpoint["interval"])
        assert re.fullmatch(r"\d+(ms|s|m|h)", endpoint["scrapeTimeout"])
        for relabel in endpoint.get("metricRelabelings", []):
            assert relabel["action"] in {"drop", "keep", "replace", "labeldrop", "labelkeep"}


def test_prometheusrule_renders_the_alerts_with_absolute_runbook_links(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """The chart's alerts plus the extra group; thresholds and promtool: test_alerts.py."""
    rule = one(rendered["prometheusrule"], "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    groups = rule["spec"]["groups"]
    assert [g["name"] for g in groups] == ["profile-consumer", "profile-consumer-extra"]
    base = CASES["prometheusrule"]["prometheusRule"]["runbookBaseUrl"]
    alerts = []
    for group in groups:
        assert group["name"] and group["rules"]
        for r in group["rules"]:
            assert ("alert" in r) != ("record" in r), r
            assert isinstance(r["expr"], str) and r["expr"].strip()
            if "for" in r:
                assert re.fullmatch(r"(\d+(ms|s|m|h|d|w|y))+", r["for"])
            if "alert" in r:
                alerts.append(r["alert"])
    assert len(alerts) == len(set(alerts))
    for r in groups[0]["rules"]:
        assert r["annotations"]["runbook_url"] == f"{base}#{r['alert'].lower()}"
        assert r["labels"]["team"] == "crm"


def test_prometheusrule_needs_a_runbook_base_url(chart: helm.Chart) -> None:
    with pytest.raises((helm.HelmRenderError, helm.HelmValuesError), match="runbookBaseUrl"):
        render(chart, {"prometheusRule": {"enabled": True}})


def test_dashboard_configmap(rendered: dict[str, list[dict[str, Any]]]) -> None:
    dashboard = one(rendered["dashboard"], "ConfigMap", f"{FULLNAME}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["annotations"]["grafana_folder"] == "Kafka"
    source = json.loads((CHART / "dashboards" / "profile-consumer.json").read_text("utf-8"))
    assert json.loads(dashboard["data"]["profile-consumer.json"]) == source


def test_dashboard_runbook_links_follow_the_alerts_runbook(chart: helm.Chart) -> None:
    base = "https://wiki.example.com/pc/runbook.md"
    values = {"dashboard": {"enabled": True}, "prometheusRule": {"runbookBaseUrl": base}}
    dashboard = one(render(chart, values), "ConfigMap", f"{FULLNAME}-dashboard")
    data = json.loads(dashboard["data"]["profile-consumer.json"])
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["runbook"]["query"] == base
    source = json.loads((CHART / "dashboards" / "profile-consumer.json").read_text("utf-8"))
    variables["runbook"]["query"] = next(
        v["query"] for v in source["templating"]["list"] if v["name"] == "runbook"
    )
    assert data == source  # nothing else changed on the way


def test_keda_scaledobject(rendered: dict[str, list[dict[str, Any]]]) -> None:
    values = CASES["keda"]
    scaled = one(rendered["keda"], "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == one(rendered["keda"], "Deployment")["metadata"]["name"]
    assert spec["maxReplicaCount"] == values["keda"]["partitionCount"]  # capped
    assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
    topics = values["config"]["kafka"]["topics"]
    assert [t["metadata"]["topic"] for t in spec["triggers"]] == topics
    for trigger in spec["triggers"]:
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert all(isinstance(v, str) for v in meta.values()), meta  # KEDA wants strings
        assert meta["bootstrapServers"] == values["config"]["kafka"]["bootstrap_servers"]
        assert meta["consumerGroup"] == "profile-consumer"
        assert int(meta["lagThreshold"]) == values["keda"]["lagThreshold"]
        assert meta["allowIdleConsumers"] == "false"
        assert meta["limitToPartitionsWithLag"] == "true"
        assert "authenticationRef" not in trigger


def test_keda_defaults_max_replicas_to_partition_count(chart: helm.Chart) -> None:
    scaled = one(render(chart, {"keda": {"enabled": True, "partitionCount": 7}}), "ScaledObject")
    assert scaled["spec"]["maxReplicaCount"] == 7
    scaled = one(
        render(chart, {"keda": {"enabled": True, "partitionCount": 7, "maxReplicaCount": 3}}),
        "ScaledObject",
    )
    assert scaled["spec"]["maxReplicaCount"] == 3


def test_keda_sasl_uses_a_trigger_authentication(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["keda-sasl"]
    auth = one(docs, "TriggerAuthentication")
    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    assert set(refs) == {"username", "password", "ca"}
    assert {r["name"] for r in refs.values()} == {"profile-consumer-credentials"}
    for trigger in one(docs, "ScaledObject")["spec"]["triggers"]:
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
        assert trigger["metadata"]["sasl"] == "scram_sha512"
        assert trigger["metadata"]["tls"] == "enable"


def test_pdb_hpa_networkpolicy(rendered: dict[str, list[dict[str, Any]]]) -> None:
    selector = one(rendered["default"], "Deployment")["spec"]["selector"]["matchLabels"]
    pdb = one(rendered["pdb"], "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 2 and "maxUnavailable" not in pdb["spec"]
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    hpa = one(rendered["hpa"], "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == FULLNAME
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}
    policy = one(rendered["networkpolicy"], "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == selector
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": "http-metrics", "protocol": "TCP"}]
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {53, 9092, 443} <= egress_ports


# --- values schema and documentation -------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"replicaCont": 3}, "replicaCont"),
        ({"config": {"kafka": {"bootstrap_server": "k:9092"}}}, "bootstrap_server"),
        ({"serviceMonitor": {"enabeld": True}}, "enabeld"),
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"config": {"quota": {"limit": "lots"}}}, "/config/quota/limit"),
        ({"config": {"metrics": {"port": 70000}}}, "/config/metrics/port"),
        ({"keda": {"enabled": "yes"}}, "/keda/enabled"),
        ({"config": {"logging": {"level": "TRACE"}}}, "/config/logging/level"),
        ({"config": {"quota": {"pacing": "fast"}}}, "/config/quota/pacing"),
        ({"service": {"type": "Ingress"}}, "/service/type"),
        ({"keda": {"sasl": "scram-sha-512"}}, "/keda/sasl"),
        ({"config": {"target": {"token": "hunter2"}}}, "token"),
        ({"config": {"kafka": {"config": {"sasl.password": "hunter2"}}}}, "sasl.password"),
        ({"config": {"kafka": {"topics": []}}}, "/config/kafka/topics"),
    ],
)
def test_schema_rejects_bad_values(chart: helm.Chart, values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        render(chart, values)
    assert where in str(caught.value)


def _schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))


def _schema_objects(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for key, child in node.get("properties", {}).items():
        yield f"{path}.{key}" if path else key, child
        yield from _schema_objects(child, f"{path}.{key}" if path else key)


def test_schema_is_closed_and_described() -> None:
    schema = _schema()
    assert schema["additionalProperties"] is False
    for path, node in _schema_objects(schema):
        assert node.get("description"), f"{path} has no description"
        # `global` is shared with a parent chart: its other keys are not this chart's to refuse.
        if "properties" in node and path != "global":
            assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"


def test_schema_config_matches_the_settings_model() -> None:
    """Every setting of consumer.config is in the schema and vice versa (token/mapping: chart)."""
    config = _schema()["properties"]["config"]["properties"]
    for section, field in Settings.model_fields.items():
        if section == "mapping":
            assert section not in config
            continue
        model = field.annotation
        expected = set(model.model_fields) - ({"token"} if section == "target" else set())
        assert set(config[section]["properties"]) == expected, section


def test_values_defaults_match_the_settings_defaults(chart: helm.Chart) -> None:
    values = chart.values["config"]
    defaults = Settings().model_dump(mode="json")
    # The chart differs on purpose only where a pod needs it (the bootstrap servers), and leaves
    # out what it sets itself (mapping.rules) or refuses in a ConfigMap (target.token).
    defaults["kafka"]["bootstrap_servers"] = values["kafka"]["bootstrap_servers"]
    del defaults["mapping"], defaults["target"]["token"]
    assert set(values) == set(defaults)
    for section, expected in defaults.items():
        assert values[section] == expected, section


def _schema_leaves(node: dict[str, Any], path: str = "") -> Iterator[str]:
    for key, child in node.get("properties", {}).items():
        here = f"{path}.{key}" if path else key
        if "properties" in child:
            yield from _schema_leaves(child, here)
        elif here != "global":
            yield here


def test_every_value_is_in_the_schema_and_the_readme(chart: helm.Chart) -> None:
    leaves = list(_schema_leaves(_schema()))
    defaults = chart.values
    for path in leaves:
        node: Any = defaults
        for key in path.split("."):
            assert isinstance(node, dict) and key in node, f"{path}: in the schema, not in values"
            node = node[key]
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    missing = [p for p in leaves if f"| `{p}` |" not in readme]
    assert not missing, f"values missing from the chart README: {missing}"


# --- platform team: PDB, egress, own ConfigMap, registry mirror, Strimzi Secrets -------------


def validate_builtin(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if not doc["apiVersion"].startswith(CUSTOM_API_GROUPS):
            kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, True),  # two replicas by default
        ({"replicaCount": 1}, False),
        ({"replicaCount": 1, "autoscaling": {"enabled": True, "maxReplicas": 4}}, True),
        ({"autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 1}}, False),
        ({"replicaCount": 1, "keda": {"enabled": True, "partitionCount": 6}}, True),
        ({"keda": {"enabled": True, "partitionCount": 6, "maxReplicaCount": 1}}, False),
        ({"keda": {"enabled": True, "partitionCount": 1}}, False),
        ({"replicaCount": 3, "podDisruptionBudget": {"enabled": False}}, False),
        ({"replicaCount": 1, "podDisruptionBudget": {"enabled": True}}, True),
    ],
)
def test_pdb_is_on_when_more_than_one_pod_can_run(
    chart: helm.Chart, values: dict[str, Any], expected: bool
) -> None:
    docs = render(chart, values)
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert len(pdbs) == int(expected)
    if expected:
        assert pdbs[0]["spec"]["maxUnavailable"] == 1
        selector = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
        assert pdbs[0]["spec"]["selector"]["matchLabels"] == selector


def test_pdb_mode_is_checked_by_the_schema(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmValuesError, match="/podDisruptionBudget/enabled"):
        render(chart, {"podDisruptionBudget": {"enabled": "sometimes"}})


def egress_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = one(docs, "NetworkPolicy")["spec"]["egress"]
    return rules


def egress_ports(rule: dict[str, Any]) -> list[int]:
    return [p["port"] for p in rule["ports"]]


def test_egress_without_registry_or_proxy_is_dns_kafka_https(chart: helm.Chart) -> None:
    rules = egress_rules(render(chart, {"networkPolicy": {"enabled": True}}))
    assert [egress_ports(r) for r in rules] == [[53, 53], [9092, 9093], [443]]


@pytest.mark.parametrize(
    ("url", "ports"),
    [
        ("https://schema-registry.kafka.svc", [443]),
        ("http://schema-registry.kafka:8081", [8081]),
        ("http://sr", [80]),
        ("https://user:pw@sr-1:8443/ctx, https://sr-2:8443,http://sr-3:8081", [8443, 8081]),
        ("http://[fd00::1]:8085/", [8085]),
    ],
)
def test_egress_opens_the_schema_registry_port(
    chart: helm.Chart, url: str, ports: list[int]
) -> None:
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kafka"}}}]
    values = {
        "config": {"avro": {"schema_registry_url": url}},
        "networkPolicy": {"enabled": True, "egress": {"schemaRegistryTo": peers}},
    }
    docs = render(chart, values)
    registry = egress_rules(docs)[3]
    assert egress_ports(registry) == ports
    assert registry["to"] == peers
    validate_builtin(docs)


def test_egress_registry_ports_can_be_given(chart: helm.Chart) -> None:
    values = {
        "config": {"avro": {"schema_registry_url": "https://sr:8443"}},
        "networkPolicy": {"enabled": True, "egress": {"schemaRegistryPorts": [9443]}},
    }
    assert egress_ports(egress_rules(render(chart, values))[3]) == [9443]
    only_ports = {"networkPolicy": {"enabled": True, "egress": {"schemaRegistryPorts": [8081]}}}
    assert egress_ports(egress_rules(render(chart, only_ports))[3]) == [8081]


@pytest.mark.parametrize(
    ("values", "ports"),
    [
        (
            {"config": {"target": {"proxy": "http://${PROXY_USER}:${PROXY_PASS}@proxy:3128"}}},
            [3128],
        ),
        ({"config": {"target": {"proxy": "https://proxy.corp"}}}, [443]),
        ({"proxy": {"httpsProxy": "http://proxy.corp:8080"}}, [8080]),
        (
            {"proxy": {"httpsProxy": "proxy.corp:3129", "httpProxy": "http://proxy.corp"}},
            [3129, 80],
        ),
    ],
)
def test_egress_opens_the_proxy_port(
    chart: helm.Chart, values: dict[str, Any], ports: list[int]
) -> None:
    peers = [{"ipBlock": {"cidr": "10.20.30.40/32"}}]
    policy = {"networkPolicy": {"enabled": True, "egress": {"proxyTo": peers}}}
    docs = render(chart, values | policy)
    rules = egress_rules(docs)
    assert len(rules) == 4  # DNS, Kafka, Target, proxy: no registry configured
    assert egress_ports(rules[3]) == ports
    assert rules[3]["to"] == peers
    validate_builtin(docs)


def test_proxy_values_reach_the_container_env(chart: helm.Chart) -> None:
    proxy = {"httpsProxy": "http://proxy.corp:3128", "noProxy": "sr.kafka.svc,.cluster.local"}
    env = {e["name"]: e for e in container(render(chart, {"proxy": proxy}))["env"]}
    assert env["HTTPS_PROXY"]["value"] == "http://proxy.corp:3128"
    assert env["NO_PROXY"]["value"] == "sr.kafka.svc,.cluster.local"
    assert "HTTP_PROXY" not in env
    assert not {"HTTPS_PROXY", "NO_PROXY"} & {
        e["name"] for e in container(render(chart, {}))["env"]
    }


def test_a_proxy_url_with_credentials_comes_from_a_secret_key(chart: helm.Chart) -> None:
    """target.proxy may hold a password: it reaches the pod from a Secret, never the ConfigMap."""
    url = "http://proxy-user:pr0xy-pa55@proxy.corp:3128"
    created = {"secrets": {"create": True, "values": {"targetProxy": url}}}
    docs = render(chart, created)
    env = {e["name"]: e for e in container(docs)["env"]}
    ref = env["PROFILE_CONSUMER__TARGET__PROXY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": FULLNAME, "key": "target-proxy", "optional": True}
    secret = one(docs, "Secret", FULLNAME)
    assert base64.b64decode(secret["data"]["target-proxy"]).decode() == url
    assert "pr0xy-pa55" not in json.dumps([d for d in docs if d["kind"] != "Secret"])
    existing = {"secrets": {"existingSecret": "egress", "keys": {"targetProxy": "proxy-url"}}}
    env = {e["name"]: e for e in container(render(chart, existing))["env"]}
    ref = env["PROFILE_CONSUMER__TARGET__PROXY"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("egress", "proxy-url")
    validate_builtin(docs)


def test_existing_configmap_is_mounted_instead_of_rendered(chart: helm.Chart) -> None:
    docs = render(chart, {"existingConfigMap": "team-profile-consumer"})
    assert "ConfigMap" not in kinds(docs)
    volume = next(v for v in pod_spec(docs)["volumes"] if v["name"] == "config")
    assert volume["configMap"] == {
        "name": "team-profile-consumer",
        "items": [
            {"key": "config.yaml", "path": "config.yaml"},
            {"key": "mapping.yaml", "path": "mapping.yaml"},
        ],
    }
    mounts = {m["name"]: m for m in container(docs)["volumeMounts"]}
    assert mounts["config"]["mountPath"] == CONFIG_DIR
    # Its content is not the chart's to hash: no checksum that would claim to track it.
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"] or {}
    assert "checksum/config" not in annotations
    validate_builtin(docs)


def test_existing_configmap_refuses_schemas(chart: helm.Chart) -> None:
    values = {"existingConfigMap": "mine", "schemas": {"x.avsc": "{}"}}
    with pytest.raises(helm.HelmRenderError, match="existingConfigMap"):
        render(chart, values)


def notes(chart: helm.Chart, values: dict[str, Any]) -> str:
    return render_raw(chart, values)["profile-consumer/templates/NOTES.txt"]


def test_notes_state_the_keda_bound_the_scaledobject_uses(chart: helm.Chart) -> None:
    for keda, low, high in [
        ({"partitionCount": 7}, 1, 7),
        ({"partitionCount": 7, "maxReplicaCount": 3, "minReplicaCount": 2}, 2, 3),
        ({"partitionCount": 4, "maxReplicaCount": 10}, 1, 4),
    ]:
        values = {"keda": {"enabled": True, **keda}}
        spec = one(render(chart, values), "ScaledObject")["spec"]
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (low, high)
        text = " ".join(notes(chart, values).split())
        assert f"between {low} and {high} replicas" in text
        assert (
            f"keda.partitionCount {keda['partitionCount']}" in text or "maxReplicaCount" not in keda
        )
    assert "scales to zero" in notes(chart, {"keda": {"enabled": True, "minReplicaCount": 0}})
    assert "KEDA" not in notes(chart, {})


@pytest.mark.parametrize(
    ("image", "global_", "expected"),
    [
        ({}, {}, "profile-consumer:0.1.0"),
        ({"registry": "ghcr.io/acme"}, {}, "ghcr.io/acme/profile-consumer:0.1.0"),
        ({}, {"imageRegistry": "mirror.corp/"}, "mirror.corp/profile-consumer:0.1.0"),
        (
            {"registry": "ghcr.io"},
            {"imageRegistry": "mirror.corp"},
            "mirror.corp/profile-consumer:0.1.0",
        ),
        (
            {"digest": "sha256:" + "a" * 64},
            {"imageRegistry": "mirror.corp"},
            "mirror.corp/profile-consumer@sha256:" + "a" * 64,
        ),
    ],
)
def test_global_image_registry_is_honoured(
    chart: helm.Chart, image: dict[str, Any], global_: dict[str, Any], expected: str
) -> None:
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    values = {"image": image, "global": global_ | {"anotherChartsKey": True}}
    assert container(render(chart, values))["image"] == expected.replace("0.1.0", str(version))


def test_strimzi_secrets_feed_the_env_and_the_mounted_files(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    docs = rendered["strimzi-scram"]
    env = {e["name"]: e for e in container(docs)["env"]}
    password = [e for e in container(docs)["env"] if e["name"].endswith("__SASL_PASSWORD")]
    assert len(password) == 1, "kafka.secrets must replace the chart Secret's key, not add one"
    assert password[0]["valueFrom"]["secretKeyRef"] == {
        "name": "profile-consumer", "key": "password", "optional": False,
    }  # fmt: skip
    # The rest still comes from the chart's Secret (the Target token).
    token = env["PROFILE_CONSUMER__TARGET__TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token["name"] == "profile-consumer-credentials"

    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    mounts = {m["mountPath"]: m for m in container(docs)["volumeMounts"]}
    ca_mount = mounts["/etc/kafka/ca"]
    assert ca_mount["readOnly"] is True
    ca_volume = volumes[ca_mount["name"]]["secret"]
    assert ca_volume["secretName"] == "my-cluster-cluster-ca-cert"
    assert ca_volume["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    assert ca_volume["defaultMode"] == 0o440
    config = rendered_config(docs)["kafka"]["config"]
    assert config["ssl.ca.location"] == "/etc/kafka/ca/ca.crt"

    # The variable lands on the librdkafka property the entry names.
    (tmp_path / "mapping.yaml").write_text("rules: []\n")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"mapping": {"rules": str(tmp_path / "mapping.yaml")}}))
    settings = load_settings(path, environ={password[0]["name"]: "from-strimzi"})
    assert settings.kafka.config == {"sasl.password": "from-strimzi"}


@pytest.mark.parametrize(
    ("secrets", "match"),
    [
        ([{"name": "u", "items": {"password": "SASL_PASSWORD"}}], "/kafka/secrets/0"),
        ([{"name": "u", "items": {}}], "/kafka/secrets/0"),
        ([{"name": "u", "mountPath": "relative", "items": {"a": "a"}}], "/kafka/secrets/0"),
        ([{"name": "u", "mountPath": "/x", "items": {"a": "../a"}}], "/kafka/secrets/0"),
        ([{"name": "u", "items": {"p": "sasl.password"}, "mountpath": "/x"}], "/kafka/secrets/0"),
    ],
)
def test_kafka_secrets_schema(chart: helm.Chart, secrets: list[Any], match: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=match):
        render(chart, {"kafka": {"secrets": secrets}})


@pytest.mark.parametrize(
    ("secrets", "match"),
    [
        (
            [
                {"name": "a", "mountPath": "/etc/kafka", "items": {"ca.crt": "ca.crt"}},
                {"name": "b", "mountPath": "/etc/kafka/", "items": {"user.crt": "user.crt"}},
            ],
            "/etc/kafka is already used by the Secret a",
        ),
        ([{"name": "a", "mountPath": "/tmp", "items": {"k": "k"}}], "writable /tmp"),  # noqa: S108
        (
            [
                {"name": "a", "items": {"password": "sasl.password"}},
                {"name": "b", "items": {"pw": "sasl.password"}},
            ],
            "sasl.password is read from two Secret keys",
        ),
    ],
)
def test_kafka_secrets_clashes_are_refused(
    chart: helm.Chart, secrets: list[Any], match: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=match):
        render(chart, {"kafka": {"secrets": secrets}})


def test_kafka_secret_property_names_are_checked_without_the_schema(tmp_path: Path) -> None:
    copy = shutil.copytree(CHART, tmp_path / "chart")
    (copy / "values.schema.json").unlink()
    with helm.Chart.load(copy) as schemaless:
        bad = {"kafka": {"secrets": [{"name": "u", "items": {"password": "SASL_PASSWORD"}}]}}
        with pytest.raises(helm.HelmRenderError, match="librdkafka property"):
            render(schemaless, bad)
