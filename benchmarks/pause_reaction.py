"""Pause reaction: how long from realtime lag crossing ``pause_lag`` to the bulk lane paused.

Run against a broker (``scripts/kafka-local start`` prints one)::

    python -m benchmarks.pause_reaction --bootstrap-servers 127.0.0.1:PORT

The bulk topic is preloaded so the consumer is busy with bulk; a separate process then sends
``--trials`` realtime bursts of ``pause_lag + --overshoot`` chunks, as fast as it can, each after
``--gap`` seconds of silence (long enough for the consumer to drain the burst and resume bulk).

The crossing time of a burst is when the broker acknowledged its ``pause_lag + 1``-th message:
from then on the realtime lag exceeds ``pause_lag`` unless the consumer has already handled some
of the burst, in which case the true crossing is later and the reaction measured here is an upper
bound. The pause time is the consumer's own record of pausing the bulk lane (its log record). The
reaction is pause time minus crossing time, per burst.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from benchmarks.harness import (
    Result,
    Segment,
    Table,
    Target,
    base_parser,
    parse,
    percentile,
    quiet_logs,
    run_main,
    say,
)
from benchmarks.latency import Outcome, Variant, run_variant
from streamproc.flow import FlowSettings
from streamproc.settings import ConsumerSettings

BURST_RATE = 50_000.0  # faster than the paced producer can go: "as fast as it can"


def reactions(outcome: Outcome, pause_lag: int, burst: int) -> tuple[list[float], int]:
    """Pause time minus crossing time per burst, and how many bursts found bulk already paused.

    A burst that starts while the bulk lane is still paused (from the burst before) has nothing
    to react to and is left out; for the others the first pause between the burst's first
    acknowledgement and the next burst's counts (a pause a hair before the crossing estimate
    shows as a small negative reaction: acknowledgements trail the broker).
    """
    acked = sorted(outcome.acked)
    found: list[float] = []
    already_paused = 0
    for index in range(0, len(acked) - burst + 1, burst):
        start = acked[index]
        pauses_before = [t for t in outcome.pause_times if t < start]
        resumes_before = [t for t in outcome.resume_times if t < start]
        if pauses_before and (not resumes_before or resumes_before[-1] < pauses_before[-1]):
            already_paused += 1
            continue
        crossing = acked[index + pause_lag]
        window_end = acked[index + burst] if index + burst < len(acked) else start + 5.0
        pauses = [t for t in outcome.pause_times if start <= t < window_end]
        if pauses:
            found.append(pauses[0] - crossing)
    return found, already_paused


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=30, help="Realtime bursts.")
    parser.add_argument("--overshoot", type=int, default=500, help="Burst size over pause_lag.")
    parser.add_argument("--gap", type=float, default=1.5, help="Silence before each burst (s).")
    parser.add_argument("--burn-us", type=float, default=100.0, help="Handler CPU cost per chunk.")
    parser.add_argument("--bulk-count", type=int, default=200_000, help="Preloaded bulk chunks.")
    args = parse(parser, argv)
    quiet_logs()
    pause_lag = FlowSettings().pause_lag
    poll_interval_s = ConsumerSettings.model_fields["poll_timeout_s"].default  # the policy's tick
    burst = pause_lag + args.overshoot
    segments: list[Segment] = []
    for _ in range(args.trials):
        segments += [Segment(args.gap, 0.0), Segment(burst / BURST_RATE, BURST_RATE)]
    segments.append(Segment(args.gap, 0.0))
    run_args = argparse.Namespace(
        bootstrap_servers=args.bootstrap_servers,
        partitions=args.partitions,
        bulk_count=args.bulk_count,
        burn_us=args.burn_us,
        tail=1.0,
        warm_up=0.0,
    )
    outcome = run_variant(
        run_args,
        Variant("a", "(a) flow control", bulk=True, flow=True),
        segments,
        benchmark="pause",
        linger_ms=5.0,
    )
    if outcome.sent != burst * args.trials:
        say(f"sent {outcome.sent} of {burst * args.trials} (bursts were cut short)")
    reaction_s, already_paused = reactions(outcome, pause_lag, burst)
    found = [r * 1000 for r in reaction_s]
    say(f"{len(found)} of {args.trials} bursts paused the bulk lane")
    result = Result("pause_reaction")
    result.parameters = {
        "trials": args.trials,
        "pause_lag": pause_lag,
        "burst": burst,
        "gap_s": args.gap,
        "handler_burn_us": args.burn_us,
        "bulk_preloaded": args.bulk_count,
        "poll_interval_s": poll_interval_s,
    }
    table = Table(
        f"Time from realtime lag > pause_lag ({pause_lag}) to bulk paused, {args.trials} bursts "
        f"of {burst} (ms)",
        ["bursts", "paused", "min", "p50", "p95", "p99", "max", "pauses", "resumes"],
        [
            [
                args.trials,
                len(found),
                round(min(found), 2) if found else None,
                round(percentile(found, 0.50), 2),
                round(percentile(found, 0.95), 2),
                round(percentile(found, 0.99), 2),
                round(max(found), 2) if found else None,
                len(outcome.pause_times),
                len(outcome.resume_times),
            ]
        ],
    )
    result.tables.append(table)
    p99 = percentile(found, 0.99)
    result.targets.append(
        Target(
            "pause reaction p99 (ms)",
            p99,
            f"<= one poll interval ({poll_interval_s * 1000:.0f} ms)",
            p99 <= poll_interval_s * 1000,
        )
    )
    if already_paused:
        result.notes.append(
            f"{already_paused} bursts started while the bulk lane was still paused from the "
            "burst before (the consumer had not drained it yet): nothing to react to, left out."
        )
    missing = args.trials - len(found) - already_paused
    if missing:
        result.notes.append(
            f"{missing} bursts saw no pause of the bulk lane before the next burst (the "
            "consumer drained them before it measured the lag above pause_lag)."
        )
    if found:
        result.notes.append(
            f"The fastest reaction took {min(found):.0f} ms, the median "
            f"{percentile(found, 0.5):.0f} ms. The flow policy runs on every tick (a pure "
            "function, microseconds) and before the bulk part of every batch; the time goes to "
            "the realtime lag becoming visible to the consumer (it reads the high watermarks "
            "librdkafka caches from realtime fetch responses) and to the batch in hand being "
            f"finished ({args.burn_us:g} us of handler per chunk, up to max_batch_messages "
            "chunks). The crossing time is taken at the producer's acknowledgement, so these "
            "figures are upper bounds."
        )
    result.series = {"reaction_ms": [round(value, 3) for value in found]}
    result.print()
    say(f"wrote {result.write(args.output_dir)}")
    return 0


if __name__ == "__main__":
    run_main(main)
