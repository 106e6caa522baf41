from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.errors import PermanentDeliveryError
from consumer.target.request import GET_LIMIT, POST_LIMIT, build_requests, endpoint

pytestmark = pytest.mark.unit
URL = endpoint("http://127.0.0.1:1", "acme")


def params(request) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    text = urlsplit(request.url).query if request.method == "GET" else request.body.decode()
    return parse_qsl(text, keep_blank_values=True, strict_parsing=True)


def test_small_updates_are_a_get_with_identity_first() -> None:
    (req,) = build_requests(URL, "mbox3rdPartyId", "c1", {"a": "1", "b": "x y"})
    assert req.method == "GET"
    assert (
        req.url
        == "http://127.0.0.1:1/m2/acme/profile/update?mbox3rdPartyId=c1&profile.a=1&profile.b=x%20y"
    )


def test_url_of_exactly_8192_bytes_is_a_get_one_more_is_a_post() -> None:
    base = len(f"{URL}?mboxPC=p&profile.a=")
    (req,) = build_requests(URL, "mboxPC", "p", {"a": "v" * (GET_LIMIT - base)})
    assert req.method == "GET" and len(req.url) == GET_LIMIT
    (req,) = build_requests(URL, "mboxPC", "p", {"a": "v" * (GET_LIMIT - base + 1)})
    assert req.method == "POST" and req.url == URL
    assert params(req) == [("mboxPC", "p"), ("profile.a", "v" * (GET_LIMIT - base + 1))]


def test_large_updates_split_over_posts_each_with_the_identity() -> None:
    attrs = {f"a{i}": "v" * 20_000 for i in range(7)}  # three fit in one POST: 3 + 3 + 1
    reqs = build_requests(URL, "mbox3rdPartyId", "c1", attrs)
    assert len(reqs) == 3 and all(r.method == "POST" for r in reqs)
    assert all(len(r.body) <= POST_LIMIT for r in reqs)
    merged: dict[str, str] = {}
    for r in reqs:
        pairs = params(r)
        assert pairs[0] == ("mbox3rdPartyId", "c1")
        merged.update(pairs[1:])
    assert merged == {f"profile.{k}": v for k, v in attrs.items()}


def test_one_attribute_too_large_for_any_request_is_permanent() -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        build_requests(URL, "mboxPC", "p", {"a": "v" * POST_LIMIT})
    assert info.value.reason == "payload_too_large"


names = st.text(min_size=1, max_size=20)
values = st.text(max_size=200)


@given(identity=st.text(min_size=1, max_size=50), attrs=st.dictionaries(names, values, max_size=8))
def test_no_value_can_add_remove_or_change_another_parameter(
    identity: str, attrs: dict[str, str]
) -> None:
    # Surrogates cannot be UTF-8 encoded; Avro strings never hold them.
    for text in [identity, *attrs, *attrs.values()]:
        if any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
            return
    (req,) = build_requests(URL, "mbox3rdPartyId", identity, attrs)
    expected = [("mbox3rdPartyId", identity)] + [(f"profile.{k}", v) for k, v in attrs.items()]
    assert params(req) == expected


@pytest.mark.parametrize(
    "nasty", ["a&profile.b=c", "x=y", "1+1", "100%", "#frag", "l1\nl2", "東京", "🙂"]
)
def test_injection_characters_stay_inside_their_value(nasty: str) -> None:
    (req,) = build_requests(URL, "mbox3rdPartyId", nasty, {"a": nasty})
    assert params(req) == [("mbox3rdPartyId", nasty), ("profile.a", nasty)]


def test_check_size_refuses_only_an_attribute_that_cannot_fit_alone() -> None:
    from consumer.target.request import check_size

    check_size("mboxPC", "p", {"a": "v" * 60_000, "b": "x"})  # fits one POST by itself
    with pytest.raises(PermanentDeliveryError) as info:
        check_size("mboxPC", "p", {"a": "東" * 7_000})  # 9 bytes encoded per character
    assert info.value.reason == "payload_too_large"
