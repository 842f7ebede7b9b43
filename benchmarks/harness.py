"""Shared parts of the benchmarks: result files, tables, topics, workloads, consumers, producers.

Every benchmark writes ``benchmarks/results/<name>.json`` in one shape::

    {"benchmark": name, "date": ISO 8601, "machine": {"cpus", "python", "kafka", ...},
     "parameters": {...}, "tables": [{"title", "columns", "rows"}],
     "targets": [{"name", "value", "target", "met"}], "notes": [str], "series": {...}}

``series`` holds optional raw data for plots (``benchmarks/report.py`` draws them). The broker is
a real one (``scripts/kafka-local start`` prints its address); every run works on fresh topics
named ``bench-<benchmark>-<random>`` and deletes them afterwards.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import re
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.queues import Queue as MPQueue
from pathlib import Path
from typing import Any

import confluent_kafka
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from streamproc.codec import ChunkCodec
from streamproc.consumer import PriorityConsumer
from streamproc.handlers import AnyHandler, ChunkRecord
from streamproc.lanes import Lanes
from streamproc.samples import sample_chunks
from streamproc.settings import ConsumerSettings, ProducerSettings, parse_bootstrap
from streamproc.topics import TopicAdmin

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SENT_HEADER = "bench-sent-ns"
# Flow control "off": a realtime lag no run can reach, so lower lanes are never paused.
FLOW_OFF_PAUSE_LAG = 2**62
# Distinct chunks a workload cycles through: encoding 200,000 chunks would cost more time than
# the run it feeds, and a consumer gains nothing from seeing a value twice (nothing caches).
DISTINCT_CHUNKS = 20_000
QUEUE_FULL_POLL_S = 0.05


# -- results ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)


@dataclass(slots=True)
class Target:
    name: str
    value: float
    target: str
    met: bool


@dataclass(slots=True)
class Result:
    """What one benchmark measured, in the shared JSON shape."""

    benchmark: str
    parameters: dict[str, Any] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    series: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "parameters": self.parameters,
            "tables": [
                {"title": t.title, "columns": t.columns, "rows": t.rows} for t in self.tables
            ],
            "targets": [
                {"name": t.name, "value": t.value, "target": t.target, "met": t.met}
                for t in self.targets
            ],
            "notes": self.notes,
            "series": self.series,
        }

    def write(self, output_dir: Path) -> Path:
        output_dir.mkdir(parents=True, exist_ok=True)
        path = output_dir / f"{self.benchmark}.json"
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")
        return path

    def print(self) -> None:
        print(f"\n=== {self.benchmark} ===")
        for table in self.tables:
            print(format_table(table))
        for target in self.targets:
            mark = "met" if target.met else "MISSED"
            print(f"target {target.name}: {target.value:.3g} (want {target.target}) {mark}")
        for note in self.notes:
            print(f"note: {note}")


def format_cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None else str(value)


def format_table(table: Table) -> str:
    cells = [[format_cell(value) for value in row] for row in table.rows]
    widths = [
        max([len(column)] + [len(row[i]) for row in cells])
        for i, column in enumerate(table.columns)
    ]
    lines = [table.title, "  ".join(c.rjust(w) for c, w in zip(table.columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines) + "\n"


def kafka_version() -> str:
    """The broker version ``scripts/kafka-local`` runs (the broker every benchmark uses)."""
    script = REPO / "scripts" / "kafka-local"
    match = re.search(r'^KAFKA_VERSION = "([^"]+)"', script.read_text(encoding="utf-8"), re.M)
    return f"Apache Kafka {match.group(1) if match else 'unknown'} (single node, KRaft)"


def version_text(version: Any) -> str:
    """confluent-kafka's ``version()`` is a string in some releases, a (str, int) in others."""
    return str(version[0] if isinstance(version, tuple) else version)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kafka": kafka_version(),
        "confluent_kafka": version_text(confluent_kafka.version()),
        "librdkafka": version_text(confluent_kafka.libversion()),
        "platform": platform.platform(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def base_parser(description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--bootstrap-servers",
        "-b",
        default=os.environ.get("STREAMPROC_BOOTSTRAP_SERVERS"),
        help="Kafka bootstrap servers (default: $STREAMPROC_BOOTSTRAP_SERVERS).",
    )
    parser.add_argument(
        "--output-dir", type=Path, default=RESULTS_DIR, help="Where the JSON result goes."
    )
    parser.add_argument("--partitions", type=int, default=3, help="Partitions per lane topic.")
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if not args.bootstrap_servers:
        parser.error("--bootstrap-servers is required (or set STREAMPROC_BOOTSTRAP_SERVERS)")
    args.bootstrap_servers = parse_bootstrap(args.bootstrap_servers)
    return args


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- topics and workloads --------------------------------------------------------------------


@contextmanager
def fresh_lanes(bootstrap: str, benchmark: str, partitions: int) -> Iterator[Lanes]:
    """Create fresh lane topics for one run and delete them afterwards."""
    lanes = Lanes(f"bench-{benchmark}-{uuid.uuid4().hex[:8]}")
    topics = TopicAdmin(AdminClient({"bootstrap.servers": bootstrap}), lanes)
    topics.create(partitions=partitions)
    try:
        yield lanes
    finally:
        topics.delete()


@dataclass(frozen=True, slots=True)
class Workload:
    """Encoded chunks, keys and values, ready to produce."""

    keys: list[bytes]
    values: list[bytes]

    def __len__(self) -> int:
        return len(self.values)


_WORKLOADS: dict[tuple[int, bool], Workload] = {}


def workload(*, low_priority: bool, count: int = DISTINCT_CHUNKS, seed: int = 7) -> Workload:
    """``count`` distinct sample chunks of one lane, Avro-encoded (cached per process)."""
    cached = _WORKLOADS.get((count, low_priority))
    if cached is None:
        codec = ChunkCodec()
        ratio_ = 1.0 if low_priority else 0.0
        chunks = list(
            sample_chunks(
                count,
                low_priority_ratio=ratio_,
                seed=seed,
                prefix="bulk" if low_priority else "rt",
            )
        )
        cached = Workload([c.key.encode() for c in chunks], [codec.encode(c) for c in chunks])
        _WORKLOADS[(count, low_priority)] = cached
    return cached


def producer_config(bootstrap: str, *, linger_ms: float = 5.0) -> dict[str, Any]:
    """The product's producer configuration (idempotent, acks=all, lz4)."""
    return ProducerSettings(bootstrap_servers=bootstrap, linger_ms=linger_ms).to_librdkafka()


def preload(bootstrap: str, topic: str, load: Workload, count: int) -> float:
    """Produce ``count`` messages cycling through ``load``; returns the seconds it took."""
    producer = Producer(producer_config(bootstrap))
    started = time.perf_counter()
    keys, values = load.keys, load.values
    distinct = len(values)
    for index in range(count):
        while True:
            try:
                producer.produce(topic, values[index % distinct], keys[index % distinct])
                break
            except BufferError:
                producer.poll(QUEUE_FULL_POLL_S)
        if index % 1000 == 0:
            producer.poll(0)
    remaining = producer.flush(120)
    if remaining:
        raise SystemExit(f"preload of {topic}: {remaining} messages undelivered")
    return time.perf_counter() - started


# -- paced producer (a child process, so it never competes for the consumer's GIL) ------------


@dataclass(frozen=True, slots=True)
class Segment:
    """Produce at ``rate`` messages/s for ``seconds`` (rate 0: stay silent)."""

    seconds: float
    rate: float


def paced_produce(
    bootstrap: str,
    topic: str,
    load: Workload,
    segments: Sequence[Segment],
    start_at: float,
    report: MPQueue[Any],
    linger_ms: float = 1.0,
) -> None:
    """Produce on a schedule, stamping each message with its send time (ns) in a header.

    Waits until wall-clock ``start_at``, then runs the segments in order. Reports
    ``{"sent": n, "acked": [acked_at_s, ...]}`` (wall clock, in acknowledgement order) on
    ``report`` when done.
    """
    producer = Producer(producer_config(bootstrap, linger_ms=linger_ms))
    acked: list[float] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is None:
            acked.append(time.time())

    keys, values = load.keys, load.values
    sent = 0
    while time.time() < start_at:
        time.sleep(0.001)
    origin = time.perf_counter()
    segment_start = 0.0
    for segment in segments:
        segment_end = segment_start + segment.seconds
        if segment.rate <= 0:
            while time.perf_counter() - origin < segment_end:
                producer.poll(0.005)
        else:
            interval = 1.0 / segment.rate
            produced_here = 0
            while True:
                due = segment_start + produced_here * interval
                if due >= segment_end:
                    break
                wait = due - (time.perf_counter() - origin)
                if wait > 0.0005:
                    producer.poll(min(wait, 0.002))
                    continue
                index = sent % len(values)
                headers: list[tuple[str, str | bytes | None]] = [
                    (SENT_HEADER, str(time.time_ns()).encode())
                ]
                try:
                    producer.produce(
                        topic, values[index], keys[index], headers=headers, on_delivery=on_delivery
                    )
                except BufferError:
                    producer.poll(QUEUE_FULL_POLL_S)
                    continue
                producer.poll(0)
                sent += 1
                produced_here += 1
        segment_start = segment_end
    producer.flush(30)
    report.put({"sent": sent, "acked": acked})


class PacedProducer:
    """Runs :func:`paced_produce` in a child process (spawned: no inherited librdkafka state)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        load: Workload,
        segments: Sequence[Segment],
        *,
        linger_ms: float = 1.0,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._report: MPQueue[Any] = context.Queue()
        self.start_at = time.time() + 1.5  # the child needs about a second to import and connect
        self._process = context.Process(
            target=paced_produce,
            args=(bootstrap, topic, load, list(segments), self.start_at, self._report, linger_ms),
            daemon=True,
        )
        self._process.start()
        self.seconds = sum(segment.seconds for segment in segments)

    def result(self, timeout_s: float = 60.0) -> dict[str, Any]:
        outcome: dict[str, Any] = self._report.get(timeout=timeout_s)
        self._process.join(timeout_s)
        return outcome


# -- consumers ---------------------------------------------------------------------------------


def burn(seconds: float) -> None:
    """Spend ``seconds`` of CPU (a handler's fixed cost per chunk)."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass


class RecordingHandler:
    """A batch handler that burns a fixed CPU cost per chunk and records what it saw.

    Per lane it records the handling time of every chunk (wall clock, seconds); for chunks carrying
    the :data:`SENT_HEADER` it also records the end-to-end latency (handled minus sent).
    """

    def __init__(self, burn_s: float, *, stop_after: int | None = None) -> None:
        self.burn_s = burn_s
        self.handled_at: dict[str, list[float]] = {}
        self.latencies: list[tuple[float, float]] = []  # (handled at, latency s)
        self.stop_after = stop_after
        self.total = 0
        self.done = threading.Event()

    def handle_batch(self, records: Sequence[ChunkRecord]) -> None:
        burn_s = self.burn_s
        for record in records:
            if burn_s:
                burn(burn_s)
            now_ns = time.time_ns()
            ctx = record.context
            self.handled_at.setdefault(ctx.lane, []).append(now_ns / 1e9)
            for name, value in ctx.headers:
                if name == SENT_HEADER:
                    self.latencies.append((now_ns / 1e9, (now_ns - int(value)) / 1e9))
        self.total += len(records)
        if self.stop_after is not None and self.total >= self.stop_after:
            self.done.set()

    def count(self, lane: str, start: float, end: float) -> int:
        return sum(1 for t in self.handled_at.get(lane, ()) if start <= t < end)


def consumer_settings(
    bootstrap: str, lanes: Lanes, *, flow: bool = True, **overrides: Any
) -> ConsumerSettings:
    """The product's consumer settings for a benchmark run (flow control on or off)."""
    values: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "topic_prefix": lanes.prefix,
        "group_id": f"{lanes.prefix}-group",
        "client_id": "streamproc-bench",
    }
    values.update(overrides)
    if not flow:
        values["pause_lag"] = FLOW_OFF_PAUSE_LAG
        values["pause_delay_s"] = None
    return ConsumerSettings(**values)


class RunningConsumer:
    """A :class:`PriorityConsumer` running its loop in a thread; leaving ``with`` stops it."""

    def __init__(self, settings: ConsumerSettings, handler: AnyHandler) -> None:
        self.consumer = PriorityConsumer(settings, handler)
        self.exit_code: int | None = None
        self._thread = threading.Thread(target=self._run, name="bench-consumer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.exit_code = self.consumer.run(install_signal_handlers=False)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.consumer.ready()[0]:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise SystemExit("consumer did not get its partitions in time")
            time.sleep(0.05)

    def stop(self) -> None:
        self.consumer.stop()
        self._thread.join(60)

    def __enter__(self) -> RunningConsumer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def sample(self, name: str, labels: dict[str, str]) -> float:
        value = self.consumer.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


class FlowEvents(logging.Handler):
    """Timestamps the consumer's pause and resume log records (wall clock, seconds)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.pauses: list[float] = []
        self.resumes: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("pausing lane"):
            self.pauses.append(record.created)
        elif message.startswith("resuming lane"):
            self.resumes.append(record.created)

    @contextmanager
    def attached(self) -> Iterator[FlowEvents]:
        logger = logging.getLogger("streamproc.consumer")
        previous = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self)
        try:
            yield self
        finally:
            logger.removeHandler(self)
            logger.setLevel(previous)


def quiet_logs() -> None:
    """Only warnings and errors on stderr; the benchmarks print their own progress."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)  # FlowEvents lowers the consumer logger to INFO


def run_main(main: Callable[[Sequence[str] | None], int]) -> None:
    sys.exit(main(None))
