"""Typed settings: the YAML file, overridden by `PROFILE_CONSUMER__SECTION__KEY` variables.

Every problem is reported at once, each naming the file, the dotted key and what was expected,
so `profile-consumer check` can list them all instead of failing on the first.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from confluent_kafka import Consumer, KafkaException
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from consumer.errors import ConfigError
from consumer.yamlfile import NOT_IN_FILE, KeyPath, line_of, read_yaml_with_lines

ENV_PREFIX = "PROFILE_CONSUMER__"
KafkaValue = str | int | float | bool
# Issue 8 (bad configuration): an empty topic name passed validation and failed only at
# subscribe time; names are otherwise left to the broker (librdkafka also takes `^regex`).
TopicName = Annotated[str, Field(min_length=1)]
# One registry URL, as confluent-kafka's SchemaRegistryClient takes them (comma-separated:
# several); anything else made `run` and `check` die with its ValueError traceback.
_REGISTRY_URL = re.compile(r"^(https?|mock)://[^\s/?#,]+(/[^\s?#,]*)?$")
# Keys whose values are never echoed back in messages (secrets, URLs that may carry them).
_SECRET_KEYS = ("target.token", "target.proxy", "avro.schema_registry_url")
_PROXY_URL = re.compile(r"^https?://[^\s/?#]+/?$")
DLQ_LOOP = "kafka.dlq_topic must not be one of kafka.topics (it would loop)"
# The sections whose files and values the schema and rules are built from (`check` builds them
# only when these are valid, so a broken section is reported once, not again as a rules error).
STAGE_SECTIONS = ("avro", "mapping", "target")


class _Section(BaseModel):
    # allow_inf_nan=False: `.inf` passed every `gt=0` check (an infinite retry budget, timeout
    # or commit interval); `.nan` only by luck of the comparisons.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class KafkaSettings(_Section):
    bootstrap_servers: str = Field("127.0.0.1:9092", min_length=1)
    group_id: str = Field("profile-consumer", min_length=1)
    topics: list[TopicName] = Field(default_factory=lambda: ["offline-transactions"], min_length=1)
    dlq_topic: str = Field("offline-transactions.dlq", min_length=1)
    # Passed to librdkafka untouched: security.protocol, sasl.*, ssl.*, session.timeout.ms...
    config: dict[str, KafkaValue] = Field(default_factory=dict)
    poll_batch_size: int = Field(500, ge=1, le=100_000)
    commit_interval_seconds: float = Field(1.0, gt=0)
    # False where applications may not create topics (ACLs): the quota ledger and the replay
    # tool's state topic must then exist, and their absence is an error naming them.
    create_topics: bool = True


class AvroSettings(_Section):
    schema_registry_url: str | None = None
    # Bound on one writer-schema lookup; past it the record waits and the consumer is not ready.
    schema_registry_timeout_seconds: float = Field(10.0, gt=0, le=300)
    writer_schema: Path = Path("schemas/offline_transaction.avsc")
    # The schema the mapping rules are written against; defaults to the writer schema.
    reader_schema: Path | None = None

    @field_validator("schema_registry_url")
    @classmethod
    def _registry_urls(cls, value: str | None) -> str | None:
        if value is not None and not all(
            _REGISTRY_URL.match(url.strip()) for url in value.split(",")
        ):
            # The value is not repeated: a registry URL may carry a password.
            raise ValueError("expected http(s):// URLs separated by commas (mock:// in tests)")
        return value


class TargetSettings(_Section):
    client_code: str = Field("acme", pattern=r"^[A-Za-z0-9_-]+$")
    # No userinfo ("user:pass@"): it would travel in the Host header of every request.
    base_url: str | None = Field(None, pattern=r"^https?://[^\s/?#@]+(/[^\s?#]*)?$")
    token: SecretStr | None = None
    max_in_flight: int = Field(64, ge=1, le=10_000)
    timeout_seconds: float = Field(10.0, gt=0)
    retry_max_seconds: float = Field(3600.0, gt=0)
    retry_base_seconds: float = Field(0.5, gt=0)
    retry_cap_seconds: float = Field(60.0, gt=0)
    # A Retry-After above this is read as this: one absurd answer must not hold the fleet.
    retry_after_max_seconds: float = Field(3600.0, gt=0, le=86_400)
    coalesce_window_ms: int = Field(500, ge=0)
    # A CA bundle path, or false to turn verification off (never the default).
    verify_tls: bool | Path = True
    circuit_failure_threshold: int = Field(10, ge=1)
    circuit_open_seconds: float = Field(5.0, gt=0)
    # A forward proxy URL; credentials as ${ENV} references (consumer/target/proxy.py).
    # Unset: HTTPS_PROXY / HTTP_PROXY / NO_PROXY decide.
    proxy: SecretStr | None = None
    # What carries httpx's requests (docs/performance.md section 2): httpcore is the fallback.
    http_transport: Literal["aiohttp", "httpcore"] = "aiohttp"
    # auto: single updates for live traffic, the Bulk API for backlogs (docs/quota.md).
    transport: Literal["auto", "single", "bulk"] = "auto"

    @field_validator("proxy")
    @classmethod
    def _proxy_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _PROXY_URL.match(value.get_secret_value()):
            # The value is not repeated: it may carry a password.
            raise ValueError("expected an http:// or https:// proxy URL with a host")
        return value

    def url(self) -> str:
        """The API root, without a trailing slash."""
        base = self.base_url or f"https://{self.client_code}.tt.omtrdc.net"
        return base.rstrip("/")


class QuotaSettings(_Section):
    limit: int = Field(1_000_000, ge=1)
    window_seconds: float = Field(86_400, gt=0)
    pacing: Literal["smooth", "eager"] = "smooth"
    # Smooth pacing lets this many updates go above the steady rate; default 1% of the limit.
    burst: int | None = Field(None, ge=1)
    ledger_topic: str | None = None

    def burst_allowance(self) -> int:
        return self.burst if self.burst is not None else max(1, self.limit // 100)


# Adobe: a batch must be under 50 MB and carry at most 500,000 rows.
_BULK_MAX_BYTES = 50 * 1024 * 1024


class BulkSettings(_Section):
    """Target's Bulk Profile Update API: when `auto` switches to it, batches, shared limits."""

    # auto switches to bulk when the waiting work would take longer than this through single
    # updates at the rate the quota allows, and back once it would take less than
    # switch_after_seconds * switch_back_ratio (the hysteresis).
    switch_after_seconds: float = Field(300.0, gt=0)
    switch_back_ratio: float = Field(0.5, gt=0, lt=1)
    # ...or when the single-update quota's remaining share falls under this fraction.
    headroom_threshold: float = Field(0.05, ge=0, lt=1)
    max_batch_seconds: float = Field(60.0, gt=0)
    max_rows: int = Field(500_000, ge=1, le=500_000)
    # 1 MiB under Adobe's bound by default; the body is measured exactly (consumer/bulk/rows.py).
    max_bytes: int = Field(_BULK_MAX_BYTES - 1024 * 1024, ge=1024, lt=_BULK_MAX_BYTES)
    # Rendered batch bodies held at once by this process, all batches together (a body lives
    # from its render until its POST is over); a larger body still goes, alone.
    max_rendered_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    # v1 for pcId rows when the account uses ECID (Adobe: don't key v2 batches by pcId then).
    pcid_api: Literal["v1", "v2"] = "v2"
    # Rows per rolling 24 h and batch calls per rolling minute, for all replicas together.
    daily_rows: int = Field(1_000_000, ge=1)
    calls_per_minute: int = Field(50, ge=1)
    status_poll_seconds: float = Field(10.0, gt=0)
    status_timeout_seconds: float = Field(3600.0, gt=0)
    max_resubmits: int = Field(3, ge=0)
    request_timeout_seconds: float = Field(300.0, gt=0)
    # auto stays in a mode at least this long after a switch, so a backlog near the threshold
    # cannot make it flap.
    min_dwell_seconds: float = Field(60.0, ge=0)
    # Events read and held for batches whose status is not final (compact: ~100 bytes each);
    # past it, partitions pause until batches complete. Apart from max_buffered_events so a
    # batch can fill to max_rows.
    max_held_events: int = Field(1_000_000, ge=1)
    # Adobe's override caveat: a later v2 batch replaces what an earlier one set for the same
    # profile, so rows carry the attributes bulk sent for that profile within this horizon
    # (since its last single update), for at most carry_max_profiles profiles.
    carry_horizon_seconds: float = Field(86_400.0, ge=0)
    carry_max_profiles: int = Field(500_000, ge=0)

    def batch_rows(self) -> int:
        """Rows a batch may hold: a batch larger than the daily budget could never be sent."""
        return min(self.max_rows, self.daily_rows)


