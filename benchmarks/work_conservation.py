"""Work conservation: with realtime idle, flow control must not slow the bulk drain down.

Run against a broker (``scripts/kafka-local start`` prints one)::

    python -m benchmarks.work_conservation --bootstrap-servers 127.0.0.1:PORT

The bulk topic is filled with ``--count`` chunks and the realtime topic stays empty. The same
``PriorityConsumer`` drains the bulk lane (a) with flow control and (b) with flow control off,
``--repeats`` times each, interleaved in ABBA order, each run with a fresh consumer group. The
handler is the benchmark handler with ``--burn-us`` of CPU per chunk (0 by default: the
consumer's own cost is then all there is, which is where any flow-control overhead would show
most). Timed from the first bulk chunk handled to the Nth.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from benchmarks.harness import (
    RecordingHandler,
    Result,
    RunningConsumer,
    Table,
    Target,
    base_parser,
    consumer_settings,
    fresh_lanes,
    median,
    parse,
    preload,
    quiet_logs,
    ratio,
    run_main,
    say,
    workload,
)
from streamproc.lanes import Lanes

SIDES = {"(a) flow control": True, "(b) flow control off": False}


def drain(bootstrap: str, lanes: Lanes, count: int, burn_us: float, *, flow: bool) -> float:
    """Bulk chunks per second from the first handled to the Nth."""
    handler = RecordingHandler(burn_us / 1e6, stop_after=count)
    settings = consumer_settings(
        bootstrap,
        lanes,
        flow=flow,
        group_id=f"{lanes.prefix}-{uuid.uuid4().hex[:8]}",
    )
    with RunningConsumer(settings, handler):
        if not handler.done.wait(300):
            raise SystemExit(f"drain handled only {handler.total} of {count}")
    times = handler.handled_at["bulk"][:count]
    return (len(times) - 1) / (times[-1] - times[0])


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=60_000, help="Bulk chunks drained per run.")
    parser.add_argument("--repeats", type=int, default=4, help="Runs per side (interleaved).")
    parser.add_argument("--burn-us", type=float, default=0.0, help="Handler CPU cost per chunk.")
    args = parse(parser, argv)
    quiet_logs()
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    with fresh_lanes(args.bootstrap_servers, "work", args.partitions) as lanes:
        took = preload(
            args.bootstrap_servers, lanes.bottom.topic, workload(low_priority=True), args.count
        )
        say(f"preloaded {args.count:,} bulk chunks in {took:.1f}s")
        for repeat in range(1, args.repeats + 1):
            # ABBA order: neither side always runs first (the first run of a process is colder).
            order = list(SIDES.items())
            for side, flow in order if repeat % 2 else reversed(order):
                rate = drain(args.bootstrap_servers, lanes, args.count, args.burn_us, flow=flow)
                rates[side].append(rate)
                say(f"{side} run {repeat}: {rate:,.0f} bulk chunks/s")
    medians = {side: median(values) for side, values in rates.items()}
    on, off = medians["(a) flow control"], medians["(b) flow control off"]
    table = Table(
        f"Bulk drain with realtime idle, {args.count:,} chunks, handler {args.burn_us:g} us/chunk "
        "(chunks/s)",
        ["side", *(f"run {i + 1}" for i in range(args.repeats)), "median", "vs (b)"],
    )
    for side, values in rates.items():
        table.rows.append(
            [side, *(round(v) for v in values), round(medians[side]), round(medians[side] / off, 3)]
        )
    result = Result("work_conservation")
    result.parameters = {
        "count": args.count,
        "repeats": args.repeats,
        "handler_burn_us": args.burn_us,
        "partitions": args.partitions,
    }
    result.tables.append(table)
    drain_ratio = ratio(on, off)
    result.targets.append(
        Target("bulk drain (a) / (b), realtime idle", drain_ratio, ">= 0.95", drain_ratio >= 0.95)
    )
    spreads = {side: (max(values) - min(values)) / medians[side] for side, values in rates.items()}
    result.notes.append(
        "With realtime idle the flow policy never pauses anything, so (a) and (b) run the same "
        "code; the difference between them is to be read against the spread between runs of "
        "one side on this machine: "
        + ", ".join(f"{side} {spread:.0%}" for side, spread in spreads.items())
        + "."
    )
    result.print()
    say(f"wrote {result.write(args.output_dir)}")
    return 0


if __name__ == "__main__":
    run_main(main)
