"""Decode + map of one record's value, apart from any bookkeeping: the pipeline runs it in this
process, a decode process (consumer/decode_pool.py) in its own; so it imports only the stages
(no Kafka, HTTP or metrics client in a decode process)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consumer.avro import Decoder, SchemaLookup
from consumer.errors import DecodeError, EventError, MappingError, PermanentDeliveryError
from consumer.mapping import Mapper, ProfileUpdate, load_rules
from consumer.target.request import check_size


@dataclass(frozen=True)
class StageSpec:
    """What the decoder and mapper are built from, read and resolved (consumer/stages.py):
    plain data, so a decode process builds the same two without the settings and their
    imports (pydantic alone is about 11 MB of a child's 27)."""

    reader_schema: dict[str, Any]
    writer_schema: dict[str, Any] | None  # None: writer schemas come through a registry lookup
    rules_path: Path

    def build(self, lookup: SchemaLookup | None) -> tuple[Decoder, Mapper]:
        rules = load_rules(self.rules_path, self.reader_schema, str(self.rules_path))
        decoder = Decoder(self.reader_schema, self.writer_schema, lookup)
        return decoder, Mapper(rules)


# What decode + map made of one record's value: its update, None (no rule matched), or the
# error that sends it to the DLQ.
Prepared = ProfileUpdate | EventError | None


def prepare(decoder: Decoder, mapper: Mapper, value: bytes | None) -> Prepared:
    """Decode and map one value, and check its size; no bookkeeping, no I/O (a decode process
    runs this too). Raises RegistryUnavailable: the caller retries the record later."""
    try:
        event = decoder.decode(value)
        update = mapper.map(event)
        if update is not None:
            check_size(update.identity_type, update.identity, update.attributes)
    except (DecodeError, MappingError, PermanentDeliveryError) as exc:
        return exc
    return update
