"""Latency isolation: realtime end-to-end latency while a migration floods the bulk lane.

Run against a broker (``scripts/kafka-local start`` prints one)::

    python benchmarks/latency.py --bootstrap-servers 127.0.0.1:PORT

1. Calibrate: the consumer's capacity (chunks/s) with the fixed handler cost (a CPU burn per
   chunk), draining a preloaded realtime topic with no bulk.
2. For each variant, on fresh topics: preload the bulk topic (``--bulk-count`` chunks, 200,000 by
   default), start the consumer, then produce realtime chunks at half the capacity for
   ``--seconds`` from a separate process, each stamped with its send time; keep consuming
   ``--tail`` seconds after the realtime stream stops.

   * ``(a) flow control``: streamproc's ``PriorityConsumer`` with its flow policy;
   * ``(b) flow control off``: the same consumer, one group on both topics, never pausing (what
     users do today, with streamproc's small prefetch queue);
   * ``(b') off, librdkafka default prefetch``: as (b) with librdkafka's default prefetch bounds
     (64 MiB queue, 1 MiB per partition fetch), what a plain confluent-kafka consumer gets;
   * ``(c) realtime only``: no bulk backlog, the floor.

Reports realtime latency p50/p95/p99/max (handled minus sent, the first ``--warm-up`` seconds
dropped), and bulk throughput during the realtime stream and after it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.harness import (
    FlowEvents,
    PacedProducer,
    RecordingHandler,
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
    ratio,
    run_main,
    say,
    workload,
)
from streamproc.flow import FlowSettings

LIBRDKAFKA_DEFAULT_PREFETCH = {"prefetch_kbytes": 65536, "fetch_partition_kbytes": 1024}


@dataclass(frozen=True, slots=True)
class Variant:
    key: str
    label: str
    bulk: bool
    flow: bool
    overrides: tuple[tuple[str, Any], ...] = ()


@dataclass(slots=True)
class Outcome:
    """What one variant measured."""

    variant: Variant
    sent: int
    latencies_s: list[float]
    handled_realtime: int
    bulk_during_per_s: float
    bulk_after_per_s: float
    latency_series: list[tuple[float, float]]  # (seconds since start, latency s)
    start: float  # wall clock of the first realtime send
    pause_times: list[float]  # wall clock of every pause of the bulk lane
    resume_times: list[float]
    acked: list[float]  # wall clock of every realtime acknowledgement, in order

    @property
    def pauses(self) -> int:
        return len(self.pause_times)

    @property
    def resumes(self) -> int:
        return len(self.resume_times)

    def quantile_ms(self, fraction: float) -> float:
        return float(percentile(self.latencies_s, fraction) * 1000)


def calibrate(args: argparse.Namespace) -> float:
    """Chunks/s one consumer handles with the fixed handler cost (realtime only, no bulk)."""
    count = args.calibration_count
    with fresh_lanes(args.bootstrap_servers, "latency", args.partitions) as lanes:
        preload(args.bootstrap_servers, lanes.top.topic, workload(low_priority=False), count)
        handler = RecordingHandler(args.burn_us / 1e6, stop_after=count)
        with RunningConsumer(consumer_settings(args.bootstrap_servers, lanes), handler):
            handler.done.wait(120)
    times = handler.handled_at.get("realtime", [])
    if len(times) < 2:
        raise SystemExit("calibration handled nothing")
    return float((len(times) - 1) / (times[-1] - times[0]))


def run_variant(
    args: argparse.Namespace,
    variant: Variant,
    segments: Sequence[Segment],
    *,
    benchmark: str = "latency",
    linger_ms: float = 1.0,
) -> Outcome:
    """One variant on fresh topics: preload bulk, run the consumer, pace realtime, measure."""
    with fresh_lanes(args.bootstrap_servers, benchmark, args.partitions) as lanes:
        if variant.bulk:
            seconds = preload(
                args.bootstrap_servers,
                lanes.bottom.topic,
                workload(low_priority=True),
                args.bulk_count,
            )
            say(f"{variant.key}: preloaded {args.bulk_count:,} bulk chunks in {seconds:.1f}s")
        handler = RecordingHandler(args.burn_us / 1e6)
        settings = consumer_settings(
            args.bootstrap_servers, lanes, flow=variant.flow, **dict(variant.overrides)
        )
        with FlowEvents().attached() as events, RunningConsumer(settings, handler) as running:
            running.wait_ready()
            producer = PacedProducer(
                args.bootstrap_servers,
                lanes.top.topic,
                workload(low_priority=False),
                segments,
                linger_ms=linger_ms,
            )
            report = producer.result(timeout_s=producer.seconds + 60)
            end = producer.start_at + producer.seconds
            time.sleep(max(0.0, end + args.tail - time.time()))
    start = producer.start_at
    measured_from = start + args.warm_up
    latencies = [
        latency for handled, latency in handler.latencies if handled - latency >= measured_from
    ]
    # Chunks never handled count with the smallest latency they can have had: the time from the
    # end of the stream to the end of the run (a lower bound, so percentiles stay honest).
    unhandled = report["sent"] - len(handler.latencies)
    latencies += [args.tail] * max(0, unhandled)
    during = end - measured_from
    return Outcome(
        variant=variant,
        sent=report["sent"],
        latencies_s=latencies,
        handled_realtime=len(handler.latencies),
        bulk_during_per_s=handler.count("bulk", measured_from, end) / during,
        bulk_after_per_s=handler.count("bulk", end, end + args.tail) / args.tail,
        latency_series=[
            (round(handled - latency - start, 4), round(latency, 5))
            for handled, latency in handler.latencies
        ],
        start=start,
        pause_times=events.pauses,
        resume_times=events.resumes,
        acked=report["acked"],
    )


def thin(points: list[tuple[float, float]], keep: int = 4000) -> list[tuple[float, float]]:
    """Every k-th point, so a plot's data stays small in the result file."""
    return points[:: max(1, len(points) // keep)]


def latency_table(title: str, outcomes: Sequence[Outcome]) -> Table:
    table = Table(
        title,
        [
            "variant",
            "realtime sent",
            "handled",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "bulk/s during",
            "bulk/s after",
            "pauses",
            "resumes",
        ],
    )
    for outcome in outcomes:
        table.rows.append(
            [
                outcome.variant.label,
                outcome.sent,
                outcome.handled_realtime,
                round(outcome.quantile_ms(0.50), 2),
                round(outcome.quantile_ms(0.95), 2),
                round(outcome.quantile_ms(0.99), 2),
                round(outcome.quantile_ms(1.0), 2),
                round(outcome.bulk_during_per_s),
                round(outcome.bulk_after_per_s),
                outcome.pauses,
                outcome.resumes,
            ]
        )
    return table


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--burn-us", type=float, default=500.0, help="Handler CPU cost per chunk (microseconds)."
    )
    parser.add_argument("--bulk-count", type=int, default=200_000, help="Preloaded bulk chunks.")
    parser.add_argument(
        "--seconds", type=float, default=25.0, help="Realtime stream duration per variant."
    )
    parser.add_argument("--tail", type=float, default=5.0, help="Seconds measured after it.")
    parser.add_argument("--warm-up", type=float, default=2.0, help="Seconds not measured.")
    parser.add_argument(
        "--calibration-count", type=int, default=10_000, help="Chunks drained to calibrate."
    )
    parser.add_argument(
        "--capacity", type=float, default=None, help="Skip calibration: chunks/s to assume."
    )


# Flow control tuned for a steady realtime stream: pause bulk as soon as a few realtime chunks
# wait, and take small batches so the policy runs often (it can only act between batches).
LATENCY_TUNED = (("pause_lag", 5), ("max_batch_messages", 20))

VARIANTS = (
    Variant("a", "(a) flow control", bulk=True, flow=True),
    Variant("a'", "(a') flow control, tuned", bulk=True, flow=True, overrides=LATENCY_TUNED),
    Variant("b", "(b) flow control off", bulk=True, flow=False),
    Variant(
        "b'",
        "(b') off, librdkafka default prefetch",
        bulk=True,
        flow=False,
        overrides=tuple(LIBRDKAFKA_DEFAULT_PREFETCH.items()),
    ),
    Variant("c", "(c) realtime only", bulk=False, flow=True),
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n\n")[0] if __doc__ else None)
    add_common_arguments(parser)
    args = parse(parser, argv)
    quiet_logs()
    capacity = args.capacity or calibrate(args)
    rate = capacity / 2
    say(f"capacity {capacity:,.0f} /s at {args.burn_us:g} us per chunk; realtime {rate:,.0f}/s")
    segments = [Segment(args.seconds, rate)]
    outcomes: list[Outcome] = []
    for variant in VARIANTS:
        outcome = run_variant(args, variant, segments)
        say(
            f"{variant.label}: p99 {outcome.quantile_ms(0.99):.1f} ms, "
            f"bulk {outcome.bulk_during_per_s:,.0f}/s during, pauses {outcome.pauses}"
        )
        outcomes.append(outcome)
    by_key = {outcome.variant.key: outcome for outcome in outcomes}
    result = Result("latency")
    result.parameters = {
        "bulk_preloaded": args.bulk_count,
        "handler_burn_us": args.burn_us,
        "capacity_chunks_per_s": round(capacity),
        "realtime_rate_per_s": round(rate),
        "seconds": args.seconds,
        "warm_up_s": args.warm_up,
        "tail_s": args.tail,
        "partitions": args.partitions,
        "tuned_a'": dict(LATENCY_TUNED),
    }
    result.tables.append(
        latency_table(
            f"Realtime latency at {rate:,.0f}/s (half of the {capacity:,.0f}/s capacity) with "
            f"{args.bulk_count:,} bulk chunks preloaded",
            outcomes,
        )
    )
    p99 = {key: outcome.quantile_ms(0.99) for key, outcome in by_key.items()}
    ratios = Table(
        "Ratios of realtime p99",
        ["ratio", "value"],
        [
            ["(a) / (c)", round(ratio(p99["a"], p99["c"]), 2)],
            ["(a') / (c)", round(ratio(p99["a'"], p99["c"]), 2)],
            ["(b) / (a)", round(ratio(p99["b"], p99["a"]), 2)],
            ["(b') / (a)", round(ratio(p99["b'"], p99["a"]), 2)],
        ],
    )
    result.tables.append(ratios)
    a_over_c = ratio(p99["a"], p99["c"])
    b_over_a = ratio(p99["b"], p99["a"])
    result.targets.append(Target("realtime p99 (a) / (c)", a_over_c, "<= 1.5", a_over_c <= 1.5))
    result.targets.append(
        Target("realtime p99 (b) / (a) (expected)", b_over_a, ">= 20", b_over_a >= 20)
    )
    result.series = {
        "latency": {outcome.variant.label: thin(outcome.latency_series) for outcome in outcomes}
    }
    result.notes.extend(explain(by_key, args))
    result.print()
    say(f"wrote {result.write(args.output_dir)}")
    return 0


def explain(by_key: dict[str, Outcome], args: argparse.Namespace) -> list[str]:
    """Notes that say why a figure is what it is."""
    notes: list[str] = []
    pause_lag = FlowSettings().pause_lag
    rate = by_key["a"].sent / args.seconds if args.seconds else 0.0
    if rate:
        notes.append(
            f"(a) runs the product defaults: the bulk lane is paused once realtime lag exceeds "
            f"pause_lag = {pause_lag} messages, which at {rate:,.0f} realtime chunks/s is "
            f"{pause_lag / rate:.1f} s of backlog. Below that, a realtime chunk waits behind the "
            "bulk chunks already fetched into librdkafka's local queue (one queue for every "
            "partition, served in arrival order), so (a)'s percentiles are set by pause_lag and "
            "the prefetch bound, not by the handler."
        )
    tuned = by_key.get("a'")
    if tuned is not None:
        settings = ", ".join(f"{key} {value}" for key, value in LATENCY_TUNED)
        notes.append(
            f"(a') is the same consumer with {settings}: it paused the bulk lane "
            f"{tuned.pauses} times and resumed it {tuned.resumes} times during the run."
        )
    for outcome in by_key.values():
        if outcome.handled_realtime < outcome.sent:
            notes.append(
                f"{outcome.variant.label}: {outcome.sent - outcome.handled_realtime} realtime "
                f"chunks were still unhandled {args.tail:g}s after the stream stopped; they count "
                f"as {args.tail:g}s in the percentiles, so the figures are lower bounds."
            )
    return notes


if __name__ == "__main__":
    run_main(main)
