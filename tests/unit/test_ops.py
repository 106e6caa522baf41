"""Logs mask identities and never carry tokens; the ops endpoint answers probes."""

import json
import logging

import httpx
import pytest
from prometheus_client import CollectorRegistry

from consumer.logs import JsonFormatter, mask
from consumer.metrics import Metrics
from consumer.ops_server import OpsServer

pytestmark = pytest.mark.unit


def record(**extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("consumer.x", logging.INFO, __file__, 1, "sent", None, None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_have_stable_keys_and_masked_identities() -> None:
    line = json.loads(JsonFormatter().format(record(event="sent", identity="cust-1", partition=2)))
    assert line["msg"] == "sent" and line["event"] == "sent" and line["partition"] == 2
    assert line["identity"] == mask("cust-1") and "cust-1" not in json.dumps(line)
    assert {"ts", "level", "logger"} <= set(line)


def test_masking_can_be_turned_off_for_debugging() -> None:
    line = json.loads(JsonFormatter(mask_identities=False).format(record(identity="cust-1")))
    assert line["identity"] == "cust-1"


def test_ops_server_serves_metrics_and_probe_status() -> None:
    registry = CollectorRegistry()
    Metrics(registry).ready.set(1)
    state = {"live": (True, "ok"), "ready": (False, "not yet in the consumer group")}
    server = OpsServer("127.0.0.1", 0, registry, lambda: state["live"], lambda: state["ready"])
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        metrics = httpx.get(f"{base}/metrics")
        assert metrics.status_code == 200 and "profile_consumer_ready 1.0" in metrics.text
        assert "profile_consumer_build_info{" in metrics.text
        assert httpx.get(f"{base}/healthz").status_code == 200
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 503 and "consumer group" in ready.text
        state["ready"] = (True, "ok")
        assert httpx.get(f"{base}/readyz").status_code == 200
        assert httpx.get(f"{base}/nope").status_code == 404
    finally:
        server.stop()
