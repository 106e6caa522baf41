"""The development commands, shared by `python -m devtools` and `profile-consumer`.

The product's CLI adds these subcommands' options and runs them only when one is asked for, so
that building its parser never imports the development tools. The demo's module (the whole
consumer, Kafka clients) is imported only when the demo runs: the simulator starts light.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from devtools.simulator import cli as simulator_cli


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=3000, help="sample events to produce")
    parser.add_argument("--profiles", type=int, default=500, help="distinct customers")
    parser.add_argument("--poison", type=float, default=0.03, help="share of poison records")
    parser.add_argument(
        "--backlog",
        type=int,
        default=0,
        metavar="N",
        help="then a burst of N events (e.g. 20000): drained through bulk, and back to single",
    )


def _run_demo(args: argparse.Namespace) -> int:
    from devtools.demo import run_demo

    return run_demo(args.events, args.profiles, args.poison, backlog=args.backlog)


COMMANDS = {
    "simulate-target": Command(
        help="run the Target API simulator",
        add_arguments=simulator_cli.add_arguments,
        run=simulator_cli.serve,
    ),
    "demo": Command(
        help="embedded broker + simulator + sample events, end to end",
        add_arguments=_demo_arguments,
        run=_run_demo,
    ),
}
