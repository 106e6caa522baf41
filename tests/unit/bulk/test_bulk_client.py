"""BulkClient against a scripted HTTP peer: URLs, retry policy, limits, origin safety."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping

import pytest
from prometheus_client import CollectorRegistry

from consumer.bulk.answers import Submitted
from consumer.bulk.bodies import BodyBudget
from consumer.bulk.client import BulkClient
from consumer.bulk.endpoints import Endpoints
from consumer.bulk.limits import BulkLimits, local_limits
from consumer.bulk.rows import BatchBuilder
from consumer.config import Settings
from consumer.errors import BulkAnswerError, HttpTimeout, PermanentBulkError
from consumer.metrics import Metrics
from consumer.target.http import Answer
from tests.fakes.fake_time import FakeTime

pytestmark = pytest.mark.unit

BASE = "https://acme.tt.omtrdc.net"
OK = (
    b"<response><success>true</success><batchId>b1</batchId><message>ok</message>"
    b"<batchStatus>" + BASE.encode() + b"/m2/acme/v2/profile/batchStatus?batchId=b1"
    b"</batchStatus></response>"
)
DONE = (
    b"<response><batchId>b1</batchId><status>complete</status><batchSize>2</batchSize><rows>"
    b"<row><rowNumber>1</rowNumber><id>a</id><status>success</status></row>"
    b"<row><rowNumber>2</rowNumber><id>b</id><status>failed</status><message>bad</message></row>"
    b"</rows></response>"
)


Reply = Answer | Exception


class Scripted:
    """Answers from a script, records what was asked."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.asked: list[tuple[str, str, bytes, str | None]] = []

    async def request(
        self, method: str, url: str, body: bytes = b"", content_type: str | None = None
    ) -> Answer:
        self.asked.append((method, url, body, content_type))
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def answer(status: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> Answer:
    return Answer(status, dict(headers or {}), body)


def make(
    http: Scripted, t: FakeTime, settings: Settings | None = None
) -> tuple[BulkClient, BulkLimits, Metrics]:
    settings = settings or Settings.model_validate({"target": {"client_code": "acme"}})
    limits = local_limits(settings, clock=t.clock, sleep=t.sleep)
    metrics = Metrics(CollectorRegistry())
    client = BulkClient(
        http=http,
        endpoints=Endpoints(base_url=BASE, client_code="acme", pcid_api=settings.bulk.pcid_api),
        limits=limits,
        metrics=metrics.bulk,
        clock=t.clock,
        sleep=t.sleep,
        retry_after_max_seconds=settings.target.retry_after_max_seconds,
        rng=random.Random(7),
    )
    return client, limits, metrics


def batch() -> BatchBuilder[int]:
    builder: BatchBuilder[int] = BatchBuilder(identity_type="mbox3rdPartyId")
    builder.add("a", {"x": "1"}, 0)
    builder.add("b", {"x": "2"}, 1)
    return builder


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return found or 0.0


async def test_submit_posts_the_form_body_and_takes_rows_and_one_call() -> None:
    t = FakeTime(1_000.0)
    http = Scripted(answer(200, OK))
    client, limits, metrics = make(http, t)
    submitted = await client.submit(batch(), "mbox3rdPartyId")
    assert submitted == Submitted("b1", f"{BASE}/m2/acme/v2/profile/batchStatus?batchId=b1", "ok")
    method, url, body, content_type = http.asked[0]
    assert (method, url) == ("POST", f"{BASE}/m2/acme/v2/profile/batchUpdate")
    assert body == b"batch=thirdPartyId,x\na,1\nb,2"
    assert content_type == "application/x-www-form-urlencoded"
    assert limits.rows.snapshot().used == 2 and limits.calls.snapshot().used == 1
    assert value(metrics, "profile_consumer_bulk_requests_total", call="submit", code="2xx") == 1


async def test_pcid_rows_go_to_v1_when_configured() -> None:
    endpoints = Endpoints(base_url=BASE + "/", client_code="acme", pcid_api="v1")
    assert endpoints.submit_url("mboxPC") == f"{BASE}/m2/acme/profile/batchUpdate"
    assert endpoints.submit_url("mbox3rdPartyId") == f"{BASE}/m2/acme/v2/profile/batchUpdate"
    v2 = Endpoints(base_url=BASE, client_code="acme")
    assert v2.submit_url("mboxPC") == f"{BASE}/m2/acme/v2/profile/batchUpdate"
    assert v2.version("mboxPC") == "v2" and endpoints.version("mboxPC") == "v1"


async def test_503_with_retry_after_holds_calls_then_succeeds_never_raising() -> None:
    t = FakeTime(1_000.0)
    http = Scripted(
        answer(503, b"busy", {"retry-after": "7"}),
        answer(429),
        HttpTimeout("slow"),
        answer(502),
        answer(200, b"<html>proxy page</html>"),
        answer(200, OK),
    )
    client, limits, metrics = make(http, t)
    await client.submit(batch(), "mbox3rdPartyId")
    assert len(http.asked) == 6
    assert t.slept[0] == 7.0  # exactly Retry-After
    assert all(0 <= s <= 60 for s in t.slept[1:])
    assert limits.calls.snapshot().used == 6  # every attempt is a batch call
    assert limits.rows.snapshot().used == 2  # rows once per batch
    for reason in ("http_503", "http_429", "timeout", "http_5xx", "bad_answer"):
        assert value(metrics, "profile_consumer_bulk_retries_total", call="submit", reason=reason)


async def test_retry_after_is_capped() -> None:
    t = FakeTime(1_000.0)
    settings = Settings.model_validate({"target": {"retry_after_max_seconds": 30}})
    http = Scripted(answer(503, headers={"retry-after": "86400"}), answer(200, OK))
    client, _, _ = make(http, t, settings)
    await client.submit(batch(), "mbox3rdPartyId")
    assert t.slept == [30.0]


@pytest.mark.parametrize(
    "reply",
    [
        answer(400, b"<response><success>false</success><message>bad</message></response>"),
        answer(401),
        answer(413),
        answer(200, b"<response><success>false</success><message>no</message></response>"),
    ],
)
async def test_refusals_are_permanent_bulk_rejected(reply: Answer) -> None:
    t = FakeTime(1_000.0)
    client, _, _ = make(Scripted(reply), t)
    with pytest.raises(PermanentBulkError) as caught:
        await client.submit(batch(), "mbox3rdPartyId")
    assert caught.value.reason == "bulk_rejected"
    assert caught.value.http_status == reply.status


async def test_status_polls_with_details_and_reads_failed_rows() -> None:
    t = FakeTime(1_000.0)
    http = Scripted(answer(503), answer(200, b"<response><status>incomplete</status></response>"))
    http.replies.append(answer(200, DONE))
    client, limits, metrics = make(http, t)
    submitted = Submitted("b1", f"{BASE}/m2/acme/v2/profile/batchStatus?batchId=b1")
    first = await client.status(submitted)
    assert first.state == "incomplete"
    done = await client.status(submitted)
    assert done.complete and done.succeeded == 1
    assert [(r.number, r.identity, r.message) for r in done.rows] == [(2, "b", "bad")]
    assert http.asked[0][:2] == (
        "GET",
        f"{BASE}/m2/acme/v2/profile/batchStatus?batchId=b1&showDetails=true",
    )
    assert limits.calls.snapshot().used == 0  # polls are not batch calls
    assert value(metrics, "profile_consumer_bulk_status_polls_total", state="complete") == 1


async def test_status_on_another_origin_is_asked_on_ours() -> None:
    t = FakeTime(1_000.0)
    http = Scripted(answer(200, DONE), answer(200, DONE))
    client, _, _ = make(http, t)
    evil = Submitted("b1", "https://evil.example:8443/m2/acme/v2/profile/batchStatus?batchId=b1")
    await client.status(evil)
    relative = Submitted("b1", "/m2/acme/v2/profile/batchStatus?batchId=b1&showDetails=false")
    await client.status(relative)
    assert http.asked[0][1].startswith(f"{BASE}/m2/acme/v2/profile/batchStatus?batchId=b1")
    assert http.asked[1][1] == f"{BASE}/m2/acme/v2/profile/batchStatus?batchId=b1&showDetails=false"


@pytest.mark.parametrize(
    "url",
    ["", "javascript:alert(1)", "ftp://acme/m2", "https://h/a b", "https://h/x\r\nHost: e", "x"],
)
def test_unusable_status_urls_are_refused(url: str) -> None:
    endpoints = Endpoints(base_url=BASE, client_code="acme")
    with pytest.raises(BulkAnswerError):
        endpoints.status_url(url)


async def test_a_submit_answer_with_an_unusable_status_url_is_retried() -> None:
    t = FakeTime(1_000.0)
    bad = OK.replace(b"https://acme", b"ftp://acme")
    http = Scripted(answer(200, bad), answer(200, OK))
    client, _, _ = make(http, t)
    assert (await client.submit(batch(), "mbox3rdPartyId")).batch_id == "b1"
    assert len(http.asked) == 2


async def test_a_status_refused_for_good_is_permanent() -> None:
    t = FakeTime(1_000.0)
    client, _, _ = make(Scripted(answer(404, b"unknown batch")), t)
    with pytest.raises(PermanentBulkError) as caught:
        await client.status(Submitted("b1", f"{BASE}/m2/acme/v2/profile/batchStatus?batchId=b1"))
    assert caught.value.reason == "bulk_status_refused"


async def test_the_calls_limit_spaces_submits_over_the_minute() -> None:
    t = FakeTime(1_000.0)
    settings = Settings.model_validate({"bulk": {"calls_per_minute": 2}})
    http = Scripted(*[answer(200, OK)] * 3)
    client, _, _ = make(http, t, settings)
    started = t.now
    for _ in range(3):
        await client.submit(batch(), "mbox3rdPartyId")
    assert t.now - started >= 60.0  # the third call waited for the window


async def test_raw_body_needs_its_row_count() -> None:
    t = FakeTime(1_000.0)
    client, limits, _ = make(Scripted(answer(200, OK)), t)
    with pytest.raises(ValueError):
        await client.submit(b"batch=pcId,x\np,1", "mboxPC")
    await client.submit(b"batch=pcId,x\np,1", "mboxPC", rows=1)
    assert limits.rows.snapshot().used == 1


async def test_bulk_requests_neither_wait_for_nor_set_the_single_update_hold() -> None:
    import httpx

    from consumer.target.http import TargetHttp
    from consumer.target.transport import HeldTransport

    class Hold:
        def __init__(self) -> None:
            self.waited = 0
            self.answers: list[int] = []

        async def before_send(self) -> None:
            self.waited += 1

        def on_answer(self, status: int, headers: Mapping[str, str]) -> None:
            self.answers.append(status)

    def reply(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": "60"}, stream=httpx.ByteStream(b""))

    hold = Hold()
    mock = httpx.MockTransport(reply)
    client = httpx.AsyncClient(transport=HeldTransport(pooled=mock, fresh=mock, hold=hold))
    single = TargetHttp(client=client, timeout=5.0)
    bulk = single.derive(timeout=300.0, max_body=1 << 20, held=False)
    assert (
        await bulk.request("POST", "http://t/m2/acme/v2/profile/batchUpdate", b"x")
    ).status == 503
    assert (hold.waited, hold.answers) == (0, [])
    await single.request("GET", "http://t/m2/acme/profile/update")
    assert (hold.waited, hold.answers) == (1, [503])
    await client.aclose()


class Counted(BatchBuilder[int]):
    """A batch that counts its renders."""

    renders = 0

    def render(self) -> bytes:
        self.renders += 1
        return super().render()


def counted(identity: str) -> Counted:
    builder = Counted(identity_type="mbox3rdPartyId")
    builder.add(identity, {"x": "1"}, 0)
    return builder


class HeldPost(Scripted):
    """Like Scripted, but each request waits until `go` is set."""

    def __init__(self, *replies: Reply) -> None:
        super().__init__(*replies)
        self.go = asyncio.Event()

    async def request(
        self, method: str, url: str, body: bytes = b"", content_type: str | None = None
    ) -> Answer:
        await self.go.wait()
        return await super().request(method, url, body, content_type)


class ClosedRows:
    """A rows gate that grants nothing until opened."""

    def __init__(self) -> None:
        self.open = asyncio.Event()

    async def acquire(self, n: int = 1) -> None:
        await self.open.wait()


async def test_a_second_body_is_rendered_only_once_the_first_post_is_over() -> None:
    t = FakeTime(1_000.0)
    http = HeldPost(answer(200, OK), answer(200, OK))
    client, _, metrics = make(http, t)
    first, second = counted("a"), counted("b")
    client.bodies = BodyBudget(first.size, metrics.bulk.rendered_bytes.set)
    tasks = [asyncio.ensure_future(client.submit(b, "mbox3rdPartyId")) for b in (first, second)]
    for _ in range(10):
        await asyncio.sleep(0)
    assert (first.renders, second.renders) == (1, 0)
    assert value(metrics, "profile_consumer_bulk_rendered_bytes") == first.size
    http.go.set()
    await asyncio.gather(*tasks)
    assert (first.renders, second.renders) == (1, 1)
    assert [body for _, _, body, _ in http.asked] == [first.render(), second.render()]
    assert value(metrics, "profile_consumer_bulk_rendered_bytes") == 0


async def test_a_batch_waiting_for_rows_holds_no_body() -> None:
    t = FakeTime(1_000.0)
    http = Scripted(answer(200, OK))
    client, limits, _ = make(http, t)
    rows = ClosedRows()
    client._limits = BulkLimits(calls=limits.calls, rows=rows)  # type: ignore[arg-type]
    waiting = counted("a")
    task = asyncio.ensure_future(client.submit(waiting, "mbox3rdPartyId"))
    for _ in range(10):
        await asyncio.sleep(0)
    assert waiting.renders == 0 and client.bodies.held == 0
    rows.open.set()
    await task
    assert waiting.renders == 1 and client.bodies.held == 0
