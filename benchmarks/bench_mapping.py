"""Events mapped per second by Mapper.map, against a floor of plain JMESPath `search`.

The floor evaluates the same compiled expressions of examples/mapping.yaml on the same events
the plain way (`compiled.search(event, options)` for each `when`, and for the attributes and
identity of the rules that match) with no rendering, identity checks or result building. The
ratio mapper/floor is printed; the goal is >= 0.8. Benchmarks print; they do not assert.

    .venv/bin/python benchmarks/bench_mapping.py [--events 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from jmespath.visitor import TreeInterpreter

from consumer.errors import MappingError
from consumer.mapping import Mapper, RuleSet, load_rules
from consumer.mapping.functions import OPTIONS

ROOT = Path(__file__).resolve().parent.parent
CHANNELS = ("CALL_CENTER", "LOAN", "LOYALTY_STORE", "KIOSK")


def make_events(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """Decoded events (fastavro's shape), the four channels in equal parts."""
    rnd = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return [_event(rnd, i, start) for i in range(count)]


def _event(rnd: random.Random, i: int, start: datetime) -> dict[str, Any]:
    channel = CHANNELS[i % 4]
    payload: dict[str, Any]
    if channel == "CALL_CENTER":
        payload = {
            "reason": rnd.choice(["billing", "card lost", "address change"]),
            "durationSeconds": rnd.randint(10, 3600),
            "resolved": rnd.random() < 0.7,
            "agentTeam": rnd.choice([None, " retail ", "premium"]),
        }
    elif channel == "LOAN":
        cents = rnd.randint(100_000, 50_000_000)
        payload = {
            "loanId": f"L{i}",
            "product": rnd.choice(["mortgage", "car", "personal"]),
            "amount": Decimal(cents).scaleb(-2),
            "currency": "EUR",
        }
    elif channel == "LOYALTY_STORE":
        payload = {
            "storeId": f"S{rnd.randint(1, 500)}",
            "tier": rnd.choice(["GOLD", "Silver", "bronze"]),
            "pointsEarned": rnd.randint(0, 500),
            "basketTotal": round(rnd.uniform(1, 300), 2),
        }
    else:
        payload = {"kioskId": f"K{rnd.randint(1, 50)}", "location": "Lyon", "action": "print"}
    return {
        "eventId": f"e{i}",
        "occurredAt": start + timedelta(milliseconds=rnd.randint(0, 10**10)),
        "channel": channel,
        "customer": {
            "thirdPartyId": f"c{rnd.randint(1, 10**6)}" if rnd.random() < 0.8 else None,
            "pcId": f"{rnd.randint(10**12, 10**13)}-575948.01_00",
        },
        "payload": payload,
        "attributes": {"location_label": "Paris"} if rnd.random() < 0.5 else {},
    }


def floor(ruleset: RuleSet, shared: bool = False) -> Callable[[dict[str, Any]], object]:
    """Plain `search` of the same expressions: what any JMESPath-based mapper must pay.

    `shared`: a stronger floor that reuses one interpreter instead of `search` creating one
    per call (the mapper does that too, among other things), to show where the gain comes from.
    """
    rules = [
        (
            None if r.when is None else r.when.compiled,
            [e.compiled for _, e in r.attributes],
            None if r.identity is None else [s.expression.compiled for s in r.identity],
        )
        for r in ruleset.rules
    ]
    default_identity = [s.expression.compiled for s in ruleset.identity]
    if shared:
        interpreter = TreeInterpreter(OPTIONS)

        def wrap(compiled: Any) -> _Shared:
            return _Shared(interpreter, compiled.parsed)

        rules = [
            (
                None if w is None else wrap(w),
                [wrap(a) for a in attrs],
                None if i is None else [wrap(x) for x in i],
            )
            for w, attrs, i in rules
        ]
        default_identity = [wrap(x) for x in default_identity]

    def run(event: dict[str, Any]) -> object:
        values: list[Any] = []
        identity = default_identity
        for when, attributes, rule_identity in rules:
            if when is not None and not when.search(event, OPTIONS):
                continue
            identity = rule_identity or identity
            values.extend(a.search(event, OPTIONS) for a in attributes)
        for source in identity:
            if source.search(event, OPTIONS):
                break
        return values

    return run


class _Shared:
    """Looks like a ParsedResult, evaluates on one shared interpreter."""

    def __init__(self, interpreter: TreeInterpreter, parsed: dict[str, Any]) -> None:
        self.interpreter, self.parsed = interpreter, parsed

    def search(self, value: Any, _options: Any = None) -> Any:
        return self.interpreter.visit(self.parsed, value)


def rate(func: Callable[[dict[str, Any]], object], events: list[dict[str, Any]]) -> float:
    begin = time.perf_counter()
    for event in events:
        try:
            func(event)
        except MappingError:
            pass
    return len(events) / (time.perf_counter() - begin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rules", type=Path, default=ROOT / "examples/mapping.yaml")
    args = parser.parse_args()
    schema = json.loads((ROOT / "schemas/offline_transaction.avsc").read_text())
    ruleset = load_rules(args.rules, schema)
    runs = {
        "floor (jmespath search)": floor(ruleset),
        "floor, one interpreter": floor(ruleset, shared=True),
        "Mapper.map": Mapper(ruleset).map,
    }
    events = make_events(args.events)
    best = dict.fromkeys(runs, 0.0)
    # Best of N, the contenders interleaved so a noisy neighbour hurts them alike.
    for _ in range(args.repeat):
        for label, func in runs.items():
            best[label] = max(best[label], rate(func, events))
    print(f"rules: {args.rules.name} ({len(ruleset.rules)} rules), events: {len(events)}")
    for label, value in best.items():
        print(f"{label:<26}: {value:12,.0f} events/s")
    mapped, base = best["Mapper.map"], best["floor (jmespath search)"]
    strong = best["floor, one interpreter"]
    print(f"ratio mapper/floor        : {mapped / base:12.2f}  (aim >= 0.8)")
    print(f"ratio mapper/strong floor : {mapped / strong:12.2f}")


if __name__ == "__main__":
    main()
