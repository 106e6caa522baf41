"""A tiny reference interpreter of examples/mapping.yaml, written out by hand in Python.

The expectations of the tests that claim correctness come from here, not from the product's
`Mapper`: a mapping bug there would otherwise be in the expectation too, and pass. It shares
nothing with consumer.mapping (no JMESPath, no render module): each rule of the example file is
restated as plain code over the decoded event (fastavro's Python shape), and the rendering of
values is restated from the documented rules (docs and consumer/mapping/render.py's
docstring). tests/unit/test_oracles.py checks it against the product on many sample events, so
when the two disagree one of them is wrong and a person looks.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

Key = tuple[str, str]  # (identity type, identity)
_VISITOR_ID_CHARS = set(string.ascii_letters + string.digits + "._-")
Update = tuple[Key, dict[str, str]]


def reference_update(event: dict[str, Any]) -> Update | None:
    """The profile update examples/mapping.yaml asks for, or None (no rule matched, or the
    event is refused: no identity, or an identity Target cannot take)."""
    channel = event.get("channel")
    payload = event.get("payload") or {}
    customer = event.get("customer") or {}
    labels = event.get("attributes") or {}
    attrs: dict[str, str | None] = {}
    identity = [("mbox3rdPartyId", customer.get("thirdPartyId")), ("mboxPC", customer.get("pcId"))]
    if channel == "CALL_CENTER":
        attrs["lastCallCentreAt"] = _text(event.get("occurredAt"))
        attrs["lastCallCentreReason"] = _text(payload.get("reason"))
        attrs["callCentreResolved"] = _text(payload.get("resolved"))
        attrs["lastCallCentreDurationSeconds"] = _text(payload.get("durationSeconds"))
        team = payload.get("agentTeam")
        attrs["lastCallCentreTeam"] = None if team is None else team.strip()
        attrs["lastContactChannel"] = "call-centre"
    elif channel == "LOAN":
        product, amount, currency = (payload.get(k) for k in ("product", "amount", "currency"))
        attrs["lastLoanProduct"] = _text(product)
        attrs["lastLoanAmount"] = _text(amount)
        attrs["lastLoanCurrency"] = _text(currency)
        parts = [product, " ", amount, " ", None if currency is None else currency.upper()]
        attrs["lastLoanSummary"] = "".join(_text(p) or "" for p in parts)
        attrs["lastLoanFundedAt"] = _text(event.get("occurredAt"))
        attrs["lastContactChannel"] = "loan"
    elif channel == "LOYALTY_STORE":
        total = payload.get("basketTotal")
        if total is not None and total > 100:
            attrs["bigBasketShopper"] = "true"
            tier = payload.get("tier")
            attrs["loyaltyTier"] = None if tier is None else tier.lower()
        attrs["lastStoreVisitAt"] = _text(event.get("occurredAt"))
        attrs["lastStoreId"] = _text(payload.get("storeId"))
        attrs["lastPointsEarned"] = _text(payload.get("pointsEarned"))
        attrs["lastBasketTotal"] = _text(total)
        attrs["lastContactChannel"] = "store"
    elif channel == "KIOSK":
        identity = [("mboxPC", customer.get("pcId"))]
        attrs["lastKioskAction"] = _text(payload.get("action"))
        label = labels.get("location_label")
        attrs["lastKioskId"] = _text(payload.get("kioskId"))
        attrs["kioskLocation"] = _text(
            label if label not in (None, "") else payload.get("location")
        )
        attrs["lastContactChannel"] = "kiosk"
    else:
        return None
    key = _identity(identity)
    values = {name: value for name, value in attrs.items() if value is not None}
    if key is None or not values:
        return None
    return key, values


def expected_updates(events: Iterable[dict[str, Any]]) -> list[Update]:
    """Each event's update in the order given (the events that map to none left out)."""
    return [u for u in map(reference_update, events) if u is not None]


def expected_profiles(events: Iterable[dict[str, Any]]) -> dict[Key, dict[str, str]]:
    """What Target must hold once every one of these events is delivered: merged in order."""
    profiles: dict[Key, dict[str, str]] = {}
    for key, attributes in expected_updates(events):
        profiles.setdefault(key, {}).update(attributes)
    return profiles


def _identity(candidates: list[tuple[str, Any]]) -> Key | None:
    for id_type, value in candidates:
        text = None if value is None else str(value).strip()
        if not text:
            continue
        if id_type == "mbox3rdPartyId" and (len(text) > 256 or "+" in text or "/" in text):
            return None
        if id_type == "mboxPC" and not (len(text) <= 128 and set(text) <= _VISITOR_ID_CHARS):
            return None
        return id_type, text
    return None


def _text(value: Any) -> str | None:
    """The string Target stores for a value, as the docs define it."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        moment = value.astimezone(UTC) if value.tzinfo else value
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    if isinstance(value, int | Decimal):
        return format(value, "f") if isinstance(value, Decimal) else str(value)
    if isinstance(value, float):
        shortest = repr(value)
        return shortest if "e" not in shortest else format(Decimal(shortest), "f")
    raise TypeError(f"the example rules never render a {type(value).__name__}")
