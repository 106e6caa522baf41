"""The simulator's Bulk Profile Update API over real loopback HTTP: body and header rules,
limits, asynchronous processing, per-row status, injected faults, the override caveat, history."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from devtools.simulator import (
    MAX_BULK_BODY_BYTES,
    MAX_BULK_ROWS,
    SimulatorConfig,
    TargetSimulator,
)
from tests.oracles import accepted_writes
from tests.unit.devtools.test_simulator import FakeClock  # a clock the test moves by hand

pytestmark = pytest.mark.unit

V2 = "/m2/acme/v2/profile/batchUpdate"
V1 = "/m2/acme/profile/batchUpdate"
SINGLE = "/m2/acme/profile/update"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Iterator[TargetSimulator]:
    config = SimulatorConfig(client_code="acme", seed=1, bulk_processing_seconds=5.0)
    with TargetSimulator(config, clock=clock) as simulator:
        yield simulator


@pytest.fixture
def client(sim: TargetSimulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, timeout=30) as http:
        yield http


def enc(value: str) -> str:
    """Encode a cell as a careful client does: everything but unreserved characters."""
    return quote(value, safe="")


def lines(*rows: list[str]) -> str:
    """Rows of encoded cells, each ended by a newline."""
    return "".join(",".join(enc(cell) for cell in row) + "\n" for row in rows)


def csv(header: list[str], *rows: list[str]) -> str:
    return lines(header, *rows)


def submit(client: httpx.Client, text: str, path: str = V2, **headers: str) -> httpx.Response:
    return client.post(path, content=("batch=" + text).encode(), headers={**FORM, **headers})


def batch_id(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    found = re.search(r"<batchId>([^<]+)</batchId>", response.text)
    assert found is not None
    return found.group(1)


def status(client: httpx.Client, ident: str, details: bool = False, v1: bool = False) -> str:
    path = "/m2/acme/profile/batchStatus" if v1 else "/m2/acme/v2/profile/batchStatus"
    query = f"?batchId={ident}" + ("&showDetails=true" if details else "")
    response = client.get(path + query)
    assert response.status_code == 200, response.text
    return response.text


def state_of(text: str) -> str:
    found = re.search(r"<status>(\w+)</status>", text)
    assert found is not None
    return found.group(1)


def rows_of(text: str) -> list[tuple[str, str, str, str]]:
    return re.findall(
        r"<row><rowNumber>(\d+)</rowNumber><id>([^<]*)</id><status>(\w+)</status>"
        r"<message>([^<]*)</message></row>",
        text,
    )


def single(client: httpx.Client, identity: str, **attributes: str) -> httpx.Response:
    params = {"mbox3rdPartyId": identity, **{f"profile.{k}": v for k, v in attributes.items()}}
    return client.get(SINGLE, params=params)


# --- submit and status: the documented answers


def test_submit_answers_the_documented_xml_with_a_status_url(
    sim: TargetSimulator, client: httpx.Client
) -> None:
    response = submit(client, csv(["thirdPartyId", "tier"], ["c-1", "gold"]))

    ident = batch_id(response)
    assert response.headers["content-type"] == "text/xml"
    assert response.text == (
        f"<response><success>true</success><batchId>{ident}</batchId>"
        "<message>Batch submitted for processing</message>"
        f"<batchStatus>{sim.url}/m2/acme/v2/profile/batchStatus?batchId={ident}</batchStatus>"
        "</response>"
    )
    assert re.fullmatch(r"[0-9A-Za-z-]+", ident)  # safe in a URL as it is


def test_batch_is_incomplete_until_its_processing_time_then_complete(
    sim: TargetSimulator, client: httpx.Client, clock: FakeClock
) -> None:
    ident = batch_id(submit(client, csv(["thirdPartyId", "a"], ["c-1", "1"], ["c-2", "2"])))

    clock.now = 1004.9
    assert status(client, ident) == (
        f"<response><batchId>{ident}</batchId><status>incomplete</status>"
        "<batchSize>2</batchSize></response>"
    )
    assert sim.profiles() == {}
    clock.now = 1005.0
    assert state_of(status(client, ident)) == "complete"
    assert sim.profiles() == {
        ("mbox3rdPartyId", "c-1"): {"a": "1"},
        ("mbox3rdPartyId", "c-2"): {"a": "2"},
    }


def test_show_details_reports_every_row_once_complete(
    client: httpx.Client, clock: FakeClock
) -> None:
    text = csv(["thirdPartyId", "a"], ["c-1", "1"], ["c<&>", "2"]) + "c-3,1,extra\n"
    ident = batch_id(submit(client, text))
    assert "<rows>" not in status(client, ident, details=True)  # not known while incomplete

    clock.now += 5
    detail = status(client, ident, details=True)

    assert "<id>c&lt;&amp;&gt;</id>" in detail
    assert rows_of(detail) == [
        ("1", "c-1", "success", "Row processed"),
        ("2", "c&lt;&amp;&gt;", "success", "Row processed"),
        ("3", "c-3", "failed", "row has 3 cells; the header has 2"),
    ]
    assert "<rows>" not in status(client, ident)  # only with showDetails=true


def test_wait_for_wakes_when_a_batch_completes() -> None:
    # A real clock: the simulator's own timer applies the batch and wakes the waiter.
    with TargetSimulator(SimulatorConfig(bulk_processing_seconds=0.2)) as real:
        with httpx.Client(base_url=real.url) as http:
            ident = batch_id(submit(http, csv(["thirdPartyId", "a"], ["c", "1"])))
            started = time.monotonic()
            woke = real.wait_for(lambda s: s.stats()["bulk_rows_applied"] == 1, timeout=20)
            waited = time.monotonic() - started
            assert state_of(status(http, ident)) == "complete"
    assert woke
    assert waited < 10  # woken by the batch, not by the timeout


def test_unknown_or_missing_batch_id(client: httpx.Client) -> None:
    unknown = client.get("/m2/acme/v2/profile/batchStatus?batchId=nope")
    missing = client.get("/m2/acme/v2/profile/batchStatus")

    assert unknown.status_code == 404
    assert "<success>false</success>" in unknown.text
    assert missing.status_code == 400


# --- body and header rules: the whole batch refused


# A raw "=" or an encoded NUL/SOH sends the body down the per-cell decoding path; the plain
# case takes the one-call decoding path: both must read the same values.
@pytest.mark.parametrize(
    ("raw_cell", "value"), [("x", "x"), ("a=b", "a=b"), ("%00%01", "\x00\x01")]
)
def test_cells_are_url_decoded_as_utf8_and_crlf_is_accepted(
    sim: TargetSimulator, client: httpx.Client, clock: FakeClock, raw_cell: str, value: str
) -> None:
    tricky = "🎉 a,b&c=d+e 100% line\nnext\x02"
    text = (
        f"thirdPartyId,{enc('naïve name')},plain\r\n"
        f"{enc('c,1')},{enc(tricky)},plain\r\n"
        f"c-2,{enc('é,')},{raw_cell}\r\n"
    )

    batch_id(submit(client, text))
    clock.now += 5

    assert sim.profiles() == {
        ("mbox3rdPartyId", "c,1"): {"naïve name": tricky, "plain": "plain"},
        ("mbox3rdPartyId", "c-2"): {"naïve name": "é,", "plain": value},
    }


def test_the_last_row_needs_no_newline(sim: TargetSimulator, client: httpx.Client) -> None:
    ident = batch_id(submit(client, "thirdPartyId,a\nc-1,1"))

    assert "<batchSize>1</batchSize>" in status(client, ident)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"thirdPartyId,a\nc,1\n", "must start with 'batch='"),
        (b"batch=thirdPartyId,a\nc,1&x\n", "un-encoded '&amp;'"),
        (b"batch=thirdPartyId,a\nc,1+1\n", "un-encoded '+'"),
        (b"batch=thirdPartyId,a\nc,100%\n", "invalid percent escape"),
        (b"batch=thirdPartyId,a\nc,%zz\n", "invalid percent escape"),
        (b"batch=thirdPartyId,a\nc,%FF\n", "not valid UTF-8"),
        (b"batch=thirdPartyId,a\nc,\xff\n", "not valid UTF-8"),
        (b"batch=thirdPartyId,a\nc,1\rx\n", "carriage return"),
        (b"batch=mbox3rdPartyId,a\nc,1\n", "thirdPartyId or pcId"),
        (b"batch=a,thirdPartyId\nc,1\n", "thirdPartyId or pcId"),
        (b"batch=thirdPartyId\nc\n", "names no attribute"),
        (b"batch=thirdPartyId,a,\nc,1,2\n", "empty attribute name"),
        (b"batch=thirdPartyId," + b"n" * 129 + b"\nc,1\n", "longer than 128"),
        (b"batch=thirdPartyId,profile.a\nc,1\n", "'profile.' prefix"),
        (b"batch=thirdPartyId,a,a\nc,1,2\n", "duplicate attribute name"),
        (b"batch=thirdPartyId,a\n", "no data rows"),
        (b"batch=", "no data rows"),
    ],
)
def test_an_unreadable_batch_is_400_and_stores_nothing(
    sim: TargetSimulator, client: httpx.Client, body: bytes, message: str
) -> None:
    response = client.post(V2, content=body, headers=FORM)

    assert response.status_code == 400
    assert response.text.startswith("<response><success>false</success><message>")
    assert message in response.text
    assert sim.bulk_batches() == []
    assert sim.stats()["bulk_refused_by_status"] == {"400": 1}


def test_an_attribute_name_of_128_characters_is_valid(client: httpx.Client) -> None:
    batch_id(submit(client, csv(["pcId", "n" * 128], ["p-1", "1"])))


def test_a_row_is_refused_on_its_own_and_the_others_apply(
    sim: TargetSimulator, client: httpx.Client, clock: FakeClock
) -> None:
    text = (
        csv(["thirdPartyId", "a", "b"], ["ok-1", "1", "1"], ["", "1", "1"], ["a+b", "1", "1"])
        + "short,1\n"
        + lines(["x" * 257, "1", "1"], ["ok-1", "2", "2"], ["ok-2", "1", "1"])
    )
    ident = batch_id(submit(client, text))
    clock.now += 5

    detail = rows_of(status(client, ident, details=True))
    assert [(number, state, message) for number, _, state, message in detail] == [
        ("1", "success", "Row processed"),
        ("2", "failed", "empty identity"),
        ("3", "failed", "thirdPartyId must not contain '+' or '/'"),
        ("4", "failed", "row has 2 cells; the header has 3"),
        ("5", "failed", "thirdPartyId is longer than 256 characters"),
        ("6", "failed", "duplicate thirdPartyId: row 1 has it"),
        ("7", "success", "Row processed"),
    ]
    assert set(sim.profiles()) == {("mbox3rdPartyId", "ok-1"), ("mbox3rdPartyId", "ok-2")}
    assert sim.profiles()[("mbox3rdPartyId", "ok-1")] == {"a": "1", "b": "1"}
    stats = sim.stats()
    assert (stats["bulk_rows_applied"], stats["bulk_rows_failed"]) == (2, 5)


def test_empty_values_update_nothing(
    sim: TargetSimulator, client: httpx.Client, clock: FakeClock
) -> None:
    assert single(client, "c-1", a="kept", b="old").status_code == 200
    batch_id(submit(client, csv(["thirdPartyId", "a", "b"], ["c-1", "", "new"])))
    clock.now += 5

    assert sim.profiles()[("mbox3rdPartyId", "c-1")] == {"a": "kept", "b": "new"}
    assert sim.received()[-1].attributes == {"b": "new"}  # the empty cell is no write


# --- limits


def test_500000_rows_are_accepted_and_one_more_is_400(
    sim: TargetSimulator, client: httpx.Client
) -> None:
    rows = "\n".join(map(str, range(MAX_BULK_ROWS)))
    full = "thirdPartyId,a\n" + rows.replace("\n", ",1\n") + ",1\n"

    ident = batch_id(submit(client, full))
    over = submit(client, full + "one-more,1\n")

    assert f"<batchSize>{MAX_BULK_ROWS}</batchSize>" in status(client, ident)
    assert over.status_code == 400
    assert "<success>false</success>" in over.text
    assert f"batch has {MAX_BULK_ROWS + 1} rows; at most {MAX_BULK_ROWS}" in over.text


def test_a_20_mb_batch_is_accepted(
    sim: TargetSimulator, client: httpx.Client, clock: FakeClock
) -> None:
    value = "v" * 20_000
    text = "thirdPartyId,a\n" + "".join(f"c-{i},{value}\n" for i in range(1000))
    body = ("batch=" + text).encode()
    assert len(body) > 20_000_000

    response = client.post(V2, content=body, headers=FORM)
    del body, text

    ident = batch_id(response)
    clock.now += 5
    assert rows_of(status(client, ident, details=True))[-1] == (
        "1000",
        "c-999",
        "success",
        "Row processed",
    )
    assert len(sim.profiles()) == 1000


@pytest.mark.parametrize("size", [MAX_BULK_BODY_BYTES, MAX_BULK_BODY_BYTES + 1])
def test_a_body_of_50_mb_or_more_is_413_and_not_read(
    sim: TargetSimulator, client: httpx.Client, size: int
) -> None:
    prefix = b"batch=thirdPartyId,a\nc,"
    body = prefix + b"x" * (size - len(prefix))

    response = client.post(V2, content=body, headers=FORM)
    del body

    assert response.status_code == 413
    assert response.headers["connection"] == "close"
    assert sim.bulk_batches() == []
    assert submit(client, csv(["thirdPartyId", "a"], ["c", "1"])).status_code == 200


def test_the_single_update_path_keeps_its_60_kb_limit(client: httpx.Client) -> None:
    base = b"mbox3rdPartyId=c&profile.pad="
    too_big = base + b"x" * (61441 - len(base))
    just_fits = base + b"x" * (61440 - len(base))

    assert client.post(SINGLE, content=too_big, headers=FORM).status_code == 413
    assert client.post(SINGLE, content=just_fits, headers=FORM).status_code == 200
    # ...while a batch of the same size is fine on the bulk path.
    assert submit(client, "thirdPartyId,a\nc," + "x" * 61441 + "\n").status_code == 200


def test_the_call_after_the_limit_is_503_with_retry_after_and_not_counted(
    sim: TargetSimulator, client: httpx.Client, clock: FakeClock
) -> None:
    sim.configure(bulk_calls_per_minute=3)
    text = csv(["thirdPartyId", "a"], ["c", "1"])
    answers = []
    for at in (1000.0, 1010.0, 1020.0, 1030.0, 1059.5, 1060.0, 1060.0):
        clock.now = at
        response = submit(client, text if at != 1010.0 else "garbage")  # a 400 counts too
        answers.append((response.status_code, response.headers.get("retry-after")))

    assert answers == [
        (200, None),
        (400, None),
        (200, None),
        (503, "30"),  # the call at 1000 leaves the rolling minute at 1060
        (503, "1"),  # half a second left: whole seconds, never 0
        (200, None),  # 1000 has left; the 503s took no slot
        (503, "10"),  # now 1010's call is the oldest
    ]
    assert "<success>false</success>" in response.text
    stats = sim.stats()
    assert (stats["bulk_calls"], stats["bulk_503s"]) == (4, 3)
    assert stats["bulk_refused_by_status"] == {"400": 1, "503": 3}


def test_status_polls_do_not_use_the_call_limit(sim: TargetSimulator, client: httpx.Client) -> None:
    sim.configure(bulk_calls_per_minute=1)
    ident = batch_id(submit(client, csv(["thirdPartyId", "a"], ["c", "1"])))
    for _ in range(5):
        status(client, ident)

    assert submit(client, csv(["thirdPartyId", "a"], ["c", "1"])).status_code == 503


def test_the_default_limit_is_50_calls_a_minute(client: httpx.Client, clock: FakeClock) -> None:
    text = "thirdPartyId,a\nc,1\n"
    codes = [submit(client, text).status_code for _ in range(51)]

    assert codes == [200] * 50 + [503]


# --- routing, token, methods


def test_token_is_required_on_submit_and_status(sim: TargetSimulator, client: httpx.Client) -> None:
    ident = batch_id(submit(client, "thirdPartyId,a\nc,1\n"))
    sim.configure(require_token="s3cret")
    status_path = f"/m2/acme/v2/profile/batchStatus?batchId={ident}"

    assert submit(client, "thirdPartyId,a\nc,1\n").status_code == 401
    assert client.get(status_path).status_code == 401
    auth = {"Authorization": "Bearer s3cret"}
    assert submit(client, "thirdPartyId,a\nc,1\n", **auth).status_code == 200
    assert client.get(status_path, headers=auth).status_code == 200
    assert sim.stats()["bulk_calls"] == 2  # the 401 was not a counted call


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("GET", V2, 405),
        ("POST", "/m2/acme/v2/profile/batchStatus?batchId=x", 405),
        ("POST", "/m2/other/v2/profile/batchUpdate", 404),
        ("POST", "/m2/acme/v3/profile/batchUpdate", 404),
        ("POST", "/m2/acme/v2/profile/batchDelete", 404),
    ],
)
def test_wrong_method_path_or_client_code(
    client: httpx.Client, method: str, path: str, code: int
) -> None:
    response = client.request(method, path, content=b"batch=thirdPartyId,a\nc,1\n", headers=FORM)

    assert response.status_code == code


def test_the_body_must_be_form_encoded(client: httpx.Client) -> None:
    response = submit(client, "thirdPartyId,a\nc,1\n", **{"Content-Type": "text/csv"})

    assert response.status_code == 415


def test_down_resets_bulk_connections_too(sim: TargetSimulator, client: httpx.Client) -> None:
    sim.configure(down=True)

    with pytest.raises(httpx.TransportError):
        submit(client, "thirdPartyId,a\nc,1\n")
    assert sim.stats()["resets"] == 1


# --- v1 and v2


def test_v1_has_its_own_status_url_and_never_row_detail(
    sim: TargetSimulator, client: httpx.Client, clock: FakeClock
) -> None:
    response = submit(client, csv(["thirdPartyId", "a"], ["c-1", "1"]) + "bad\n", path=V1)
    ident = batch_id(response)
    assert f"{sim.url}/m2/acme/profile/batchStatus?batchId={ident}<" in response.text

    clock.now += 5
    detail = status(client, ident, details=True, v1=True)

    assert state_of(detail) == "complete"
    assert "<rows>" not in detail
    # Every identity counts as an existing profile in the simulator, for v1 as for single
    # updates, so the row applies.
    assert sim.profiles() == {("mbox3rdPartyId", "c-1"): {"a": "1"}}
    assert [b.version for b in sim.bulk_batches()] == ["v1"]


def test_v2_creates_profiles_for_pc_id_rows_too(
    sim: TargetSimulator, client: httpx.Client, clock: FakeClock
) -> None:
    batch_id(submit(client, csv(["pcId", "a"], ["1368007744041-575948.01_00", "x"])))
    clock.now += 5

    assert sim.profiles() == {("mboxPC", "1368007744041-575948.01_00"): {"a": "x"}}


# --- injected faults


def test_rows_of_listed_identities_fail_with_row_rejected(
    sim: TargetSimulator, client: httpx.Client, clock: FakeClock
) -> None:
    sim.configure(bulk_row_failure_ids=["c-2"])
    ident = batch_id(submit(client, csv(["thirdPartyId", "a"], ["c-1", "1"], ["c-2", "1"])))
    clock.now += 5

    assert [r[2:] for r in rows_of(status(client, ident, details=True))] == [
        ("success", "Row processed"),
        ("failed", "row rejected"),
    ]
    assert list(sim.profiles()) == [("mbox3rdPartyId", "c-1")]
    assert [r.identity for r in sim.received()] == ["c-1"]


def test_row_failure_ratio_is_drawn_from_the_seed(clock: FakeClock) -> None:
    text = csv(["thirdPartyId", "a"], *[[f"c-{i}", "1"] for i in range(40)])
    runs = []
    for _ in range(2):
        config = SimulatorConfig(seed=7, bulk_row_failure_ratio=0.5, bulk_processing_seconds=0)
        with (
            TargetSimulator(config, clock=clock) as simulator,
            httpx.Client(base_url=simulator.url) as http,
        ):
            ident = batch_id(submit(http, text, path="/m2/x/v2/profile/batchUpdate"))
            detail = http.get(f"/m2/x/v2/profile/batchStatus?batchId={ident}&showDetails=true").text
            runs.append([row[2] for row in rows_of(detail)])

    assert runs[0] == runs[1]
    assert {"success", "failed"} == set(runs[0])


def test_stuck_batches_stay_stuck_and_never_apply(
    sim: TargetSimulator, client: httpx.Client, clock: FakeClock
) -> None:
    sim.configure(bulk_stuck_batches=1)
    stuck = batch_id(submit(client, csv(["thirdPartyId", "a"], ["c-1", "1"])))
    fine = batch_id(submit(client, csv(["thirdPartyId", "a"], ["c-2", "1"])))
    assert sim.config().bulk_stuck_batches == 0  # counted down as batches arrived

    assert state_of(status(client, stuck)) == "incomplete"
    clock.now += 3600
    assert state_of(status(client, stuck, details=True)) == "stuck"
    assert "<rows>" not in status(client, stuck, details=True)
    assert state_of(status(client, fine)) == "complete"
    assert list(sim.profiles()) == [("mbox3rdPartyId", "c-2")]
    assert [(b.id, b.status) for b in sim.bulk_batches()] == [
        (stuck, "stuck"),
        (fine, "complete"),
    ]


def test_stuck_ratio_makes_batches_stuck(
    sim: TargetSimulator, client: httpx.Client, clock: FakeClock
) -> None:
    sim.configure(bulk_stuck_ratio=1.0)
    ident = batch_id(submit(client, csv(["thirdPartyId", "a"], ["c-1", "1"])))
    clock.now += 5

    assert state_of(status(client, ident)) == "stuck"
    assert sim.profiles() == {}


# --- the override caveat


def two_batches(client: httpx.Client, clock: FakeClock, between: bool = False) -> None:
    batch_id(submit(client, csv(["thirdPartyId", "a", "b"], ["c-1", "a1", "b1"])))
    clock.now += 5
    if between:
        assert single(client, "c-1", x="mbox").status_code == 200
    batch_id(submit(client, csv(["thirdPartyId", "a"], ["c-1", "a2"])))
    clock.now += 5


def test_a_later_v2_batch_replaces_what_the_earlier_one_set(
    sim: TargetSimulator, client: httpx.Client, clock: FakeClock
) -> None:
    two_batches(client, clock)

    assert sim.profiles() == {("mbox3rdPartyId", "c-1"): {"a": "a2"}}
    assert sim.stats()["bulk_attributes_overridden"] == 1


def test_a_single_update_between_the_batches_keeps_the_earlier_attributes(
    sim: TargetSimulator, client: httpx.Client, clock: FakeClock
) -> None:
    two_batches(client, clock, between=True)

    assert sim.profiles() == {("mbox3rdPartyId", "c-1"): {"a": "a2", "b": "b1", "x": "mbox"}}
    assert sim.stats()["bulk_attributes_overridden"] == 0


def test_a_batch_that_carries_the_earlier_attributes_again_loses_nothing(
    sim: TargetSimulator, client: httpx.Client, clock: FakeClock
) -> None:
    batch_id(submit(client, csv(["thirdPartyId", "a", "b"], ["c-1", "a1", "b1"])))
    clock.now += 5
    batch_id(submit(client, csv(["thirdPartyId", "a", "b"], ["c-1", "a2", "b1"])))
    clock.now += 5

    assert sim.profiles() == {("mbox3rdPartyId", "c-1"): {"a": "a2", "b": "b1"}}


def test_v1_and_pc_id_batches_do_not_override(
    sim: TargetSimulator, client: httpx.Client, clock: FakeClock
) -> None:
    batch_id(submit(client, csv(["thirdPartyId", "a", "b"], ["t", "1", "1"]), path=V1))
    batch_id(submit(client, csv(["pcId", "a", "b"], ["p", "1", "1"])))
    clock.now += 5
    batch_id(submit(client, csv(["thirdPartyId", "a"], ["t", "2"]), path=V1))
    batch_id(submit(client, csv(["pcId", "a"], ["p", "2"])))
    clock.now += 5

    assert sim.profiles() == {
        ("mbox3rdPartyId", "t"): {"a": "2", "b": "1"},
        ("mboxPC", "p"): {"a": "2", "b": "1"},
    }


# --- history


def test_applied_rows_join_the_single_update_history(
    sim: TargetSimulator, client: httpx.Client, clock: FakeClock
) -> None:
    assert single(client, "c-1", a="first").status_code == 200
    ident = batch_id(submit(client, csv(["thirdPartyId", "a"], ["c-1", "second"], ["", "x"])))
    clock.now = 1007.0  # applied when next observed, after its 5 s
    assert single(client, "c-1", a="third").status_code == 200

    history = sim.received()
    assert [(r.at, r.attributes["a"], r.batch_id, r.batch_row) for r in history] == [
        (1000.0, "first", None, None),
        (1007.0, "second", ident, 1),
        (1007.0, "third", None, None),
    ]
    row = history[1]
    assert (row.identity_type, row.identity, row.accepted, row.status) == (
        "mbox3rdPartyId",
        "c-1",
        True,
        200,
    )
    assert [w.value for w in accepted_writes(history)] == ["first", "second", "third"]
    assert sim.profiles()[("mbox3rdPartyId", "c-1")] == {"a": "third"}
    # Bulk rows are not single updates: the single quota and request counters ignore them.
    assert (sim.accepted_count(), sim.stats()["received"]) == (2, 2)
    records = client.get("/_sim/records").json()
    assert records[1]["batch_id"] == ident
    assert accepted_writes(records)[1].value == "second"


def test_reset_forgets_batches(sim: TargetSimulator, client: httpx.Client) -> None:
    ident = batch_id(submit(client, "thirdPartyId,a\nc,1\n"))
    sim.reset()

    assert sim.bulk_batches() == []
    assert client.get(f"/m2/acme/v2/profile/batchStatus?batchId={ident}").status_code == 404


# --- admin and command line


def test_admin_bulk_config_and_stats(
    sim: TargetSimulator, client: httpx.Client, clock: FakeClock
) -> None:
    changed = client.post(
        "/_sim/config", json={"bulk_row_failure_ids": ["b", "a"], "bulk_stuck_batches": 2}
    )
    assert changed.status_code == 200
    assert changed.json()["bulk_row_failure_ids"] == ["a", "b"]
    assert sim.config().bulk_row_failure_ids == frozenset({"a", "b"})
    for bad in (
        {"bulk_row_failure_ids": "a"},
        {"bulk_stuck_batches": -1},
        {"bulk_calls_per_minute": 1.5},
        {"bulk_calls_window_seconds": 0},
    ):
        assert client.post("/_sim/config", json=bad).status_code == 400, bad
    client.post("/_sim/config", json={"bulk_stuck_batches": 0})

    ident = batch_id(submit(client, csv(["thirdPartyId", "x"], ["a", "1"], ["c", "1"])))
    clock.now += 5

    assert client.get("/_sim/bulk").json() == [
        {
            "id": ident,
            "version": "v2",
            "id_column": "thirdPartyId",
            "rows": 2,
            "failed_rows": 1,
            "status": "complete",
            "submitted_at": 1000.0,
        }
    ]
    stats = client.get("/_sim/stats").json()
    assert {k: v for k, v in stats.items() if k.startswith("bulk_")} == {
        "bulk_calls": 1,
        "bulk_503s": 0,
        "bulk_refused_by_status": {},
        "bulk_batches_accepted": 1,
        "bulk_rows_applied": 1,
        "bulk_rows_failed": 1,
        "bulk_attributes_overridden": 0,
    }


def test_command_line_bulk_options() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devtools",
            "simulate-target",
            "--bulk-calls-per-minute",
            "1",
            "--bulk-stuck-batches",
            "1",
            "--bulk-row-failure-ids",
            "a,b",
            "--bulk-processing-seconds",
            "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    ) as process:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        try:
            with httpx.Client(base_url=url, timeout=10) as http:
                config = http.get("/_sim/config").json()
                assert config["bulk_row_failure_ids"] == ["a", "b"]
                assert submit(http, "thirdPartyId,a\nc,1\n").status_code == 200
                assert submit(http, "thirdPartyId,a\nc,1\n").status_code == 503
                assert json.dumps(http.get("/_sim/bulk").json()).count('"stuck"') == 1
        finally:
            process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
