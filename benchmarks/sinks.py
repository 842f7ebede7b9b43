"""Sink throughput: chunks/s into PostgreSQL and into SQLite, measured in the same run.

Run against a broker (``scripts/kafka-local start`` prints one)::

    python -m benchmarks.sinks --bootstrap-servers 127.0.0.1:PORT [--postgres-url URL]

The PostgreSQL server is ``--postgres-url`` (or ``STREAMPROC_BENCH_POSTGRES_URL``), else the one
``scripts/postgres-local start`` runs (stopped afterwards if this run started it). Two parts, each
side run ``--repeats`` times in ABBA order, each run into a fresh table or database file:

1. The sink alone: ``--count`` decoded chunks (distinct keys) handed to ``handle_batch`` in
   batches of each ``--batch-sizes`` from one thread: the cost of a committed upsert per batch.
2. Through the consumer: the bulk topic preloaded with ``--count`` chunks, drained by a
   ``PriorityConsumer`` writing into the sink (fresh group per run), at concurrency 1 (whole
   batches) and ``--concurrency`` (one chunk per call, from that many threads at once). Timed
   from the first chunk handled to the Nth.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.harness import (
    REPO,
    Result,
    RunningConsumer,
    Table,
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
from streamproc.chunk import Chunk
from streamproc.handlers import ChunkRecord, MessageContext, SqliteSink
from streamproc.lanes import Lanes
from streamproc.postgres_sink import PostgresSink
from streamproc.samples import sample_chunks

SINKS = ("PostgreSQL", "SQLite")
POSTGRES_LOCAL = REPO / "scripts" / "postgres-local"


class OpenedSink:
    """A fresh PostgreSQL table or SQLite file for one run; dropped or removed afterwards."""

    def __init__(self, kind: str, postgres_url: str, scratch: Path) -> None:
        self.kind = kind
        self._postgres_url = postgres_url
        name = f"bench_sinks_{uuid.uuid4().hex[:10]}"
        if kind == "PostgreSQL":
            self._table = name
            self.sink: PostgresSink | SqliteSink = PostgresSink.from_uri(
                f"{postgres_url}?table={name}"
            )
        else:
            self._path = scratch / f"{name}.sqlite"
            self.sink = SqliteSink(str(self._path))

    def close(self) -> None:
        self.sink.close()
        if self.kind == "PostgreSQL":
            with psycopg.connect(self._postgres_url, autocommit=True) as connection:
                connection.execute(f"DROP TABLE {self._table}")  # a generated name
        else:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self._path}{suffix}").unlink(missing_ok=True)


def records(count: int) -> list[ChunkRecord]:
    """``count`` decoded chunks with distinct keys, as the consumer hands them over."""
    now_ms = int(time.time() * 1000)
    chunks: list[Chunk] = list(sample_chunks(count, low_priority_ratio=1.0, prefix="s", seed=3))
    return [
        ChunkRecord(
            chunk,
            MessageContext(
                lane="bulk",
                lane_rank=1,
                topic="bench.bulk",
                partition=index % 3,
                offset=index,
                timestamp_ms=now_ms,
                key=chunk.key.encode(),
            ),
        )
        for index, chunk in enumerate(chunks)
    ]


def sink_alone(opened: OpenedSink, batch: Sequence[ChunkRecord], batch_size: int) -> float:
    """Chunks per second through ``handle_batch`` in batches of ``batch_size``."""
    started = time.perf_counter()
    for start in range(0, len(batch), batch_size):
        opened.sink.handle_batch(batch[start : start + batch_size])
    return len(batch) / (time.perf_counter() - started)


class TimedSink:
    """Wraps a sink: records when each chunk was written; done after ``count``."""

    def __init__(self, sink: PostgresSink | SqliteSink, count: int) -> None:
        self.sink = sink
        self.count = count
        self.written_at: list[float] = []
        self.done = threading.Event()
        self._lock = threading.Lock()

    def handle_batch(self, batch: Sequence[ChunkRecord]) -> None:
        self.sink.handle_batch(batch)
        now = time.perf_counter()
        with self._lock:
            self.written_at.extend([now] * len(batch))
            if len(self.written_at) >= self.count:
                self.done.set()


def through_consumer(
    opened: OpenedSink, bootstrap: str, lanes: Lanes, count: int, concurrency: int
) -> float:
    """Chunks per second drained from the bulk topic into the sink."""
    timed = TimedSink(opened.sink, count)
    settings = consumer_settings(
        bootstrap,
        lanes,
        group_id=f"{lanes.prefix}-{uuid.uuid4().hex[:8]}",
        concurrency=concurrency,
    )
    with RunningConsumer(settings, timed):
        if not timed.done.wait(600):
            raise SystemExit(f"drain wrote only {len(timed.written_at)} of {count}")
    times = sorted(timed.written_at)[:count]
    return (len(times) - 1) / (times[-1] - times[0])


def batches_of(part: Sequence[ChunkRecord], size: int) -> Callable[[OpenedSink], float]:
    return lambda opened: sink_alone(opened, part, size)


def draining(
    bootstrap: str, lanes: Lanes, count: int, concurrency: int
) -> Callable[[OpenedSink], float]:
    return lambda opened: through_consumer(opened, bootstrap, lanes, count, concurrency)


def postgres_server(configured: str | None) -> tuple[str, Callable[[], None]]:
    """The server's URL and how to release it (stop it if this run started it)."""
    if configured:
        return configured, lambda: None
    running = subprocess.run(
        [sys.executable, str(POSTGRES_LOCAL), "status"], capture_output=True, check=False
    )
    started = subprocess.run(
        [sys.executable, str(POSTGRES_LOCAL), "start"], capture_output=True, text=True, check=False
    )
    if started.returncode != 0:
        raise SystemExit(f"scripts/postgres-local start failed:\n{started.stderr}")
    url = started.stdout.strip().splitlines()[-1]
    if running.returncode == 0:
        return url, lambda: None

    def stop() -> None:
        command = [sys.executable, str(POSTGRES_LOCAL), "stop"]
        subprocess.run(command, capture_output=True, check=False)

    return url, stop


