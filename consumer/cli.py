"""`profile-consumer`: run, check, preview, simulate-target, demo.

Exit codes (consumer/exits.py): 0 success, 1 failure, 2 invalid configuration or usage,
3 a dependency unreachable. Nothing escapes `main` as a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from consumer import __version__, exits
from consumer.bulk import cli as bulk_cli
from consumer.config import Settings, load_settings
from consumer.dlq import cli as dlq_cli
from consumer.errors import ConfigError
from consumer.quota import status as quota_status

EXIT_CONFIG = exits.CONFIG
NEEDS_DEVTOOLS = (
    "needs the development tools (devtools/), which are not installed: "
    "run it from a clone with `pip install -e '.[dev]'`"
)
# Development commands: their options and code live in devtools/, which the wheel does not ship.
DEVTOOLS_COMMANDS = {
    "simulate-target": "run the Target API simulator",
    "demo": "embedded broker + simulator + sample events, end to end",
}


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", type=Path, required=True, help="the YAML configuration file"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="profile-consumer",
        description="Kafka offline-channel events into Adobe Target profiles.",
        epilog=exits.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser
    )

    run = sub.add_parser("run", help="consume and send, in the foreground (SIGTERM drains)")
    _config_arg(run)
    run.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="exit 3 unless the broker (and the Schema Registry, if set) answer within SECONDS "
        "at start-up; default: wait for them, reporting not ready on /readyz",
    )
    run.set_defaults(handler=cmd_run)

    check = sub.add_parser("check", help="validate the configuration and rules; exit 2 if bad")
    _config_arg(check)
    _json_arg(check, "{config, ok, problems}")
    check.set_defaults(handler=cmd_check)

    preview = sub.add_parser("preview", help="show what an event (JSON) would send")
    _config_arg(preview)
    preview.add_argument("--event", required=True, help="a JSON event file, or - for stdin")
    _json_arg(preview, "{outcome, rules, identity, attributes, requests} or the DLQ reason")
    preview.set_defaults(handler=cmd_preview)

    for name, help_text in DEVTOOLS_COMMANDS.items():
        devtools_parser = sub.add_parser(name, help=help_text, devtools_command=name)
        devtools_parser.set_defaults(handler=cmd_devtools)

    dlq_cli.add_parser(sub)
    quota_status.add_parser(sub)
    bulk_cli.add_parser(sub)
    return parser


def _json_arg(parser: argparse.ArgumentParser, shape: str) -> None:
    parser.add_argument("--json", action="store_true", help=f"one JSON document: {shape}")


def _load(config: Path) -> Settings:
    return load_settings(config)


def cmd_check(args: argparse.Namespace) -> int:
    problems = check_problems(args.config)
    if args.json:
        doc = {"config": str(args.config), "ok": not problems, "problems": problems}
        print(json.dumps(doc, indent=2))
        return exits.CONFIG if problems else exits.OK
    if problems:
        raise ConfigError(problems)
    print(f"{args.config}: OK")
    return exits.OK


def check_problems(config: Path) -> list[str]:
    """Every problem of the config, its files, schema and rules, in one run."""
    from consumer.config import validate_settings
    from consumer.stages import build_stages

    try:
        result = validate_settings(config)
    except ConfigError as exc:  # unreadable, or not YAML: nothing more can be judged
        return exc.problems
    problems = list(result.problems)
    if result.stages_checkable:
        try:
            build_stages(result.settings)
        except ConfigError as exc:
            problems += exc.problems
    return problems


def cmd_run(args: argparse.Namespace) -> int:
    from consumer import logs
    from consumer.app import App
    from consumer.runtime import tune_gc, tune_malloc

    tune_malloc()  # before any Kafka client starts its threads
    # A stop asked for while starting up is remembered, not fatal.
    early_stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: early_stop.set())
    settings = _load(args.config)
    if args.timeout is not None:
        _preflight(settings, args.timeout)
    logs.configure(settings.logging.level, settings.logging.mask_identities)
    app = App(settings)
    tune_gc()  # after start-up: what App built lives as long as the process

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if early_stop.is_set():
            stop.set()
        await app.run(stop)

    try:
        asyncio.run(main())
    except KafkaException as exc:
        # librdkafka refuses a client config (e.g. `acks: 1` with the DLQ producer's
        # idempotence, SASL without credentials) when the clients are built: report it as a
        # configuration error (exit 2), not a traceback. Other Kafka errors re-raise.
        error = exc.args[0] if exc.args else None
        if not isinstance(error, KafkaError) or error.code() != KafkaError._INVALID_ARG:
            raise
        raise ConfigError([f"{args.config}: kafka.config: {error.str()}"]) from exc
    return 0


def _preflight(settings: Settings, timeout: float) -> None:
    """Fail fast (exit 3) on a broker or registry that does not answer: `run --timeout`."""
    from consumer.kafka.clients import producer_config
    from consumer.preflight import broker_metadata, require_registry

    broker_metadata(producer_config(settings), timeout)
    if settings.avro.schema_registry_url:
        require_registry(settings.avro.schema_registry_url, timeout)


def cmd_preview(args: argparse.Namespace) -> int:
    from consumer.bulk.endpoints import Endpoints
    from consumer.preview import preview_event, render
    from consumer.stages import build_stages

    settings = _load(args.config)
    stages = build_stages(settings)
    bulk = Endpoints(
        base_url=settings.target.url(),
        client_code=settings.target.client_code,
        pcid_api=settings.bulk.pcid_api,
    )
    result = preview_event(stages, _read_event(args.event), bulk)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return exits.FAILURE if result["outcome"] == "dead-letter" else exits.OK


def _read_event(name: str) -> str:
    if name == "-":
        return sys.stdin.read()
    try:
        return Path(name).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise exits.UsageError(f"cannot read the event file {name}: {reason}") from exc


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser; a `devtools_command`'s options are added only when it parses.

    Building the parser (for `run` and every other command) must not import devtools/.
    """

    def __init__(self, *args: Any, devtools_command: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._devtools_command = devtools_command

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        command, self._devtools_command = self._devtools_command, None
        if command is not None and not _add_devtools_options(self, command):
            self.description = NEEDS_DEVTOOLS
            # Its options are unknown without devtools: the handler says what is missing.
            if not {"-h", "--help"} & set(args or ()):
                args = []
        return super().parse_known_args(args, namespace)


def _add_devtools_options(parser: argparse.ArgumentParser, command: str) -> bool:
    """Add a development command's options from devtools; False when it is not installed."""
    try:
        from devtools.commands import COMMANDS
    except ImportError as exc:
        if not _devtools_missing(exc):
            raise
        return False
    COMMANDS[command].add_arguments(parser)
    return True


def cmd_devtools(args: argparse.Namespace) -> int:
    """`simulate-target` and `demo`: run from devtools, imported only now."""
    try:
        from devtools.commands import COMMANDS
    except ImportError as exc:
        if not _devtools_missing(exc):
            raise
        print(f"profile-consumer {args.command}: {NEEDS_DEVTOOLS}", file=sys.stderr)
        return EXIT_CONFIG
    return COMMANDS[args.command].run(args)


def _devtools_missing(exc: ImportError) -> bool:
    # A module missing inside devtools (a dev dependency) is a real error, not an absent devtools.
    return exc.name is None or exc.name.split(".")[0] == "devtools"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the point: one paragraph and an exit code, never a traceback
        return exits.report(_command_name(args), exc)


def _command_name(args: argparse.Namespace) -> str:
    sub = (
        getattr(args, "dlq_command", None)
        or getattr(args, "quota_command", None)
        or getattr(args, "bulk_command", None)
    )
    return f"{args.command} {sub}" if sub else str(args.command)


if __name__ == "__main__":
    sys.exit(main())
