"""BulkClient against the real simulator over HTTP: submit, poll, per-row failures, 503s."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from consumer.bulk.answers import MAX_STATUS_BODY, BatchStatus, Submitted
from consumer.bulk.client import BulkClient
from consumer.bulk.limits import local_limits
from consumer.bulk.rows import BatchBuilder
from consumer.config import Settings
from consumer.errors import PermanentBulkError
from consumer.metrics import Metrics
from consumer.target.http import open_client
from devtools.simulator import TargetSimulator

pytestmark = pytest.mark.integration


@pytest.fixture
async def bulk(simulator: TargetSimulator) -> AsyncIterator[tuple[BulkClient, Metrics]]:
    settings = Settings.model_validate(
        {
            "target": {"base_url": simulator.url, "client_code": "acme", "token": "t0k"},
            "bulk": {"request_timeout_seconds": 30},
        }
    )
    http = open_client(settings, hold=None, environ={})
    loop = asyncio.get_running_loop()
    metrics = Metrics(CollectorRegistry())
    client = BulkClient.from_settings(
        settings,
        http=http.derive(
            timeout=settings.bulk.request_timeout_seconds, max_body=MAX_STATUS_BODY, held=False
        ),
        limits=local_limits(settings, clock=loop.time),
        metrics=metrics.bulk,
        clock=loop.time,
    )
    try:
        yield client, metrics
    finally:
        await http.aclose()


async def until_final(client: BulkClient, submitted: Submitted) -> BatchStatus:
    """Poll as the wiring will (Target offers no push), bounded."""
    for _ in range(200):
        status = await client.status(submitted)
        if status.state != "incomplete":
            return status
        await asyncio.sleep(0.05)
    raise AssertionError("the batch never left `incomplete`")


def batch(*identities: str) -> BatchBuilder[int]:
    builder: BatchBuilder[int] = BatchBuilder(identity_type="mbox3rdPartyId")
    for number, identity in enumerate(identities):
        builder.add(identity, {"tier": "gold", "note": f"a,b&c+d%{number}\nü"}, number)
    builder.add(identities[0], {"tier": "platinum"}, len(identities))
    return builder


async def test_submit_poll_complete_with_a_failed_row(
    simulator: TargetSimulator, bulk: tuple[BulkClient, Metrics]
) -> None:
    client, _ = bulk
    simulator.configure(
        require_token="t0k",
        bulk_processing_seconds=0.2,
        bulk_row_failure_ids=frozenset({"bad-1"}),
    )
    submitted = await client.submit(batch("p-1", "bad-1", "p-2"), "mbox3rdPartyId")
    assert submitted.batch_id and submitted.status_url.startswith(simulator.url)
    status = await until_final(client, submitted)
    assert status.complete and status.succeeded == 2
    assert [(row.number, row.identity, row.state) for row in status.rows] == [
        (2, "bad-1", "failed")
    ]
    profiles = simulator.profiles()
    assert profiles[("mbox3rdPartyId", "p-1")] == {"tier": "platinum", "note": "a,b&c+d%0\nü"}
    assert ("mbox3rdPartyId", "bad-1") not in profiles
    (accepted,) = simulator.bulk_batches()
    assert (accepted.version, accepted.rows, accepted.failed_rows) == ("v2", 3, 1)


async def test_503_beyond_the_call_rate_is_retried_after_its_retry_after(
    simulator: TargetSimulator, bulk: tuple[BulkClient, Metrics]
) -> None:
    client, metrics = bulk
    simulator.configure(bulk_calls_per_minute=1, bulk_calls_window_seconds=1.5)
    first = await client.submit(batch("a-1"), "mbox3rdPartyId")
    second = await client.submit(batch("b-1"), "mbox3rdPartyId")  # 503 first, then accepted
    assert first.batch_id != second.batch_id
    assert simulator.stats()["bulk_503s"] >= 1
    retried = metrics.registry.get_sample_value(
        "profile_consumer_bulk_retries_total", {"call": "submit", "reason": "http_503"}
    )
    assert retried is not None and retried >= 1
    assert len(simulator.bulk_batches()) == 2
    assert (await until_final(client, second)).complete


async def test_an_unreadable_batch_is_refused_for_good(
    bulk: tuple[BulkClient, Metrics],
) -> None:
    client, _ = bulk
    with pytest.raises(PermanentBulkError) as caught:
        await client.submit(b"batch=email,x\na,1", "mbox3rdPartyId", rows=1)
    assert caught.value.reason == "bulk_rejected" and caught.value.http_status == 400
