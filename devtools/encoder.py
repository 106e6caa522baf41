"""Encodes events as Kafka record values, for the demo, tests and benchmarks.

The inverse of `consumer.avro.Decoder`; the product only ever decodes.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import fastavro

from consumer.avro import MAGIC_BYTE, Schema

# The Confluent wire format's header: magic byte, then the 4-byte big-endian schema id.
_HEADER = struct.Struct(">bI")


class Encoder:
    """Encodes events (plain Avro, or Confluent format when a schema id is given)."""

    def __init__(self, schema: Schema, schema_id: int | None = None) -> None:
        self._schema = fastavro.parse_schema(schema)
        self._header = b"" if schema_id is None else _HEADER.pack(MAGIC_BYTE, schema_id)

    def encode(self, event: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self._header)
        fastavro.schemaless_writer(buf, self._schema, event)
        return buf.getvalue()
