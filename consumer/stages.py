"""The static, validated stages: what `run`, `check`, `preview` and the DLQ tools build from the
settings without touching the network (schemas, rules, the endpoint URL)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from consumer.avro import Decoder, load_schema, registry_client, registry_lookup
from consumer.config import Settings
from consumer.mapping import Mapper, load_rules
from consumer.prepare import StageSpec
from consumer.target.request import endpoint

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient


@dataclass(frozen=True)
class Stages:
    decoder: Decoder
    mapper: Mapper
    endpoint_url: str
    spec: StageSpec  # what a decode process builds its decoder and mapper from

    @property
    def reader_schema(self) -> dict[str, Any]:
        """The schema the rules read (and `preview` parses JSON with)."""
        return self.spec.reader_schema


def build_stages(
    settings: Settings, *, schema_registry: SchemaRegistryClient | None = None
) -> Stages:
    """Load schemas and rules; raises ConfigError naming files and keys.

    `schema_registry` replaces the client built from `avro.schema_registry_url` (tests).
    """
    avro = settings.avro
    reader_path = settings.resolve(avro.reader_schema or avro.writer_schema)
    reader = load_schema(reader_path, f"avro.reader_schema ({reader_path})")
    rules_path = settings.resolve(settings.mapping.rules)
    rules = load_rules(rules_path, reader, str(rules_path))
    writer, lookup = None, None
    if avro.schema_registry_url:
        client = schema_registry or registry_client(
            avro.schema_registry_url, avro.schema_registry_timeout_seconds
        )
        lookup = registry_lookup(client)
    else:
        writer_path = settings.resolve(avro.writer_schema)
        writer = load_schema(writer_path, f"avro.writer_schema ({writer_path})")
    return Stages(
        decoder=Decoder(reader, writer, lookup),
        mapper=Mapper(rules),
        endpoint_url=endpoint(settings.target.url(), settings.target.client_code),
        spec=StageSpec(reader, writer, rules_path),
    )
