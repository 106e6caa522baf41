"""What the send path prepares once instead of per request keeps the exchange as it was."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from consumer.metrics import Metrics
from consumer.target.client import TargetClient
from consumer.target.request import TargetRequest
from consumer.target.response import parse_answer
from tests.raw_http import (
    Script,
    client_for,
    each_transport,  # noqa: F401  (autouse: both transports)
    raw_server,
)

pytestmark = pytest.mark.unit

SUCCESS = b"<response><success>true</success><pcId></pcId><message>ok</message></response>"


def answer_with_cookie(_head: bytes) -> bytes:
    body = SUCCESS
    return (
        b"HTTP/1.1 200 OK\r\nSet-Cookie: sticky=node-7; Path=/\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


async def test_a_cookie_set_on_one_answer_never_rides_on_the_next_update() -> None:
    script = Script(answer_with_cookie)
    async with raw_server(script) as url:
        client = client_for(url, token="s3cret")
        for i in range(3):
            answer = await client.request("GET", f"{url}/m2/acme/profile/update?mboxPC=p{i}")
            assert answer.status == 200 and answer.headers["set-cookie"].startswith("sticky=")
        await client.request("POST", f"{url}/m2/acme/profile/update", b"mboxPC=p9", "text/x")
        await client.aclose()
    assert len(script.requests) == 4
    for head in script.requests:
        assert b"cookie" not in head.lower(), head
    # Prepared headers: the token on every request, the Content-Type only on the POST.
    assert all(b"Authorization: Bearer s3cret\r\n" in head for head in script.requests)
    typed = [b"Content-Type: text/x\r\n" in head for head in script.requests]
    assert typed == [False, False, False, True]


async def test_counts_and_durations_land_under_their_labels() -> None:
    def answer(head: bytes) -> bytes:
        status = b"503 Busy" if b"?busy" in head else b"200 OK"
        return b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n\r\n" % len(SUCCESS) + SUCCESS

    metrics = Metrics(CollectorRegistry())
    async with raw_server(Script(answer)) as url:
        http = client_for(url)
        client = TargetClient(http=http, metrics=metrics)
        for _ in range(3):
            await client.send(TargetRequest("GET", f"{url}/m2/acme/profile/update?ok"))
        for _ in range(2):
            with pytest.raises(Exception, match="503"):
                await client.send(TargetRequest("GET", f"{url}/m2/acme/profile/update?busy"))
        await http.aclose()
    counts = metrics.http_requests
    assert counts.labels("GET", "2xx")._value.get() == 3
    assert counts.labels("GET", "5xx")._value.get() == 2
    durations = metrics.http_duration.labels("GET")
    assert sum(bucket.get() for bucket in durations._buckets) == 5


@pytest.mark.parametrize("size", [0, 600, 70_000])  # remembered, parsed each time, over the cap
def test_answers_parse_alike_whether_remembered_or_not(size: int) -> None:
    pad = b" " * size
    ok = b"<response><success>true</success><message>fine</message>" + pad + b"</response>"
    refused = b"<response><success>false</success><message>no</message>" + pad + b"</response>"
    for _ in range(2):  # the second round answers from the cache for short bodies
        good, bad = parse_answer(ok), parse_answer(refused)
        if size > 65_000:  # read up to MAX_BODY only: the truncated document does not parse
            assert good is None and bad is None
            continue
        assert good is not None and good.success and good.message == "fine"
        assert bad is not None and not bad.success and bad.message == "no"
    assert parse_answer(b"<nonsense") is None and parse_answer(b"<other/>") is None