class MappingSettings(_Section):
    rules: Path = Path("examples/mapping.yaml")


class MetricsSettings(_Section):
    host: str = "0.0.0.0"  # noqa: S104 - a pod must be scraped from outside
    port: int = Field(9400, ge=0, le=65535)


class PipelineSettings(_Section):
    max_buffered_events: int = Field(10_000, ge=1)
    shutdown_timeout_seconds: float = Field(20.0, ge=0)
    # /healthz fails when the poll loop has not turned for this long.
    stuck_after_seconds: float = Field(60.0, gt=0)
    # Child processes that decode and map (consumer/decode_pool.py): 0 keeps it all in this
    # process; 1 puts a second CPU to work (about 29 MB more), where the pod has one to itself.
    decode_processes: int = Field(0, ge=0, le=8)


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    mask_identities: bool = True


class Settings(_Section):
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)  # type: ignore[arg-type]
    avro: AvroSettings = Field(default_factory=AvroSettings)  # type: ignore[arg-type]
    target: TargetSettings = Field(default_factory=TargetSettings)  # type: ignore[arg-type]
    quota: QuotaSettings = Field(default_factory=QuotaSettings)  # type: ignore[arg-type]
    bulk: BulkSettings = Field(default_factory=BulkSettings)  # type: ignore[arg-type]
    mapping: MappingSettings = Field(default_factory=MappingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)  # type: ignore[arg-type]
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)  # type: ignore[arg-type]
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    # Where the file was read from: relative paths inside it resolve against it.
    _source: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        if self.kafka.dlq_topic in self.kafka.topics:
            raise ValueError(DLQ_LOOP)
        return self

    def ledger_topic(self) -> str:
        return self.quota.ledger_topic or f"{self.kafka.group_id}.quota"

    def resolve(self, path: Path) -> Path:
        """Find a file named in the config: absolute; else relative to the config file's folder
        (so a config works from any working directory), then to the working directory (paths
        given only through environment variables); `schemas/...` falls back to the packaged copy.
        """
        if path.is_absolute():
            return path
        candidates = [Path.cwd() / path]
        if self._source is not None:
            candidates.insert(0, self._source.parent / path)
        for candidate in candidates:
            if candidate.exists():
                return candidate
        if path.parts and path.parts[0] == "schemas":
            packaged = resources.files("consumer").joinpath("_schemas", *path.parts[1:])
            if packaged.is_file():
                return Path(str(packaged))
        return candidates[0]


