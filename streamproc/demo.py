"""``streamproc demo``: the whole job end to end on a real broker, with a live lag view.

1. Create fresh lane topics (a unique prefix per run).
2. Start a :class:`~streamproc.consumer.PriorityConsumer` with a sink (SQLite by default, any
   built-in sink URI such as ``postgresql://...``) on its own thread.
3. Produce a bulk backlog (low-priority chunks), then a steady realtime stream with periodic
   bursts over the pause threshold: each burst makes the consumer pause bulk until realtime is
   drained, then bulk resumes.
4. Show per lane: lag, paused or running, handled/s, realtime p50/p99 latency, live.
5. When everything produced has been handled, stop the consumer cleanly and print a summary
   showing realtime latency stayed low while bulk drained.
"""

from __future__ import annotations

import sqlite3
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka.admin import AdminClient
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from streamproc.consumer import PriorityConsumer
from streamproc.errors import ConfigError
from streamproc.handlers import BatchHandler, ChunkRecord, SqliteSink, open_sink
from streamproc.producer import ChunkProducer
from streamproc.samples import sample_chunks
from streamproc.settings import ConsumerSettings, KafkaSettings, ProducerSettings
from streamproc.topics import TopicAdmin


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """What the demo runs. Defaults finish in about a minute on two cores."""

    bootstrap_servers: str
    bulk_count: int = 100_000
    realtime_rate: float = 200.0
    realtime_seconds: float = 30.0
    burst_every_s: float = 6.0
    burst_size: int = 3_000
    partitions: int = 3
    pause_lag: int = 1_000
    sqlite_path: Path = Path(".streamproc/demo.sqlite")
    # A built-in sink URI (sqlite:PATH, postgresql://..., jsonl:PATH, null); None: sqlite_path.
    sink: str | None = None
    timeout_s: float = 170.0


@dataclass(slots=True)
class LatencyRecorder:
    """Wraps the sink: records end-to-end latency of every handled chunk, per lane."""

    sink: BatchHandler
    latencies_s: dict[str, list[float]] = field(default_factory=dict)
    first_handled: dict[str, float] = field(default_factory=dict)
    last_handled: dict[str, float] = field(default_factory=dict)

    def handle_batch(self, records: Sequence[ChunkRecord]) -> None:
        self.sink.handle_batch(records)
        now = time.time()
        for record in records:
            lane = record.context.lane
            self.latencies_s.setdefault(lane, []).append(now - record.context.timestamp_ms / 1000)
        if records:
            lane = records[0].context.lane
            self.first_handled.setdefault(lane, now)
            self.last_handled[lane] = now


@dataclass(slots=True)
class DemoResult:
    produced: dict[str, int]
    handled: dict[str, int]
    latencies_s: dict[str, list[float]]
    bulk_drain_s: float
    pauses: int
    paused_s: float
    sink_rows: int | None  # None for sinks that cannot be counted (jsonl, null)
    sink_name: str
    complete: bool


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest-rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