def server_version(url: str) -> str:
    with psycopg.connect(url) as connection:
        found = connection.execute("SHOW server_version").fetchone()
    return str(found[0]) if found else "unknown"


def abba(repeat: int) -> Sequence[str]:
    """Neither side always runs first (the first run of a process is colder)."""
    return SINKS if repeat % 2 else tuple(reversed(SINKS))


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=10_000, help="Chunks written per run.")
    parser.add_argument("--repeats", type=int, default=2, help="Runs per side (interleaved).")
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[1, 100, 500], help="Part 1 batch sizes."
    )
    parser.add_argument(
        "--concurrency", type=int, default=4, help="Part 2: the concurrent consumer's workers."
    )
    parser.add_argument(
        "--postgres-url",
        default=None,
        help="PostgreSQL server (default: $STREAMPROC_BENCH_POSTGRES_URL, else postgres-local).",
    )
    args = parse(parser, argv)
    quiet_logs()
    postgres_url, release = postgres_server(
        args.postgres_url or os.environ.get("STREAMPROC_BENCH_POSTGRES_URL")
    )
    scratch = Path(tempfile.mkdtemp(prefix="streamproc-bench-sinks-"))
    rates: dict[tuple[str, str], list[float]] = {}

    def measure(variant: str, run: Callable[[OpenedSink], float], repeat: int) -> None:
        for kind in abba(repeat):
            opened = OpenedSink(kind, postgres_url, scratch)
            try:
                rate = run(opened)
            finally:
                opened.close()
            rates.setdefault((variant, kind), []).append(rate)
            say(f"{variant}, {kind}, run {repeat}: {rate:,.0f} chunks/s")

    try:
        version = server_version(postgres_url)
        alone = records(args.count)
        for repeat in range(1, args.repeats + 1):
            for size in args.batch_sizes:
                # At batch size 1 a run is one transaction per chunk: a tenth of the chunks do.
                part = alone if size > 1 else alone[: max(1, args.count // 10)]
                measure(f"handle_batch({size})", batches_of(part, size), repeat)
        with fresh_lanes(args.bootstrap_servers, "sinks", args.partitions) as lanes:
            took = preload(
                args.bootstrap_servers, lanes.bottom.topic, workload(low_priority=True), args.count
            )
            say(f"preloaded {args.count:,} bulk chunks in {took:.1f}s")
            for repeat in range(1, args.repeats + 1):
                for concurrency in sorted({1, args.concurrency}):
                    drain = draining(args.bootstrap_servers, lanes, args.count, concurrency)
                    measure(f"consumer, concurrency {concurrency}", drain, repeat)
    finally:
        release()
        scratch.rmdir()

    result = Result("sinks")
    result.parameters = {
        "count": args.count,
        "repeats": args.repeats,
        "batch_sizes": " ".join(str(size) for size in args.batch_sizes),
        "concurrency": args.concurrency,
        "partitions": args.partitions,
        "postgresql": version,
    }
    table = Table(
        f"Chunks written per second, PostgreSQL {version} and SQLite (WAL) on the same machine",
        ["variant", "sink", *(f"run {i + 1}" for i in range(args.repeats)), "median"],
    )
    ratios = Table(
        "PostgreSQL / SQLite (medians)", ["variant", "PostgreSQL", "SQLite", "PostgreSQL / SQLite"]
    )
    variants = list(dict.fromkeys(variant for variant, _ in rates))
    for variant in variants:
        medians: dict[str, float] = {}
        for kind in SINKS:
            values = rates[(variant, kind)]
            medians[kind] = median(values)
            table.rows.append([variant, kind, *(round(v) for v in values), round(medians[kind])])
        pg_over_sqlite = ratio(medians["PostgreSQL"], medians["SQLite"])
        ratios.rows.append(
            [variant, round(medians["PostgreSQL"]), round(medians["SQLite"]), pg_over_sqlite]
        )
        print(f"{variant}: PostgreSQL / SQLite = {pg_over_sqlite:.2f}")
    result.tables += [ratios, table]
    result.notes.append(
        "Both sinks commit every batch before returning (PostgreSQL: one transaction with one "
        "multi-row upsert over a local TCP connection, fsync on; SQLite: one transaction in WAL "
        "mode, synchronous=NORMAL, in the same process). The server runs on the same two shared "
        "cores as the benchmark and the broker. At batch size 1 each run writes a tenth of the "
        "chunks (one transaction per chunk)."
    )
    series: dict[str, Any] = {f"{v} / {k}": values for (v, k), values in rates.items()}
    result.series = {"rates": series}
    result.print()
    say(f"wrote {result.write(args.output_dir)}")
    return 0


if __name__ == "__main__":
    run_main(main)