@dataclass
class Validation:
    """Everything wrong with a config file, found in one pass.

    `settings` is complete when `problems` is empty; otherwise it is a best effort (the valid
    sections as written, defaults for the broken ones) that only `check` may use, to go on
    validating the schema and rules. `stages_checkable`: their inputs are all valid.
    """

    settings: Settings
    problems: list[str] = field(default_factory=list)
    stages_checkable: bool = True


def load_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, merge env overrides, validate. Raises ConfigError listing every problem."""
    result = validate_settings(path, environ)
    if result.problems:
        raise ConfigError(result.problems)
    return result.settings


def validate_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Validation:
    """Every problem of the file at once: field errors, cross-checks, named files, librdkafka.

    An unreadable file or invalid YAML still raises ConfigError (nothing else can be judged).
    """
    environ = os.environ if environ is None else environ
    label = str(path) if path is not None else "<defaults>"
    raw, problems, lines = _read_yaml(path) if path is not None else ({}, [], {})
    from_env = _apply_env(raw, environ)
    # A key set by the environment is not at its line in the file: no line number for it.
    lines.update(dict.fromkeys(from_env, NOT_IN_FILE))
    try:
        settings = Settings.model_validate(raw)
        broken: set[str] = set()
    except ValidationError as exc:
        # The model's own cross-check is reported by `_raw_cross_checks`, with its line.
        errors = [e for e in exc.errors() if e["loc"] or DLQ_LOOP not in e["msg"]]
        problems += [_describe(label, err, lines) for err in errors]
        broken = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
        settings = _partial(raw, broken)
        problems += _raw_cross_checks(raw, label, lines)
    settings._source = path.resolve() if path is not None else None
    missing = _check_files(settings, label, broken, lines)
    problems += missing
    problems += _check_kafka_config(_raw_kafka_config(raw), label, lines)
    # Only a missing CA bundle leaves the schema and rules worth building.
    files_ok = all("target.verify_tls" in problem for problem in missing)
    return Validation(settings, problems, files_ok and not broken & set(STAGE_SECTIONS))


def _raw_cross_checks(raw: dict[str, Any], label: str, lines: dict[KeyPath, int]) -> list[str]:
    """The model's cross-checks, on the raw values: they run even when a field is invalid."""
    kafka = raw.get("kafka")
    if not isinstance(kafka, dict):
        return []
    fields = KafkaSettings.model_fields
    topics = kafka.get("topics", fields["topics"].get_default(call_default_factory=True))
    dlq_topic = kafka.get("dlq_topic", fields["dlq_topic"].default)
    if isinstance(topics, list) and isinstance(dlq_topic, str) and dlq_topic in topics:
        return [_at(label, lines, ("kafka", "dlq_topic"), DLQ_LOOP)]
    return []