class Demo:
    """One demo run. :meth:`run` blocks until done and returns the result."""

    def __init__(self, config: DemoConfig, console: Console) -> None:
        self.config = config
        self.console = console
        self.prefix = f"demo-{uuid.uuid4().hex[:8]}"
        self.phase = "starting"
        self.produced = {"realtime": 0, "bulk": 0}
        self.producer_done = threading.Event()
        self.producer_error: BaseException | None = None
        self._rates: dict[str, tuple[int, float, float]] = {}

    def run(self) -> DemoResult:
        config = self.config
        kafka = KafkaSettings(bootstrap_servers=config.bootstrap_servers, topic_prefix=self.prefix)
        TopicAdmin(AdminClient(kafka.admin_config()), kafka.topology).create(
            partitions=config.partitions
        )
        sink, count_sink_rows = self._open_sink()
        recorder = LatencyRecorder(sink)
        consumer = PriorityConsumer(
            ConsumerSettings(
                bootstrap_servers=config.bootstrap_servers,
                topic_prefix=self.prefix,
                group_id=f"{self.prefix}-group",
                pause_lag=config.pause_lag,
            ),
            recorder,
        )
        consumer_thread = threading.Thread(
            target=consumer.run, kwargs={"install_signal_handlers": False}, name="consumer"
        )
        consumer_thread.start()
        producer_thread = threading.Thread(target=self._produce, name="producer", daemon=True)
        started = time.monotonic()
        producer_thread.start()
        try:
            with Live(
                self._view(consumer, started), console=self.console, refresh_per_second=4
            ) as live:
                while time.monotonic() - started < config.timeout_s:
                    live.update(self._view(consumer, started))
                    if self.producer_done.is_set() and self._drained(consumer):
                        break
                    time.sleep(0.25)
                live.update(self._view(consumer, started))
        finally:
            consumer.stop()
            consumer_thread.join()
            producer_thread.join(timeout=10)
        try:
            rows = count_sink_rows()
        finally:
            close = getattr(sink, "close", None)
            if callable(close):
                close()
        if self.producer_error is not None:
            raise self.producer_error
        handled = {name: stats.handled for name, stats in consumer.stats.lanes.items()}
        bulk_first = recorder.first_handled.get("bulk", started)
        bulk_last = recorder.last_handled.get("bulk", bulk_first)
        pauses = int(consumer.metrics.lanes["bulk"].pauses._value.get())
        paused_s = float(consumer.metrics.lanes["bulk"].paused_seconds._value.get())
        return DemoResult(
            produced=dict(self.produced),
            handled=handled,
            latencies_s=recorder.latencies_s,
            bulk_drain_s=bulk_last - bulk_first,
            pauses=pauses,
            paused_s=paused_s,
            sink_rows=rows,
            sink_name=(config.sink or "sqlite").partition(":")[0],
            complete=all(handled[lane] >= self.produced[lane] for lane in self.produced),
        )

    def _open_sink(self) -> tuple[BatchHandler, Callable[[], int | None]]:
        """The demo's sink and how to count its rows for this run.

        SQLite starts from an empty file; a PostgreSQL table is kept, and only the rows last
        written from this run's topics are counted.
        """
        uri = self.config.sink
        path = self.config.sqlite_path
        if uri is not None and uri.startswith("sqlite:"):
            path = Path(uri.removeprefix("sqlite:"))
        elif uri is not None:
            sink = open_sink(uri)
            if not isinstance(sink, BatchHandler):
                raise ConfigError(f"demo sink {uri!r} is not a batch sink")
            count = getattr(sink, "count", None)
            prefix = self.prefix
            return sink, (lambda: int(count(prefix))) if callable(count) else (lambda: None)
        path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return SqliteSink(str(path)), lambda: count_rows(path)

    def _drained(self, consumer: PriorityConsumer) -> bool:
        return all(
            consumer.stats.lanes[lane].handled >= count for lane, count in self.produced.items()
        )

    def _produce(self) -> None:
        config = self.config
        try:
            producer = ChunkProducer(
                ProducerSettings(
                    bootstrap_servers=config.bootstrap_servers, topic_prefix=self.prefix
                )
            )
            self.phase = f"producing a bulk backlog of {config.bulk_count:,} chunks"
            for chunk in sample_chunks(
                config.bulk_count, low_priority_ratio=1.0, prefix="bulk", seed=1
            ):
                producer.produce(chunk)
                self.produced["bulk"] += 1
            producer.flush()
            self.phase = (
                f"realtime stream: {config.realtime_rate:.0f}/s with bursts of "
                f"{config.burst_size:,} every {config.burst_every_s:.0f}s"
            )
            realtime = sample_chunks(10_000_000, prefix="live", seed=2)
            start = time.monotonic()
            next_burst = start + 2.0
            steady_sent = 0
            while (elapsed := time.monotonic() - start) < config.realtime_seconds:
                due = int(elapsed * config.realtime_rate) - steady_sent
                steady_sent += due
                if time.monotonic() >= next_burst:
                    due += config.burst_size
                    next_burst += config.burst_every_s
                for _ in range(due):
                    producer.produce(next(realtime))
                    self.produced["realtime"] += 1
                producer.poll(0.005)
            producer.flush()
            self.phase = "draining"
        except BaseException as exc:  # noqa: BLE001  # re-raised on the main thread
            self.producer_error = exc
        finally:
            self.producer_done.set()

    def _view(self, consumer: PriorityConsumer, started: float) -> Group:
        table = Table("lane", "lag", "state", "produced", "handled", "handled/s", "p50", "p99")
        snapshot = consumer.stats.last_snapshot
        now = time.monotonic()
        for lane in consumer.lanes:
            stats = consumer.stats.lanes[lane.name]
            lag = snapshot.lanes[lane.name].lag_messages if snapshot else None
            rate = self._rate(lane.name, stats.handled, now)
            window = list(stats.latencies_s)[-500:]
            paused = lane.name in consumer.paused_lanes
            table.add_row(
                lane.name,
                "?" if lag is None else f"{lag:,}",
                Text("PAUSED", style="bold yellow") if paused else Text("running", style="green"),
                f"{self.produced[lane.name]:,}",
                f"{stats.handled:,}",
                f"{rate:,.0f}",
                _ms(percentile(window, 0.5)),
                _ms(percentile(window, 0.99)),
            )
        header = Text(f"{now - started:5.1f}s  {self.phase}", style="bold")
        return Group(header, table)

    def _rate(self, lane: str, handled: int, now: float) -> float:
        """Handled per second over the last second or so (recomputed once a second)."""
        previous = self._rates.get(lane)
        if previous is None or now - previous[1] >= 1.0:
            rate = 0.0 if previous is None else (handled - previous[0]) / (now - previous[1])
            self._rates[lane] = (handled, now, rate)
            return rate
        return previous[2]


