"""Security, on the real broker and simulator.

- Kafka TLS/SASL: Tansu 0.6.0 accepts `--cert` but still serves plain TCP (an `openssl
  s_client` handshake gets "early eof"), and its `--authentication` needs SCRAM users that
  `tansu user create` cannot add to an authenticating in-memory broker. So the test here proves
  the settings reach both librdkafka clients untouched and that librdkafka accepts them
  (docs/reliability.md lists the settings for SASL_SSL/SCRAM and mTLS).
- Target over HTTPS: a private CA trusted through `target.verify_tls` works; a certificate
  the client does not trust is never sent anything.
- No token and no identity in logs (default level) nor in /metrics.
- Parameter injection: hostile values reach the simulator exactly as sent.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import random
import signal
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import CollectorRegistry

from consumer.kafka.clients import producer_config
from consumer.kafka.offsets import OffsetTracker
from consumer.kafka.source import KafkaSource
from consumer.metrics import Metrics
from devtools.samples import poison_event, sample_events
from devtools.simulator import SimulatorConfig, TargetSimulator
from tests.conftest import ROOT
from tests.e2e.test_cli import CLI
from tests.helpers import (
    assert_history_clean,
    committed,
    encoder,
    event_key,
    expected_profiles,
    finished,
    produce,
    read_all,
    running,
    wait_until,
)

pytestmark = pytest.mark.integration


# --- a private PKI, made per test ----------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    cert: Path  # issued by `ca`
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(folder: Path, label: str, client: bool = False) -> Pki:
    """A self-signed CA and a certificate it issued for 127.0.0.1/localhost (server or client)."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{label} test CA"))
        .issuer_name(_name(f"{label} test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(folder / f"{label}-ca.pem", folder / f"{label}.pem", folder / f"{label}.key")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki


@pytest.fixture
def https_simulator(tmp_path: Path) -> Iterator[tuple[TargetSimulator, Pki]]:
    pki = make_pki(tmp_path / "pki", "target")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert, pki.key)
    with TargetSimulator(SimulatorConfig(seed=1), ssl_context=context) as sim:
        yield sim, pki


# --- Kafka: security settings pass through untouched ----------------------------------------


def test_kafka_security_settings_reach_the_consumer_and_the_dlq_producer_untouched(
    make_settings, tmp_path: Path
) -> None:
    broker_ca = make_pki(tmp_path / "kafka", "kafka")
    client = make_pki(tmp_path / "kafka", "client", client=True)
    security: dict[str, Any] = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc-offline",
        "sasl.password": "0123-not-a-number",
        "ssl.ca.location": str(broker_ca.ca),
        # mTLS on top: the client certificate and key.
        "ssl.certificate.location": str(client.cert),
        "ssl.key.location": str(client.key),
        "ssl.endpoint.identification.algorithm": "https",
    }
    settings = make_settings(kafka__config=security)
    consumer_cfg = KafkaSource(settings.kafka, OffsetTracker(), Metrics(CollectorRegistry()))
    for name, config in (
        ("consumer", consumer_cfg.consumer_config()),
        ("DLQ producer", producer_config(settings)),
    ):
        for key, value in security.items():
            assert config.get(key) == value, f"{name}: {key}"
    # librdkafka itself accepts them (SCRAM and TLS are built in); no bootstrap, no network.
    offline = {k: v for k, v in security.items()}
    Consumer({"group.id": "g", **offline}).close()
    Producer({"acks": "all", "enable.idempotence": True, **offline}).flush(0)


def test_kafka_password_from_the_environment_stays_a_string(tmp_path: Path) -> None:
    from consumer.config import load_settings

    config = tmp_path / "c.yaml"
    config.write_text("kafka:\n  config: {security.protocol: SASL_SSL, sasl.mechanism: PLAIN}\n")
    settings = load_settings(
        config,
        {
            "PROFILE_CONSUMER__KAFKA__CONFIG__SASL_USERNAME": "svc",
            "PROFILE_CONSUMER__KAFKA__CONFIG__SASL_PASSWORD": "007",
        },
    )
    assert producer_config(settings)["sasl.password"] == "007"  # not the integer 7
    assert producer_config(settings)["sasl.username"] == "svc"