def _raw_kafka_config(raw: dict[str, Any]) -> dict[str, KafkaValue]:
    """`kafka.config`'s scalar values as written (the others are field errors already)."""
    kafka = raw.get("kafka")
    config = kafka.get("config") if isinstance(kafka, dict) else None
    if not isinstance(config, dict):
        return {}
    scalar = (str, int, float, bool)
    return {str(k): v for k, v in config.items() if isinstance(v, scalar)}


def _partial(raw: dict[str, Any], broken: set[str]) -> Settings:
    """Settings from the sections that validate, defaults for the others (never run with it)."""
    sections: dict[str, Any] = {}
    for name, info in Settings.model_fields.items():
        if name in broken or not isinstance(raw.get(name), dict):
            continue
        model = info.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            sections[name] = model.model_validate(raw[name])
    return Settings.model_construct(**sections)


def _at(label: str, lines: dict[KeyPath, int], path: KeyPath, what: str) -> str:
    """`FILE:LINE: what` where the key is written in the file, else `FILE: what`."""
    line = line_of(lines, path)
    return f"{label}:{line}: {what}" if line is not None else f"{label}: {what}"


def _read_yaml(path: Path) -> tuple[dict[str, Any], list[str], dict[KeyPath, int]]:
    data, duplicates, lines = read_yaml_with_lines(path, str(path))
    if data is None:
        return {}, duplicates, lines
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a mapping of sections at the top level"])
    return data, duplicates, lines


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> list[KeyPath]:
    """PROFILE_CONSUMER__KAFKA__BOOTSTRAP_SERVERS=x sets raw['kafka']['bootstrap_servers'].

    Values are parsed as YAML scalars/flow collections so lists and numbers work. Keys under
    kafka.config use librdkafka's dotted names: `..__CONFIG__SASL_PASSWORD` -> `sasl.password`.
    Returns the key paths it set.
    """
    applied: list[KeyPath] = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if len(parts) < 2:
            continue
        if parts[:2] == ["kafka", "config"] and len(parts) == 3:
            parts[2] = parts[2].replace("_", ".")
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = _env_value(parts, environ[name])
        applied.append(tuple(parts))
    return applied


