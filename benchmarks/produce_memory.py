"""Peak memory of ``streamproc produce`` on a migration-sized input file.

Run against a broker (``scripts/kafka-local start`` prints one)::

    python -m benchmarks.produce_memory --bootstrap-servers 127.0.0.1:PORT [--size-mb 1024]

Writes a JSON-lines file and a JSON-array file of about ``--size-mb`` each (chunks of about 2.8
KB of JSON: html, tracking id, lane flag, metadata), then runs the real CLI on each as a child
process, ``streamproc produce FILE --no-progress``, and reads its peak resident set size from
``wait4``. A one-chunk input gives the interpreter's own footprint for comparison. Every chunk of
a file must reach the brokers (the lane topics' high watermarks are counted). The files are
written to a temporary directory and removed afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from benchmarks.harness import Result, Table, Target, base_parser, fresh_lanes, parse, run_main, say
from streamproc.lanes import Lanes

PAD = "lorem ipsum dolor sit amet " * 100
TARGET_PEAK_MB = 250.0


def payloads() -> Iterator[dict[str, object]]:
    index = 0
    while True:
        yield {
            "chunk_html": f"<p>{index} {PAD}</p>",
            "tracking_id": f"mem-{index}",
            "low_priority": index % 3 == 0,
            "metadata": {"index": index},
        }
        index += 1


def write_input(path: Path, shape: str, size_bytes: int) -> int:
    """Write chunks until the file holds ``size_bytes``; returns how many."""
    written = count = 0
    with path.open("w", encoding="utf-8") as out:
        if shape == "json-array":
            out.write("[\n")
        for payload in payloads():
            if written >= size_bytes:
                break
            text = json.dumps(payload)
            if shape == "json-array":
                text = ("" if count == 0 else ",\n") + text
            else:
                text += "\n"
            out.write(text)
            written += len(text)
            count += 1
        if shape == "json-array":
            out.write("\n]\n")
    return count


def produce(bootstrap: str, lanes: Lanes, source: Path) -> tuple[float, float]:
    """Run ``streamproc produce`` on ``source``; its seconds and peak RSS in MB."""
    command = [
        *(sys.executable, "-m", "streamproc", "produce", str(source)),
        *("--bootstrap-servers", bootstrap, "--topic-prefix", lanes.prefix, "--no-progress"),
    ]
    started = time.perf_counter()
    with tempfile.TemporaryFile() as errors:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        error_text = errors.read().decode(errors="replace")
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"streamproc produce {source} exited {child.returncode}: {error_text}")
    return seconds, usage.ru_maxrss / 1024  # kilobytes on Linux


def messages_in(bootstrap: str, lanes: Lanes) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "produce-memory"})
    try:
        total = 0
        for lane in lanes:
            metadata = consumer.list_topics(lane.topic, timeout=10)
            for partition in metadata.topics[lane.topic].partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(lane.topic, partition), timeout=10
                )
                total += high - low
        return total
    finally:
        consumer.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--size-mb", type=float, default=1024.0, help="Size of each input file (MiB)."
    )
    args = parse(parser, argv)
    size_bytes = int(args.size_mb * 1024 * 1024)
    table = Table(
        f"streamproc produce of a {args.size_mb:,.0f} MiB input: peak resident memory",
        ["input", "size MiB", "chunks", "seconds", "chunks/s", "peak RSS MiB"],
    )
    result = Result("produce_memory")
    result.parameters = {"size_mb": args.size_mb, "partitions": args.partitions}
    with tempfile.TemporaryDirectory(prefix="produce-memory-") as directory:
        one = Path(directory) / "one.jsonl"
        write_input(one, "json-lines", 1)
        with fresh_lanes(args.bootstrap_servers, "produce-memory", args.partitions) as lanes:
            seconds, baseline = produce(args.bootstrap_servers, lanes, one)
        table.rows.append(
            ["one chunk (the interpreter)", 0.0, 1, round(seconds, 1), "-", round(baseline, 1)]
        )
        for shape in ("json-lines", "json-array"):
            source = Path(directory) / f"input.{shape}"
            say(f"writing {args.size_mb:,.0f} MiB of {shape}")
            count = write_input(source, shape, size_bytes)
            size_mib = source.stat().st_size / 1024 / 1024
            with fresh_lanes(args.bootstrap_servers, "produce-memory", args.partitions) as lanes:
                seconds, peak = produce(args.bootstrap_servers, lanes, source)
                sent = messages_in(args.bootstrap_servers, lanes)
            source.unlink()
            if sent != count:
                raise SystemExit(f"{shape}: {sent} messages reached the brokers, not {count}")
            say(f"{shape}: {count:,} chunks in {seconds:.1f}s, peak RSS {peak:.0f} MiB")
            rate = round(count / seconds)
            table.rows.append(
                [shape, round(size_mib, 1), count, round(seconds, 1), rate, round(peak, 1)]
            )
            result.targets.append(
                Target(
                    f"peak RSS MiB, {shape} input of {size_mib:,.0f} MiB",
                    round(peak, 1),
                    f"< {TARGET_PEAK_MB:.0f}",
                    peak < TARGET_PEAK_MB,
                )
            )
    result.tables.append(table)
    result.notes.append(
        "The input is read as a stream (JSON lines line by line, a JSON array by ijson's "
        "incremental parser) and chunks go out as they are read, so memory stays flat whatever "
        "the file size; the one-chunk row is what the interpreter, pydantic, librdkafka and the "
        "CLI take before any input."
    )
    result.print()
    say(f"wrote {result.write(args.output_dir)}")
    return 0


if __name__ == "__main__":
    run_main(main)
