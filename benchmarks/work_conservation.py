"""Work conservation: with realtime idle, streamproc drains bulk as fast as a plain consumer.

Run against a broker (``scripts/kafka-local start`` prints one)::

    python -m benchmarks.work_conservation --bootstrap-servers 127.0.0.1:PORT

The bulk topic is filled with ``--count`` chunks and the realtime topic stays empty. Three sides
drain it, ``--repeats`` times each, interleaved (the order rotates each round), each run with a
fresh consumer group:

* ``(a) flow control``: streamproc's ``PriorityConsumer`` with the product defaults;
* ``(b) flow control off``: the same consumer with ``pause_lag`` beyond reach;
* ``(r) plain consumer``: one confluent-kafka ``Consumer`` with librdkafka's defaults on the bulk
  topic, the same decode (the product's codec: read + validation) and the same handler, one chunk
  at a time: the baseline.

The handler burns ``--burn-us`` of CPU per chunk (500 us by default, as in the latency
benchmark). Timed from the first bulk chunk handled to the Nth.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from benchmarks.harness import (
    PlainConsumer,
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
    spread,
    workload,
)
from streamproc.lanes import Lanes

FLOW_ON, FLOW_OFF, PLAIN = "(a) flow control", "(b) flow control off", "(r) plain consumer"
SIDES = (FLOW_ON, FLOW_OFF, PLAIN)
DRAIN_TIMEOUT_S = 300


def drain(bootstrap: str, lanes: Lanes, count: int, burn_us: float, side: str) -> float:
    """Bulk chunks per second from the first handled to the Nth."""
    handler = RecordingHandler(burn_us / 1e6, stop_after=count)
    group_id = f"{lanes.prefix}-{uuid.uuid4().hex[:8]}"
    if side == PLAIN:
        with PlainConsumer(bootstrap, group_id, {lanes.bottom.topic: lanes.bottom.name}, handler):
            finished = handler.done.wait(DRAIN_TIMEOUT_S)
    else:
        settings = consumer_settings(bootstrap, lanes, flow=side == FLOW_ON, group_id=group_id)
        with RunningConsumer(settings, handler.handle):
            finished = handler.done.wait(DRAIN_TIMEOUT_S)
    if not finished:
        raise SystemExit(f"{side}: drain handled only {handler.total} of {count}")
    times = sorted(handler.handled_at[lanes.bottom.name])[:count]
    return (len(times) - 1) / (times[-1] - times[0])


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=10_000, help="Bulk chunks drained per run.")
    parser.add_argument("--repeats", type=int, default=5, help="Runs per side (interleaved).")
    parser.add_argument("--burn-us", type=float, default=500.0, help="Handler CPU cost per chunk.")
    args = parse(parser, argv)
    quiet_logs()
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    with fresh_lanes(args.bootstrap_servers, "work", args.partitions) as lanes:
        took = preload(
            args.bootstrap_servers, lanes.bottom.topic, workload(low_priority=True), args.count
        )
        say(f"preloaded {args.count:,} bulk chunks in {took:.1f}s")
        for index in range(args.repeats):
            # The order rotates: no side always runs first (the first run of a process is colder).
            for side in SIDES[index % len(SIDES) :] + SIDES[: index % len(SIDES)]:
                rate = drain(args.bootstrap_servers, lanes, args.count, args.burn_us, side)
                rates[side].append(rate)
                say(f"{side} run {index + 1}: {rate:,.0f} bulk chunks/s")
    medians = {side: median(values) for side, values in rates.items()}
    table = Table(
        f"Bulk drain with realtime idle, {args.count:,} chunks, handler {args.burn_us:g} us/chunk "
        "(chunks/s)",
        ["side", *(f"run {i + 1}" for i in range(args.repeats)), "median", "vs (r)"],
    )
    for side, values in rates.items():
        table.rows.append(
            [
                side,
                *(round(v) for v in values),
                round(medians[side]),
                round(ratio(medians[side], medians[PLAIN]), 3),
            ]
        )
    result = Result("work_conservation")
    result.parameters = {
        "count": args.count,
        "repeats": args.repeats,
        "handler_burn_us": args.burn_us,
        "partitions": args.partitions,
    }
    result.tables.append(table)
    # Ratios per round (the sides of one round ran back to back), then their median and spread.
    for side, want in ((FLOW_ON, 0.95), (FLOW_OFF, None)):
        per_round = [ratio(x, r) for x, r in zip(rates[side], rates[PLAIN], strict=True)]
        if want is None:
            result.notes.append(
                f"{side} / (r) per round: " + ", ".join(f"{value:.3f}" for value in per_round)
            )
            continue
        value = median(per_round)
        result.targets.append(
            Target(
                f"bulk drain {side} / (r) plain consumer, realtime idle",
                value,
                f">= {want}",
                value >= want,
                spread(per_round),
            )
        )
    spreads = {side: (max(values) - min(values)) / medians[side] for side, values in rates.items()}
    result.notes.append(
        "Ratios are taken per round (the three sides of a round run back to back) and the target"
        " is their median. Spread between runs of one side on this machine: "
        + ", ".join(f"{side} {value:.0%}" for side, value in spreads.items())
        + "."
    )
    result.print()
    say(f"wrote {result.write(args.output_dir)}")
    return 0


if __name__ == "__main__":
    run_main(main)
