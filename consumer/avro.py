"""Decode stage: Kafka record bytes -> the event as Python values (fastavro's shape).

Two wire formats:
- Confluent (when a Schema Registry is configured): magic byte 0, 4-byte big-endian schema id,
  Avro body. The writer schema is fetched by id once and cached.
- Plain Avro body written with the local writer schema from `schemas/`.
Either way the reader schema (the one the mapping rules are written against) resolves the data,
so producers can evolve their schema compatibly.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import time
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
# Reads one Avro body from the buffer's position, leaving the position after it.
BodyReader = Callable[[io.BytesIO], Any]
_PROBES = 16  # generated records a fast reader must read exactly as schemaless_reader does
# An id the registry does not know is not asked for again on every record, only this often:
# it may be registered later (a producer ahead of the registry), so the answer is not final.
UNKNOWN_ID_TTL_SECONDS = 30.0


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
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if writer_schema is None and registry_lookup is None:
            raise ValueError("a writer schema or a registry lookup is required")
        self._reader = fastavro.parse_schema(reader_schema)
        writer = fastavro.parse_schema(writer_schema) if writer_schema else None
        self._local = None if writer is None else body_reader(writer, self._reader)
        self._lookup = registry_lookup
        self._clock = clock
        self._by_id: dict[int, BodyReader | DecodeError] = {}
        self._unknown_until: dict[int, float] = {}
        self._texts: dict[int, str] = {}  # what the registry answered, by id (decode processes)

    def schema_to_fetch(self, value: bytes | None) -> int | None:
        """The registry id this value needs and the decoder has no answer for yet, if any.

        The intake fetches it with `fetch` (off the event loop, bounded) before `decode`,
        so `decode` itself never waits on the network.
        """
        if self._lookup is None or not value or len(value) < _HEADER.size:
            return None
        magic, schema_id = _HEADER.unpack_from(value)
        if magic != MAGIC_BYTE or schema_id in self._by_id:
            return None
        if self._unknown_until.get(schema_id, -1.0) > self._clock():
            return None
        return int(schema_id)

    async def fetch(self, schema_id: int, timeout: float) -> None:
        """Look a writer schema up in a worker thread, giving up after `timeout` seconds.

        Raises RegistryUnavailable when the registry fails or does not answer in time; an id
        it does not know is remembered as unknown for UNKNOWN_ID_TTL_SECONDS.
        """
        try:
            await asyncio.wait_for(asyncio.to_thread(self._resolve, schema_id), timeout)
        except TimeoutError as exc:
            raise RegistryUnavailable(
                f"schema registry did not answer within {timeout:g}s (schema id {schema_id})"
            ) from exc

    def decode(self, value: bytes | None) -> dict[str, Any]:
        if not value:
            raise DecodeError("empty_value", "the record has no value (null or empty)")
        if self._lookup is None:
            assert self._local is not None  # noqa: S101 - guaranteed by __init__
            return _read(value, 0, self._local)
        if len(value) < _HEADER.size:
            raise DecodeError("bad_magic_byte", "shorter than the 5-byte Confluent header")
        magic, schema_id = _HEADER.unpack_from(value)
        if magic != MAGIC_BYTE:
            raise DecodeError("bad_magic_byte", f"magic byte {magic} is not 0 (Confluent format)")
        return _read(value, _HEADER.size, self._reader_for(schema_id))

    def schema_texts(self) -> dict[int, str]:
        """The writer schemas the registry gave so far, by id (only ever grows): a decode process
        (consumer/decode_pool.py) gets them from here instead of asking the registry itself."""
        return self._texts

    def _reader_for(self, schema_id: int) -> BodyReader:
        entry = self._by_id.get(schema_id)
        if entry is None:
            if self._unknown_until.get(schema_id, -1.0) > self._clock():
                raise _unknown(schema_id)
            # Not fetched ahead (tools that decode one record at a time): look it up here.
            self._resolve(schema_id)
            entry = self._by_id.get(schema_id)
            if entry is None:
                raise _unknown(schema_id)
        if isinstance(entry, DecodeError):
            raise entry
        return entry

    def _resolve(self, schema_id: int) -> None:
        """Fetch and compile one writer schema into the cache (runs in a worker thread)."""
        assert self._lookup is not None  # noqa: S101 - only called in registry mode
        try:
            text = self._lookup(schema_id)
        except KeyError:
            self._unknown_until[schema_id] = self._clock() + UNKNOWN_ID_TTL_SECONDS
            return
        self._texts[schema_id] = text
        try:
            parsed = fastavro.parse_schema(json.loads(text))
            entry: BodyReader | DecodeError = body_reader(parsed, self._reader)
        except (ValueError, fastavro.schema.SchemaParseException):
            # Final: the registry's schemas are immutable, so this id stays unusable.
            entry = DecodeError(
                "unsupported_schema", f"schema id {schema_id} is not a usable Avro schema"
            )
        self._by_id[schema_id] = entry
        self._unknown_until.pop(schema_id, None)


def _unknown(schema_id: int) -> DecodeError:
    return DecodeError("unknown_schema_id", f"schema id {schema_id} is not in the registry")


def _read(value: bytes, start: int, read_body: BodyReader) -> dict[str, Any]:
    buf = io.BytesIO(value)
    if start:
        buf.seek(start)
    try:
        event = read_body(buf)
    except UnicodeDecodeError as exc:
        raise DecodeError("invalid_utf8", f"a string is not valid UTF-8: {exc}") from exc
    except Exception as exc:  # fastavro raises many types on bad bytes
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


def body_reader(writer: Any, reader: Any) -> BodyReader:
    """Reads one Avro body written with `writer` into `reader`'s shape (both parsed schemas).

    `fastavro.schemaless_reader` redoes, on every call, work that depends only on the schemas:
    it compares them (a deep dict ==, ~3 us here when they differ), collects their named types
    into new dicts and builds its options: 0.65 us of its 6.6 us on our events. Here that is
    done once, and each body goes straight to fastavro's reading core, `_read._read_data`.
    That is not public API: it is used only when it exists and reads probe records exactly as
    `schemaless_reader` does; otherwise this is `schemaless_reader` itself.
    """
    resolve = None if writer == reader else reader

    def public(buf: io.BytesIO) -> Any:
        return fastavro.schemaless_reader(buf, writer, resolve)

    core = _core_reader(writer, resolve)
    if core is None or not _same_reading(core, public, writer):
        return public
    return core


def _core_reader(writer: Any, reader: Any) -> BodyReader | None:
    try:
        from fastavro import _read

        read_data: Callable[..., Any] = _read._read_data  # type: ignore[attr-defined]
        named: dict[str, dict[str, Any]] = _read._default_named_schemas()  # type: ignore[attr-defined]
        # parse_schema (public) registers the named types, as schemaless_reader does per call.
        writer = fastavro.parse_schema(writer, named["writer"])
        if reader is not None:
            reader = fastavro.parse_schema(reader, named["reader"])
    except Exception:  # any change inside fastavro: use the public function
        return None
    options = {
        "return_record_name": False,
        "return_record_name_override": False,
        "handle_unicode_errors": "strict",
        "return_named_type": False,
        "return_named_type_override": False,
    }

    def core(buf: io.BytesIO) -> Any:
        return read_data(buf, writer, named, reader, options)

    return core


def _same_reading(core: BodyReader, public: BodyReader, writer: Any) -> bool:
    """True when `core` reads generated records of `writer` exactly as `public` does."""
    from fastavro.utils import generate_many

    try:
        for record in generate_many(writer, _PROBES):
            body = io.BytesIO()
            fastavro.schemaless_writer(body, writer, record)
            mine, theirs = io.BytesIO(body.getvalue()), io.BytesIO(body.getvalue())
            if core(mine) != public(theirs) or mine.tell() != theirs.tell():
                return False
    except Exception:  # a core that fails where the public reader does not
        return False
    return True


def registry_client(url: str, timeout_seconds: float = 10.0) -> SchemaRegistryClient:
    """confluent-kafka's client; a `mock://` URL gives an in-memory registry (per instance).

    Each HTTP request to the registry times out: a registry that accepts connections and
    never answers must not hold a worker thread forever.
    """
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return SchemaRegistryClient.new_client({"url": url, "timeout": timeout_seconds})


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
        except Exception as exc:  # transport errors of the registry's client
            raise RegistryUnavailable(f"schema registry unreachable: {type(exc).__name__}") from exc
        if schema_str is None:
            raise KeyError(schema_id)
        return schema_str

    return lookup