def _env_value(parts: list[str], value: str) -> Any:
    # Secrets and librdkafka values stay strings: "0123" must not become 123.
    if parts[-1] in ("token", "proxy") or parts[:2] == ["kafka", "config"]:
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _describe(label: str, err: Any, lines: dict[KeyPath, int]) -> str:
    loc = [str(p) for p in err["loc"]]
    kind = err["type"]
    if (
        loc[:2] == ["kafka", "config"]
        and len(loc) == 4
        and loc[3] in ("str", "int", "float", "bool")
    ):
        # One message per librdkafka value, not one per member of the str|int|float|bool union.
        loc, kind = loc[:3], "kafka_value"
    key = ".".join(loc)
    if kind == "extra_forbidden":
        expected = "no such key (unknown keys are errors; check the spelling)"
    elif kind == "missing":
        expected = "a value is required"
    elif kind == "kafka_value":
        expected = "expected a string, number or boolean"
    elif kind == "value_error":
        # Our own validators: their messages say what is expected (never the value).
        expected = err["msg"].removeprefix("Value error, ")
    else:
        expected = err["msg"]
    # The value is echoed only for plain type/range errors: never for unknown keys (a
    # misspelt `tokn:` holds a token), librdkafka values (`sasl.password`) or secret keys.
    echo = kind not in ("extra_forbidden", "missing", "kafka_value", "value_error")
    if echo and "input" in err and key not in _SECRET_KEYS:
        expected += f" (got {err['input']!r})"
    return _at(label, lines, tuple(loc), f"{key}: {expected}" if key else expected)


def _check_kafka_config(
    config: Mapping[str, KafkaValue], label: str, lines: dict[KeyPath, int] | None = None
) -> list[str]:
    """Let librdkafka itself validate each `kafka.config` property, offline.

    Unknown properties and bad values used to pass `check` and make `run` die with a
    KafkaException traceback. One property at a time, and only librdkafka's
    per-property verdicts: a ConfigMap without the credentials its Secret adds at run time
    must still pass; conflicts between properties surface when `run` builds its clients
    (cli.py reports those as configuration errors too).
    A client built without `bootstrap.servers` opens no connection; it is closed at once.
    """
    quiet = logging.Logger("librdkafka-config-check")
    quiet.disabled = True  # e.g. "producer property ignored by this consumer"
    problems = []
    for key, value in config.items():
        if key == "bootstrap.servers":
            continue
        try:
            Consumer({"group.id": "config-check", key: value, "logger": quiet}).close()
        except KafkaException as exc:
            message = exc.args[0].str() if exc.args else str(exc)
            # "Failed to create" comes from checks across properties (a SASL protocol with no
            # mechanism yet...): those are judged on the whole config, at run time.
            if not message.startswith("Failed to create"):
                where = ("kafka", "config", key)
                problems.append(_at(label, lines or {}, where, f"kafka.config.{key}: {message}"))
    return problems


def _check_files(
    settings: Settings,
    label: str,
    broken: set[str] | None = None,
    lines: dict[KeyPath, int] | None = None,
) -> list[str]:
    """Files the config names must exist (sections that failed validation are not looked at)."""
    skip, lines = broken or set(), lines or {}
    problems = []
    named: list[tuple[str, Path]] = []
    if "avro" not in skip:
        if not settings.avro.schema_registry_url:
            named.append(("avro.writer_schema", settings.avro.writer_schema))
        if settings.avro.reader_schema is not None:
            named.append(("avro.reader_schema", settings.avro.reader_schema))
    if "mapping" not in skip:
        named.append(("mapping.rules", settings.mapping.rules))
    for key, path in named:
        if not settings.resolve(path).is_file():
            what = f"{key}: expected an existing file, {str(path)!r} not found"
            problems.append(_at(label, lines, tuple(key.split(".")), what))
    tls = settings.target.verify_tls if "target" not in skip else True
    if isinstance(tls, Path) and not settings.resolve(tls).is_file():
        what = "target.verify_tls: expected true, false or a CA bundle file"
        problems.append(_at(label, lines, ("target", "verify_tls"), what))
    return problems
