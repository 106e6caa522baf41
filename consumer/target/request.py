"""Request building: one profile update -> the exact HTTP request(s) Target receives.

Every name and value is percent-encoded as UTF-8 with nothing left safe, so no value can add,
remove or change another parameter. GET while the whole URL fits 8 KB, else a form POST up to
60 KB, else the attributes are split over several POSTs for the same identity.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote

from consumer.errors import PermanentDeliveryError

GET_LIMIT = 8192
POST_LIMIT = 61_440
FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True, slots=True)
class TargetRequest:
    method: str  # "GET" or "POST"
    url: str  # for GET it carries the query string
    body: bytes = b""

    def size(self) -> int:
        return len(self.url) if self.method == "GET" else len(self.body)


# Exactly what quote(safe="") leaves as it is (RFC 3986 unreserved); \Z: no trailing newline.
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*\Z")


@lru_cache(maxsize=4096)
def _quote_name(name: str) -> str:
    return quote(name, safe="")


def encode_pair(name: str, value: str) -> str:
    encoded = value if _UNRESERVED.match(value) else quote(value, safe="")
    return f"{_quote_name(name)}={encoded}"


# A value this short cannot encode past a POST (12 encoded bytes per character at most).
_SURELY_FITS = POST_LIMIT // 12 - 300


def check_size(identity_type: str, identity: str, attributes: dict[str, str]) -> None:
    """Raise PermanentDeliveryError('payload_too_large') when one attribute alone cannot fit.

    Called per event before coalescing, so an oversized event is dead-lettered alone and
    never takes the other events of its profile with it. Cheap: only long values are encoded.
    """
    head = None
    for name, value in attributes.items():
        if len(name) + len(value) < _SURELY_FITS:
            continue
        head = head or encode_pair(identity_type, identity)
        pair = encode_pair("profile." + name, value)
        if len(head) + 1 + len(pair) > POST_LIMIT:
            raise PermanentDeliveryError(
                "payload_too_large",
                f"attribute {name!r} is {len(pair)} bytes encoded; a POST allows {POST_LIMIT}",
            )


def endpoint(base_url: str, client_code: str) -> str:
    return f"{base_url}/m2/{quote(client_code, safe='')}/profile/update"


def build_requests(
    endpoint_url: str, identity_type: str, identity: str, attributes: dict[str, str]
) -> list[TargetRequest]:
    """The request(s) for one update; raises PermanentDeliveryError('payload_too_large')."""
    head = encode_pair(identity_type, identity)
    pairs = [encode_pair("profile." + name, value) for name, value in attributes.items()]
    query = "&".join([head, *pairs])
    url = f"{endpoint_url}?{query}"
    if len(url) <= GET_LIMIT:
        return [TargetRequest("GET", url)]
    bodies = _chunks(head, pairs)
    return [TargetRequest("POST", endpoint_url, body.encode("ascii")) for body in bodies]


def _chunks(head: str, pairs: Iterable[str]) -> list[str]:
    """Greedy packing of `name=value` pairs into bodies of at most POST_LIMIT bytes."""
    bodies: list[str] = []
    current: list[str] = [head]
    size = len(head)
    for pair in pairs:
        if len(head) + 1 + len(pair) > POST_LIMIT:
            raise PermanentDeliveryError(
                "payload_too_large",
                f"one attribute is {len(pair)} bytes encoded; a POST allows {POST_LIMIT}",
            )
        if size + 1 + len(pair) > POST_LIMIT:
            bodies.append("&".join(current))
            current, size = [head], len(head)
        current.append(pair)
        size += 1 + len(pair)
    bodies.append("&".join(current))
    return bodies
