"""The simulator on the command line: `python -m devtools simulate-target` and
`profile-consumer simulate-target` share these options and this entry point."""

from __future__ import annotations

import argparse
import json
import ssl

from devtools.simulator.config import SimulatorConfig
from devtools.simulator.server import TargetSimulator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's options."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--client-code")
    parser.add_argument("--quota-limit", type=int)
    parser.add_argument("--quota-window-seconds", type=float, default=86400.0)
    parser.add_argument("--latency-seconds", type=float, default=0.0)
    parser.add_argument("--require-token")
    parser.add_argument("--seed", type=int)
    bulk = parser.add_argument_group("Bulk Profile Update API")
    bulk.add_argument("--bulk-calls-per-minute", type=int, default=50)
    bulk.add_argument("--bulk-processing-seconds", type=float, default=0.2)
    bulk.add_argument(
        "--bulk-row-failure-ids", default="", help="comma-separated identities whose rows fail"
    )
    bulk.add_argument("--bulk-row-failure-ratio", type=float, default=0.0)
    bulk.add_argument("--bulk-stuck-ratio", type=float, default=0.0)
    bulk.add_argument("--bulk-stuck-batches", type=int, default=0, help="the next N stay stuck")
    parser.add_argument(
        "--config-json", default="{}", help="any other SimulatorConfig fields, as a JSON object"
    )
    parser.add_argument("--ssl-cert", help="PEM certificate: serve https")
    parser.add_argument("--ssl-key", help="PEM private key for --ssl-cert")


def serve(args: argparse.Namespace) -> int:
    """Run the simulator from parsed options until SIGINT/SIGTERM; prints its URL first."""
    config = SimulatorConfig(
        client_code=args.client_code,
        quota_limit=args.quota_limit,
        quota_window_seconds=args.quota_window_seconds,
        latency_seconds=args.latency_seconds,
        require_token=args.require_token,
        seed=args.seed,
        bulk_calls_per_minute=args.bulk_calls_per_minute,
        bulk_processing_seconds=args.bulk_processing_seconds,
        bulk_row_failure_ids=frozenset(i for i in args.bulk_row_failure_ids.split(",") if i),
        bulk_row_failure_ratio=args.bulk_row_failure_ratio,
        bulk_stuck_ratio=args.bulk_stuck_ratio,
        bulk_stuck_batches=args.bulk_stuck_batches,
    )
    context = None
    if args.ssl_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.ssl_cert, args.ssl_key)
    simulator = TargetSimulator(config, host=args.host, port=args.port, ssl_context=context)
    simulator.configure(**json.loads(args.config_json))
    simulator.start()
    print(simulator.url, flush=True)
    simulator.serve_forever()
    return 0
