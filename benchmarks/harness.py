"""Shared parts of the benchmarks: result files, tables, topics, workloads, consumers, producers.

Every benchmark writes ``benchmarks/results/<name>.json`` in one shape::

    {"benchmark": name, "date": ISO 8601, "machine": {"cpus", "python", "kafka", ...},
     "parameters": {...}, "tables": [{"title", "columns", "rows"}],
     "targets": [{"name", "value", "target", "met", "spread" (optional: [min, max])}],
     "notes": [str], "series": {...}}

``series`` holds optional raw data for plots (``benchmarks/report.py`` draws them). The broker is
a real one (``scripts/kafka-local start`` prints its address); every run works on fresh topics
named ``bench-<benchmark>-<random>`` and deletes them afterwards.
"""

from __future__ import annotations

import argparse
import bisect
import inspect
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
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.queues import Queue as MPQueue
from pathlib import Path
from typing import Any, Literal

import confluent_kafka
from confluent_kafka import Consumer, Producer, TopicPartition
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
    """A figure against its target; ``spread`` is (min, max) over repeats when there were any."""

    name: str
    value: float
    target: str
    met: bool
    spread: tuple[float, float] | None = None


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
                | ({"spread": list(t.spread)} if t.spread else {})
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
            span = f" [{target.spread[0]:.3g}-{target.spread[1]:.3g}]" if target.spread else ""
            print(f"target {target.name}: {target.value:.3g}{span} (want {target.target}) {mark}")
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


def spread(values: Sequence[float]) -> tuple[float, float] | None:
    """(min, max) of repeated measurements, None for fewer than two."""
    finite = [value for value in values if value == value]  # NaN != NaN
    return (min(finite), max(finite)) if len(finite) >= 2 else None


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
    seconds = time.perf_counter() - started
    # The broker's log writes sit in the page cache until the kernel writes them back, about
    # 30 s later (vm.dirty_expire_centisecs): in the middle of the first measured run, where
    # that write-back stalled the broker's appends and fetches for 100-500 ms. Write them back
    # now (the local broker shares this machine's disk).
    os.sync()
    return seconds


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
    ``{"sent": n, "sent_ns": [stamp, ...], "acked": [acked_at_s, ...]}`` (the header stamps of
    every message sent; wall clock of every acknowledgement, in order) on ``report`` when done.
    """
    producer = Producer(producer_config(bootstrap, linger_ms=linger_ms))
    acked: list[float] = []
    sent_ns: list[int] = []

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
                stamp = time.time_ns()
                headers: list[tuple[str, str | bytes | None]] = [(SENT_HEADER, str(stamp).encode())]
                try:
                    producer.produce(
                        topic, values[index], keys[index], headers=headers, on_delivery=on_delivery
                    )
                except BufferError:
                    producer.poll(QUEUE_FULL_POLL_S)
                    continue
                producer.poll(0)
                sent_ns.append(stamp)
                sent += 1
                produced_here += 1
        segment_start = segment_end
    producer.flush(30)
    report.put({"sent": sent, "sent_ns": sent_ns, "acked": acked})


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
    """A handler that spends a fixed cost per chunk and records what it saw.

    The cost is CPU (``burn_s``, a busy loop holding the GIL, as a parsing or embedding step in
    Python would) or I/O (``sleep_s``, ``time.sleep``, as a call to a remote service would).
    Use the object as a batch handler, or :meth:`handle` as a per-chunk handler (what runs on the
    worker pool when ``concurrency`` > 1). Thread-safe: workers call it concurrently.

    Per lane it records the end of the handling of every chunk (wall clock, seconds); for chunks
    carrying the :data:`SENT_HEADER` it also records the end-to-end latency (handled minus sent)
    and (sent, handling started) for the bulk-yield measurement (:func:`yield_times`).
    """

    def __init__(
        self, burn_s: float, *, stop_after: int | None = None, sleep_s: float = 0.0
    ) -> None:
        self.burn_s = burn_s
        self.sleep_s = sleep_s
        self.handled_at: dict[str, list[float]] = {}
        self.latencies: list[tuple[float, float]] = []  # (handled at, latency s)
        self.realtime_started: list[tuple[float, float]] = []  # (sent at, handling started at)
        self.sent_ns_handled: list[int] = []  # the sent stamps of the realtime chunks handled
        self.stop_after = stop_after
        self.total = 0
        self.done = threading.Event()
        self._lock = threading.Lock()

    def handle_batch(self, records: Sequence[ChunkRecord]) -> None:
        for record in records:
            self.handle(record)

    def handle(self, record: ChunkRecord) -> None:
        """Per-chunk entry point: spend the cost, then record."""
        self.handle_raw(record.context.lane, record.context.headers)

    def handle_raw(self, lane: str, headers: Sequence[tuple[str, Any]] | None) -> None:
        """The same work for a loop without a :class:`ChunkRecord` (the plain-consumer baseline)."""
        started = time.time()
        if self.burn_s:
            burn(self.burn_s)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        now_ns = time.time_ns()
        sent_ns = next((int(value) for name, value in headers or () if name == SENT_HEADER), None)
        with self._lock:
            self.handled_at.setdefault(lane, []).append(now_ns / 1e9)
            if sent_ns is not None:
                self.latencies.append((now_ns / 1e9, (now_ns - sent_ns) / 1e9))
                self.realtime_started.append((sent_ns / 1e9, started))
                self.sent_ns_handled.append(sent_ns)
            self.total += 1
            if self.stop_after is not None and self.total >= self.stop_after:
                self.done.set()

    def unhandled_sent(self, sent_ns: Sequence[int]) -> list[float]:
        """Send times (wall clock, s) of the chunks in ``sent_ns`` this handler never saw."""
        with self._lock:
            missing = Counter(sent_ns) - Counter(self.sent_ns_handled)
        return sorted(stamp / 1e9 for stamp in missing.elements())

    def count(self, lane: str, start: float, end: float) -> int:
        with self._lock:
            return sum(1 for t in self.handled_at.get(lane, ()) if start <= t < end)

    def yield_times(self, bulk_lane: str, measured_from: float) -> list[float]:
        """Per realtime chunk sent from ``measured_from``: how long bulk kept running after it.

        The end of the last bulk chunk handled before the realtime chunk's handling started, minus
        the realtime chunk's send time; 0 when no bulk chunk ended in between. It is the time
        realtime spent behind bulk work, measured from the send (so it includes the transit to
        the broker and the fetch, a millisecond or two here).
        """
        with self._lock:
            bulk_ends = sorted(self.handled_at.get(bulk_lane, ()))
            started = list(self.realtime_started)
        waits: list[float] = []
        for sent, start in started:
            if sent < measured_from:
                continue
            index = bisect.bisect_left(bulk_ends, start) - 1
            last_bulk = bulk_ends[index] if index >= 0 else float("-inf")
            waits.append(max(0.0, last_bulk - sent))
        return waits


def optional_settings(
    settings: ConsumerSettings, values: dict[str, Any]
) -> tuple[ConsumerSettings, list[str]]:
    """Apply settings only this consumer version knows; returns the names it does not know.

    Lets one benchmark script run against consumer versions with and without a setting (a new
    tuning knob), instead of failing validation on the older one.
    """
    known = {name: value for name, value in values.items() if name in type(settings).model_fields}
    unknown = sorted(set(values) - set(known))
    return (settings.model_copy(update=known) if known else settings), unknown


def position_group(
    bootstrap: str, group_id: str, offsets: dict[str, Literal["start", "end"]]
) -> None:
    """Commit a consumer group's offsets on every partition of the given topics before it starts.

    Lets many runs share one preloaded backlog: each run uses a fresh group that starts the bulk
    topic at its beginning and the realtime topic at its end (or the other way round).
    """
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group_id, "enable.auto.commit": False}
    )
    try:
        positions: list[TopicPartition] = []
        for topic, where in offsets.items():
            metadata = consumer.list_topics(topic, timeout=30).topics[topic]
            for partition in metadata.partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=30
                )
                positions.append(
                    TopicPartition(topic, partition, low if where == "start" else high)
                )
        consumer.commit(offsets=positions, asynchronous=False)
    finally:
        consumer.close()


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


def rate_after_warm_up(
    count: Callable[[float, float], int],
    warm_up_s: float,
    window_s: float,
    clock: Callable[[], float] = time.time,
) -> float:
    """Chunks a second over ``window_s``, from ``warm_up_s`` after the first chunk handled.

    ``count(start, end)`` counts the chunks handled in ``[start, end)`` on ``clock``.
    """
    while not count(0, float("inf")):
        time.sleep(0.01)
    start = clock() + warm_up_s
    time.sleep(warm_up_s + window_s)
    return count(start, start + window_s) / window_s


class RunningConsumer:
    """A :class:`PriorityConsumer` running its loop in a thread; leaving ``with`` stops it."""

    def __init__(self, settings: ConsumerSettings, handler: AnyHandler) -> None:
        self.consumer = PriorityConsumer(settings, handler)
        self.exit_code: int | None = None
        self._thread = threading.Thread(target=self._run, name="bench-consumer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Signal handlers can only be installed from the main thread: say so where the consumer
        # takes the parameter, call it plainly where it does not.
        if "install_signal_handlers" in inspect.signature(self.consumer.run).parameters:
            self.exit_code = self.consumer.run(install_signal_handlers=False)
        else:
            self.exit_code = self.consumer.run()

    def ready(self) -> bool:
        """The consumer's readiness (``/readyz``), or its ``streamproc_ready`` gauge."""
        check = getattr(self.consumer, "ready", None)
        if callable(check):
            return bool(check()[0])
        return self.sample("streamproc_ready", {}) >= 1

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
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


