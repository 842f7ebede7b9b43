"""Render ``docs/benchmarks.md`` and ``docs/img/bench-*.png`` from the JSON results.

    python -m benchmarks.report [--results benchmarks/results] [--docs docs]

Everything in the page comes from ``benchmarks/results/*.json``: the tables, the machine, the
dates, the targets (met or missed) and the notes that say why. Nothing is typed in by hand except
the description of what each benchmark does.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # the backend must be chosen first

from benchmarks.harness import RESULTS_DIR, format_cell

DOCS = Path(__file__).resolve().parents[1] / "docs"

# Order of the page and what each benchmark does (issue items 1-6, plus concurrency).
SECTIONS: tuple[tuple[str, str, str], ...] = (
    (
        "latency",
        "1. Latency isolation",
        "The bulk topic is preloaded with a migration-sized backlog; a separate process then "
        "produces realtime chunks at half the consumer's calibrated capacity, each stamped with "
        "its send time. Three handler configurations: the product defaults (concurrency 1) with "
        "a handler burning a fixed CPU cost per chunk, the same handler at concurrency 8, and a "
        "20 ms I/O handler at concurrency 32. Latency is handled minus sent. (a) is streamproc "
        "with flow control, (b) the same consumer never pausing, (p) a plain confluent-kafka "
        "consumer on both topics (no priority), (c) realtime only, no bulk: the floor. Each "
        "ratio is taken within one round of back-to-back runs; targets show the median over "
        "rounds with the min-max in brackets. The same runs give the bulk share of the capacity "
        "realtime leaves and the bulk yield time (see the notes).",
    ),
    (
        "work_conservation",
        "2. Work conservation",
        "Realtime idle, bulk preloaded: how fast streamproc drains bulk with flow control on and "
        "off, against a plain confluent-kafka consumer doing the same decode and handler work. "
        "Flow control and lanes must cost nothing when there is nothing to protect.",
    ),
    (
        "consume",
        "3. Consumer throughput",
        "One topic of Avro chunks read by every side with a fresh group, timed from the first "
        "message to the Nth: a raw confluent-kafka consume loop without decoding (the limit), "
        "the same loop with fastavro decoding, streamproc's PriorityConsumer with the null sink "
        "(decode, validate into a Chunk, store offsets) and a Quix Streams application "
        "(quixstreams from PyPI) decoding with the same fastavro call.",
    ),
    (
        "produce",
        "4. Producer throughput",
        "streamproc's ChunkProducer (route, key, Avro encode, produce) against raw "
        "confluent-kafka produce of the same pre-encoded bytes and a Quix Streams producer "
        "(quixstreams from PyPI, serializing the same chunks' Avro records with fastavro), same "
        "producer configuration; encode-only is the Kafka-free CPU cost streamproc adds per chunk.",
    ),
    (
        "produce_memory",
        "Produce command memory",
        "streamproc produce (the CLI, as a child process) on a JSON-lines file and on a JSON-array "
        "file of a migration's size: its peak resident memory, read from wait4, against a "
        "one-chunk input; every chunk of each file is counted on the brokers.",
    ),
    (
        "codec",
        "Codec cost per message",
        "Kafka-free, on the sample chunks: decode + Chunk construction per message with "
        "fastavro or the reader generated from chunk.avsc, and with full validation or the "
        "trusted construction (fastavro + validation is the path before the generated codec), "
        "and encode with the generated writer or the generic record + fastavro path.",
    ),
    (
        "pause_reaction",
        "5. Pause reaction",
        "Realtime bursts over a busy bulk lane: the time from the realtime lag crossing "
        "pause_lag (the broker acknowledging the burst's pause_lag+1-th message) to the consumer "
        "pausing the bulk partitions.",
    ),
    (
        "flood_shapes",
        "6. Flood shapes",
        "Bursty realtime traffic (bursts above capacity, then silence) over a bulk flood, with "
        "the default hysteresis, with the narrowest band the settings allow, and without flow "
        "control: pause/resume transitions, realtime latency and bulk throughput.",
    ),
    (
        "concurrency",
        "Concurrency",
        "Handler concurrency (see the concurrency benchmark's own notes).",
    ),
    (
        "serial_choice",
        "Serial or side by side",
        "At concurrency 8 over a bulk backlog, handlers from only computing to mostly waiting: "
        "chunks handled a second when the pool chooses between one batch at a time and every "
        "thread (the default, serial_cpu_share 0.8), against every thread always. The window "
        "starts after the pool's first trial.",
    ),
    (
        "sinks",
        "Sinks: PostgreSQL and SQLite",
        "Chunks written per second by the built-in PostgreSQL sink (a local server from "
        "scripts/postgres-local) and the SQLite sink in the same run: the sink alone, "
        "handle_batch from one thread at several batch sizes, and a PriorityConsumer draining "
        "a preloaded bulk topic into each sink at concurrency 1 (whole batches) and higher "
        "(one chunk per call, several at once). Every run writes a fresh table or file.",
    ),
)


def load_results(directory: Path) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "benchmark" in data and "tables" in data:
            results[str(data["benchmark"])] = data
    return results


def markdown_table(table: dict[str, Any]) -> str:
    columns = [str(column) for column in table["columns"]]
    lines = [f"**{table['title']}**", ""]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|")
    for row in table["rows"]:
        lines.append("| " + " | ".join(format_cell(value) for value in row) + " |")
    return "\n".join(lines) + "\n"


def measured(target: dict[str, Any]) -> str:
    """The value, with its min-max over repeats when it has one."""
    value = format_cell(float(target["value"]))
    span = target.get("spread")
    if span:
        value += f" ({format_cell(float(span[0]))}-{format_cell(float(span[1]))})"
    return value


def target_line(target: dict[str, Any]) -> str:
    mark = "met" if target["met"] else "**missed**"
    return f"- {target['name']}: {measured(target)} (target {target['target']}): {mark}"


# -- plots -------------------------------------------------------------------------------------


def plot_latency(result: dict[str, Any], image: Path) -> None:
    """Realtime latency over the run, one panel per variant, shared log scale."""
    series: dict[str, list[list[float]]] = result["series"].get("latency", {})
    if not series:
        return
    figure, axes = plt.subplots(
        len(series), 1, figsize=(9, 1.9 * len(series)), sharex=True, sharey=True, squeeze=False
    )
    panels = axes[:, 0]
    for axis, (label, points) in zip(panels, series.items(), strict=True):
        if points:
            xs, ys = zip(*points, strict=True)
            axis.scatter(xs, [y * 1000 for y in ys], s=2)
        axis.set_yscale("log")
        axis.set_ylabel("ms")
        axis.set_title(label, fontsize=9, loc="left")
        axis.grid(alpha=0.3)
        for kind, colour in (("pauses", "tab:red"), ("resumes", "tab:green")):
            for moment in result["series"].get(kind, {}).get(label, []):
                axis.axvline(moment, color=colour, alpha=0.25, linewidth=0.8)
    panels[-1].set_xlabel("seconds since the realtime stream started (sent time)")
    figure.suptitle(
        "Realtime end-to-end latency per chunk"
        + (" (red: bulk paused, green: resumed)" if "pauses" in result["series"] else "")
    )
    figure.tight_layout()
    figure.savefig(image, dpi=110)
    plt.close(figure)


def plot_latency_cdf(result: dict[str, Any], image: Path) -> None:
    series: dict[str, list[list[float]]] = result["series"].get("latency", {})
    if not series:
        return
    figure, axis = plt.subplots(figsize=(8, 4))
    for label, points in series.items():
        values = sorted(point[1] * 1000 for point in points)
        if values:
            axis.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=label)
    axis.set_xscale("log")
    axis.set_xlabel("realtime end-to-end latency (ms)")
    axis.set_ylabel("fraction of chunks")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title("Realtime latency distribution under a bulk flood")
    figure.tight_layout()
    figure.savefig(image, dpi=110)
    plt.close(figure)


def plot_bars(result: dict[str, Any], image: Path, title: str, unit: str) -> None:
    """Median column of the first table as horizontal bars."""
    table = result["tables"][0]
    columns = table["columns"]
    if "median" not in columns:
        return
    index = columns.index("median")
    labels = [str(row[0]) for row in table["rows"]]
    values = [float(row[index]) for row in table["rows"]]
    figure, axis = plt.subplots(figsize=(8, 0.6 * len(labels) + 1.2))
    bars = axis.barh(labels, values)
    axis.bar_label(bars, labels=[f"{value:,.0f}" for value in values], fontsize=8, padding=3)
    axis.invert_yaxis()
    axis.set_xlabel(unit)
    axis.set_title(title)
    axis.margins(x=0.15)
    figure.tight_layout()
    figure.savefig(image, dpi=110)
    plt.close(figure)


def plot_reaction(result: dict[str, Any], image: Path) -> None:
    values = result["series"].get("reaction_ms", [])
    if not values:
        return
    figure, axis = plt.subplots(figsize=(8, 3.2))
    axis.hist(values, bins=30)
    poll_ms = float(result["parameters"].get("poll_interval_s", 0.1)) * 1000
    axis.axvline(poll_ms, color="tab:red", linestyle="--", label=f"poll interval ({poll_ms:g} ms)")
    axis.set_xlabel("ms from realtime lag > pause_lag to bulk paused")
    axis.set_ylabel("bursts")
    axis.legend()
    axis.set_title("Pause reaction")
    figure.tight_layout()
    figure.savefig(image, dpi=110)
    plt.close(figure)


def draw(name: str, result: dict[str, Any], img: Path) -> list[tuple[str, str]]:
    """Draw the plots of one benchmark; returns (file name, alt text) pairs."""
    drawn: list[tuple[str, str]] = []

    def keep(file: str, alt: str) -> None:
        if (img / file).is_file():
            drawn.append((file, alt))

    if name == "latency":
        plot_latency_cdf(result, img / "bench-latency-cdf.png")
        keep("bench-latency-cdf.png", "realtime latency distribution per variant")
        plot_latency(result, img / "bench-latency.png")
        keep("bench-latency.png", "realtime latency over time per variant")
    elif name == "flood_shapes":
        plot_latency(result, img / "bench-flood-shapes.png")
        keep("bench-flood-shapes.png", "realtime latency and pauses under bursty realtime traffic")
    elif name == "consume":
        plot_bars(result, img / "bench-consume.png", "Consumer throughput (median)", "messages/s")
        keep("bench-consume.png", "consumer throughput per side")
    elif name == "produce":
        plot_bars(result, img / "bench-produce.png", "Producer throughput (median)", "chunks/s")
        keep("bench-produce.png", "producer throughput per side")
    elif name == "work_conservation":
        plot_bars(result, img / "bench-work-conservation.png", "Bulk drain (median)", "chunks/s")
        keep("bench-work-conservation.png", "bulk drain with flow control on and off")
    elif name == "pause_reaction":
        plot_reaction(result, img / "bench-pause-reaction.png")
        keep("bench-pause-reaction.png", "pause reaction histogram")
    return drawn


# -- page --------------------------------------------------------------------------------------


def render(results: dict[str, dict[str, Any]], img: Path) -> str:
    img.mkdir(parents=True, exist_ok=True)
    dates = sorted(str(result["date"]) for result in results.values())
    machines = {
        json.dumps({k: v for k, v in result["machine"].items() if k != "load_average_1m"})
        for result in results.values()
    }
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by `python -m benchmarks.report` from benchmarks/results/*.json; "
        "do not edit by hand: run `make bench`. -->",
        "",
        "How fast realtime chunks are handled while a migration floods the bulk lane, and what "
        "streamproc costs next to what users run today, with the baselines measured in the same "
        "run on the same broker. Reproduce with `make bench` (starts the local broker with "
        "`scripts/kafka-local start`, a 1 GB heap and G1's 20 ms pause goal; runs "
        "`python -m benchmarks.run_all`, then this report); "
        "each script also runs alone, see `benchmarks/README.md`.",
        "",
        "## Machine",
        "",
    ]
    if dates:
        lines.append(f"- measured: {dates[0]} to {dates[-1]} (UTC)")
    for machine_json in sorted(machines):
        machine = json.loads(machine_json)
        lines.append("- " + ", ".join(f"{key}: {value}" for key, value in machine.items()))
    loads = [
        f"{name} {result['machine'].get('load_average_1m')}"
        for name, result in results.items()
        if result["machine"].get("load_average_1m") is not None
    ]
    lines += [
        "- a shared 2-core machine: the broker, the benchmark and other work ran on the same two "
        "cores, so absolute figures are low and noisy; the ratios, measured side by side in one "
        "run, are what to read. 1-minute load average when each benchmark ended: "
        + ", ".join(loads)
        + ".",
        "",
        "## Targets",
        "",
        "| benchmark | target | measured | want | |",
        "|---|---|---:|---|---|",
    ]
    for name, _, _ in SECTIONS:
        for target in results.get(name, {}).get("targets", []):
            mark = "met" if target["met"] else "**missed**"
            lines.append(
                f"| {name} | {target['name']} | {measured(target)} | {target['target']} | {mark} |"
            )
    lines += ["", "Why a target is missed is in the notes of its section.", ""]
    for name, title, description in SECTIONS:
        result = results.get(name)
        if result is None:
            continue
        lines += [f"## {title}", "", description, ""]
        parameters = result.get("parameters") or {}
        if parameters:
            shown = ", ".join(
                f"{key} `{json.dumps(value) if isinstance(value, dict) else value}`"
                for key, value in parameters.items()
                if value is not None
            )
            lines += [f"Parameters: {shown}. Measured {result['date']}.", ""]
        for table in result["tables"]:
            lines += [markdown_table(table), ""]
        if result.get("targets"):
            lines += [target_line(target) for target in result["targets"]] + [""]
        for note in result.get("notes", []):
            lines.append(f"> {note}")
            lines.append(">")
        if result.get("notes"):
            lines.pop()
            lines.append("")
        for file, alt in draw(name, result, img):
            lines += [f"![{alt}](img/{file})", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="JSON results directory.")
    parser.add_argument("--docs", type=Path, default=DOCS, help="Documentation directory.")
    args = parser.parse_args(argv)
    results = load_results(args.results)
    if not results:
        print(f"no results in {args.results}", file=sys.stderr)
        return 1
    page = render(results, args.docs / "img")
    (args.docs / "benchmarks.md").write_text(page, encoding="utf-8")
    print(f"wrote {args.docs / 'benchmarks.md'} from {len(results)} results", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
