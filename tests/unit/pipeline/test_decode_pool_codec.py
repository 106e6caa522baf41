"""What crosses between the parent and a decode process: every outcome `prepare` can give
comes back as the same update or the same error; attribute names go once per child."""

from __future__ import annotations

import pytest

from consumer.decode_pool import Names, _flatten, _revive
from consumer.errors import DecodeError, EventError, MappingError, PermanentDeliveryError
from consumer.mapping import ProfileUpdate
from consumer.prepare import Prepared

pytestmark = pytest.mark.unit


def through(outcomes: list[Prepared]) -> tuple[list[Prepared], list[Names]]:
    """Flattened as the child does, revived as the parent does."""
    index: dict[Names, int] = {}
    fresh: list[Names] = []
    flat = [_flatten(outcome, index, fresh) for outcome in outcomes]
    return [_revive(item, fresh) for item in flat], fresh


def test_updates_and_skips_come_back_the_same() -> None:
    a = ProfileUpdate("mbox3rdPartyId", "c1", {"x": "1", "y": ""}, ("r1",))
    b = ProfileUpdate("mboxPC", "p2", {"x": "2", "y": "é,\n"}, ("r1", "r2"))
    c = ProfileUpdate("mbox3rdPartyId", "c3", {"z": "3"}, ())
    revived, names = through([a, None, b, c])
    assert revived[1] is None
    for before, after in zip([a, b, c], [revived[0], revived[2], revived[3]], strict=True):
        assert isinstance(after, ProfileUpdate)
        assert (after.identity_type, after.identity, after.rules) == (
            before.identity_type,
            before.identity,
            before.rules,
        )
        assert after.attributes == before.attributes
        assert list(after.attributes) == list(before.attributes)  # order kept
    assert names == [("x", "y"), ("z",)]  # a repeated set of names goes once


@pytest.mark.parametrize(
    "error",
    [
        DecodeError("malformed_avro", "Avro body does not match the schema: EOFError"),
        MappingError("no_identity", "no identity"),
        PermanentDeliveryError("payload_too_large", "too large", None, b""),
        PermanentDeliveryError("http_400", "refused", 400, b"body"),
    ],
)
def test_event_errors_come_back_as_the_same_error(error: EventError) -> None:
    (revived,), _ = through([error])
    assert type(revived) is type(error)
    assert isinstance(revived, EventError)
    assert (revived.reason, str(revived), revived.stage) == (error.reason, str(error), error.stage)
    if isinstance(error, PermanentDeliveryError):
        assert isinstance(revived, PermanentDeliveryError)
        assert (revived.http_status, revived.body) == (error.http_status, error.body)
