"""The static observability assets agree with the code and pass Prometheus' own tools.

- The alert rules are a chart template: tests/unit/deploy/test_alerts.py runs promtool on
  the rendering.
- Every PromQL expression in the Grafana dashboard and in the docs parses (wrapped as recording
  rules for promtool) and names only metrics that `consumer.metrics.Metrics` registers.
- `docs/metrics.md` documents exactly the registered metrics, with their type and labels, and no
  label can carry a profile identity.
"""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from consumer.metrics import Metrics
from tests.tools import require_tool

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "helm" / "profile-consumer"
RULES = CHART / "alerts" / "rules.yaml"
RULE_TESTS = CHART / "alerts" / "tests.yaml"
DASHBOARD = CHART / "dashboards" / "profile-consumer.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"
RUNBOOK = ROOT / "docs" / "runbook.md"

METRIC_NAME = re.compile(r"\bprofile_consumer_[A-Za-z0-9_]+")
# Label names that would put a profile identity (unbounded, personal) into a time series.
IDENTITY_LABEL = re.compile(
    r"identity|profile|mbox|pc_?id|third_?party|customer|user|email|tnt", re.IGNORECASE
)
SELECTOR_FILTER = '{namespace=~"$namespace", job=~"$job", pod=~"$pod"'


# --- helpers ------------------------------------------------------------------------------------


def _promtool() -> str:
    return require_tool("promtool")


def _run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


@cache
def _registry() -> tuple[CollectorRegistry, Metrics]:
    registry = CollectorRegistry()
    return registry, Metrics(registry)


def _exposed_name(family_name: str, family_type: str) -> str:
    """The name a family is documented and usually queried by."""
    suffix = {"counter": "_total", "info": "_info"}.get(family_type, "")
    return family_name + suffix


def _registered() -> dict[str, str]:
    """Exposed name -> type, for every family in a fresh registry."""
    registry, _ = _registry()
    return {_exposed_name(f.name, f.type): f.type for f in registry.collect()}


def _registered_series_names() -> set[str]:
    """Every series name the registry can expose.

    Labelled metrics have no samples until a label set is used, so the names are derived from
    each family's type, and united with the samples actually collected.
    """
    registry, _ = _registry()
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
        "gauge": ("",),
    }
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def _registered_labels() -> dict[str, set[str]]:
    """Exposed name -> label names (declared labels, plus Info's sample labels)."""
    registry, metrics = _registry()
    labels: dict[str, set[str]] = {}
    attributes = [*vars(metrics).values(), *vars(metrics.bulk).values()]
    wrappers = [v for v in attributes if isinstance(v, MetricWrapperBase)]
    declared = {w._name: set(w._labelnames) for w in wrappers}
    for family in registry.collect():
        names = set(declared.get(family.name, set()))
        for sample in family.samples:
            names.update(k for k in sample.labels if k not in {"le", "quantile"})
        labels[_exposed_name(family.name, family.type)] = names
    return labels


def _load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in panels:
        out.append(panel)
        out.extend(_all_panels(panel.get("panels", [])))
    return out


def _dashboard_exprs() -> dict[str, str]:
    """Recording-rule-safe name -> PromQL, for every target of every panel."""
    exprs: dict[str, str] = {}
    for panel in _all_panels(_load_dashboard()["panels"]):
        for target in panel.get("targets", []):
            exprs[f"dashboard:panel{panel['id']}_{target['refId']}"] = target["expr"]
    return exprs


def _variable_selectors() -> dict[str, str]:
    """The series selector inside each `label_values(selector, label)` variable query."""
    out: dict[str, str] = {}
    for var in _load_dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match, f"variable {var['name']}: unexpected query {query!r}"
        out[f"variable:{var['name']}"] = match.group(1)
    return out


def _substitute(expr: str) -> str:
    """Replace Grafana's template variables by values promtool accepts."""
    expr = re.sub(r"\$\{?__(rate_interval|interval|range)(?::\w+)?\}?", "5m", expr)
    expr = re.sub(r"\$\{?[A-Za-z_]\w*(?::\w+)?\}?", ".*", expr)
    assert "$" not in expr, expr
    return expr


def _doc_promql(path: Path) -> dict[str, str]:
    """Expressions in a doc's ```promql blocks; indented or `)` lines continue the one above."""
    exprs: dict[str, str] = {}
    for block_no, block in enumerate(re.findall(r"```promql\n(.*?)```", path.read_text(), re.S)):
        current: list[str] = []
        items: list[str] = []
        for line in block.splitlines():
            if not line.strip():
                continue
            if current and (line[0].isspace() or line.lstrip().startswith(")")):
                current.append(line)
            else:
                if current:
                    items.append("\n".join(current))
                current = [line]
        if current:
            items.append("\n".join(current))
        for i, expr in enumerate(items):
            exprs[f"doc:{path.stem}_{block_no}_{i}"] = expr
    return exprs