# --- Target over HTTPS ----------------------------------------------------------------------


@pytest.mark.parametrize("verify", ["private-ca", "off"])
async def test_target_over_https_with_a_trusted_private_ca_or_verification_off(
    broker, topics, make_settings, https_simulator, verify: str
) -> None:
    sim, pki = https_simulator
    assert sim.url.startswith("https://")
    tls: Any = str(pki.ca) if verify == "private-ca" else False
    settings = make_settings(target__base_url=sim.url, target__verify_tls=tls)
    enc = encoder(settings)
    events = sample_events(40, profiles=10, seed=4)
    ends = produce(
        broker.bootstrap, topics["topic"], ((event_key(e), enc.encode(e)) for e in events)
    )
    async with running(settings) as app:
        await wait_until(lambda: finished(app, len(events), topics["topic"]), 60)
    assert sim.profiles() == expected_profiles(events)
    assert_history_clean(sim, events)
    assert committed(broker.bootstrap, topics["group"], topics["topic"]) == ends


@pytest.mark.parametrize("trust", ["system-store", "another-ca"])
async def test_target_over_https_with_an_untrusted_certificate_sends_nothing(
    broker, topics, make_settings, https_simulator, tmp_path: Path, trust: str
) -> None:
    sim, _ = https_simulator
    verify: Any = True if trust == "system-store" else str(make_pki(tmp_path / "x", "x").ca)
    settings = make_settings(
        target__base_url=sim.url,
        target__verify_tls=verify,
        target__retry_base_seconds=0.05,
        target__retry_cap_seconds=0.2,
        target__circuit_failure_threshold=3,
        target__circuit_open_seconds=0.5,
        pipeline__shutdown_timeout_seconds=0.5,  # nothing can finish: do not wait for it
    )
    enc = encoder(settings)
    events = sample_events(10, profiles=10, seed=5)
    produce(broker.bootstrap, topics["topic"], ((event_key(e), enc.encode(e)) for e in events))
    async with running(settings) as app:
        m = app.metrics
        await wait_until(lambda: m.http_requests.labels("GET", "error")._value.get() >= 4, 60)
        await wait_until(lambda: m.circuit_open._value.get() == 1, 30)
        assert m.retries.labels("connection")._value.get() >= 3  # a connection error: retried
        assert m.updates_sent.labels("success")._value.get() == 0
        await wait_until(lambda: m.buffered_events._value.get() == len(events), 30)  # held
    assert sim.received() == []  # the handshake failed: no request ever reached the server
    assert committed(broker.bootstrap, topics["group"], topics["topic"]) == {}
    assert read_all(broker.bootstrap, topics["dlq"]) == []  # retryable: never dead-lettered


# --- no secret nor identity in logs or metrics ------------------------------------------------


