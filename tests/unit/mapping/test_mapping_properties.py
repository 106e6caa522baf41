"""Properties over generated events of the schema (decoded through fastavro, as on Kafka).

- Mapper.map never raises anything but MappingError, whatever the event;
- rendered attributes (and the identity) survive the request builder's URL encoding;
- the hot-path evaluators agree with plain JMESPath `search`.
"""

from __future__ import annotations

import io
import json
import math
import textwrap
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.errors import MappingError
from consumer.mapping import Mapper, RuleSet, load_rules

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
SCHEMA: dict[str, Any] = json.loads((ROOT / "schemas/offline_transaction.avsc").read_text())
PARSED = fastavro.parse_schema(SCHEMA)

# Rules that reach for every function and for odd values: the property must hold for them too.
STRESS_RULES = textwrap.dedent(
    """\
    identity:
      - mbox3rdPartyId: trim(customer.thirdPartyId)
      - mboxPC: customer.pcId
      - mbox3rdPartyId: sha256(eventId)
    rules:
      - name: everything
        attributes:
          id: eventId
          hashed: sha256(customer.thirdPartyId)
          joined: concat(channel, '|', payload.amount, '|', payload.basketTotal, '|', occurredAt)
          first: coalesce(customer.thirdPartyId, customer.pcId, 'none')
          when: iso8601(occurredAt)
          ms: millis(occurredAt)
          up: upper(payload.reason)
          low: lower(attributes.label)
          text: to_string(payload.amount)
          number: to_number(payload.tier)
          label: attributes.label
          kind: type(payload.amount)
      - name: money
        when: "payload.amount > `1000` || payload.basketTotal < `10.5`"
        attributes:
          amount: payload.amount
          total: payload.basketTotal
          points: payload.pointsEarned
      - name: lists
        when: "channel == 'KIOSK' && attributes.explode == 'yes'"
        attributes:
          keys: keys(attributes)
    """
)

texts = st.text(max_size=40)
ids = st.one_of(st.none(), texts, st.sampled_from(["", " ", "a+b", "a/b", "x" * 257]))
int32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
payloads = st.one_of(
    st.fixed_dictionaries(
        {"reason": texts, "durationSeconds": int32, "resolved": st.booleans(), "agentTeam": ids}
    ),
    st.fixed_dictionaries(
        {
            "loanId": texts,
            "product": texts,
            "amount": st.decimals(
                places=2, min_value=-(10**10) + 1, max_value=10**10 - 1, allow_nan=False
            ),
            "currency": texts,
        }
    ),
    st.fixed_dictionaries(
        {"storeId": texts, "tier": texts, "pointsEarned": int32, "basketTotal": st.floats()}
    ),
    st.fixed_dictionaries({"kioskId": texts, "location": texts, "action": texts}),
)
events = st.fixed_dictionaries(
    {
        "eventId": texts,
        "occurredAt": st.datetimes(
            min_value=datetime(1, 1, 1),
            max_value=datetime(9999, 12, 31),
            timezones=st.just(timezone.utc),
        ),
        # Any channel with any payload: the schema allows mismatches, so must the mapper.
        "channel": st.sampled_from(["CALL_CENTER", "LOAN", "LOYALTY_STORE", "KIOSK"]),
        "customer": st.fixed_dictionaries({"thirdPartyId": ids, "pcId": ids}),
        "payload": payloads,
        "attributes": st.dictionaries(
            st.one_of(texts, st.sampled_from(["location_label", "label", "explode"])),
            st.one_of(texts, st.just("yes")),
            max_size=4,
        ),
    }
).map(lambda event: _through_avro(event))


def _through_avro(event: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, PARSED, event)
    buffer.seek(0)
    decoded = fastavro.schemaless_reader(buffer, PARSED)
    assert isinstance(decoded, dict)
    return decoded


def _load(text: str | None) -> RuleSet:
    if text is None:
        return load_rules(ROOT / "examples/mapping.yaml", SCHEMA)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rules.yaml"
        path.write_text(text)
        return load_rules(path, SCHEMA)


RULESETS = {"example": _load(None), "stress": _load(STRESS_RULES)}
MAPPERS = {name: Mapper(rules) for name, rules in RULESETS.items()}
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REASONS = {"no_identity", "invalid_identity", "invalid_value", "no_attributes"}


@pytest.mark.parametrize("name", list(MAPPERS))
@SETTINGS
@given(event=events)
def test_map_raises_only_mapping_errors(name: str, event: dict[str, Any]) -> None:
    try:
        update = MAPPERS[name].map(event)
    except MappingError as exc:
        assert exc.reason in REASONS
        return
    if update is not None:
        assert update.attributes
        assert all(type(v) is str for v in update.attributes.values())
        assert update.identity_type in ("mbox3rdPartyId", "mboxPC")
        assert update.identity.strip()


@pytest.mark.parametrize("name", list(MAPPERS))
@SETTINGS
@given(event=events)
def test_rendered_values_survive_the_url(name: str, event: dict[str, Any]) -> None:
    try:
        update = MAPPERS[name].map(event)
    except MappingError:
        return
    if update is None:
        return
    pairs = [(update.identity_type, update.identity)] + [
        (f"profile.{key}", value) for key, value in update.attributes.items()
    ]
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)
    assert parse_qsl(query, keep_blank_values=True) == pairs


@given(
    name=st.text(alphabet="ABCabc019_.-", min_size=1, max_size=128).filter(
        lambda n: n[0] not in ".-"
    ),
    value=st.text(),
)
def test_any_text_value_survives_the_url(name: str, value: str) -> None:
    query = f"{quote('profile.' + name, safe='')}={quote(value, safe='')}&a=b"
    assert parse_qsl(query, keep_blank_values=True) == [("profile." + name, value), ("a", "b")]


@pytest.mark.parametrize("name", list(RULESETS))
@SETTINGS
@given(event=events)
def test_fast_evaluators_agree_with_search(name: str, event: dict[str, Any]) -> None:
    ruleset = RULESETS[name]
    expressions = [s.expression for s in ruleset.identity]
    for rule in ruleset.rules:
        expressions += [e for _, e in rule.attributes]
        expressions += [s.expression for s in rule.identity or ()]
        expressions += [rule.when] if rule.when is not None else []
    for expression in expressions:
        try:
            expected = expression.search(event)
        except Exception as exc:  # the same error must come from both
            with pytest.raises(type(exc)):
                expression.evaluate(event)
            continue
        assert _same(expression.evaluate(event), expected), expression.text


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(type(a) is type(b) and a == b)