def _check_parse(exprs: dict[str, str], tmp_path: Path) -> None:
    assert exprs
    rules = {
        "groups": [
            {
                "name": "parse-check",
                "rules": [{"record": name, "expr": expr} for name, expr in exprs.items()],
            }
        ]
    }
    path = tmp_path / "exprs.rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    result = _run_promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout, result.stdout


def _github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


# --- alert rules: rendered by the chart, checked and unit-tested there (test_alerts.py) ---------


# --- dashboard ----------------------------------------------------------------------------------


def test_dashboard_structure() -> None:
    dash = _load_dashboard()
    assert dash["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "job", "pod"):
        query = variables[name]["query"]["query"]
        assert query.startswith("label_values(profile_consumer_build_info"), query
        assert query.endswith(f", {name})"), query
    panels = _all_panels(dash["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_covers_what_sres_need() -> None:
    used = set(METRIC_NAME.findall(" ".join(_dashboard_exprs().values())))
    for needed in (
        "profile_consumer_events_consumed_total",
        "profile_consumer_updates_sent_total",
        "profile_consumer_quota_used",
        "profile_consumer_quota_remaining",
        "profile_consumer_quota_exhaustion_eta_seconds",
        "profile_consumer_quota_used_by_this_replica",
        "profile_consumer_consumer_lag_events",
        "profile_consumer_dlq_events_total",
        "profile_consumer_http_request_duration_seconds_bucket",
        "profile_consumer_event_to_update_seconds_bucket",
        "profile_consumer_in_flight_requests",
        "profile_consumer_buffered_events",
        "profile_consumer_paused_partitions",
        "profile_consumer_retries_total",
        "profile_consumer_circuit_open",
        "profile_consumer_commits_total",
    ):
        assert needed in used, needed


def test_every_dashboard_selector_filters_namespace_and_pod() -> None:
    for name, expr in _dashboard_exprs().items():
        for match in METRIC_NAME.finditer(expr):
            rest = expr[match.end() :]
            assert rest.startswith(SELECTOR_FILTER), f"{name}: {match.group(0)} in {expr}"


def test_dashboard_expressions_parse(tmp_path: Path) -> None:
    exprs = {k: _substitute(v) for k, v in _dashboard_exprs().items()}
    exprs |= {
        k.replace("variable:", "variable:sel_"): _substitute(v)
        for k, v in _variable_selectors().items()
    }
    _check_parse(exprs, tmp_path)


def test_doc_example_queries_parse(tmp_path: Path) -> None:
    exprs = _doc_promql(METRICS_DOC) | _doc_promql(RUNBOOK)
    _check_parse(exprs, tmp_path)


# --- metric names against the registry ----------------------------------------------------------


@pytest.mark.parametrize(
    "path", [DASHBOARD, RULES, RULE_TESTS, METRICS_DOC, RUNBOOK], ids=lambda p: p.name
)
def test_referenced_metric_names_exist(path: Path) -> None:
    known = _registered_series_names()
    if path == METRICS_DOC:
        known |= set(_registered())  # the catalogue names a histogram by its family name
    referenced = set(METRIC_NAME.findall(path.read_text()))
    assert referenced, f"{path.name} names no profile_consumer_* metric"
    unknown = referenced - known
    assert not unknown, f"{path.name} names metrics the code does not define: {sorted(unknown)}"


def _doc_table() -> dict[str, tuple[str, set[str]]]:
    rows: dict[str, tuple[str, set[str]]] = {}
    for line in METRICS_DOC.read_text().splitlines():
        match = re.match(r"^\|\s*`(profile_consumer_\w+)`\s*\|\s*(\w+)\s*\|([^|]*)\|", line)
        if match:
            name, kind, labels = match.groups()
            assert name not in rows, f"{name} documented twice"
            rows[name] = (kind, set(re.findall(r"`([a-z_]+)`\s*\(", labels)))
    return rows


def test_every_registered_metric_is_documented_with_type_and_labels() -> None:
    documented = _doc_table()
    registered = _registered()
    labels = _registered_labels()
    assert set(documented) == set(registered), (
        f"undocumented: {sorted(set(registered) - set(documented))}; "
        f"documented but not registered: {sorted(set(documented) - set(registered))}"
    )
    for name, (kind, doc_labels) in documented.items():
        assert kind == registered[name], f"{name}: documented {kind}, is {registered[name]}"
        assert doc_labels == labels[name], f"{name}: documented {doc_labels}, is {labels[name]}"


def test_no_label_can_carry_a_profile_identity() -> None:
    for name, labels in _registered_labels().items():
        bad = {label for label in labels if IDENTITY_LABEL.search(label)}
        assert not bad, f"{name} has identity-like labels {bad}"


def test_registered_names_follow_conventions() -> None:
    for name, kind in _registered().items():
        assert name.startswith("profile_consumer_"), name
        if kind == "counter":
            assert name.endswith("_total"), name
        # Base units only: seconds, not milliseconds or minutes; bytes, not kilobytes.
        assert not re.search(r"_(ms|millis\w*|minutes|hours|days|kb|kilobytes|mb)(_|$)", name), name