def test_no_token_or_identity_in_logs_or_metrics(
    broker, simulator, topics, make_settings, tmp_path: Path
) -> None:
    token = "tok-7f3a9c2e51d84b6f"  # a test token
    simulator.configure(require_token=token, error_5xx_ratio=0.2, reset_ratio=0.05)
    settings = make_settings(
        target__retry_base_seconds=0.05,
        target__retry_cap_seconds=0.2,
        target__circuit_failure_threshold=1000,
    )
    config = tmp_path / "config.yaml"  # written by make_settings, without the token
    enc = encoder(settings)
    events = sample_events(120, profiles=30, seed=8)
    for i, event in enumerate(events):  # distinctive identities, plain ASCII (same encoded)
        if event["customer"]["thirdPartyId"]:
            event["customer"]["thirdPartyId"] = f"idleak{i % 30:04d}q"
        else:
            event["customer"]["pcId"] = f"pcleak{i % 30:04d}q"
    rng = random.Random(3)  # test data
    bad = [poison_event(rng, i, "invalid_identity") for i in range(3)]
    for i, event in enumerate(bad):
        event["customer"]["thirdPartyId"] = f"idleakbad{i}+" + "x" * 300
    identities = {e["customer"]["thirdPartyId"] or e["customer"]["pcId"] for e in events + bad}
    records = [(event_key(e), enc.encode(e)) for e in events + bad]
    produce(broker.bootstrap, topics["topic"], records)
    env = {**os.environ, "PROFILE_CONSUMER__TARGET__TOKEN": token, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(  # our console script
        [CLI, "run", "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert proc.stderr is not None
        first = ""
        while "metrics_port" not in first:  # the "starting" line carries the metrics port
            line = proc.stderr.readline()
            assert line, first
            first += line
        port = json.loads(first.splitlines()[-1])["metrics_port"]
        expected = expected_profiles(events)
        assert simulator.wait_for(lambda s: s.profiles() == expected, timeout=60)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        assert read_all(broker.bootstrap, topics["dlq"], expected=len(bad))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    logs = first + rest
    assert proc.returncode == 0, logs
    assert 401 not in {r.status for r in simulator.received()}  # the token was sent
    assert_history_clean(simulator, events)
    assert "profile_consumer_retries_total" in metrics  # faults were exercised and logged
    for line in logs.splitlines():
        json.loads(line)  # every line is structured (librdkafka's too): nothing bypasses masking
    for text, where in ((logs, "logs"), (metrics, "/metrics")):
        assert token not in text, where
        leaked = sorted(i for i in identities if i in text or i[:40] in text)
        assert leaked == [], f"identities in {where}: {leaked[:3]}"


# --- parameter injection, end to end ----------------------------------------------------------

HOSTILE = [
    "a&profile.injected=1",
    "x=y",
    "1+1 = 2",
    "100% & more",
    "#fragment",
    "line1\nline2\r\nline3",
    "mboxPC=evil",
    "%26%3D%25",
    "🙂 東京 Zürich",
    "?query;semi",
]


async def test_hostile_values_arrive_exactly_as_sent(
    broker, simulator, topics, make_settings
) -> None:
    settings = make_settings()
    enc = encoder(settings)
    events = []
    for i, event in enumerate(sample_events(4 * len(HOSTILE), profiles=1000, seed=12)):
        nasty = HOSTILE[i % len(HOSTILE)]
        if event["channel"] == "KIOSK":
            # An mboxPC is a Target visitor id: only its characters pass (a hostile one is
            # dead-lettered: tests/unit/pipeline/test_pipeline_identities.py); values stay hostile.
            event["customer"]["pcId"] = f"pc{i}"
            event["attributes"] = {"location_label": nasty}
        else:
            ident = f"id{i}-{nasty}".replace("+", "plus")  # mbox3rdPartyId refuses + and /
            event["customer"]["thirdPartyId"] = ident
        if event["channel"] == "CALL_CENTER":
            event["payload"]["reason"] = nasty * (1 if i % 8 else 400)  # GET, and a POST
        events.append(event)
    produce(broker.bootstrap, topics["topic"], ((event_key(e), enc.encode(e)) for e in events))
    async with running(settings) as app:
        await wait_until(lambda: finished(app, len(events), topics["topic"]), 60)
        expected = expected_profiles(events)
    received = simulator.received()
    assert {r.status for r in received} == {200}  # no duplicate/unknown parameter: no 400
    assert {r.method for r in received} == {"GET", "POST"}
    assert simulator.profiles() == expected
    assert_history_clean(simulator, events)
    for event in events:
        if event["channel"] == "CALL_CENTER":
            got = simulator.profiles()[("mbox3rdPartyId", event["customer"]["thirdPartyId"])]
            assert got["lastCallCentreReason"] == event["payload"]["reason"]
        elif event["channel"] == "KIOSK":
            got = simulator.profiles()[("mboxPC", event["customer"]["pcId"])]
            assert got["kioskLocation"] == event["attributes"]["location_label"]
