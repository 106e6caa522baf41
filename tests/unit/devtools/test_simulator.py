"""The Target simulator over real loopback HTTP: documented rules, quota, faults, admin API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import httpx
import pytest

from devtools.simulator import SimulatorConfig, TargetSimulator

pytestmark = pytest.mark.unit

PATH = "/m2/acme/profile/update"
REPO = Path(__file__).resolve().parents[3]


class FakeClock:
    """A clock the test moves by hand, so a 24 h window is testable in milliseconds."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Iterator[TargetSimulator]:
    with TargetSimulator(SimulatorConfig(client_code="acme", seed=1), clock=clock) as simulator:
        yield simulator


@pytest.fixture
def client(sim: TargetSimulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, timeout=10) as http:
        yield http


def query(**params: str) -> str:
    """Percent-encode every character that is not unreserved, as a careful client does."""
    return urlencode(params, quote_via=quote, safe="")


def get(client: httpx.Client, **params: str) -> httpx.Response:
    return client.get(f"{PATH}?{query(**params)}")


# --- success and parsing


def test_get_success_answers_the_documented_xml(
    sim: TargetSimulator, client: httpx.Client, clock: FakeClock
) -> None:
    response = get(client, mbox3rdPartyId="cust-1", **{"profile.tier": "gold"})

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/xml"
    assert response.text == (
        "<response><success>true</success><pcId></pcId>"
        "<message>Request successfully submitted</message></response>"
    )
    [record] = sim.received()
    assert (record.at, record.method, record.status, record.accepted) == (1000.0, "GET", 200, True)
    assert (record.identity_type, record.identity) == ("mbox3rdPartyId", "cust-1")
    assert record.attributes == {"tier": "gold"}


def test_mbox_pc_is_echoed_as_pc_id(client: httpx.Client) -> None:
    response = get(client, mboxPC="1368007744041-575948.01_00", **{"profile.a": "1"})

    assert "<pcId>1368007744041-575948.01_00</pcId>" in response.text


TRICKY = {
    "profile.emoji": "🎉 ok",
    "profile.amp": "a&b=c",
    "profile.plus": "1+1",
    "profile.pct": "100%",
}
EXPECTED = {name.removeprefix("profile."): value for name, value in TRICKY.items()}


def test_get_decodes_utf8_and_reserved_characters(
    sim: TargetSimulator, client: httpx.Client
) -> None:
    assert get(client, mbox3rdPartyId="c-1", **TRICKY).status_code == 200

    assert sim.received()[0].attributes == EXPECTED


def test_post_merges_query_string_and_form_body(
    sim: TargetSimulator, client: httpx.Client
) -> None:
    response = client.post(f"{PATH}?mbox3rdPartyId=c-2", data=TRICKY)

    assert response.status_code == 200
    [record] = sim.received()
    assert (record.method, record.identity) == ("POST", "c-2")
    assert record.attributes == EXPECTED


def test_post_body_must_be_form_encoded(client: httpx.Client) -> None:
    response = client.post(
        PATH, content=b"mbox3rdPartyId=c", headers={"Content-Type": "text/plain"}
    )

    assert response.status_code == 415


def test_keep_alive_serves_many_requests_on_one_connection(
    sim: TargetSimulator, client: httpx.Client
) -> None:
    for i in range(50):
        assert get(client, mbox3rdPartyId=f"c-{i}").status_code == 200

    assert sim.accepted_count() == 50
    assert client.get("/_sim/stats").json()["received"] == 50


# --- routing, identity and parameter rules


@pytest.mark.parametrize(
    "path", ["/m2/other/profile/update", "/m2/acme/profile", "/", "/m2//profile/update"]
)
def test_wrong_path_or_client_code_is_404(
    sim: TargetSimulator, client: httpx.Client, path: str
) -> None:
    response = client.get(f"{path}?mbox3rdPartyId=c")

    assert response.status_code == 404
    assert "<success>false</success>" in response.text
    assert sim.received()[0].status == 404


def test_any_client_code_is_accepted_when_none_is_configured(
    sim: TargetSimulator, client: httpx.Client
) -> None:
    sim.configure(client_code=None)

    assert client.get("/m2/whoever/profile/update?mbox3rdPartyId=c").status_code == 200


def test_other_methods_are_405(client: httpx.Client) -> None:
    response = client.put(f"{PATH}?mbox3rdPartyId=c")

    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"


