"""`profile-consumer`: run, check, preview, simulate-target, demo.

Exit codes: 0 success, 2 invalid configuration or usage, 1 anything else.
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

from confluent_kafka import KafkaError, KafkaException

from consumer import __version__, simulator
from consumer.config import Settings, load_settings
from consumer.dlq import cli as dlq_cli
from consumer.errors import ConfigError, MappingError, PermanentDeliveryError
from consumer.quota import status as quota_status

EXIT_CONFIG = 2


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", type=Path, required=True, help="the YAML configuration file"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="profile-consumer",
        description="Kafka offline-channel events into Adobe Target profiles.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="consume and send, in the foreground (SIGTERM drains)")
    _config_arg(run)
    run.set_defaults(handler=cmd_run)

    check = sub.add_parser("check", help="validate the configuration and rules; exit 2 if bad")
    _config_arg(check)
    check.set_defaults(handler=cmd_check)

    preview = sub.add_parser("preview", help="show what an event (JSON) would send")
    _config_arg(preview)
    preview.add_argument("--event", required=True, help="a JSON event file, or - for stdin")
    preview.set_defaults(handler=cmd_preview)

    sim = sub.add_parser("simulate-target", help="run the Target API simulator")
    simulator.add_arguments(sim)
    sim.set_defaults(handler=simulator.serve)

    demo = sub.add_parser("demo", help="embedded broker + simulator + sample events, end to end")
    demo.add_argument("--events", type=int, default=3000, help="sample events to produce")
    demo.add_argument("--profiles", type=int, default=500, help="distinct customers")
    demo.add_argument("--poison", type=float, default=0.03, help="share of poison records")
    demo.set_defaults(handler=cmd_demo)

    dlq_cli.add_parser(sub)
    quota_status.add_parser(sub)
    return parser


def _load(config: Path) -> Settings:
    return load_settings(config)


def cmd_check(args: argparse.Namespace) -> int:
    from consumer.stages import build_stages

    settings = _load(args.config)
    build_stages(settings)
    print(f"{args.config}: OK")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from consumer import logs
    from consumer.app import App
    from consumer.runtime import tune_gc

    # A stop asked for while starting up is remembered, not fatal.
    early_stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: early_stop.set())
    settings = _load(args.config)
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


def cmd_preview(args: argparse.Namespace) -> int:
    from consumer.mapping import event_from_json
    from consumer.stages import build_stages
    from consumer.target.request import build_requests

    settings = _load(args.config)
    stages = build_stages(settings)
    text = sys.stdin.read() if args.event == "-" else Path(args.event).read_text("utf-8")
    try:
        event = event_from_json(json.loads(text), stages.reader_schema)
        update = stages.mapper.map(event)
    except (MappingError, ValueError) as exc:
        reason = getattr(exc, "reason", "invalid_json")
        print(f"dead-letter: stage=map reason={reason}: {exc}")
        return 1
    if update is None:
        print("no rule matched: the event would be skipped (counted, not dead-lettered)")
        return 0
    print(f"matched rules: {', '.join(update.rules)}")
    print(f"identity: {update.identity_type}={update.identity}")
    print("attributes:")
    for name, value in update.attributes.items():
        print(f"  profile.{name} = {value!r}")
    try:
        requests = build_requests(
            stages.endpoint_url, update.identity_type, update.identity, update.attributes
        )
    except PermanentDeliveryError as exc:
        print(f"dead-letter: stage=send reason={exc.reason}: {exc}")
        return 1
    print(f"request(s): {len(requests)}")
    for request in requests:
        print(f"{request.method} {request.url}")
        if request.body:
            print(f"  body: {request.body.decode('ascii')}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from consumer.demo import run_demo

    return run_demo(args.events, args.profiles, args.poison)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"profile-consumer {args.command}: invalid configuration", file=sys.stderr)
        for problem in exc.problems:
            print(f"  error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
