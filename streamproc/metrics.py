"""Prometheus metrics and the HTTP endpoint (``/metrics``, ``/healthz``, ``/readyz``).

Names carry the ``streamproc_`` prefix and base units; only counters end in ``_total``. Labels are
bounded: lane, topic, partition, outcome, reason, kind — never offsets or keys. Children for the
hot path are bound once per lane so a handled message costs a few attribute lookups.

The consumer group is not a label of every series: ``streamproc_consumer_info{consumer_group=...}``
carries it once per process, and queries join it on the scrape target
(``* on (job, instance) group_left (consumer_group) streamproc_consumer_info``), the way
Kubernetes metadata is joined from ``kube_pod_info``. The metrics reference is ``docs/metrics.md``.

The HTTP server runs on its own daemon thread, off the poll loop. Health and readiness come from
callables the consumer provides, so the server never touches the Kafka client.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.exposition import ThreadingWSGIServer

from streamproc import __version__
from streamproc.errors import DEAD_LETTER_REASONS, MetricsPortInUseError
from streamproc.kafkastats import Statistics, parse_statistics

if TYPE_CHECKING:
    from wsgiref.types import StartResponse

# End-to-end latency: 1 ms to 10 min, roughly x2.5 steps.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
HANDLER_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

log = logging.getLogger(__name__)

PRODUCE_OUTCOMES = ("delivered", "failed", "rejected")
# Lane label of a produce rejected before it had a lane (unparseable input).
UNKNOWN_LANE = "unknown"


def observe_many(histogram: Histogram, values: Iterable[float]) -> None:
    """``histogram.observe(value)`` for every value, one lock round per bucket touched.

    The loop and the workers record a whole batch at once: observing one by one takes two locks
    per value. The buckets and the count are exactly those of observing one by one (a NaN lands
    in no bucket but in the sum, as with ``observe``); the sum differs only by float rounding.
    """
    bounds = histogram._upper_bounds
    counts: dict[int, int] = {}
    total = 0.0
    # A batch's values often repeat (its chunks were taken, started or produced in the same
    # millisecond): the bucket of the previous value is reused.
    last = math.nan
    index = 0
    for value in values:
        total += value
        if value != last:
            if value != value:  # NaN: in no bucket
                continue
            index = bisect_left(bounds, value)
            last = value
        counts[index] = counts.get(index, 0) + 1
    if not counts and total == 0.0:
        return
    histogram._sum.inc(total)
    for index, count in counts.items():
        histogram._buckets[index].inc(count)


def register_runtime_collectors(registry: CollectorRegistry) -> None:
    """``process_*`` (CPU, memory, file descriptors), ``python_info`` and ``python_gc_*``: what
    every Python exporter has, on this registry rather than the global default one."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


class LaneMetrics:
    """Children of the per-lane metrics, bound once for the hot path."""

    def __init__(self, metrics: ConsumerMetrics, lane: str) -> None:
        self.handled_ok = metrics.handled.labels(lane=lane, outcome="ok")
        self.handled_retried = metrics.handled.labels(lane=lane, outcome="retried")
        self.handled_dead_lettered = metrics.handled.labels(lane=lane, outcome="dead_lettered")
        self.latency = metrics.latency.labels(lane=lane)
        self.handler_duration = metrics.handler_duration.labels(lane=lane)
        self.lag = metrics.lane_lag.labels(lane=lane)
        self.delay = metrics.delay.labels(lane=lane)
        self.paused = metrics.paused.labels(lane=lane)
        self.pauses = metrics.pauses.labels(lane=lane)
        self.resumes = metrics.resumes.labels(lane=lane)
        self.paused_seconds = metrics.paused_seconds.labels(lane=lane)
        self.assigned = metrics.assigned_partitions.labels(lane=lane)
        self.in_flight = metrics.in_flight.labels(lane=lane)
        self.queue_wait = metrics.queue_wait.labels(lane=lane)


