"""A real Prometheus server on loopback for tests: own config, own storage, a free port.

The server scrapes the given targets (with extra target labels, as a ServiceMonitor would add
`namespace` and `pod`), optionally loads rule files, and is queried through its HTTP API.
Found on PATH as `prometheus` (Debian package `prometheus`, installed by `.ci/run`).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from devtools.broker import free_port
from devtools.service import Service


class PrometheusError(RuntimeError):
    pass


class PrometheusServer(Service):
    """`with PrometheusServer(workdir, targets, labels) as prom: prom.query("up")`."""

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[str],
        labels: dict[str, str] | None = None,
        *,
        job: str = "profile-consumer",
        scrape_interval: str = "1s",
        rule_files: Sequence[Path] = (),
        binary: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.binary = binary or shutil.which("prometheus") or "prometheus"
        self.config_path = workdir / "prometheus.yml"
        self.log_path = workdir / "prometheus.log"
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(timeout=10.0)
        config = {
            "global": {
                "scrape_interval": scrape_interval,
                "scrape_timeout": scrape_interval,
                "evaluation_interval": scrape_interval,
            },
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [
                {
                    "job_name": job,
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": list(targets), "labels": dict(labels or {})}],
                }
            ],
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Start on a free loopback port and wait until /-/ready answers 200."""
        for _attempt in range(3):  # a free port can be taken between probing and binding
            port = free_port()
            if self._start_on(port, timeout):
                return
        raise PrometheusError(f"prometheus did not start; log:\n{self.log()}")

    def _start_on(self, port: int, timeout: float) -> bool:
        storage = self.workdir / f"data-{port}"
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(  # fixed arguments, no shell
                [
                    self.binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={storage}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                if "address already in use" in self.log():
                    return False
                raise PrometheusError(f"prometheus exited at start; log:\n{self.log()}")
            try:
                if self._http.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise PrometheusError(f"prometheus not ready within {timeout}s; log:\n{self.log()}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        self._http.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except FileNotFoundError:
            return ""

    # --- HTTP API -------------------------------------------------------------------------

    def api(self, path: str, params: Any = None) -> Any:
        """GET /api/v1/<path>; returns `data`, raises PrometheusError unless status is success."""
        response = self._http.get(f"{self.url}/api/v1/{path}", params=params)
        try:
            body = response.json()
        except ValueError as exc:
            raise PrometheusError(f"{path}: HTTP {response.status_code} {response.text}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query at now; a vector's samples, or a scalar as one label-less sample."""
        data = self.api("query", {"query": expr})
        if data["resultType"] == "vector":
            return list(data["result"])
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        raise PrometheusError(f"{expr}: unexpected result type {data['resultType']}")

    def label_values(self, label: str, match: str) -> list[str]:
        """What Grafana's `label_values(match, label)` lists."""
        return sorted(self.api(f"label/{label}/values", {"match[]": match}))

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]
