"""Realistic sample events over the four offline channels, and poison records.

Used by the demo, the tests and the benchmarks so they all speak about the same data. Events
are in fastavro's Python shape (datetime, Decimal), ready for `devtools.encoder.Encoder`.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

CHANNELS = ("CALL_CENTER", "LOAN", "LOYALTY_STORE", "KIOSK")
_START = datetime(2026, 11, 1, tzinfo=UTC)


def customer_id(index: int) -> str:
    return f"cust-{index:06d}"


def sample_event(rng: random.Random, index: int, profiles: int) -> dict[str, Any]:
    """One valid event; customer ids are drawn from `profiles` customers."""
    who = rng.randrange(profiles)
    channel = CHANNELS[index % len(CHANNELS)]
    customer: dict[str, Any] = {"thirdPartyId": customer_id(who), "pcId": None}
    if channel == "KIOSK":
        # Kiosk visitors are known by their Target visitor id (mboxPC).
        customer = {"thirdPartyId": None, "pcId": f"{1368007744041 + who}-575948.01_00"}
    return {
        "eventId": f"evt-{index:08d}",
        "occurredAt": _START + timedelta(seconds=index, milliseconds=rng.randrange(1000)),
        "channel": channel,
        "customer": customer,
        "payload": _payload(rng, channel),
        "attributes": {"location_label": rng.choice(["Paris", "Lyon", "Zürich", "東京"])},
    }


def _payload(rng: random.Random, channel: str) -> dict[str, Any]:
    if channel == "CALL_CENTER":
        return {
            "reason": rng.choice(["billing", "card lost", "address & phone", "complaint"]),
            "durationSeconds": rng.randrange(30, 1800),
            "resolved": rng.random() < 0.8,
            "agentTeam": rng.choice([None, "tier-1", "retention"]),
        }
    if channel == "LOAN":
        cents = rng.randrange(100_000, 50_000_000)
        return {
            "loanId": f"L{rng.randrange(10**8):08d}",
            "product": rng.choice(["mortgage", "auto", "personal"]),
            "amount": Decimal(cents).scaleb(-2),
            "currency": rng.choice(["EUR", "USD", "CHF"]),
        }
    if channel == "LOYALTY_STORE":
        return {
            "storeId": f"S{rng.randrange(500):03d}",
            "tier": rng.choice(["Gold", "Silver", "Platinum"]),
            "pointsEarned": rng.randrange(0, 500),
            "basketTotal": round(rng.uniform(5, 400), 2),
        }
    return {
        "kioskId": f"K{rng.randrange(100):03d}",
        "location": rng.choice(["Lobby", "Branch 12", "Airport"]),
        "action": rng.choice(["balance", "statement", "card-activation"]),
    }


def sample_events(count: int, profiles: int = 1000, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)  # noqa: S311 - sample data, not secrets
    return [sample_event(rng, i, profiles) for i in range(count)]


def poison_event(rng: random.Random, index: int, kind: str) -> dict[str, Any]:
    """A well-formed Avro event that the rules must refuse (identity problems)."""
    event = sample_event(rng, index, 10)
    event["channel"] = "CALL_CENTER"
    event["payload"] = _payload(rng, "CALL_CENTER")
    if kind == "no_identity":
        event["customer"] = {"thirdPartyId": None, "pcId": None}
    elif kind == "invalid_identity":
        event["customer"] = {"thirdPartyId": "a/b+c" + "x" * 300, "pcId": None}
    return event


def poison_bytes(rng: random.Random, kind: str, valid: bytes) -> bytes:
    """Bytes that cannot decode: random, truncated, or with trailing garbage."""
    if kind == "random":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    if kind == "truncated":
        return valid[: max(1, len(valid) // 2)]
    return valid + b"\x00garbage"
