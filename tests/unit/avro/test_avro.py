import json
import struct

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from consumer.avro import Decoder, load_schema, registry_lookup
from consumer.errors import ConfigError, DecodeError
from devtools.encoder import Encoder
from devtools.samples import sample_events
from tests.conftest import SCHEMA_PATH

pytestmark = pytest.mark.unit
SCHEMA = load_schema(SCHEMA_PATH)
EVENT = sample_events(2, seed=1)[1]  # a LOAN: decimal amount


def reason(decoder: Decoder, value: bytes | None) -> str:
    with pytest.raises(DecodeError) as info:
        decoder.decode(value)
    return info.value.reason


def test_plain_avro_round_trip_keeps_logical_types() -> None:
    event = Decoder(SCHEMA, writer_schema=SCHEMA).decode(Encoder(SCHEMA).encode(EVENT))
    assert event == EVENT
    assert str(event["payload"]["amount"]) == str(EVENT["payload"]["amount"])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "empty_value"),
        (b"", "empty_value"),
        (Encoder(SCHEMA).encode(EVENT)[:10], "malformed_avro"),
        (Encoder(SCHEMA).encode(EVENT) + b"\x00", "trailing_bytes"),
    ],
)
def test_bad_plain_bodies_have_stable_reasons(value: bytes | None, expected: str) -> None:
    assert reason(Decoder(SCHEMA, writer_schema=SCHEMA), value) == expected


def test_invalid_utf8_in_a_string_is_its_own_reason() -> None:
    good = Encoder(SCHEMA).encode(EVENT)
    # eventId is the first field: a zigzag length then the bytes.
    bad = good.replace(EVENT["eventId"].encode(), b"\xff\xfe" + EVENT["eventId"].encode()[2:], 1)
    assert reason(Decoder(SCHEMA, writer_schema=SCHEMA), bad) == "invalid_utf8"


def test_confluent_wire_format_through_the_registry() -> None:
    url = "mock://avro-unit"
    client = SchemaRegistryClient.new_client({"url": url})
    schema_id = client.register_schema("t-value", Schema(json.dumps(SCHEMA), "AVRO"))
    decoder = Decoder(SCHEMA, registry_lookup=registry_lookup(client))
    assert decoder.decode(Encoder(SCHEMA, schema_id).encode(EVENT)) == EVENT
    body = Encoder(SCHEMA).encode(EVENT)
    assert reason(decoder, b"\x01" + struct.pack(">I", schema_id) + body) == "bad_magic_byte"
    assert reason(decoder, b"\x00\x00") == "bad_magic_byte"
    assert reason(decoder, b"\x00" + struct.pack(">I", 99_999) + body) == "unknown_schema_id"


def test_reader_schema_resolves_an_older_writer() -> None:
    older = json.loads(json.dumps(SCHEMA))
    older["fields"] = [f for f in older["fields"] if f["name"] != "attributes"]
    event = dict(EVENT)
    del event["attributes"]
    decoded = Decoder(SCHEMA, writer_schema=older).decode(Encoder(older).encode(event))
    assert decoded["attributes"] == {}  # the reader's default


def test_a_broken_schema_file_is_a_config_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.avsc"
    path.write_text('{"type": "record", "name": "X", "fields": [{"name": "a"}]}')
    with pytest.raises(ConfigError) as info:
        load_schema(path)
    assert str(path) in str(info.value)


def test_a_registry_outage_is_not_a_decode_error() -> None:
    from consumer.errors import RegistryUnavailable

    def down(schema_id: int) -> str:
        raise RegistryUnavailable("registry unreachable")

    decoder = Decoder(SCHEMA, registry_lookup=down)
    with pytest.raises(RegistryUnavailable):
        decoder.decode(b"\x00" + struct.pack(">I", 7) + Encoder(SCHEMA).encode(EVENT))


# --- the reading core (avro.body_reader) ---------------------------------------------------


def outcomes(decoder: Decoder, values: list[bytes]) -> list[object]:
    found: list[object] = []
    for value in values:
        try:
            found.append(decoder.decode(value))
        except DecodeError as exc:
            found.append(("error", exc.reason))
    return found


def bodies() -> list[bytes]:
    """Valid events of every channel, an older writer's, and broken bodies of each kind."""
    encoder = Encoder(SCHEMA)
    good = [encoder.encode(event) for event in sample_events(40, seed=3)]
    broken = [
        good[0][:10],
        good[1] + b"\x00",
        good[2].replace(b"evt-", b"\xff\xfe-\x00", 1),
        bytes(range(40)),
        b"\x02" * 90,
    ]
    return good + broken


@pytest.fixture
def public_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """fastavro without a usable reading core: `body_reader` must fall back to the public API."""
    import fastavro._read

    monkeypatch.delattr(fastavro._read, "_read_data")


def test_the_reading_core_is_used_with_the_installed_fastavro() -> None:
    # A fastavro upgrade that moves it must show here, not as 10 % less throughput.
    decoder = Decoder(SCHEMA, writer_schema=SCHEMA)
    assert decoder._local.__name__ == "core"  # type: ignore[union-attr]


def test_the_reading_core_reads_as_schemaless_reader_does(monkeypatch: pytest.MonkeyPatch) -> None:
    older = json.loads(json.dumps(SCHEMA))
    older["fields"] = [f for f in older["fields"] if f["name"] != "attributes"]
    fast = outcomes(Decoder(SCHEMA, writer_schema=SCHEMA), bodies())
    fast_older = Decoder(SCHEMA, writer_schema=older)
    import fastavro._read

    monkeypatch.delattr(fastavro._read, "_read_data")
    public = Decoder(SCHEMA, writer_schema=SCHEMA)
    assert public._local.__name__ == "public"  # type: ignore[union-attr]
    assert fast == outcomes(public, bodies())
    assert ("error", "trailing_bytes") in fast and ("error", "invalid_utf8") in fast
    event = dict(EVENT)
    del event["attributes"]
    body = Encoder(older).encode(event)
    assert fast_older.decode(body) == Decoder(SCHEMA, writer_schema=older).decode(body)


@pytest.mark.parametrize(
    "broken_core",
    [
        lambda *args: {},  # reads something else
        lambda fo, writer, named: None,  # another signature
    ],
)
def test_a_reading_core_that_disagrees_is_not_used(
    monkeypatch: pytest.MonkeyPatch, broken_core: object
) -> None:
    import fastavro._read

    monkeypatch.setattr(fastavro._read, "_read_data", broken_core)
    decoder = Decoder(SCHEMA, writer_schema=SCHEMA)
    assert decoder._local.__name__ == "public"  # type: ignore[union-attr]
    assert decoder.decode(Encoder(SCHEMA).encode(EVENT)) == EVENT


@pytest.mark.usefixtures("public_only")
def test_without_a_reading_core_the_registry_mode_still_decodes() -> None:
    client = SchemaRegistryClient.new_client({"url": "mock://avro-unit-public"})
    schema_id = client.register_schema("t-value", Schema(json.dumps(SCHEMA), "AVRO"))
    decoder = Decoder(SCHEMA, registry_lookup=registry_lookup(client))
    assert decoder.decode(Encoder(SCHEMA, schema_id).encode(EVENT)) == EVENT