def count_rows(path: Path) -> int:
    """Rows in the SQLite sink's table."""
    with closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT count(*) FROM chunks").fetchone()[0])


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def summary_table(result: DemoResult) -> Table:
    """The closing summary: per lane counts and latency, flow-control figures."""
    table = Table("lane", "produced", "handled", "p50", "p95", "p99", "max", title="demo summary")
    for lane in ("realtime", "bulk"):
        values = result.latencies_s.get(lane, [])
        table.add_row(
            lane,
            f"{result.produced.get(lane, 0):,}",
            f"{result.handled.get(lane, 0):,}",
            _ms(percentile(values, 0.5)),
            _ms(percentile(values, 0.95)),
            _ms(percentile(values, 0.99)),
            _ms(max(values, default=0.0)),
        )
    return table


def summary_lines(result: DemoResult) -> list[str]:
    realtime = result.latencies_s.get("realtime", [])
    bulk_rate = result.handled.get("bulk", 0) / result.bulk_drain_s if result.bulk_drain_s else 0.0
    return [
        f"realtime p99 {_ms(percentile(realtime, 0.99))} "
        f"(median {_ms(statistics.median(realtime) if realtime else 0.0)}) "
        f"while bulk drained {result.handled.get('bulk', 0):,} chunks "
        f"in {result.bulk_drain_s:.1f}s ({bulk_rate:,.0f}/s)",
        f"bulk paused {result.pauses} times, {result.paused_s:.1f}s in all; "
        f"{result.sink_name} sink holds "
        + ("(not countable)" if result.sink_rows is None else f"{result.sink_rows:,} chunks"),
        "complete: every produced chunk was handled"
        if result.complete
        else "INCOMPLETE: not every produced chunk was handled before the timeout",
    ]