@pytest.mark.parametrize(
    ("raw_query", "message"),
    [
        ("profile.a=1", "is required"),
        ("mbox3rdPartyId=&profile.a=1", "must not be empty"),
        ("mbox3rdPartyId=a&mboxPC=b", "exactly one"),
        ("mbox3rdPartyId=a&mbox3rdPartyId=b", "duplicate parameter: mbox3rdPartyId"),
        ("mbox3rdPartyId=a&profile.x=1&profile.x=2", "duplicate parameter: profile.x"),
        ("mbox3rdPartyId=a%2Bb", "'+' or '/'"),
        ("mbox3rdPartyId=a%2Fb", "'+' or '/'"),
        ("mbox3rdPartyId=" + "x" * 257, "longer than 256"),
        ("mbox3rdPartyId=a&evil=1", "unknown parameter: evil"),
        ("mbox3rdPartyId=a&profile.=1", "empty profile attribute name"),
        ("mbox3rdPartyId=a&profile." + "n" * 129 + "=1", "longer than 128"),
        ("mbox3rdPartyId=%FF", "not valid UTF-8"),
    ],
)
def test_invalid_parameters_are_400_with_xml_message(
    sim: TargetSimulator, client: httpx.Client, raw_query: str, message: str
) -> None:
    response = client.get(f"{PATH}?{raw_query}")

    assert response.status_code == 400
    assert response.text.startswith("<response><success>false</success><message>")
    assert message in response.text
    [record] = sim.received()
    assert (record.status, record.accepted) == (400, False)
    assert sim.profiles() == {}


def test_injected_parameter_is_caught_as_duplicate(
    sim: TargetSimulator, client: httpx.Client
) -> None:
    # A client that forgot to encode "&" lets a value smuggle a second identity in.
    response = client.get(f"{PATH}?mbox3rdPartyId=a&profile.x=1&mbox3rdPartyId=victim")

    assert response.status_code == 400


def test_third_party_id_of_256_characters_is_valid(client: httpx.Client) -> None:
    assert get(client, mbox3rdPartyId="x" * 256).status_code == 200


def test_duplicate_across_query_and_body_is_400(client: httpx.Client) -> None:
    response = client.post(f"{PATH}?mbox3rdPartyId=a", data={"mbox3rdPartyId": "b"})

    assert response.status_code == 400


# --- size limits


def url_of_length(sim: TargetSimulator, total: int) -> str:
    """A GET URL exactly `total` bytes long, counting scheme, host and port."""
    base = f"{sim.url}{PATH}?mbox3rdPartyId=c&profile.pad="
    return base + "x" * (total - len(base))


def test_get_url_of_8192_bytes_is_accepted(sim: TargetSimulator, client: httpx.Client) -> None:
    url = url_of_length(sim, 8192)

    assert len(url) == 8192
    assert client.get(url).status_code == 200


def test_get_url_of_8193_bytes_is_414(sim: TargetSimulator, client: httpx.Client) -> None:
    response = client.get(url_of_length(sim, 8193))

    assert response.status_code == 414
    assert sim.received()[0].status == 414


def form_body_of_length(total: int) -> bytes:
    base = b"mbox3rdPartyId=c&profile.pad="
    return base + b"x" * (total - len(base))


def test_post_body_of_61440_bytes_is_accepted(client: httpx.Client) -> None:
    response = client.post(PATH, content=form_body_of_length(61440),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})

    assert response.status_code == 200


def test_post_body_of_61441_bytes_is_413_and_closes(
    sim: TargetSimulator, client: httpx.Client
) -> None:
    response = client.post(PATH, content=form_body_of_length(61441),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})

    assert response.status_code == 413
    assert response.headers["connection"] == "close"
    assert get(client, mbox3rdPartyId="next").status_code == 200  # a new connection works


def test_huge_post_body_still_gets_its_413(client: httpx.Client) -> None:
    # The unread body is drained after the answer, so no RST destroys the 413.
    response = client.post(PATH, content=form_body_of_length(4_000_000),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})

    assert response.status_code == 413


def test_oversized_request_head_is_431(client: httpx.Client) -> None:
    response = client.get(PATH, headers={"X-Big": "y" * 1_000_000})

    assert response.status_code == 431


# --- quota


