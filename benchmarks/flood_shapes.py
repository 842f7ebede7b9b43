"""Flood shapes: bursty realtime traffic over a bulk flood, and what hysteresis does with it.

Run against a broker (``scripts/kafka-local start`` prints one)::

    python -m benchmarks.flood_shapes --bootstrap-servers 127.0.0.1:PORT

Realtime arrives in bursts: ``--burst-seconds`` at ``--burst-factor`` times the consumer's
capacity (so realtime lag climbs over ``pause_lag``), then ``--silence`` seconds of nothing,
repeated for ``--seconds``; the bulk topic is preloaded with ``--bulk-count`` chunks. Variants:

* ``(a) flow control``: the product defaults (``pause_lag`` 1000, ``resume_lag`` 0): a wide
  hysteresis band;
* ``(a-) no hysteresis``: ``resume_lag = pause_lag - 1``, the narrowest band the settings allow;
* ``(b) flow control off``.

Reports pause/resume transitions, realtime latency and bulk throughput. Capacity is calibrated as
in ``latency.py`` (or given with ``--capacity``).
"""

from __future__ import annotations

from collections.abc import Sequence

from benchmarks.harness import (
    Result,
    Segment,
    Target,
    base_parser,
    parse,
    quiet_logs,
    run_main,
    say,
)
from benchmarks.latency import (
    Outcome,
    Variant,
    add_common_arguments,
    calibrate,
    latency_table,
    run_variant,
    thin,
)
from streamproc.flow import FlowSettings


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n\n")[0] if __doc__ else None)
    add_common_arguments(parser)
    parser.add_argument("--burst-seconds", type=float, default=1.0, help="Length of a burst.")
    parser.add_argument(
        "--burst-factor", type=float, default=1.5, help="Burst rate as a multiple of capacity."
    )
    parser.add_argument("--silence", type=float, default=2.0, help="Silence after each burst.")
    parser.set_defaults(seconds=24.0, warm_up=0.0)
    args = parse(parser, argv)
    quiet_logs()
    capacity = args.capacity or calibrate(args)
    burst_rate = capacity * args.burst_factor
    cycle = args.burst_seconds + args.silence
    cycles = max(1, round(args.seconds / cycle))
    segments: list[Segment] = []
    for _ in range(cycles):
        segments += [Segment(args.burst_seconds, burst_rate), Segment(args.silence, 0.0)]
    pause_lag = FlowSettings().pause_lag
    variants = (
        Variant("a", "(a) flow control", bulk=True, flow=True),
        Variant(
            "a-",
            "(a-) no hysteresis",
            bulk=True,
            flow=True,
            overrides=(("resume_lag", pause_lag - 1),),
        ),
        Variant("b", "(b) flow control off", bulk=True, flow=False),
    )
    say(f"capacity {capacity:,.0f}/s; {cycles} bursts of {burst_rate:,.0f}/s")
    outcomes: list[Outcome] = []
    for variant in variants:
        outcome = run_variant(args, variant, segments, benchmark="shapes")
        say(f"{variant.label}: {outcome.pauses} pauses, p99 {outcome.quantile_ms(0.99):.0f} ms")
        outcomes.append(outcome)
    by_key = {outcome.variant.key: outcome for outcome in outcomes}
    result = Result("flood_shapes")
    result.parameters = {
        "capacity_chunks_per_s": round(capacity),
        "burst_rate_per_s": round(burst_rate),
        "burst_seconds": args.burst_seconds,
        "silence_s": args.silence,
        "bursts": cycles,
        "pause_lag": pause_lag,
        "handler_burn_us": args.burn_us,
        "bulk_preloaded": args.bulk_count,
    }
    result.tables.append(
        latency_table(
            f"{cycles} realtime bursts of {args.burst_seconds:g}s at {burst_rate:,.0f}/s "
            f"({args.burst_factor:g} x capacity), {args.silence:g}s silence between, over "
            f"{args.bulk_count:,} preloaded bulk chunks",
            outcomes,
        )
    )
    a = by_key["a"]
    per_burst = a.pauses / cycles
    result.targets.append(
        Target(
            "pauses per burst with hysteresis (a)",
            per_burst,
            "<= 1 (one pause/resume per burst)",
            per_burst <= 1.0,
        )
    )
    result.notes.append(
        f"Transitions: (a) {a.pauses} pauses / {a.resumes} resumes, (a-) {by_key['a-'].pauses} / "
        f"{by_key['a-'].resumes}, over {cycles} bursts."
    )
    result.series = {
        "latency": {outcome.variant.label: thin(outcome.latency_series) for outcome in outcomes},
        "pauses": {
            outcome.variant.label: [round(t - outcome.start, 3) for t in outcome.pause_times]
            for outcome in outcomes
        },
        "resumes": {
            outcome.variant.label: [round(t - outcome.start, 3) for t in outcome.resume_times]
            for outcome in outcomes
        },
    }
    result.print()
    say(f"wrote {result.write(args.output_dir)}")
    return 0


if __name__ == "__main__":
    run_main(main)
