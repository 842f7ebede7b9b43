"""Concurrent handling: throughput of a 20 ms I/O handler, and realtime latency under a bulk flood.

Run against a broker (``scripts/kafka-local start`` prints one)::

    python benchmarks/concurrency.py --bootstrap-servers 127.0.0.1:PORT

The handler stands for an embedding call or a vector-store write: it waits 20 ms (``time.sleep``
for the sync handler, ``asyncio.sleep`` for the async one) and uses no CPU. Two parts:

* **Throughput**: a bulk backlog on fresh topics; the consumer at concurrency 1, 8 and 32 (sync)
  and 32 (async); chunks handled per second over a fixed window after a warm-up second. Target:
  concurrency 32 at least 25 x concurrency 1 (the ideal is 32 x; the realtime reserve is idle
  here because the realtime lane is).
* **Realtime latency** at concurrency 32: a paced realtime stream (sent-time header, produced
  by a child process) alone, then the same stream on top of a bulk backlog big enough to keep
  every worker busy for the whole run. End-to-end latency is handled (after the 20 ms) minus sent.
  Alone and flooded runs alternate (``--latency-repeats`` pairs); the target compares the p99 of
  all flooded runs' latencies with that of all alone runs. Target: within 1.5 x.

Results go to ``benchmarks/results/concurrency.json`` in the shared shape.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.harness import (
    SENT_HEADER,
    PacedProducer,
    Result,
    RunningConsumer,
    Segment,
    Table,
    Target,
    base_parser,
    consumer_settings,
    fresh_lanes,
    parse,
    percentile,
    preload,
    quiet_logs,
    rate_after_warm_up,
    ratio,
    run_main,
    say,
    workload,
)
from streamproc.handlers import ChunkRecord

HANDLER_S = 0.020
WARM_UP_S = 1.0
REALTIME_RATE = 100.0  # chunks/s: a steady trickle, well under the pause threshold
QUICK_START_S = 0.005  # a queue wait bucket bound of streamproc_queue_wait_seconds


@dataclass
class Recorder:
    """What the handlers saw: handled times per lane, realtime end-to-end latencies."""

    handled_at: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, record: ChunkRecord) -> None:
        now_ns = time.time_ns()
        with self.lock:
            self.handled_at.append(now_ns / 1e9)
            for name, value in record.context.headers:
                if name == SENT_HEADER:
                    self.latencies.append((now_ns - int(value)) / 1e9)

    def count(self, start: float, end: float) -> int:
        with self.lock:
            return sum(1 for t in self.handled_at if start <= t < end)


class SleepHandler:
    """A sync handler waiting ``HANDLER_S`` (I/O, no CPU)."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def __call__(self, record: ChunkRecord) -> None:
        time.sleep(HANDLER_S)
        self.recorder.record(record)


class AsyncSleepHandler:
    """An async handler awaiting ``HANDLER_S``."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def __call__(self, record: ChunkRecord) -> None:
        await asyncio.sleep(HANDLER_S)
        self.recorder.record(record)


def throughput(args: Any, concurrency: int, *, use_async: bool) -> float:
    """Chunks/s handled from a bulk backlog over ``args.window`` seconds."""
    backlog = int(min(1.3 * concurrency / HANDLER_S * (args.window + 3), 30_000)) + 200
    with fresh_lanes(args.bootstrap_servers, "concurrency", args.partitions) as lanes:
        preload(args.bootstrap_servers, lanes.bottom.topic, workload(low_priority=True), backlog)
        recorder = Recorder()
        handler = AsyncSleepHandler(recorder) if use_async else SleepHandler(recorder)
        settings = consumer_settings(args.bootstrap_servers, lanes, concurrency=concurrency)
        with RunningConsumer(settings, handler) as running:
            running.wait_ready()
            rate = rate_after_warm_up(recorder.count, WARM_UP_S, float(args.window))
    kind = "async" if use_async else "sync"
    say(f"throughput, concurrency {concurrency} ({kind}): {rate:.0f} chunks/s")
    return rate


def queue_wait_share(running: RunningConsumer, lane: str, bound_s: float) -> float:
    """Share of a lane's chunks handed to a worker within ``bound_s`` of being taken."""
    labels = {"lane": lane, "le": str(bound_s)}
    within = running.sample("streamproc_queue_wait_seconds_bucket", labels)
    total = running.sample("streamproc_queue_wait_seconds_count", {"lane": lane})
    return ratio(within, total)


