"""Identity decisions at the mapping stage (docs/reliability.md, "Defects found at the edges").

- Padded identities are stripped: " cust-1 " would reach Target as another, non-existent
  profile, and Target's update-only API drops such an update without an error.
- mboxPC values must be made of a Target visitor id's characters (letters, digits, `.`, `_`,
  `-`; at most 128): anything else cannot be an id Target gave out. Refused as
  invalid_identity (dead-lettered, never sent), with no fallback, as for mbox3rdPartyId.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from consumer.avro import load_schema
from consumer.errors import MappingError
from consumer.mapping import Mapper, load_rules
from devtools.samples import sample_events
from tests.conftest import ROOT, SCHEMA_PATH

pytestmark = pytest.mark.unit

MAPPER = Mapper(load_rules(ROOT / "examples/mapping.yaml", load_schema(SCHEMA_PATH)))
[CALL, _, _, KIOSK] = sample_events(4, profiles=1, seed=1)


def with_customer(event: dict[str, Any], third: str | None, pc: str | None) -> dict[str, Any]:
    event = copy.deepcopy(event)
    event["customer"] = {"thirdPartyId": third, "pcId": pc}
    return event


@pytest.mark.parametrize(
    ("third", "pc", "expected"),
    [
        (" cust-1\t", None, ("mbox3rdPartyId", "cust-1")),
        ("\u00a0cust-1 ", None, ("mbox3rdPartyId", "cust-1")),  # Unicode spaces too
        (None, "  1368007744041-575948.01_00 ", ("mboxPC", "1368007744041-575948.01_00")),
    ],
)
def test_padded_identities_are_sent_stripped(
    third: str | None, pc: str | None, expected: tuple[str, str]
) -> None:
    update = MAPPER.map(with_customer(CALL, third, pc))
    assert update is not None and (update.identity_type, update.identity) == expected


@pytest.mark.parametrize(
    "pc",
    ["1368007744041-575948.01_00", "9f1c0d3e4a5b6c7d8e9f0a1b2c3d4e5f.35_0", "x" * 128],
)
def test_target_visitor_ids_are_accepted(pc: str) -> None:
    update = MAPPER.map(with_customer(KIOSK, None, pc))
    assert update is not None and (update.identity_type, update.identity) == ("mboxPC", pc)


@pytest.mark.parametrize(
    ("pc", "problem"),
    [
        ("a b", "is not a Target visitor id"),
        ("pc&profile.x=1", "is not a Target visitor id"),
        ("pc+/1", "is not a Target visitor id"),
        ("pcé", "is not a Target visitor id"),
        ("x" * 129, "has 129 characters"),
    ],
)
def test_an_mboxpc_that_cannot_be_a_visitor_id_is_refused(pc: str, problem: str) -> None:
    with pytest.raises(MappingError, match=problem) as raised:
        MAPPER.map(with_customer(KIOSK, None, pc))
    assert raised.value.reason == "invalid_identity"
    assert pc not in str(raised.value)  # values may be personal data: never in the message


def test_an_invalid_mboxpc_does_not_fall_back_and_a_blank_one_does() -> None:
    with pytest.raises(MappingError, match="invalid_identity|not a Target visitor id"):
        MAPPER.map(with_customer(CALL, None, "a b"))
    update = MAPPER.map(with_customer(CALL, "  ", "pc-1"))
    assert update is not None and update.identity == "pc-1"
