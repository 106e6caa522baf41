"""The dashboard against a real Prometheus scraping a running consumer.

A Prometheus server on loopback scrapes the real App's ops port every second, with the target
labels `namespace="test"`, `pod="pod-0"` (what the chart's ServiceMonitor adds), and loads the
alert rules. A small load runs through the App: valid events, poison records (so DLQ series
exist) and a spell of Target 5xx (so retry and 5xx series exist). Then every PromQL expression
of the Grafana dashboard, with its template variables substituted as Grafana would, must return
data from Prometheus, and every alert rule must evaluate without error.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from consumer import __version__
from consumer.config import Settings
from devtools.samples import poison_bytes, poison_event, sample_events
from tests.helpers import encoder, event_key, finished, produce, running, wait_until
from tests.prometheus_server import PrometheusServer
from tests.tools import require_tool

pytestmark = pytest.mark.integration

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "profile-consumer"
DASHBOARD = CHART / "dashboards" / "profile-consumer.json"


def rendered_rules(where: Path) -> Path:
    """The chart's PrometheusRule groups as a plain rule file (the chart renders them per
    release: alerts/rules.yaml is a template)."""
    import helm_python as helm

    # Rendered for what this test scrapes: its job name, in its namespace.
    values = {
        "prometheusRule": {
            "enabled": True,
            "runbookBaseUrl": "https://runbooks.example/",
            "job": JOB,
        }
    }
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values, name="pc", namespace=TARGET_LABELS["namespace"], is_install=True)
    groups = yaml.safe_load(out["profile-consumer/templates/prometheusrule.yaml"])["spec"]["groups"]
    path = where / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    return path


JOB = "profile-consumer"  # matches the ProfileConsumerDown rule's `job=~".*profile-consumer.*"`
TARGET_LABELS = {"namespace": "test", "pod": "pod-0"}
# Template variables as Grafana substitutes them: one value selected, or "All" (allValue ".*").
VARIABLE_CHOICES = {
    "selected": {**TARGET_LABELS, "job": JOB},
    "all": {"namespace": ".*", "pod": ".*", "job": ".*"},
}
# $__rate_interval / $__interval / $__range: one window that spans the whole run (well under a
# minute), so a rate sees every increase the load made, whenever the query runs.
WINDOW = "1m"

# Dashboard targets ("<panel title> / <refId>") allowed to return no data in this short run,
# each with the reason. Empty on purpose: every unlabelled metric (circuit_open, ready,
# dlq_write_failures_total, split_requests_total, coalesced_events_total, quota_wait_seconds_total,
# in-flight, paused, ...) is exported from the start with value 0, so even the panels of things
# that never happen here (circuit never opens, DLQ writes never fail) return a 0 series; the
# labelled ones (lag, retries, DLQ, HTTP codes, commits) are all exercised by the load below.
NO_DATA_EXPECTED: dict[str, str] = {
    "Transport mode and switches / B": "no backlog here: auto never switches to bulk",
    "Bulk batches /s by outcome / A": "no backlog here: no bulk batch",
    "Bulk rows /s and rows per batch / A": "no backlog here: no bulk batch",
    "Bulk rows /s and rows per batch / B": "no backlog here: no bulk batch",
    "Oldest bulk batch age and batches in flight / C": "no bulk batch, so no status poll",
}

# Bounded waits (seconds); the whole test takes about 15 s.
PROMETHEUS_UP = 20.0
PIPELINE_DONE = 60.0
SERIES_APPEAR = 30.0


# --- dashboard expressions ----------------------------------------------------------------------


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_targets() -> dict[str, str]:
    """Every target of every panel: `<panel title> / <refId>` -> PromQL."""
    dashboard = json.loads(DASHBOARD.read_text())
    pairs = [
        (f"{panel['title']} / {target['refId']}", target["expr"])
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), f"ambiguous panel title / refId in {names}"
    return dict(pairs)


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Grafana's substitution of `$var`, `${var}` and `${var:format}` (formats ignored)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in ("__rate_interval", "__interval", "__range"):
            return WINDOW
        return variables[name]

    out = re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)
    assert "$" not in out, out
    return out


def _has_data(result: list[dict[str, Any]]) -> bool:
    """At least one sample that is a number (NaN is what histogram_quantile gives on no data)."""
    return any(not math.isnan(float(sample["value"][1])) for sample in result)


# --- fixtures and waits -------------------------------------------------------------------------


@pytest.fixture
def prometheus_bin() -> str:
    return require_tool("prometheus")


async def poll(check: Callable[[], T], timeout: float, what: str) -> T:
    """Run a blocking check off the event loop (the App runs on it) until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.2)


