"""Decode stage: Kafka record bytes -> the event as Python values (fastavro's shape).

Two wire formats:
- Confluent (when a Schema Registry is configured): magic byte 0, 4-byte big-endian schema id,
  Avro body. The writer schema is fetched by id once and cached.
- Plain Avro body written with the local writer schema from `schemas/`.
Either way the reader schema (the one the mapping rules are written against) resolves the data,
so producers can evolve their schema compatibly.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastavro

from consumer.errors import ConfigError, DecodeError, RegistryUnavailable

if TYPE_CHECKING:
    # Imported where used: the registry client pulls in httpx and authlib, a third of the
    # consumer's start-up, and most deployments read a local writer schema.
    from confluent_kafka.schema_registry import SchemaRegistryClient

MAGIC_BYTE = 0
_HEADER = struct.Struct(">bI")

Schema = dict[str, Any]
# Looks a writer schema up by its registry id; raises KeyError when the registry has no such id.
SchemaLookup = Callable[[int], str]


def load_schema(path: Path, label: str = "") -> Schema:
    """Read and parse an .avsc file; a bad one is a ConfigError naming it."""
    where = label or str(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        fastavro.parse_schema(raw)
    except (OSError, ValueError, fastavro.schema.SchemaParseException) as exc:
        raise ConfigError([f"{where}: expected a valid Avro schema (.avsc JSON): {exc}"]) from exc
    if not isinstance(raw, dict):
        raise ConfigError([f"{where}: expected an Avro record schema (a JSON object)"])
    return raw


class Decoder:
    """Turns record values into events, raising DecodeError with a stable reason."""

    def __init__(
        self,
        reader_schema: Schema,
        writer_schema: Schema | None = None,
        registry_lookup: SchemaLookup | None = None,
    ) -> None:
        if writer_schema is None and registry_lookup is None:
            raise ValueError("a writer schema or a registry lookup is required")
        self._reader = fastavro.parse_schema(reader_schema)
        self._writer = fastavro.parse_schema(writer_schema) if writer_schema else None
        # fastavro compares writer and reader (a deep dict ==, ~3 us here) on every call to
        # skip resolution when they are equal: decide it once per writer schema instead.
        self._local_reader = self._reader_for(self._writer) if self._writer else None
        self._lookup = registry_lookup
        self._by_id: dict[int, tuple[Any, Any]] = {}

    def decode(self, value: bytes | None) -> dict[str, Any]:
        if not value:
            raise DecodeError("empty_value", "the record has no value (null or empty)")
        if self._lookup is None:
            assert self._writer is not None  # noqa: S101 - guaranteed by __init__
            return self._read(value, 0, self._writer, self._local_reader)
        if len(value) < _HEADER.size:
            raise DecodeError("bad_magic_byte", "shorter than the 5-byte Confluent header")
        magic, schema_id = _HEADER.unpack_from(value)
        if magic != MAGIC_BYTE:
            raise DecodeError("bad_magic_byte", f"magic byte {magic} is not 0 (Confluent format)")
        writer, reader = self._writer_for(schema_id)
        return self._read(value, _HEADER.size, writer, reader)

    def _reader_for(self, writer: Any) -> Any:
        """The reader schema to pass with `writer`: None when they are the same schema."""
        return None if writer == self._reader else self._reader

    def _writer_for(self, schema_id: int) -> tuple[Any, Any]:
        entry = self._by_id.get(schema_id)
        if entry is None:
            assert self._lookup is not None  # noqa: S101 - only called in registry mode
            try:
                text = self._lookup(schema_id)
            except KeyError as exc:
                raise DecodeError(
                    "unknown_schema_id", f"schema id {schema_id} is not in the registry"
                ) from exc
            try:
                parsed = fastavro.parse_schema(json.loads(text))
            except (ValueError, fastavro.schema.SchemaParseException) as exc:
                raise DecodeError(
                    "unsupported_schema", f"schema id {schema_id} is not a usable Avro schema"
                ) from exc
            entry = self._by_id[schema_id] = (parsed, self._reader_for(parsed))
        return entry

    def _read(self, value: bytes, start: int, writer: Any, reader: Any) -> dict[str, Any]:
        buf = io.BytesIO(value)
        buf.seek(start)
        try:
            event = fastavro.schemaless_reader(buf, writer, reader)
        except UnicodeDecodeError as exc:
            raise DecodeError("invalid_utf8", f"a string is not valid UTF-8: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - fastavro raises many types on bad bytes
            raise DecodeError(
                "malformed_avro", f"Avro body does not match the schema: {type(exc).__name__}"
            ) from exc
        if buf.tell() != len(value):
            raise DecodeError(
                "trailing_bytes", f"{len(value) - buf.tell()} bytes left after the Avro record"
            )
        if not isinstance(event, dict):
            raise DecodeError("malformed_avro", "the Avro body is not a record")
        return event


def registry_client(url: str) -> SchemaRegistryClient:
    """confluent-kafka's client; a `mock://` URL gives an in-memory registry (per instance)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return SchemaRegistryClient.new_client({"url": url})


def registry_lookup(client: SchemaRegistryClient) -> SchemaLookup:
    """A writer-schema lookup by id backed by a Schema Registry client."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    def lookup(schema_id: int) -> str:
        try:
            schema_str = client.get_schema(schema_id).schema_str
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise KeyError(schema_id) from exc
            raise RegistryUnavailable(f"schema registry error {exc.http_status_code}") from exc
        except Exception as exc:  # noqa: BLE001 - transport errors of the registry's client
            raise RegistryUnavailable(f"schema registry unreachable: {type(exc).__name__}") from exc
        if schema_str is None:
            raise KeyError(schema_id)
        return schema_str

    return lookup


class Encoder:
    """Encodes events (plain Avro, or Confluent format when a schema id is given).

    Used by the demo, tests and benchmarks to produce realistic records.
    """

    def __init__(self, schema: Schema, schema_id: int | None = None) -> None:
        self._schema = fastavro.parse_schema(schema)
        self._header = b"" if schema_id is None else _HEADER.pack(MAGIC_BYTE, schema_id)

    def encode(self, event: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self._header)
        fastavro.schemaless_writer(buf, self._schema, event)
        return buf.getvalue()