def test_quota_429_retry_after_counts_down_to_the_oldest_update(
    sim: TargetSimulator, client: httpx.Client, clock: FakeClock
) -> None:
    sim.configure(quota_limit=2, quota_window_seconds=10.0)
    statuses = []
    for at in (1000.0, 1003.0, 1005.0, 1009.5, 1010.0, 1010.0):
        clock.now = at
        response = get(client, mbox3rdPartyId=f"c-{at}")
        statuses.append((response.status_code, response.headers.get("retry-after")))

    assert statuses == [
        (200, None), (200, None),
        (429, "5"),  # the update at 1000 leaves (t-10, t] at 1010
        (429, "1"),  # 0.5 s left: rounded up, never 0
        (200, None),  # 1000 is out of (1000, 1010]
        (429, "3"),  # now the update at 1003 is the oldest
    ]
    assert "quota exceeded" in response.text
    assert sim.accepted_count() == 3
    assert sim.max_accepted_in_window(10.0) == 2
    assert sim.max_accepted_in_window(100.0) == 3


def test_quota_lowered_below_usage_waits_for_enough_updates_to_leave(
    sim: TargetSimulator, client: httpx.Client, clock: FakeClock
) -> None:
    sim.configure(quota_window_seconds=100.0)
    for at in (1000.0, 1010.0, 1020.0):
        clock.now = at
        get(client, mbox3rdPartyId="c")
    sim.configure(quota_limit=2)
    clock.now = 1030.0

    # Three in the window, room for one below a limit of 2: two must leave, 1010's at 1110.
    assert get(client, mbox3rdPartyId="c").headers["retry-after"] == "80"


# --- fault injection


def test_injected_503(sim: TargetSimulator, client: httpx.Client) -> None:
    sim.configure(error_5xx_ratio=1.0)

    response = get(client, mbox3rdPartyId="c", **{"profile.a": "1"})

    assert response.status_code == 503
    [record] = sim.received()
    assert (record.status, record.accepted, record.identity) == (503, False, "c")
    assert sim.profiles() == {}


@pytest.mark.parametrize(("seconds", "header"), [(1.0, "1"), (0.25, "0.25"), (7, "7")])
def test_injected_429_carries_retry_after(
    sim: TargetSimulator, client: httpx.Client, seconds: float, header: str
) -> None:
    sim.configure(error_429_ratio=1.0, retry_after_seconds=seconds)

    response = get(client, mbox3rdPartyId="c")

    assert (response.status_code, response.headers["retry-after"]) == (429, header)


def test_reset_raises_a_transport_error_and_records_nothing(
    sim: TargetSimulator, client: httpx.Client
) -> None:
    sim.configure(reset_ratio=1.0)

    with pytest.raises(httpx.TransportError):
        get(client, mbox3rdPartyId="c")

    assert sim.received() == []
    assert sim.stats()["resets"] == 1


def test_down_resets_every_update_but_admin_still_answers(
    sim: TargetSimulator, client: httpx.Client
) -> None:
    sim.configure(down=True)
    for _ in range(3):
        with pytest.raises(httpx.TransportError):
            get(client, mbox3rdPartyId="c")

    assert client.post("/_sim/config", json={"down": False}).status_code == 200
    assert get(client, mbox3rdPartyId="c").status_code == 200


def test_going_down_resets_a_request_waiting_out_its_latency(sim: TargetSimulator) -> None:
    sim.configure(latency_seconds=60.0)
    outcome: list[BaseException | int] = []

    def call() -> None:
        with httpx.Client(base_url=sim.url, timeout=30) as http:
            try:
                outcome.append(get(http, mbox3rdPartyId="c").status_code)
            except httpx.TransportError as exc:
                outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    assert sim.wait_for(lambda s: len(s.received()) == 1, timeout=5)
    sim.configure(down=True)
    caller.join(timeout=10)

    assert not caller.is_alive()
    assert isinstance(outcome[0], httpx.TransportError)


def test_latency_on_one_connection_does_not_block_another(sim: TargetSimulator) -> None:
    sim.configure(latency_seconds=60.0)
    slow = threading.Thread(target=lambda: _swallow_transport_errors(sim.url), daemon=True)
    slow.start()
    assert sim.wait_for(lambda s: len(s.received()) == 1, timeout=5)
    sim.configure(latency_seconds=0.0)

    with httpx.Client(base_url=sim.url, timeout=5) as http:
        assert get(http, mbox3rdPartyId="fast").status_code == 200
    assert slow.is_alive()  # still waiting out its minute; stop() resets it