def scalar(prom: PrometheusServer, expr: str) -> float | None:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else None


def load(
    settings: Settings, rng: random.Random, count: int, seed: int
) -> list[tuple[bytes | None, bytes]]:
    """`count` valid events, plus three poison records: undecodable and unmappable."""
    enc = encoder(settings)
    good = sample_events(count, profiles=25, seed=seed)
    records = [(event_key(e), enc.encode(e)) for e in good]
    poison = [
        (b"empty", b""),  # decode / empty_value
        (b"trunc", poison_bytes(rng, "truncated", records[0][1])),  # decode / malformed_avro...
        (b"noid", enc.encode(poison_event(rng, seed, "no_identity"))),  # map / no_identity
    ]
    half = len(records) // 2
    return records[:half] + poison + records[half:]


# --- the test -----------------------------------------------------------------------------------


async def test_every_dashboard_expression_returns_data_from_a_real_prometheus(
    broker, simulator, topics, make_settings, tmp_path, prometheus_bin
) -> None:
    targets = dashboard_targets()
    assert targets
    assert set(NO_DATA_EXPECTED) <= set(targets), "allow-list names unknown dashboard targets"
    settings = make_settings(
        # Quick retries keep the 5xx spell short; a threshold the spell cannot reach keeps the
        # circuit closed (its gauge is exported as 0 either way).
        target__retry_base_seconds=0.05,
        target__retry_cap_seconds=0.5,
        target__circuit_failure_threshold=1000,
        # The product's default: the bulk transport's budgets and mode are exported too.
        target__transport="auto",
    )
    rules = rendered_rules(tmp_path)
    expected_rules = {
        rule["alert"]
        for group in yaml.safe_load(rules.read_text())["groups"]
        for rule in group["rules"]
    }
    rng = random.Random(11)
    topic = topics["topic"]

    async with running(settings) as app:
        await wait_until(lambda: app.ops is not None, 30)
        assert app.ops is not None
        workdir = tmp_path / "prometheus"
        workdir.mkdir()
        prom = PrometheusServer(
            workdir,
            [f"127.0.0.1:{app.ops.port}"],
            TARGET_LABELS,
            job=JOB,
            scrape_interval="1s",
            rule_files=[rules],
            binary=prometheus_bin,
        )
        await asyncio.to_thread(prom.start)
        try:
            await poll(
                lambda: scalar(prom, f'up{{job="{JOB}", namespace="test", pod="pod-0"}}') == 1,
                PROMETHEUS_UP,
                "Prometheus scrapes the consumer with the target labels",
            )

            # Phase 1: Target answers 30% of updates with 503; they are retried until accepted.
            simulator.configure(error_5xx_ratio=0.3)
            first = load(settings, rng, 120, seed=21)
            await asyncio.to_thread(produce, broker.bootstrap, topic, first)
            await wait_until(lambda: finished(app, len(first), topic), PIPELINE_DONE)
            assert app.metrics.retries.labels("http_5xx")._value.get() > 0
            consumed = 'sum(profile_consumer_events_consumed_total{namespace="test"})'
            # Prometheus holds phase 1's counts before phase 2 starts, so phase 2's increases
            # land inside the rate window: rates are positive and the latency quantiles are not
            # NaN (they are when no bucket moved within the window).
            await poll(
                lambda: scalar(prom, consumed) == len(first),
                SERIES_APPEAR,
                "Prometheus scraped phase 1",
            )

            # Phase 2: Target healthy again; more valid events and the same poison.
            simulator.configure(error_5xx_ratio=0.0)
            second = load(settings, rng, 120, seed=22)
            await asyncio.to_thread(produce, broker.bootstrap, topic, second)
            total = len(first) + len(second)
            await wait_until(lambda: finished(app, total, topic), PIPELINE_DONE)
            await poll(
                lambda: scalar(prom, consumed) == total,
                SERIES_APPEAR,
                "Prometheus scraped phase 2",
            )

            # Every dashboard target, under both variable choices, returns data. Lag comes from
            # librdkafka's statistics (every 5 s), so some series may take a few more scrapes.
            last: dict[str, list[dict[str, Any]]] = {}

            def missing() -> dict[str, str]:
                gaps: dict[str, str] = {}
                for choice, variables in VARIABLE_CHOICES.items():
                    for name, expr in targets.items():
                        query = substitute(expr, variables)
                        result = prom.query(query)
                        last[f"{choice}: {name}"] = result
                        if not _has_data(result) and name not in NO_DATA_EXPECTED:
                            gaps[f"{choice}: {name}"] = f"{query} -> {result}"
                return gaps

            try:
                await poll(lambda: not missing(), SERIES_APPEAR, "every dashboard target")
            except AssertionError:
                gaps = await asyncio.to_thread(missing)
                pytest.fail("dashboard targets without data:\n" + "\n".join(gaps.values()))

            def labels(name: str, key: str) -> set[str]:
                return {s["metric"].get(key, "") for s in last[f"selected: {name}"]}

            def values(name: str) -> list[float]:
                return [float(s["value"][1]) for s in last[f"selected: {name}"]]

            # The data is this run's load, not just any series.
            assert labels("Events consumed /s / A", "topic") == {topic}
            assert min(values("Events consumed /s / A")) > 0
            assert {"mapped", "dead_lettered"} <= labels("Events by outcome /s / A", "outcome")
            assert "success" in labels("Updates sent /s / A", "result")
            assert {"2xx", "5xx"} <= labels("HTTP attempts to Target /s / A", "code")
            assert "http_5xx" in labels("Retries /s by reason / A", "reason")
            dlq = {
                (s["metric"]["stage"], s["metric"]["reason"])
                for s in last["selected: DLQ /s by reason / A"]
            }
            assert {("decode", "empty_value"), ("map", "no_identity")} <= dlq
            assert labels("Consumer lag per partition / A", "topic") == {topic}
            assert labels("Offset commits /s / A", "result") >= {"ok"}
            assert values("Circuit breaker / A") == [0.0]
            assert values("Quota limit / A") == [float(settings.quota.limit)]
            assert values("Ready and poll loop / A") == [1.0]  # group joined, broker reachable
            assert max(values("Ready and poll loop / B")) < 10  # seconds since the last poll
            (version,) = last["selected: Versions / A"]
            assert version["metric"]["version"] == __version__
            assert {k: version["metric"][k] for k in TARGET_LABELS} == TARGET_LABELS

            # The template variables list this replica (Grafana's label_values queries).
            build = "profile_consumer_build_info"
            namespaces = await asyncio.to_thread(prom.label_values, "namespace", build)
            assert namespaces == ["test"]
            pods = await asyncio.to_thread(prom.label_values, "pod", build + '{namespace=~"test"}')
            assert pods == ["pod-0"]

            # The alert rules load and evaluate against real series without error; the replica
            # being scraped, ProfileConsumerDown stays inactive.
            def evaluated() -> list[dict[str, Any]]:
                rules = prom.rules()
                never = [r for r in rules if r["lastEvaluation"].startswith("0001-")]
                return [] if never else rules

            rules = await poll(evaluated, SERIES_APPEAR, "every alert rule evaluated")
            assert {r["name"] for r in rules} == expected_rules
            for rule in rules:
                assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
            down = next(r for r in rules if r["name"] == "ProfileConsumerDown")
            assert down["state"] == "inactive", down
        finally:
            await asyncio.to_thread(prom.stop)
