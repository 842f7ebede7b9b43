"""Serial or side by side: what the worker pool chooses at ``--concurrency 8``, and what it costs.

Run against a broker (``scripts/kafka-local start`` prints one)::

    python -m benchmarks.serial_choice --bootstrap-servers 127.0.0.1:PORT

A bulk backlog on fresh topics; the handler computes ``c`` ms a chunk (a busy loop holding the
GIL, as parsing or embedding in Python would) and then waits ``w`` ms (``time.sleep``, as a
database write would), for shapes from only computing to mostly waiting. Two arms per shape:

* (t) threads always: ``serial_cpu_share`` 2, every batch one chunk on its own thread;
* (a) the default (0.8): above that CPU share the pool tries one batch at a time for half a
  second and keeps it unless side by side handled more than 1.1 times as many chunks a second.

Chunks handled a second over a window that starts after the first trial has ended (a second
and a half side by side, half a second serial, then a margin); the arms alternate, in rotating
order, for ``--repeats`` rounds. Target: (a) / (t) at least 0.9 for every shape, the most the
1.1 margin gives away to keep serial (a handler that only computes gains from serial; one that
also waits gains from threads, and the pool must find which).

Results go to ``benchmarks/results/serial_choice.json`` in the shared shape.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from statistics import median
from typing import Any

from benchmarks.harness import (
    Result,
    RunningConsumer,
    Table,
    Target,
    base_parser,
    burn,
    consumer_settings,
    fresh_lanes,
    parse,
    preload,
    quiet_logs,
    rate_after_warm_up,
    ratio,
    run_main,
    say,
    spread,
    workload,
)
from streamproc.handlers import ChunkRecord

CONCURRENCY = 8
# (ms on the CPU, ms waiting) per chunk.
SHAPES: tuple[tuple[float, float], ...] = (
    (1.0, 0.0),
    (0.8, 0.2),
    (0.6, 0.4),
    (0.4, 0.6),
    (0.2, 0.8),
)
ARMS = {"t": 2.0, "a": 0.8}  # serial_cpu_share per arm
LABELS = {"t": "(t) threads always", "a": "(a) chosen"}
# The first trial ends about 2 s after the first batch: the window starts after it.
WARM_UP_S = 3.0
LEAST_RATIO = 0.9


class Handler:
    """Computes, then waits, per chunk; counts the chunks it finished and when."""

    def __init__(self, cpu_s: float, wait_s: float) -> None:
        self.cpu_s = cpu_s
        self.wait_s = wait_s
        self.done: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, record: ChunkRecord) -> None:
        burn(self.cpu_s)
        if self.wait_s:
            time.sleep(self.wait_s)
        with self._lock:
            self.done.append(time.monotonic())

    def count(self, start: float, end: float) -> int:
        with self._lock:
            return sum(1 for t in self.done if start <= t < end)


def run_arm(args: Any, shape: tuple[float, float], arm: str) -> tuple[float, bool]:
    """Chunks a second over the window, and whether the pool ran serial at its end."""
    cpu_ms, wait_ms = shape
    # Enough for the warm-up and the window at the fastest rate the shape allows side by side.
    fastest = CONCURRENCY / ((cpu_ms + wait_ms) / 1000)
    backlog = int(min(fastest, 1000 / cpu_ms) * 1.5 * (WARM_UP_S + args.window)) + 500
    with fresh_lanes(args.bootstrap_servers, "serial_choice", args.partitions) as lanes:
        preload(args.bootstrap_servers, lanes.bottom.topic, workload(low_priority=True), backlog)
        handler = Handler(cpu_ms / 1000, wait_ms / 1000)
        settings = consumer_settings(
            args.bootstrap_servers,
            lanes,
            concurrency=CONCURRENCY,
            ordering="unordered",
            serial_cpu_share=ARMS[arm],
        )
        with RunningConsumer(settings, handler) as running:
            running.wait_ready()
            rate = rate_after_warm_up(handler.count, WARM_UP_S, args.window, time.monotonic)
            serial = running.sample("streamproc_serial", {}) == 1
    say(
        f"{cpu_ms:g} ms CPU + {wait_ms:g} ms waiting, {LABELS[arm]}: {rate:,.0f} chunks/s"
        f" ({'serial' if serial else 'threads'} at the end)"
    )
    return rate, serial


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--window", type=float, default=5.0, help="Measured window (s).")
    parser.add_argument("--repeats", type=int, default=2, help="Rounds of both arms per shape.")
    parser.set_defaults(partitions=4)
    args = parse(parser, argv)
    quiet_logs()

    rates: dict[tuple[tuple[float, float], str], list[float]] = {}
    serial: dict[tuple[tuple[float, float], str], list[bool]] = {}
    ratios: dict[tuple[float, float], list[float]] = {}
    for round_index in range(args.repeats):
        for shape in SHAPES:
            arms = list(ARMS)
            if round_index % 2:
                arms.reverse()
            measured = {arm: run_arm(args, shape, arm) for arm in arms}
            for arm, (rate, was_serial) in measured.items():
                rates.setdefault((shape, arm), []).append(rate)
                serial.setdefault((shape, arm), []).append(was_serial)
            ratios.setdefault(shape, []).append(ratio(measured["a"][0], measured["t"][0]))

    table = Table(
        f"Chunks handled a second at concurrency {CONCURRENCY}, bulk backlog: median over"
        f" {args.repeats} rounds (min-max)",
        ["CPU ms", "waiting ms", "(t) threads always", "(a) chosen", "(a) / (t)", "(a) ran"],
    )
    result = Result(
        "serial_choice",
        parameters={
            "concurrency": CONCURRENCY,
            "window_s": args.window,
            "warm_up_s": WARM_UP_S,
            "repeats": args.repeats,
            "partitions": args.partitions,
        },
    )
    for shape in SHAPES:
        cpu_ms, wait_ms = shape
        chosen = serial[(shape, "a")]
        ran = "serial" if all(chosen) else "threads" if not any(chosen) else "both"
        table.rows.append(
            [
                cpu_ms,
                wait_ms,
                _with_spread(rates[(shape, "t")]),
                _with_spread(rates[(shape, "a")]),
                _with_spread(ratios[shape], digits=2),
                ran,
            ]
        )
        value = median(ratios[shape])
        result.targets.append(
            Target(
                f"chunks/s chosen / threads always, {cpu_ms:g} ms CPU + {wait_ms:g} ms waiting",
                value,
                f">= {LEAST_RATIO}",
                value >= LEAST_RATIO,
                spread(ratios[shape]),
            )
        )
    result.tables.append(table)
    result.notes.append(
        "(a) ran: the mode of the pool at each window's end (streamproc_serial), over the rounds."
        " Serial is kept unless threads handled more than 1.1 times as many chunks a second,"
        " because one batch at a time leaves the GIL to the poll loop (realtime waits less),"
        " so a handler close to the line may run serial a little slower than with threads."
    )
    result.print()
    result.write(args.output_dir)
    return 0


def _with_spread(values: list[float], digits: int = 0) -> str:
    low, high = min(values), max(values)
    if digits:
        return f"{median(values):.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"
    return f"{median(values):,.0f} ({low:,.0f}-{high:,.0f})"


if __name__ == "__main__":
    run_main(main)