def _swallow_transport_errors(url: str) -> None:
    with httpx.Client(base_url=url, timeout=120) as http:
        try:
            get(http, mbox3rdPartyId="slow")
        except httpx.TransportError:
            pass


def test_same_seed_replays_the_same_faults(clock: FakeClock) -> None:
    config = SimulatorConfig(seed=42, error_5xx_ratio=0.3, error_429_ratio=0.3)
    runs = []
    for _ in range(2):
        with TargetSimulator(config, clock=clock) as simulator, httpx.Client() as http:
            url = f"{simulator.url}/m2/x/profile/update?mbox3rdPartyId=c"
            runs.append([http.get(url).status_code for _ in range(30)])

    assert runs[0] == runs[1]
    assert {200, 429, 503} <= set(runs[0])


# --- early requests, auth


def test_early_requests_counts_arrivals_before_retry_after(
    sim: TargetSimulator, client: httpx.Client, clock: FakeClock
) -> None:
    sim.configure(error_429_ratio=1.0, retry_after_seconds=2.0)
    get(client, mbox3rdPartyId="c")  # told: not before 1002
    sim.configure(error_429_ratio=0.0)

    clock.now = 1001.9
    get(client, mbox3rdPartyId="c")
    clock.now = 1002.0
    get(client, mbox3rdPartyId="c")

    assert sim.early_requests() == 1
    assert client.get("/_sim/stats").json()["early_requests"] == 1


