"""The chart's alerts, as rendered: promtool checks and unit-tests the PrometheusRule the chart
produces (not a source file beside it), and the values that shape the rules really reach them.

The promtool unit tests live in helm/profile-consumer/alerts/tests.yaml; they run against the
rules rendered for release `pc` in namespace `consumers` with the default alert values.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.tools import require_tool

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "helm" / "profile-consumer"
RULE_TESTS = CHART / "alerts" / "tests.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"
RELEASE, NAMESPACE = "pc", "consumers"
JOB = f"{RELEASE}-profile-consumer"
BASE = "https://github.com/acme/profile-consumer/blob/v0.1.0/docs/runbook.md"
ENABLED = {"prometheusRule": {"enabled": True, "runbookBaseUrl": BASE}}
EXPECTED_ALERTS = {
    "ProfileConsumerQuotaHeadroomLow",
    "ProfileConsumerQuotaExhausted",
    "ProfileConsumerDLQRateHigh",
    "ProfileConsumerDLQWriteFailing",
    "ProfileConsumerCommitsFailing",
    "ProfileConsumerBulkBatchStuck",
    "ProfileConsumerLagGrowing",
    "ProfileConsumerTargetErrorsHigh",
    "ProfileConsumerCircuitOpen",
    "ProfileConsumerDown",
}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def with_alerts(**alerts: dict[str, Any]) -> dict[str, Any]:
    return {"prometheusRule": {**ENABLED["prometheusRule"], "alerts": alerts}}


def render_groups(chart: helm.Chart, values: dict[str, Any]) -> list[dict[str, Any]]:
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    rule = yaml.safe_load(out["profile-consumer/templates/prometheusrule.yaml"])
    assert rule["kind"] == "PrometheusRule"
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def rules_by_alert(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


@pytest.fixture(scope="module")
def default_rules(chart: helm.Chart) -> dict[str, dict[str, Any]]:
    return rules_by_alert(render_groups(chart, ENABLED))


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def write_rendered(chart: helm.Chart, values: dict[str, Any], where: Path) -> Path:
    path = where / "rendered-rules.yaml"
    groups = render_groups(chart, values)
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")
    return path


def _github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


# --- promtool on the rendering -------------------------------------------------------------------


def test_rendered_rules_pass_promtool_check(chart: helm.Chart, tmp_path: Path) -> None:
    path = write_rendered(chart, ENABLED, tmp_path)
    result = promtool("check", "rules", path.name, cwd=tmp_path)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in result.stdout


def test_rendered_rules_pass_their_unit_tests(chart: helm.Chart, tmp_path: Path) -> None:
    write_rendered(chart, ENABLED, tmp_path)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "SUCCESS" in result.stdout


def test_unit_tests_fail_against_a_changed_threshold(chart: helm.Chart, tmp_path: Path) -> None:
    """The promtool tests bind the rendering: a headroom threshold of 5% misses the 8% case."""
    write_rendered(chart, with_alerts(quotaHeadroomLow={"threshold": 0.05}), tmp_path)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "ProfileConsumerQuotaHeadroomLow" in result.stdout + result.stderr


@pytest.mark.parametrize("alert", sorted(EXPECTED_ALERTS))
def test_alert_is_unit_tested_firing_and_not_firing(alert: str) -> None:
    doc = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    assert doc["rule_files"] == ["rendered-rules.yaml"]
    cases = [
        case
        for test in doc["tests"]
        for case in test.get("alert_rule_test", [])
        if case["alertname"] == alert
    ]
    assert any(case.get("exp_alerts") for case in cases), f"{alert} never expected to fire"
    assert any(not case.get("exp_alerts") for case in cases), f"{alert} never expected quiet"


# --- what every rendered alert carries -----------------------------------------------------------


def test_every_expected_alert_is_rendered_once(chart: helm.Chart) -> None:
    names = [r["alert"] for g in render_groups(chart, ENABLED) for r in g["rules"]]
    assert sorted(names) == sorted(EXPECTED_ALERTS)


@pytest.mark.parametrize("alert", sorted(EXPECTED_ALERTS))
def test_alert_links_to_its_runbook_section_absolutely(
    default_rules: dict[str, dict[str, Any]], alert: str
) -> None:
    rule = default_rules[alert]
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip()
    assert rule["annotations"]["runbook_url"] == f"{BASE}#{alert.lower()}"
    headings = re.findall(r"^#{2,3} (.+)$", RUNBOOK.read_text(encoding="utf-8"), re.M)
    assert alert.lower() in {_github_anchor(h) for h in headings}


@pytest.mark.parametrize("alert", sorted(EXPECTED_ALERTS))
def test_alert_selects_this_release_and_groups_by_job(
    default_rules: dict[str, dict[str, Any]], alert: str
) -> None:
    expr = default_rules[alert]["expr"]
    selectors = re.findall(r"\b(?:profile_consumer_\w+|up)\{([^}]*)\}", expr)
    assert selectors, expr
    for selector in selectors:
        assert f'job="{JOB}"' in selector and f'namespace="{NAMESPACE}"' in selector, expr
    if alert != "ProfileConsumerDown":  # `up` keeps its target labels as they are
        for grouping in re.findall(r"\bby \(([^)]*)\)", expr):
            assert {"namespace", "job"} <= {g.strip() for g in grouping.split(",")}, expr


def test_quota_exhausted_is_a_warning(default_rules: dict[str, dict[str, Any]]) -> None:
    assert default_rules["ProfileConsumerQuotaExhausted"]["labels"]["severity"] == "warning"


# --- values shape the rules ----------------------------------------------------------------------


def test_thresholds_for_severity_and_labels_are_values(chart: helm.Chart) -> None:
    values = with_alerts(
        lagGrowing={
            "threshold": 5000,
            "for": "30m",
            "severity": "critical",
            "labels": {"page": "y"},
        },
        dlqRateHigh={"threshold": 0.2, "minEvents": 50},
        targetErrorsHigh={"threshold": 0.25},
        quotaHeadroomLow={"threshold": 0.2},
        commitsFailing={"threshold": 7},
    )
    values["prometheusRule"]["extraLabels"] = {"team": "crm", "page": "n"}
    rules = rules_by_alert(render_groups(chart, values))
    lag = rules["ProfileConsumerLagGrowing"]
    assert ") > 5000\n" in lag["expr"]
    assert lag["for"] == "30m"
    assert lag["labels"] == {"severity": "critical", "team": "crm", "page": "y"}
    assert rules["ProfileConsumerCircuitOpen"]["labels"] == {
        "severity": "critical",
        "team": "crm",
        "page": "n",
    }
    assert ") > 0.2\n" in rules["ProfileConsumerDLQRateHigh"]["expr"]
    assert "[10m])) > 50" in rules["ProfileConsumerDLQRateHigh"]["expr"]
    assert ") > 0.25" in rules["ProfileConsumerTargetErrorsHigh"]["expr"]
    assert ") < 0.2" in rules["ProfileConsumerQuotaHeadroomLow"]["expr"]
    assert "Less than 20% " in rules["ProfileConsumerQuotaHeadroomLow"]["annotations"]["summary"]
    assert "[10m])) > 7\n" in rules["ProfileConsumerCommitsFailing"]["expr"]


def test_an_alert_can_be_switched_off(chart: helm.Chart) -> None:
    rules = rules_by_alert(render_groups(chart, with_alerts(quotaExhausted={"enabled": False})))
    assert set(rules) == EXPECTED_ALERTS - {"ProfileConsumerQuotaExhausted"}


def test_job_override_reaches_every_selector(chart: helm.Chart) -> None:
    values = {"prometheusRule": {**ENABLED["prometheusRule"], "job": "custom-scrape"}}
    for rule in rules_by_alert(render_groups(chart, values)).values():
        assert 'job="custom-scrape"' in rule["expr"] and JOB not in rule["expr"]


def test_fullname_override_moves_the_job_with_the_service(chart: helm.Chart) -> None:
    values = {**ENABLED, "fullnameOverride": "crm-sync"}
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    service = yaml.safe_load(out["profile-consumer/templates/service.yaml"])
    assert service["metadata"]["name"] == "crm-sync"
    rules = rules_by_alert(render_groups(chart, values))
    assert 'up{job="crm-sync", namespace="consumers"}' in rules["ProfileConsumerDown"]["expr"]


def test_servicemonitor_leaves_the_job_to_the_service_name(chart: helm.Chart) -> None:
    out = chart.render(
        {"serviceMonitor": {"enabled": True}}, name=RELEASE, namespace=NAMESPACE, is_install=True
    )
    monitor = yaml.safe_load(out["profile-consumer/templates/servicemonitor.yaml"])
    assert "jobLabel" not in monitor["spec"]


@pytest.mark.parametrize("base", ["", "docs/runbook.md", "runbooks.example.com/pc"])
def test_refuses_to_render_without_an_absolute_runbook_url(chart: helm.Chart, base: str) -> None:
    with pytest.raises((helm.HelmRenderError, helm.HelmValuesError), match="runbookBaseUrl"):
        render_groups(chart, {"prometheusRule": {"enabled": True, "runbookBaseUrl": base}})


def test_refusal_message_names_the_fix(chart: helm.Chart, tmp_path: Path) -> None:
    """Without the schema (which also refuses a relative URL), the template says what to set."""
    copy = shutil.copytree(CHART, tmp_path / "chart")
    (copy / "values.schema.json").unlink()
    with helm.Chart.load(copy) as schemaless:
        with pytest.raises(helm.HelmRenderError, match=r"absolute URL of docs/runbook\.md"):
            render_groups(schemaless, {"prometheusRule": {"enabled": True}})
