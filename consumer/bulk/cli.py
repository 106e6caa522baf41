"""`profile-consumer bulk status`: the batches in flight, from the bulk manifest topic.

Every replica records each step of its batches in `<kafka.group_id>.bulk`
(consumer/bulk/manifest.py); this reads the topic and lists the batches whose latest state is
not final (`--all`: the final ones too). Exit codes as every command (consumer/exits.py):
0 listed (even none), 2 bad configuration, 3 the broker did not answer.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from consumer.bulk.manifest import FINAL_STATES, manifest_topic, read_manifest
from consumer.config import load_settings

COLUMNS = (
    ("batch", "batch_id"),
    ("state", "state"),
    ("identity", "identity_type"),
    ("rows", "rows"),
    ("events", "events"),
    ("failed", "failed_rows"),
    ("resubmits", "resubmits"),
    ("age", "age"),
    ("replica", "replica"),
)


def add_parser(sub: Any) -> None:
    """Register `bulk status` on the CLI's subcommands."""
    bulk = sub.add_parser("bulk", help="the bulk transport's batches, from the manifest topic")
    actions = bulk.add_subparsers(dest="bulk_command", required=True, metavar="ACTION")
    status = actions.add_parser("status", help="batches in flight and their state")
    status.add_argument(
        "--config", "-c", type=Path, required=True, help="the YAML configuration file"
    )
    status.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    status.add_argument("--all", action="store_true", help="final batches too (last 7 days)")
    status.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="seconds to reach the broker (exit 3: no broker answered)",
    )
    status.set_defaults(handler=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from consumer.kafka.clients import producer_config
    from consumer.preflight import broker_metadata

    settings = load_settings(args.config)
    config = producer_config(settings)
    broker_metadata(config, args.timeout)  # unreachable: exit 3 (cli.main)
    topic = manifest_topic(settings)
    entries = read_manifest(config, topic, args.timeout)
    now = time.time()
    shown = entries if args.all else in_flight(entries)
    for entry in shown:
        since = entry.get("submitted_at") or entry.get("updated_at") or now  # `submitting`: 0
        entry["age"] = round(max(0.0, now - float(since)), 1)
    if args.json:
        print(
            json.dumps(
                {"topic": topic, "in_flight": len(in_flight(entries)), "batches": shown},
                indent=2,
            )
        )
    else:
        print(render(topic, shown))
    return 0


def in_flight(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batches whose latest state is not final: `submitting` (a POST may be on its way, no
    batch id yet) and `submitted` (Target is processing it) among them."""
    return [e for e in entries if e.get("state") not in FINAL_STATES]


def render(topic: str, entries: list[dict[str, Any]]) -> str:
    if not entries:
        return f"no bulk batch in flight (manifest {topic})"
    rows = [[str(e.get(key, "")) for _, key in COLUMNS] for e in entries]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, (h, _) in enumerate(COLUMNS)]
    lines = ["  ".join(h.ljust(w) for (h, _), w in zip(COLUMNS, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.append(f"{len(entries)} batch(es); manifest {topic}; age in seconds since submitted")
    return "\n".join(lines)
