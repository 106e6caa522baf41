"""The send path through a real forward proxy (pproxy, a process started here).

Plain HTTP (the proxy forwards absolute-form requests) and HTTPS (CONNECT, then TLS to the
simulator with a test CA): the proxy's own log proves it carried the traffic, the simulator's
records prove every update arrived. NO_PROXY bypasses it; credentials never reach a log line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from prometheus_client import CollectorRegistry

from consumer.errors import RetryableDeliveryError
from consumer.metrics import Metrics
from consumer.target.client import TargetClient
from consumer.target.http import TargetHttp
from consumer.target.request import build_requests, endpoint
from devtools.broker import free_port
from devtools.simulator import SimulatorConfig, TargetSimulator
from tests.raw_http import (
    client_for,
    each_transport,  # noqa: F401  (autouse: both transports)
)

pytestmark = pytest.mark.integration
PPROXY = str(Path(sys.executable).with_name("pproxy"))
UPDATES = 20


@dataclass
class Proxy:
    url: str  # without credentials
    log: list[str] = field(default_factory=list)  # filled when the proxy has stopped

    def carried(self, port: int) -> int:
        """Connections the proxy opened to `port` (one per tunnel or upstream connection)."""
        return sum(1 for line in self.log if line.rstrip().endswith(f":{port}"))


@asynccontextmanager
async def forward_proxy(credentials: str = "") -> AsyncIterator[Proxy]:
    """pproxy on a free port; `credentials` ("user:password") makes it require them."""
    port = free_port()
    auth = f"#{credentials}" if credentials else ""
    process = await asyncio.create_subprocess_exec(
        PPROXY,
        "-l",
        f"http://127.0.0.1:{port}{auth}",
        "-v",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    proxy = Proxy(f"http://127.0.0.1:{port}")
    try:
        ready = await asyncio.wait_for(process.stdout.readline(), 20)
        assert b"Serving on" in ready, ready
        yield proxy
    finally:
        process.terminate()
        rest = await asyncio.wait_for(process.stdout.read(), 10)
        await process.wait()
        proxy.log = rest.decode(errors="replace").splitlines()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_simulator(ca: trustme.CA) -> Iterator[TargetSimulator]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    with TargetSimulator(SimulatorConfig(seed=1), host="localhost", ssl_context=context) as sim:
        yield sim


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


async def send_updates(http: TargetHttp, base_url: str, tag: str) -> None:
    client = TargetClient(http=http, metrics=Metrics(CollectorRegistry()))
    url = endpoint(base_url, "acme")
    for i in range(UPDATES):
        for request in build_requests(url, "mbox3rdPartyId", f"{tag}-{i}", {"tier": "gold"}):
            await client.send(request)
    await http.aclose()


def ids(sim: TargetSimulator) -> set[str]:
    return {identity for _, identity in sim.profiles()}


async def test_plain_http_through_a_proxy_with_credentials_from_the_environment(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    environ: Mapping[str, str] = {"PROXY_USER": "svc", "PROXY_PASSWORD": "pw-s3cret"}
    with TargetSimulator(SimulatorConfig(seed=1)) as sim:
        async with forward_proxy("svc:pw-s3cret") as proxy:
            configured = proxy.url.replace("://", "://${PROXY_USER}:${PROXY_PASSWORD}@")
            http = client_for(sim.url, proxy=configured, environ=environ)
            await send_updates(http, sim.url, "plain")
        assert ids(sim) == {f"plain-{i}" for i in range(UPDATES)}
    assert proxy.carried(sim.port) >= 1
    assert all("pw-s3cret" not in str(record.__dict__) for record in caplog.records)
    shown = [vars(r)["proxy"] for r in caplog.records if vars(r).get("event") == "target_client"]
    assert shown == [proxy.url.replace("://", "://***@")]


async def test_https_through_a_proxy_from_https_proxy_with_connect(
    tls_simulator: TargetSimulator, ca_file: str
) -> None:
    async with forward_proxy() as proxy:
        environ = {"HTTPS_PROXY": proxy.url, "NO_PROXY": "example.com"}
        http = client_for(tls_simulator.url, verify_tls=ca_file, environ=environ)
        await send_updates(http, tls_simulator.url, "tunnel")
    assert ids(tls_simulator) == {f"tunnel-{i}" for i in range(UPDATES)}
    assert any(f"-> localhost:{tls_simulator.port}" in line for line in proxy.log), proxy.log


async def test_ssl_cert_file_is_trusted_like_verify_tls(
    tls_simulator: TargetSimulator, ca_file: str
) -> None:
    async with forward_proxy() as proxy:
        environ = {"https_proxy": proxy.url, "SSL_CERT_FILE": ca_file}
        await send_updates(client_for(tls_simulator.url, environ=environ), tls_simulator.url, "e")
    assert len(ids(tls_simulator)) == UPDATES and proxy.carried(tls_simulator.port) >= 1


async def test_no_proxy_bypasses_the_proxy(tls_simulator: TargetSimulator, ca_file: str) -> None:
    async with forward_proxy() as proxy:
        environ = {"HTTPS_PROXY": proxy.url, "NO_PROXY": "127.0.0.1,.localhost,localhost"}
        http = client_for(tls_simulator.url, verify_tls=ca_file, environ=environ)
        await send_updates(http, tls_simulator.url, "direct")
    assert ids(tls_simulator) == {f"direct-{i}" for i in range(UPDATES)}
    assert proxy.carried(tls_simulator.port) == 0


async def test_refused_proxy_credentials_are_a_retryable_error_that_shows_none(
    tls_simulator: TargetSimulator, ca_file: str
) -> None:
    async with forward_proxy("svc:right") as proxy:
        wrong = proxy.url.replace("://", "://svc:wrong-s3cret@")
        http = client_for(tls_simulator.url, verify_tls=ca_file, proxy=wrong)
        with pytest.raises(RetryableDeliveryError) as info:
            await send_updates(http, tls_simulator.url, "refused")
    assert info.value.reason == "connection" and "s3cret" not in str(info.value)
    assert ids(tls_simulator) == set()


async def test_an_untrusted_certificate_is_refused_through_the_tunnel(
    tls_simulator: TargetSimulator,
) -> None:
    async with forward_proxy() as proxy:
        http = client_for(tls_simulator.url, proxy=proxy.url)  # certifi's bundle: no test CA
        with pytest.raises(RetryableDeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
            await send_updates(http, tls_simulator.url, "untrusted")
    assert ids(tls_simulator) == set()