class ConsumerMetrics:
    """Every metric the priority consumer exports.

    Args:
        lanes: Lane names, to pre-create children (so series exist at zero from the start).
        registry: Where to register; a private registry per consumer keeps tests independent.
    """

    def __init__(self, lanes: Iterable[str], registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        register_runtime_collectors(r)
        self.build_info = Info("streamproc_build", "streamproc build information.", registry=r)
        self.build_info.info({"version": __version__})
        self.consumer_info = Info(
            "streamproc_consumer",
            "The consumer group and topic prefix of this process (join on job and instance).",
            registry=r,
        )
        self.partition_lag = Gauge(
            "streamproc_lag_messages",
            "Messages behind the high watermark, per assigned partition.",
            ["lane", "topic", "partition"],
            registry=r,
        )
        self.lso_held = Gauge(
            "streamproc_lso_held_seconds",
            "How long an open transaction has held the partition's last stable offset (0 when"
            " none does; read_committed, partitions being fetched).",
            ["lane", "topic", "partition"],
            registry=r,
        )
        self.lane_lag = Gauge(
            "streamproc_lane_lag_messages",
            "Lag of a lane as the flow policy sees it (group-wide for the top lane in group scope)."
            " NaN while unknown.",
            ["lane"],
            registry=r,
        )
        self.delay = Gauge(
            "streamproc_lane_delay_seconds",
            "How far behind a lane is in time: 0 when drained, else the age of the last message"
            " handled. NaN while unknown.",
            ["lane"],
            registry=r,
        )
        self.paused = Gauge(
            "streamproc_lane_paused",
            "1 while the lane's partitions are paused.",
            ["lane"],
            registry=r,
        )
        self.pauses = Counter(
            "streamproc_lane_pauses", "Times the lane was paused.", ["lane"], registry=r
        )
        self.resumes = Counter(
            "streamproc_lane_resumes", "Times the lane was resumed.", ["lane"], registry=r
        )
        self.paused_seconds = Counter(
            "streamproc_lane_paused_seconds", "Seconds the lane spent paused.", ["lane"], registry=r
        )
        self.handled = Counter(
            "streamproc_messages_handled",
            "Messages finished, by lane and outcome (ok, retried then ok, dead_lettered).",
            ["lane", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "streamproc_end_to_end_latency_seconds",
            "From the message timestamp (produce time) to handled.",
            ["lane"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.handler_duration = Histogram(
            "streamproc_handler_duration_seconds",
            "Time spent in the handler per call (one chunk or one batch).",
            ["lane"],
            buckets=HANDLER_BUCKETS,
            registry=r,
        )
        self.dead_letters = Counter(
            "streamproc_dead_letters",
            "Messages parked in a dead-letter topic, by lane and reason.",
            ["lane", "reason"],
            registry=r,
        )
        self.rebalances = Counter(
            "streamproc_rebalances",
            "Rebalance callbacks by kind (assign, revoke, lost).",
            ["kind"],
            registry=r,
        )
        self.fetch_restarts = Counter(
            "streamproc_fetch_restarts",
            "Assigned partitions that were never fetched (librdkafka lost their committed offset"
            " lookup, as when the group coordinator moves), unassigned and assigned again, per"
            " lane.",
            ["lane"],
            registry=r,
        )
        self.commits = Counter(
            "streamproc_commits", "Offset commits by outcome (ok, failed).", ["outcome"], registry=r
        )
        self.assigned_partitions = Gauge(
            "streamproc_assigned_partitions", "Partitions assigned, per lane.", ["lane"], registry=r
        )
        self.in_flight = Gauge(
            "streamproc_in_flight_messages",
            "Messages taken but not finished (waiting for a worker or being handled), per lane.",
            ["lane"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "streamproc_queue_wait_seconds",
            "From taken off Kafka to handed to a worker slot.",
            ["lane"],
            buckets=HANDLER_BUCKETS,
            registry=r,
        )
        self.fetch_queue_messages = Gauge(
            "streamproc_fetch_queue_messages",
            "Messages prefetched by librdkafka and waiting in the lane consumer's local queue"
            " (librdkafka statistics).",
            ["lane"],
            registry=r,
        )
        self.fetch_queue_bytes = Gauge(
            "streamproc_fetch_queue_bytes",
            "Bytes prefetched and waiting in the lane consumer's local queue (librdkafka"
            " statistics).",
            ["lane"],
            registry=r,
        )
        self.broker_rtt_avg = Gauge(
            "streamproc_broker_rtt_avg_seconds",
            "Average request round-trip time from the lane consumer to a broker over the last"
            " statistics window (0 without requests).",
            ["lane", "broker"],
            registry=r,
        )
        self.broker_rtt_p99 = Gauge(
            "streamproc_broker_rtt_p99_seconds",
            "p99 request round-trip time from the lane consumer to a broker over the last"
            " statistics window (0 without requests).",
            ["lane", "broker"],
            registry=r,
        )
        self.serial = Gauge(
            "streamproc_serial",
            "1 while the worker pool runs one batch at a time (a handler that computes nearly"
            " all the time, measured faster so, or a trial of it; serial_cpu_share), 0 while"
            " batches run side by side.",
            registry=r,
        )
        self.ready = Gauge(
            "streamproc_ready", "1 when assigned and the broker is reachable.", registry=r
        )
        self.last_poll = Gauge(
            "streamproc_last_poll_timestamp_seconds",
            "Unix time of the poll loop's last tick.",
            registry=r,
        )
        self.lanes = {lane: LaneMetrics(self, lane) for lane in lanes}
        # Every series known in advance exists at 0 from the start, so increase() sees the
        # first dead letter or failed commit instead of a series appearing at 1.
        for lane in self.lanes:
            for reason in DEAD_LETTER_REASONS:
                self.dead_letters.labels(lane=lane, reason=reason)
        for outcome in ("ok", "failed"):
            self.commits.labels(outcome=outcome)
        for kind in ("assign", "revoke", "lost"):
            self.rebalances.labels(kind=kind)
        for lane in self.lanes:
            self.fetch_restarts.labels(lane=lane)
        self._partition_lag_keys: set[tuple[str, str, str]] = set()
        self._lso_held_keys: set[tuple[str, str, str]] = set()
        self._partition_lag_lock = threading.Lock()

    def describe(self, *, consumer_group: str, topic_prefix: str) -> None:
        """Publish ``streamproc_consumer_info``, the series dashboards and alerts join on."""
        self.consumer_info.info({"consumer_group": consumer_group, "topic_prefix": topic_prefix})

    def librdkafka_statistics(self, lane: str) -> Callable[[Statistics], None]:
        """A ``stats_cb`` for the lane's consumer: records its statistics as metrics.

        It runs inside the consumer's poll, so it never raises (a document it cannot read is
        logged and skipped).
        """

        def record(text: Statistics) -> None:
            try:
                statistics = parse_statistics(text)
            except (ValueError, TypeError, AttributeError) as exc:
                log.warning("unreadable librdkafka statistics of lane %s: %s", lane, exc)
                return
            self.fetch_queue_messages.labels(lane=lane).set(statistics.fetch_queue_messages)
            self.fetch_queue_bytes.labels(lane=lane).set(statistics.fetch_queue_bytes)
            for broker in statistics.brokers:
                self.broker_rtt_avg.labels(lane=lane, broker=broker.broker).set(broker.avg_s)
                self.broker_rtt_p99.labels(lane=lane, broker=broker.broker).set(broker.p99_s)

        return record

    def set_partition_lags(self, lags: Iterable[tuple[str, str, int, int | None]]) -> None:
        """Replace the per-partition lag series with ``(lane, topic, partition, lag)`` items.

        Partitions no longer listed (revoked) or with an unknown lag lose their series instead
        of keeping a stale value: a sum over partitions must only count what is measured now.
        """
        current: set[tuple[str, str, str]] = set()
        with self._partition_lag_lock:
            for lane, topic, partition, lag in lags:
                if lag is None:
                    continue
                key = (lane, topic, str(partition))
                self.partition_lag.labels(*key).set(lag)
                current.add(key)
            for key in self._partition_lag_keys - current:
                with contextlib.suppress(KeyError):  # already cleared on a reassignment
                    self.partition_lag.remove(*key)
            self._partition_lag_keys = current

    def set_lso_held(self, held: Iterable[tuple[str, str, int, float]]) -> None:
        """Replace the per-partition LSO hold series with ``(lane, topic, partition, seconds)``."""
        current: set[tuple[str, str, str]] = set()
        with self._partition_lag_lock:
            for lane, topic, partition, seconds in held:
                key = (lane, topic, str(partition))
                self.lso_held.labels(*key).set(seconds)
                current.add(key)
            for key in self._lso_held_keys - current:
                with contextlib.suppress(KeyError):
                    self.lso_held.remove(*key)
            self._lso_held_keys = current


class ProducerMetrics:
    """Counters of the producer side (``streamproc produce`` exposes them).

    Args:
        registry: Where to register (a private registry if omitted).
        lanes: Lane names, to pre-create every lane x outcome series at zero.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, lanes: Iterable[str] = ()
    ) -> None:
        self.registry = registry or CollectorRegistry()
        register_runtime_collectors(self.registry)
        self.build_info = Info(
            "streamproc_build", "streamproc build information.", registry=self.registry
        )
        self.build_info.info({"version": __version__})
        self.produced = Counter(
            "streamproc_produced_messages",
            "Chunks produced, by lane and outcome (delivered, failed, rejected).",
            ["lane", "outcome"],
            registry=self.registry,
        )
        for lane in lanes:
            for outcome in PRODUCE_OUTCOMES:
                self.produced.labels(lane=lane, outcome=outcome)
        self.resends = Counter(
            "streamproc_produce_resends",
            "Chunks acknowledged without an offset and sent once more, by lane (an ack librdkafka"
            " inferred, which a broker before Apache Kafka 4.5 can make wrong: KAFKA-15591).",
            ["lane"],
            registry=self.registry,
        )
        for lane in lanes:
            self.resends.labels(lane=lane)
        self.producer_info = Info(
            "streamproc_producer",
            "The topic prefix this process produces to (join on job and instance; dashboards"
            " match it with a consumer group's).",
            registry=self.registry,
        )

    def describe(self, *, topic_prefix: str) -> None:
        """Publish ``streamproc_producer_info{topic_prefix=...}``."""
        self.producer_info.info({"topic_prefix": topic_prefix})

    def delivered(self, lane: str, *, ok: bool) -> None:
        """Count one delivery report (from the producer's ``on_delivery`` callback)."""
        self.produced.labels(lane=lane, outcome="delivered" if ok else "failed").inc()

    def resent(self, lane: str) -> None:
        """Count one chunk sent once more (from the producer's ``on_resend`` callback)."""
        self.resends.labels(lane=lane).inc()

    def rejected(self, lane: str | None = None) -> None:
        """Count a chunk refused before sending (invalid or oversized); lane if it had one."""
        self.produced.labels(lane=lane or UNKNOWN_LANE, outcome="rejected").inc()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None  # scrapes every few seconds would flood the consumer's log


class MetricsServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` on a daemon thread.

    ``/metrics`` is prometheus_client's own WSGI app, so the exposition negotiates like every
    Python exporter: OpenMetrics when the scraper's ``Accept`` asks for it, gzip when its
    ``Accept-Encoding`` does, ``name[]`` filters. The server is prometheus_client's threading
    WSGI server; health and readiness are two small WSGI routes beside it.

    Args:
        registry: What ``/metrics`` exports.
        port: TCP port; 0 picks a free one (see :attr:`port`).
        host: Interface to bind.
        healthy: Returns (ok, detail) for ``/healthz``.
        ready: Returns (ok, detail) for ``/readyz``.

    Raises:
        MetricsPortInUseError: another process listens on ``port``.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        port: int,
        host: str = "0.0.0.0",  # noqa: S104  # a container's metrics port must be reachable
        healthy: Callable[[], tuple[bool, str]] | None = None,
        ready: Callable[[], tuple[bool, str]] | None = None,
    ) -> None:
        self._metrics_app = make_wsgi_app(registry)
        self._probes = {
            "/healthz": healthy or (lambda: (True, "ok")),
            "/readyz": ready or (lambda: (True, "ok")),
        }
        try:
            self._server = make_server(
                host, port, self._app, ThreadingWSGIServer, handler_class=_QuietHandler
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise MetricsPortInUseError(port) from exc
            raise
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="streamproc-metrics", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            body: Iterable[bytes] = self._metrics_app(environ, start_response)
            return body
        probe = self._probes.get(path)
        if probe is None:
            return _plain(start_response, "404 Not Found", "not found")
        ok, detail = probe()
        return _plain(start_response, "200 OK" if ok else "503 Service Unavailable", detail)


def _plain(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    body = (text + "\n").encode()
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    )
    return [body]