def realtime_latency(args: Any, *, flood: bool) -> tuple[list[float], int, float]:
    """Realtime end-to-end latencies at concurrency 32, with or without a bulk backlog."""
    with fresh_lanes(args.bootstrap_servers, "concurrency", args.partitions) as lanes:
        bulk = 0
        if flood:
            bulk = int(32 / HANDLER_S * (args.latency_s + 5))
            preload(args.bootstrap_servers, lanes.bottom.topic, workload(low_priority=True), bulk)
        recorder = Recorder()
        settings = consumer_settings(args.bootstrap_servers, lanes, concurrency=32)
        with RunningConsumer(settings, SleepHandler(recorder)) as running:
            running.wait_ready()
            paced = PacedProducer(
                args.bootstrap_servers,
                lanes.top.topic,
                workload(low_priority=False),
                [Segment(args.latency_s, REALTIME_RATE)],
            )
            sent = paced.result(timeout_s=args.latency_s + 30)["sent"]
            deadline = time.monotonic() + 10
            while len(recorder.latencies) < sent and time.monotonic() < deadline:
                time.sleep(0.05)
            bulk_handled = len(recorder.handled_at) - len(recorder.latencies)
            waited = queue_wait_share(running, "realtime", QUICK_START_S)
    label = "under a bulk flood" if flood else "alone"
    say(
        f"realtime {label}: {len(recorder.latencies)}/{sent} handled, p99"
        f" {percentile(recorder.latencies, 0.99) * 1000:.1f} ms, bulk handled {bulk_handled}"
    )
    return recorder.latencies, bulk_handled, waited


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--window", type=float, default=6.0, help="Throughput window (s).")
    parser.add_argument("--latency-s", type=float, default=10.0, help="Realtime stream (s).")
    parser.add_argument(
        "--latency-repeats", type=int, default=2, help="Alone/flood latency run pairs."
    )
    parser.set_defaults(partitions=8)
    args = parse(parser, argv)
    quiet_logs()

    # Latency first, in a fresh process (as a deployed consumer runs); alone and flooded runs
    # alternate, so a noisy moment of the shared machine hits both.
    latency_runs = [
        (label, *realtime_latency(args, flood=flood))
        for _ in range(args.latency_repeats)
        for label, flood in (("alone", False), ("bulk flood", True))
    ]
    rates = {c: throughput(args, c, use_async=False) for c in (1, 8, 32)}
    async_rate = throughput(args, 32, use_async=True)
    alone = [v for label, values, _, _ in latency_runs if label == "alone" for v in values]
    flooded = [v for label, values, _, _ in latency_runs if label != "alone" for v in values]

    ideal = 1 / HANDLER_S
    throughput_table = Table(
        "Throughput of a 20 ms I/O handler (bulk backlog)",
        ["concurrency", "handler", "chunks/s", "x concurrency 1", "share of ideal"],
    )
    for concurrency, rate in rates.items():
        throughput_table.rows.append(
            [concurrency, "sync", rate, ratio(rate, rates[1]), ratio(rate, ideal * concurrency)]
        )
    throughput_table.rows.append(
        [32, "async", async_rate, ratio(async_rate, rates[1]), ratio(async_rate, ideal * 32)]
    )
    latency_table = Table(
        "Realtime end-to-end latency at concurrency 32 (ms)",
        [
            "run",
            "realtime handled",
            "p50",
            "p99",
            "max",
            "started within 5 ms of taken",
            "bulk handled meanwhile",
        ],
    )
    pooled = (("alone, all runs", alone), ("bulk flood, all runs", flooded))
    for label, values, bulk, waited in [
        *latency_runs,
        *((name, values, float("nan"), float("nan")) for name, values in pooled),
    ]:
        latency_table.rows.append(
            [
                label,
                len(values),
                percentile(values, 0.5) * 1000,
                percentile(values, 0.99) * 1000,
                max(values, default=float("nan")) * 1000,
                waited,
                bulk,
            ]
        )
    speedup = ratio(rates[32], rates[1])
    p99_ratio = ratio(percentile(flooded, 0.99), percentile(alone, 0.99))
    result = Result(
        "concurrency",
        parameters={
            "handler_s": HANDLER_S,
            "partitions": args.partitions,
            "window_s": args.window,
            "realtime_rate": REALTIME_RATE,
            "realtime_s": args.latency_s,
            "latency_repeats": args.latency_repeats,
            "ordering": "key",
        },
        tables=[throughput_table, latency_table],
        targets=[
            Target("throughput concurrency 32 / concurrency 1", speedup, ">= 25", speedup >= 25),
            Target(
                "realtime p99 under bulk flood / alone (concurrency 32)",
                p99_ratio,
                "<= 1.5",
                p99_ratio <= 1.5,
            ),
        ],
        notes=[
            "The handler sleeps 20 ms (no CPU): the ideal is 50 chunks/s per worker.",
            "Every concurrency takes one path: the loop polls one consumer per lane and workers"
            " run the handlers; concurrency 1 is one worker slot, and above 1 every chunk is a"
            " batch of its own, started by a worker as it finishes the previous one.",
            "Under the flood, bulk keeps every worker but the realtime reserve (2 at concurrency"
            " 32) busy; the realtime stream stays under the pause threshold, so bulk is never"
            " paused.",
            "The latency runs go first, in a fresh process: after the throughput runs the same"
            " process showed a longer realtime tail under the flood (about 120 ms p99 against"
            " 30-40 ms fresh), which a deployed consumer does not carry.",
            "The machine is shared (2 CPUs, broker included, other test suites running): p99"
            " figures move from run to run (an alone run measured 29 ms once and 276 ms the next).",
        ],
    )
    result.print()
    path = result.write(args.output_dir)
    say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_main(main)