def test_token_is_required_when_configured(client: httpx.Client, sim: TargetSimulator) -> None:
    sim.configure(require_token="s3cret")

    assert get(client, mbox3rdPartyId="c").status_code == 401
    wrong = client.get(f"{PATH}?mbox3rdPartyId=c", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    right = client.get(f"{PATH}?mbox3rdPartyId=c", headers={"Authorization": "Bearer s3cret"})
    assert right.status_code == 200


# --- state: profiles, wait_for, reset, configure


def test_profiles_merge_accepted_updates_in_arrival_order(
    sim: TargetSimulator, client: httpx.Client
) -> None:
    get(client, mbox3rdPartyId="c-1", **{"profile.a": "1", "profile.b": "1"})
    get(client, mbox3rdPartyId="c-1", **{"profile.a": "2"})
    sim.configure(error_5xx_ratio=1.0)
    get(client, mbox3rdPartyId="c-1", **{"profile.a": "lost"})
    sim.configure(error_5xx_ratio=0.0)
    get(client, mboxPC="pc-9", **{"profile.a": "x"})

    assert sim.profiles() == {
        ("mbox3rdPartyId", "c-1"): {"a": "2", "b": "1"},
        ("mboxPC", "pc-9"): {"a": "x"},
    }
    assert [r.accepted for r in sim.received()] == [True, True, False, True]


def test_wait_for_wakes_on_a_request_without_polling(sim: TargetSimulator) -> None:
    woke = threading.Event()
    result: list[bool] = []

    def waiter() -> None:
        result.append(sim.wait_for(lambda s: s.accepted_count() >= 1, timeout=30))
        woke.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    assert not woke.is_set()
    with httpx.Client(base_url=sim.url) as http:
        get(http, mbox3rdPartyId="c")
    assert woke.wait(timeout=5)  # far below the waiter's 30 s: woken, not timed out
    thread.join()
    assert result == [True]


def test_wait_for_returns_false_on_timeout(sim: TargetSimulator) -> None:
    assert sim.wait_for(lambda s: s.accepted_count() > 0, timeout=0.01) is False


def test_reset_forgets_records_profiles_and_quota(
    sim: TargetSimulator, client: httpx.Client
) -> None:
    sim.configure(quota_limit=1)
    get(client, mbox3rdPartyId="c")
    assert get(client, mbox3rdPartyId="c").status_code == 429

    sim.reset()

    assert (sim.received(), sim.profiles(), sim.accepted_count()) == ([], {}, 0)
    assert get(client, mbox3rdPartyId="c").status_code == 200


def test_configure_rejects_unknown_and_invalid_settings(sim: TargetSimulator) -> None:
    with pytest.raises(ValueError, match="unknown"):
        sim.configure(quota=5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        sim.configure(error_5xx_ratio=2)
    with pytest.raises(ValueError, match="integer"):
        sim.configure(quota_limit="10")


def test_max_records_keeps_the_latest_only(sim: TargetSimulator, client: httpx.Client) -> None:
    sim.configure(max_records=2)
    for i in range(5):
        get(client, mbox3rdPartyId=f"c-{i}")

    assert [r.identity for r in sim.received()] == ["c-3", "c-4"]
    assert sim.accepted_count() == 5


# --- admin endpoints


def test_admin_records_profiles_and_stats(sim: TargetSimulator, client: httpx.Client) -> None:
    get(client, mbox3rdPartyId="c-1", **{"profile.a": "é"})
    client.get(f"{PATH}?profile.a=1")  # 400

    records = client.get("/_sim/records").json()
    assert [(r["identity"], r["status"], r["accepted"]) for r in records] == [
        ("c-1", 200, True), ("", 400, False),
    ]
    assert records[0]["attributes"] == {"a": "é"}
    assert client.get("/_sim/profiles").json() == {"mbox3rdPartyId:c-1": {"a": "é"}}
    stats = client.get("/_sim/stats").json()
    assert {k: v for k, v in stats.items() if not k.startswith("bulk_")} == {
        "received": 2,
        "accepted": 1,
        "rejected_by_status": {"400": 1},
        "max_accepted_in_window": 1,
        "early_requests": 0,
        "overlapping_requests": 0,
        "resets": 0,
    }


def test_admin_config_and_reset(sim: TargetSimulator, client: httpx.Client) -> None:
    changed = client.post("/_sim/config", json={"quota_limit": 1, "latency_seconds": 0})

    assert changed.status_code == 200
    assert changed.json()["quota_limit"] == 1
    assert sim.config().quota_limit == 1
    get(client, mbox3rdPartyId="c")
    assert get(client, mbox3rdPartyId="c").status_code == 429

    assert client.post("/_sim/reset").json() == {"reset": True}
    assert sim.received() == []


def test_admin_rejects_bad_config_and_unknown_routes(client: httpx.Client) -> None:
    assert client.post("/_sim/config", json={"nope": 1}).status_code == 400
    assert client.post("/_sim/config", content=b"not json").status_code == 400
    assert client.post("/_sim/config", json=[1]).status_code == 400
    assert client.get("/_sim/nothing").status_code == 404


def test_admin_is_never_faulted(sim: TargetSimulator, client: httpx.Client) -> None:
    sim.configure(reset_ratio=1.0, error_5xx_ratio=1.0, require_token="t")

    assert client.get("/_sim/stats").status_code == 200


# --- lifecycle and command line


def test_restart_keeps_the_port() -> None:
    simulator = TargetSimulator()
    simulator.start()
    port = simulator.port
    simulator.stop()
    simulator.start()
    try:
        assert simulator.port == port
        with httpx.Client() as http:
            response = http.get(f"{simulator.url}/m2/x/profile/update?mboxPC=p")
        assert response.status_code == 200
    finally:
        simulator.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_https_with_an_ssl_context(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    trust = ssl.create_default_context(cafile=str(cert))

    with TargetSimulator(ssl_context=context) as simulator, httpx.Client(verify=trust) as http:
        assert simulator.url.startswith("https://127.0.0.1:")
        response = http.get(f"{simulator.url}/m2/x/profile/update?mboxPC=p")
    assert "<pcId>p</pcId>" in response.text


def test_command_line_serves_until_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    config = json.dumps({"quota_limit": 1})
    with subprocess.Popen(
        [sys.executable, "-m", "devtools", "simulate-target", "--client-code", "acme",
         "--config-json", config],
        stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
    ) as process:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        try:
            with httpx.Client(base_url=url, timeout=10) as http:
                assert get(http, mbox3rdPartyId="c").status_code == 200
                assert get(http, mbox3rdPartyId="c").status_code == 429
                assert http.get("/_sim/stats").json()["accepted"] == 1
        finally:
            process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_overlapping_requests_for_one_profile_are_counted() -> None:
    import concurrent.futures

    with TargetSimulator(SimulatorConfig(latency_seconds=0.3)) as sim:
        url = f"{sim.url}/m2/acme/profile/update"
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda _: httpx.get(url, params={"mboxPC": "p"}), range(2)))
        assert sim.overlapping_requests() == 1
        httpx.get(url, params={"mboxPC": "p"})
        assert sim.overlapping_requests() == 1
