"""Hot path per core: decode + map + coalesce of recorded events vs a bare fastavro loop.

The floor is what any Avro consumer pays: `fastavro.schemaless_reader(BytesIO(b), writer)` over
the same bytes, with the writer schema parsed once. Contenders:

- decode            `Decoder.decode` alone (header checks, reader schema, trailing-bytes check)
- map               `Mapper.map` alone, over already decoded events
- decode+map+coal.  the three stages back to back: `Coalescer.add` per event, and per poll
                    batch (500) the due batches popped and marked done, as a sender would
- pipeline, no I/O  the real `Pipeline` (metrics, offset tracking, coalescing, dispatch tasks,
                    request building) on an asyncio loop whose `deliver` returns at once

Events are `devtools.samples` events over 10,000 profiles, encoded with `devtools.encoder` once
by this process and read from a file by the others. Each measurement runs in a fresh process
pinned to one CPU, as the consumer runs only its hot path: sharing one process, the heap the
pipeline contender leaves behind slowed the next contenders (the chain gave 0.49 of the
floor with it in the process, 0.52 without, one run each). Rounds
interleave the contenders so a noisy neighbour hurts them alike; each figure is the median of
--repeat rounds. In its process a contender first runs over 20,000 events (warm-up), then is
timed over them all.

The garbage collector is set as `profile-consumer run` sets it (`consumer.runtime.tune_gc`);
the floor and the chain also run under CPython's default thresholds, and both ratios are
printed. Issue 9 aims at decode+map+coalesce >= 0.5 of the floor.

    .venv/bin/python benchmarks/bench_hot_path.py            # 200,000 events
    .venv/bin/python benchmarks/bench_hot_path.py --full     # 1,000,000 events
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
from common import RULES, SCHEMA, encoder, machine, settings
from prometheus_client import CollectorRegistry

from consumer.avro import load_schema
from consumer.coalesce import Coalescer
from consumer.errors import DecodeError, MappingError
from consumer.kafka.offsets import OffsetTracker
from consumer.metrics import Metrics
from consumer.pipeline import Pipeline
from consumer.record import SourceRecord
from consumer.runtime import tune_gc
from consumer.stages import build_stages
from devtools.samples import sample_events

PROFILES = 10_000
POLL_BATCH = 500
DISTINCT = 100_000  # distinct encoded events; longer runs cycle over them
TOPIC = "offline-transactions"


def floor(blobs: list[bytes]) -> Callable[[], None]:
    writer = fastavro.parse_schema(load_schema(SCHEMA))
    read = fastavro.schemaless_reader

    def run() -> None:
        for blob in blobs:
            read(io.BytesIO(blob), writer)

    return run


def decode_only(stages: Any, blobs: list[bytes]) -> Callable[[], None]:
    decode = stages.decoder.decode

    def run() -> None:
        for blob in blobs:
            decode(blob)

    return run


def map_only(stages: Any, events: list[dict[str, Any]], total: int) -> Callable[[], None]:
    map_ = stages.mapper.map
    rounds, rest = divmod(total, len(events))

    def run() -> None:
        for chunk in [events] * rounds + [events[:rest]]:
            for event in chunk:
                try:
                    map_(event)
                except MappingError:
                    pass

    return run


def stages_chain(stages: Any, blobs: list[bytes]) -> Callable[[], None]:
    """decode -> map -> Coalescer.add; per poll batch, pop what is due and mark it done."""
    decode, map_ = stages.decoder.decode, stages.mapper.map

    def run() -> None:
        coalescer: Coalescer[int] = Coalescer(0.5)
        now = 0.0
        for start in range(0, len(blobs), POLL_BATCH):
            for offset in range(start, min(start + POLL_BATCH, len(blobs))):
                try:
                    update = map_(decode(blobs[offset]))
                except (DecodeError, MappingError):
                    continue
                if update is not None:
                    key = (update.identity_type, update.identity)
                    coalescer.add(key, update.attributes, offset, now)
            now += 0.01  # a poll batch every 10 ms of "time": batches come due after 50
            for batch in coalescer.pop_ready(now, 1_000_000):
                coalescer.done(batch.key)

    return run


def pipeline_no_io(stages: Any, blobs: list[bytes], max_buffered: int) -> Callable[[], None]:
    """The real Pipeline on an event loop, fed like App._poll_loop feeds it, no HTTP."""

    async def deliver(_request: Any) -> None:
        return None

    class NoDLQ:
        async def write(self, record: SourceRecord, error: Any) -> None:
            return None

    async def main() -> None:
        tracker = OffsetTracker()
        tracker.assign([(TOPIC, 0)])
        pipeline = Pipeline(
            decoder=stages.decoder,
            mapper=stages.mapper,
            deliver=deliver,
            dlq=NoDLQ(),
            tracker=tracker,
            metrics=Metrics(CollectorRegistry()),
            endpoint_url=stages.endpoint_url,
            coalesce_window_seconds=0.5,
            max_in_flight=64,
            clock=asyncio.get_running_loop().time,
        )
        runner = asyncio.create_task(pipeline.run())
        for start in range(0, len(blobs), POLL_BATCH):
            while pipeline.buffered >= max_buffered:
                await asyncio.sleep(0.001)
            for offset in range(start, min(start + POLL_BATCH, len(blobs))):
                pipeline.submit(SourceRecord(TOPIC, 0, offset, None, blobs[offset], None, None))
            await asyncio.sleep(0)
        await pipeline.drain(60)
        runner.cancel()

    def run() -> None:
        asyncio.run(main())

    return run


CONTENDERS = ("floor", "decode", "map", "chain", "pipeline")
LABELS = {
    "floor": "floor: schemaless_reader",
    "decode": "decode (Decoder.decode)",
    "map": "map (Mapper.map)",
    "chain": "decode+map+coalesce",
    "pipeline": "pipeline, no I/O",
}
WARM_UP = 20_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--full", action="store_true", help="1,000,000 events")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    parser.add_argument("--measure", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--default-gc", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    total = 1_000_000 if args.full else args.events
    if args.measure:
        print(measure_one(args.measure, args.inputs, total, args.default_gc, not args.no_pin))
        return

    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "events.bin"
        distinct = [encoder().encode(e) for e in sample_events(min(total, DISTINCT), PROFILES, 7)]
        inputs.write_bytes(b"".join(struct.pack(">I", len(b)) + b for b in distinct))
        runs = [(name, False) for name in CONTENDERS] + [("floor", True), ("chain", True)]
        rates: dict[tuple[str, bool], list[float]] = {run: [] for run in runs}
        for _ in range(args.repeat):
            for name, default_gc in runs:
                command = [sys.executable, __file__, "--measure", name, "--inputs", str(inputs)]
                command += ["--events", str(total)]
                command += ["--default-gc"] * default_gc + ["--no-pin"] * args.no_pin
                out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                rates[(name, default_gc)].append(float(out))

    avg = sum(map(len, distinct)) / len(distinct)
    print(f"machine: {machine()}; pinned to one CPU: {not args.no_pin}")
    print(
        f"events: {total:,} ({len(distinct):,} distinct, {avg:.0f} bytes avg, "
        f"{PROFILES:,} profiles), median of {args.repeat}, each run in a fresh process"
    )
    print("GC as `profile-consumer run` sets it (consumer.runtime.tune_gc):")
    ratio = report({name: rates[(name, False)] for name in CONTENDERS})
    print("CPython's default GC thresholds:")
    default_ratio = report({name: rates[(name, True)] for name in ("floor", "chain")})
    print(
        f"RATIO decode+map+coalesce / floor: {ratio:.2f} (goal >= 0.5); "
        f"{default_ratio:.2f} with CPython's default GC thresholds"
    )


def measure_one(name: str, inputs: Path, total: int, default_gc: bool, pin: bool) -> float:
    """Events/s of one contender in this (fresh) process, after a warm-up."""
    if pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    distinct = read_inputs(inputs)
    blobs = (distinct * (total // len(distinct) + 1))[:total]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {"avro": {"writer_schema": str(SCHEMA)}, "mapping": {"rules": str(RULES)}}
        stages = build_stages(settings(Path(tmp), cfg))
    decoded = [stages.decoder.decode(b) for b in distinct] if name == "map" else []
    contender = {
        "floor": lambda events: floor(events),
        "decode": lambda events: decode_only(stages, events),
        "map": lambda events: map_only(stages, decoded, len(events)),
        "chain": lambda events: stages_chain(stages, events),
        "pipeline": lambda events: pipeline_no_io(stages, events, 10_000),
    }[name]
    # The inputs are not the consumer's heap: frozen with the start-up objects, the collector
    # does not walk them, as it would not in the consumer.
    if default_gc:
        gc.collect()
        gc.freeze()
    else:
        tune_gc()
    contender(blobs[:WARM_UP])()
    run = contender(blobs)
    began = time.perf_counter()
    run()
    return total / (time.perf_counter() - began)


def read_inputs(path: Path) -> list[bytes]:
    data, blobs, at = path.read_bytes(), [], 0
    while at < len(data):
        (size,) = struct.unpack_from(">I", data, at)
        blobs.append(data[at + 4 : at + 4 + size])
        at += 4 + size
    return blobs


def report(rates: dict[str, list[float]]) -> float:
    """Prints each contender's median against the floor's; returns the chain's ratio."""
    med = {name: statistics.median(values) for name, values in rates.items()}
    for name, value in med.items():
        print(
            f"  {LABELS[name]:<26}: {value:10,.0f} events/s  {1e6 / value:6.1f} us/event  "
            f"ratio to floor {value / med['floor']:5.2f}"
        )
    return med["chain"] / med["floor"]


if __name__ == "__main__":
    main()
