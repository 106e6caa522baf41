"""`profile-consumer dlq inspect|replay`: operating the dead-letter queue.

Kafka and the schemas are only touched when a command runs: importing this module (as the CLI
does to build its parser) stays cheap. Operator guide: docs/dlq.md.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consumer.dlq.records import Selection, dumps, parse_time

if TYPE_CHECKING:
    from consumer.config import Settings

DEFAULT_SAMPLE = 10
DEFAULT_MAX_REPLAYS = 3
DEFAULT_TIMEOUT = 10.0


def add_parser(sub: Any) -> None:
    """Register `dlq` and its subcommands on the CLI's subparsers."""
    dlq = sub.add_parser("dlq", help="inspect and replay the dead-letter queue")
    commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="DLQ_COMMAND")

    inspect = commands.add_parser("inspect", help="counts by stage and reason, and a sample")
    _common(inspect)
    inspect.add_argument(
        "--limit", type=_positive, default=DEFAULT_SAMPLE, help="records in the sample"
    )
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.set_defaults(handler=cmd_inspect)

    replay = commands.add_parser("replay", help="re-produce selected records to their topic")
    _common(replay)
    replay.add_argument("--limit", type=_positive, help="replay at most N records")
    replay.add_argument("--dry-run", action="store_true", help="show the plan; change nothing")
    replay.add_argument(
        "--max-replays",
        type=_positive,
        default=DEFAULT_MAX_REPLAYS,
        help="refuse records already replayed this many times (from their replay.count)",
    )
    replay.add_argument("--json", action="store_true", help="print the summary as JSON")
    replay.set_defaults(handler=cmd_replay)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", type=Path, required=True, help="the YAML configuration file"
    )
    parser.add_argument(
        "--reason",
        action="append",
        default=[],
        help="only records with this error.reason (repeat for several)",
    )
    parser.add_argument(
        "--since", type=_timestamp, help="dead-lettered at or after (ISO 8601, UTC if no zone)"
    )
    parser.add_argument("--until", type=_timestamp, help="dead-lettered before (ISO 8601)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="exit 3 when the broker (inspect: or the Schema Registry) does not answer in time",
    )


def _selection(args: argparse.Namespace) -> Selection:
    return Selection(frozenset(args.reason), args.since, args.until)


def cmd_inspect(args: argparse.Namespace) -> int:
    from consumer.config import load_settings
    from consumer.dlq.inspection import build_report, render_table
    from consumer.stages import build_stages

    settings = load_settings(args.config)
    decoder = build_stages(settings).decoder
    _preflight(settings, args.timeout, registry=True)
    report = build_report(settings, _selection(args), args.limit)
    data = report.as_dict(decoder)
    if args.json:
        print(dumps(data))
    else:
        render_table(data, sys.stdout)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from consumer.config import load_settings
    from consumer.dlq.replay import exit_code, render_summary, run_replay

    settings = load_settings(args.config)
    _preflight(settings, args.timeout, registry=False)  # replays bytes: no decoding
    summary = run_replay(
        settings,
        _selection(args),
        limit=args.limit,
        max_replays=args.max_replays,
        dry_run=args.dry_run,
    )
    if args.json:
        print(dumps(summary))
        return exit_code(summary)
    return render_summary(summary, sys.stdout, sys.stderr)


def _preflight(settings: Settings, timeout: float, *, registry: bool) -> None:
    """Unreachable (exit 3) in `timeout` s, rather than a wait and a librdkafka log per retry."""
    from consumer.kafka.clients import producer_config
    from consumer.preflight import broker_metadata, require_registry

    broker_metadata(producer_config(settings), timeout)
    if registry and settings.avro.schema_registry_url:
        require_registry(settings.avro.schema_registry_url, timeout)


def _timestamp(text: str) -> datetime:
    parsed = parse_time(text)
    if parsed is None:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time, got {text!r}")
    return parsed


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value