class PlainConsumer:
    """A plain confluent-kafka consume loop in a thread: the baseline without streamproc.

    One ``Consumer`` with librdkafka's defaults (what a user writes without streamproc),
    subscribed to ``topics``, decoding every value with the product's codec (read + validation,
    the same decode work streamproc does) and handing it to ``handler.handle_raw``, one chunk at a
    time. Offsets are auto-stored and auto-committed (librdkafka's defaults).
    """

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        lanes_of_topics: dict[str, str],
        handler: RecordingHandler,
        *,
        batch: int = 500,
    ) -> None:
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group_id, "auto.offset.reset": "earliest"}
        )
        self._lanes = lanes_of_topics
        self._handler = handler
        self._batch = batch
        self._codec = ChunkCodec()
        self._stopping = threading.Event()
        self.assigned = threading.Event()
        self._consumer.subscribe(list(lanes_of_topics), on_assign=self._on_assign)
        self._thread = threading.Thread(target=self._run, name="bench-plain", daemon=True)
        self._thread.start()

    def _on_assign(self, _consumer: Any, _partitions: Any) -> None:
        self.assigned.set()

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                for message in self._consumer.consume(self._batch, 0.1):
                    if message.error() is not None:
                        continue
                    self._codec.decode(message.value() or b"")
                    headers = message.headers()
                    pairs = list(headers.items()) if isinstance(headers, dict) else headers
                    self._handler.handle_raw(self._lanes[message.topic() or ""], pairs)
        finally:
            self._consumer.close()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        if not self.assigned.wait(timeout_s):
            raise SystemExit("plain consumer did not get its partitions in time")

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(60)

    def __enter__(self) -> PlainConsumer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


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
