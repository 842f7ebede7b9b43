"""Observability end to end: a real consumer on the real broker, scraped by a real Prometheus.

* A realtime-plus-bulk run is scraped every second; then every PromQL query of the Grafana
  dashboard must return data and every alert expression must evaluate. A realtime burst driven
  through a slow handler makes the realtime-lag and starvation alerts fire (the shipped rules,
  with `for:` and the lag threshold scaled down to seconds and tens of messages).
* ``promtool check metrics`` finds nothing to say about a live scrape.
* ``/healthz`` fails while a handler stalls the loop; ``/readyz`` fails while the broker (a
  separate one, never the session's) is stopped and recovers after its restart.
* ``streamproc consume`` and ``streamproc produce`` serve their metrics on ``--metrics-port``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

from streamproc.chunk import Chunk
from streamproc.consumer import PriorityConsumer
from streamproc.handlers import AnyHandler, ChunkRecord
from streamproc.metrics import MetricsServer, ProducerMetrics
from streamproc.producer import ChunkProducer
from streamproc.settings import ConsumerSettings, KafkaSettings, ProducerSettings
from streamproc.topics import TopicAdmin

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_LOCAL = REPO / "scripts" / "prometheus-local"
KAFKA_LOCAL = REPO / "scripts" / "kafka-local"
DASHBOARD = REPO / "helm" / "streamproc" / "files" / "grafana-dashboard.json"
RULES = REPO / "helm" / "streamproc" / "files" / "prometheus-rules.yaml"
NAMESPACE = "streamproc-test"
# What Grafana would substitute for $__rate_interval at a 1 s scrape interval, with margin.
RATE_INTERVAL = "1m"
# The shipped rules, scaled from minutes to seconds for the scenario.
TEST_FOR = "2s"
TEST_REALTIME_LAG_THRESHOLD = 100
PAUSE_LAG = 50


def require_binary(name: str) -> str:
    """Path of ``name``; skipped when absent outside CI, an error in CI (.ci/run installs it)."""
    path = shutil.which(name)
    if path:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} not found in CI: .ci/run installs the Debian package prometheus")
    pytest.skip(f"{name} not installed (apt-get install prometheus); CI runs this test")


# -- helpers ------------------------------------------------------------------------------------


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310  # loopback
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def wait_for(
    condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.25
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    """A real Prometheus server started by scripts/prometheus-local, and its HTTP API."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.url = ""

    def _run(self, *args: str) -> str:
        env = {**os.environ, "STREAMPROC_PROMETHEUS_HOME": str(self.home)}
        result = subprocess.run(
            [sys.executable, str(PROMETHEUS_LOCAL), *args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if result.returncode != 0:
            raise RuntimeError(f"prometheus-local {args[0]} failed:\n{result.stderr}")
        return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""

    def start(self, targets: Sequence[str], labels: dict[str, str], rules: Sequence[Path]) -> None:
        args = ["start", "--scrape-interval", "1s"]
        for target in targets:
            args += ["--target", target]
        for name, value in labels.items():
            args += ["--label", f"{name}={value}"]
        for path in rules:
            args += ["--rules", str(path)]
        self.url = self._run(*args)

    def stop(self) -> None:
        self._run("stop")

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        status, body = http_get(f"{self.url}/api/v1/{path}?{query}")
        document = json.loads(body)
        if status != 200 or document.get("status") != "success":
            raise AssertionError(f"{path} {params}: HTTP {status}: {body[:500]}")
        return document["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", expr
        result: list[dict[str, Any]] = data["result"]
        return result

    def firing(self) -> set[str]:
        return {
            alert["labels"]["alertname"]
            for alert in self.api("alerts")["alerts"]
            if alert["state"] == "firing"
        }


def create_topics(bootstrap: str, prefix: str, partitions: int = 2) -> None:
    settings = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix)
    TopicAdmin(AdminClient(settings.admin_config()), settings.topology).create(
        partitions=partitions
    )


def produce(producer: ChunkProducer, count: int, *, low_priority: bool, tag: str = "c") -> None:
    for index in range(count):
        producer.produce(
            Chunk(
                chunk_html=f"<p>{tag} {index}</p>",
                tracking_id=f"{tag}-{index}",
                low_priority=low_priority,
            )
        )
    producer.flush()


@dataclass
class ScenarioHandler:
    """Costs ``realtime_cost_s`` per realtime chunk (a slow sink); bulk is free."""

    realtime_cost_s: float = 0.0
    handled: dict[str, int] = field(default_factory=lambda: {"realtime": 0, "bulk": 0})

    def handle_batch(self, records: Sequence[ChunkRecord]) -> None:
        for record in records:
            if record.context.lane == "realtime" and self.realtime_cost_s:
                time.sleep(self.realtime_cost_s)
            self.handled[record.context.lane] += 1


class RunningConsumer:
    """A PriorityConsumer on its own thread with its metrics endpoint on a free loopback port."""

    def __init__(self, settings: ConsumerSettings, handler: AnyHandler) -> None:
        self.consumer = PriorityConsumer(settings, handler)
        self.server = MetricsServer(
            self.consumer.metrics.registry,
            port=0,
            host="127.0.0.1",
            healthy=self.consumer.healthy,
            ready=self.consumer.ready,
        ).start()
        self.address = f"127.0.0.1:{self.server.port}"
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self._run, name="consumer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.exit_code = self.consumer.run(install_signal_handlers=False)

    def get(self, path: str) -> tuple[int, str]:
        return http_get(f"http://{self.address}{path}")

    def stop(self) -> None:
        self.consumer.stop()
        self.thread.join(timeout=60)
        self.server.stop()
        assert not self.thread.is_alive(), "consumer did not shut down"
        assert self.exit_code == 0


# -- the dashboard and the rules, as Prometheus will see them ---------------------------------


def dashboard_queries(consumer_group: str) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every dashboard query, variables substituted as Grafana would."""
    dashboard = json.loads(DASHBOARD.read_text())
    values = {
        "namespace": NAMESPACE,
        "consumer_group": consumer_group,
        "__rate_interval": RATE_INTERVAL,
    }
    queries = []
    panels = [p for top in dashboard["panels"] for p in (top, *top.get("panels", []))]
    for panel in panels:
        for target in panel.get("targets", []):
            expr = re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], target["expr"])
            queries.append((panel["title"], expr))
    return queries


def shipped_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def render_fast_rules(path: Path) -> dict[str, str]:
    """Write the shipped rules with `for:` in seconds and a small lag threshold; return exprs.

    The expressions are the shipped ones except the realtime-lag threshold number; this is
    checked here, so the alerts that fire in the scenario are the alerts operators get.
    """
    document = yaml.safe_load(RULES.read_text())
    exprs = {}
    for group in document["groups"]:
        for rule in group["rules"]:
            rule["for"] = TEST_FOR
            shipped = rule["expr"]
            if rule["alert"] == "StreamprocRealtimeLagHigh":
                rule["expr"] = re.sub(r"> 1000\s*$", f"> {TEST_REALTIME_LAG_THRESHOLD}\n", shipped)
                assert rule["expr"] != shipped, "the realtime-lag threshold moved: update the test"
                assert rule["expr"].replace(str(TEST_REALTIME_LAG_THRESHOLD), "1000") == shipped
            else:
                assert rule["expr"] == shipped
            exprs[rule["alert"]] = rule["expr"]
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return exprs


# -- the observed run ---------------------------------------------------------------------------


@dataclass
class ObservedRun:
    prometheus: Prometheus
    consumer: RunningConsumer
    consumer_group: str
    fired: set[str]
    scrape: str


@pytest.fixture(scope="module")
def observed_run(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ObservedRun]:
    """A realtime-plus-bulk run on the real broker, scraped by a real Prometheus every second.

    1. Bulk backlog, a realtime trickle and a few undecodable messages in each lane.
    2. A realtime burst through a slow handler: realtime lag climbs past the (scaled) threshold
       and flow control holds bulk paused; wait until both alerts fire.
    3. Make the handler fast again: realtime drains, bulk resumes.
    """
    require_binary("prometheus")
    tmp = tmp_path_factory.mktemp("observability")
    prefix = f"obs{os.urandom(4).hex()}"
    group = f"{prefix}-group"
    create_topics(kafka_bootstrap, prefix)
    handler = ScenarioHandler()
    consumer = RunningConsumer(
        ConsumerSettings(
            bootstrap_servers=kafka_bootstrap,
            topic_prefix=prefix,
            group_id=group,
            pause_lag=PAUSE_LAG,
            resume_lag=0,
            poll_timeout_s=0.05,
            max_batch_messages=100,
            watermark_refresh_s=1.0,
        ),
        handler,
    )
    rules = tmp / "rules.yaml"
    render_fast_rules(rules)
    prometheus = Prometheus(tmp / "prometheus")
    prometheus.start([consumer.address], {"namespace": NAMESPACE, "pod": f"{prefix}-0"}, [rules])
    producer = ChunkProducer(
        ProducerSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix, linger_ms=1)
    )
    fired: set[str] = set()
    try:
        wait_for(lambda: consumer.get("/readyz")[0] == 200, 60, "the consumer to be ready")
        # 1. Everyday traffic, and some garbage for the dead-letter panels.
        produce(producer, 2000, low_priority=True, tag="bulk")
        produce(producer, 30, low_priority=False, tag="rt")
        for lane in producer.lanes:
            for index in range(3):
                producer.produce_encoded(lane, f"bad-{index}".encode(), b"not avro")
        producer.flush()
        wait_for(lambda: handler.handled["bulk"] >= 2000, 60, "the bulk backlog")
        time.sleep(3)  # a few scrapes of steady state, so rates have two points
        # 2. The burst: ~100 realtime chunks/s handled against 1500 queued, more bulk waiting.
        handler.realtime_cost_s = 0.01
        produce(producer, 1500, low_priority=False, tag="burst")
        produce(producer, 500, low_priority=True, tag="bulk2")
        wanted = {"StreamprocRealtimeLagHigh", "StreamprocLaneStarved"}
        deadline = time.monotonic() + 40
        while not wanted <= fired and time.monotonic() < deadline:
            fired |= prometheus.firing()
            time.sleep(0.5)
        # 3. Recovery.
        handler.realtime_cost_s = 0.0
        wait_for(lambda: handler.handled["bulk"] >= 2500, 60, "bulk to resume and finish")
        time.sleep(2)
        _, scrape = consumer.get("/metrics")
        yield ObservedRun(prometheus, consumer, group, fired, scrape)
    finally:
        prometheus.stop()
        consumer.stop()


@pytest.mark.slow
def test_realtime_lag_and_starvation_alerts_fire(observed_run: ObservedRun) -> None:
    assert {"StreamprocRealtimeLagHigh", "StreamprocLaneStarved"} <= observed_run.fired


@pytest.mark.slow
def test_every_dashboard_query_returns_data(observed_run: ObservedRun) -> None:
    empty = [
        f"{title}: {expr}"
        for title, expr in dashboard_queries(observed_run.consumer_group)
        if not observed_run.prometheus.query(expr)
    ]
    assert empty == []


@pytest.mark.slow
def test_dashboard_variables_find_the_namespace_and_group(observed_run: ObservedRun) -> None:
    prometheus = observed_run.prometheus
    namespaces = prometheus.api("label/namespace/values", **{"match[]": "streamproc_consumer_info"})
    assert NAMESPACE in namespaces
    groups = prometheus.api(
        "label/consumer_group/values",
        **{"match[]": f'streamproc_consumer_info{{namespace=~"{NAMESPACE}"}}'},
    )
    assert observed_run.consumer_group in groups


@pytest.mark.slow
def test_every_alert_expression_evaluates(observed_run: ObservedRun) -> None:
    rules = shipped_rules()
    assert len(rules) == 7
    for rule in rules:
        observed_run.prometheus.query(rule["expr"])  # raises on a query error


@pytest.mark.slow
def test_live_scrape_passes_promtool_check_metrics(observed_run: ObservedRun) -> None:
    promtool = require_binary("promtool")
    # Every family of the consumer is present by now, dead letters and partition lag included.
    for name in ("streamproc_dead_letters_total", "streamproc_lag_messages{", "consumer_info{"):
        assert name in observed_run.scrape
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=observed_run.scrape,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


# -- health and readiness -----------------------------------------------------------------------


@dataclass
class StallingHandler:
    """Blocks on the chunk whose tracking id is ``stall`` until released (or 10 s)."""

    stalled: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def __call__(self, record: ChunkRecord) -> None:
        if record.chunk.tracking_id == "stall":
            self.stalled.set()
            self.release.wait(10)


def test_healthz_fails_while_a_handler_is_wedged(kafka_bootstrap: str, topic_prefix: str) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=1)
    handler = StallingHandler()
    running = RunningConsumer(
        ConsumerSettings(
            bootstrap_servers=kafka_bootstrap,
            topic_prefix=topic_prefix,
            group_id=f"{topic_prefix}-group",
            poll_timeout_s=0.05,
            health_max_tick_age_s=1.0,
        ),
        handler,
    )
    try:
        wait_for(lambda: running.get("/readyz")[0] == 200, 60, "the consumer to be ready")
        assert running.get("/healthz")[0] == 200
        with ChunkProducer(
            ProducerSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix)
        ) as producer:
            producer.produce(Chunk(chunk_html="<p>slow</p>", tracking_id="stall"))
        assert handler.stalled.wait(30), "the stalling chunk never reached the handler"
        wait_for(lambda: running.get("/healthz")[0] == 503, 5, "/healthz to fail")
        status, body = running.get("/healthz")
        # The loop itself goes on (handlers run on workers): what stalls is the chunk in hand.
        assert status == 503 and "none finished" in body
        handler.release.set()
        wait_for(lambda: running.get("/healthz")[0] == 200, 5, "/healthz to recover")
    finally:
        handler.release.set()
        running.stop()


def kafka_local(home: Path, command: str, *extra: str) -> str:
    env = {**os.environ, "STREAMPROC_KAFKA_HOME": str(home)}
    result = subprocess.run(
        [sys.executable, str(KAFKA_LOCAL), command, *extra],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kafka-local {command} failed:\n{result.stderr}")
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""


def warm_group_coordinator(bootstrap: str, group: str, topic: str) -> None:
    """Join ``group`` once so a fresh broker has loaded its group coordinator.

    librdkafka can crash (confluentinc/librdkafka#5040) when an AdminClient's
    ListConsumerGroupOffsets gets NOT_COORDINATOR, which a just-formatted broker answers while
    it creates __consumer_offsets; the consumer's group-lag measurement makes that call.
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(0.2)
    finally:
        consumer.close()


@pytest.mark.slow
@pytest.mark.fault
def test_readyz_follows_the_broker(tmp_path: Path, topic_prefix: str) -> None:
    """Stop a broker of this test's own: /readyz goes 503, and 200 again after the restart."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("needs scripts/kafka-local to stop and restart a broker of its own")
    home = tmp_path / "kafka"
    bootstrap = kafka_local(home, "start")
    running: RunningConsumer | None = None
    try:
        create_topics(bootstrap, topic_prefix, partitions=1)
        warm_group_coordinator(bootstrap, f"{topic_prefix}-group", f"{topic_prefix}.realtime")
        running = RunningConsumer(
            ConsumerSettings(
                bootstrap_servers=bootstrap,
                topic_prefix=topic_prefix,
                group_id=f"{topic_prefix}-group",
                poll_timeout_s=0.05,
                watermark_refresh_s=1.0,
            ),
            lambda record: None,
        )
        current = running
        wait_for(lambda: current.get("/readyz")[0] == 200, 60, "the consumer to be ready")
        kafka_local(home, "stop")
        wait_for(lambda: current.get("/readyz")[0] == 503, 30, "/readyz to fail")
        status, body = current.get("/readyz")
        assert status == 503 and "broker" in body
        assert current.get("/healthz")[0] == 200, "a broker outage is not a reason to restart"
        kafka_local(home, "start", "--keep-data")  # same port, same data: the same cluster
        wait_for(lambda: current.get("/readyz")[0] == 200, 60, "/readyz to recover")
    finally:
        if running is not None:
            running.consumer.stop()
            running.thread.join(timeout=60)
            running.server.stop()
        kafka_local(home, "stop")


# -- the CLI --------------------------------------------------------------------------------------


def test_consume_command_serves_metrics_and_health(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=1)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamproc", "consume", "--sink", "null"],
        env={
            **os.environ,
            "STREAMPROC_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "STREAMPROC_TOPIC_PREFIX": topic_prefix,
            "STREAMPROC_GROUP_ID": f"{topic_prefix}-group",
            "STREAMPROC_METRICS_PORT": str(port),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _status(f"{base}/readyz") == 200, 60, "streamproc consume to be ready")
        assert _status(f"{base}/healthz") == 200
        status, text = http_get(f"{base}/metrics")
        assert status == 200
        assert f'consumer_group="{topic_prefix}-group"' in text
        assert "streamproc_ready 1.0" in text
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr.decode()


def _status(url: str) -> int:
    try:
        return http_get(url, timeout=1)[0]
    except (urllib.error.URLError, OSError):
        return 0


def test_produce_command_serves_its_counters(kafka_bootstrap: str, topic_prefix: str) -> None:
    """The endpoint is up (every lane x outcome at zero) while the command waits for input."""
    create_topics(kafka_bootstrap, topic_prefix, partitions=1)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamproc", "produce", "-", "--no-progress"],
        env={
            **os.environ,
            "STREAMPROC_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "STREAMPROC_TOPIC_PREFIX": topic_prefix,
            "STREAMPROC_METRICS_PORT": str(port),
        },
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _status(f"{base}/metrics") == 200, 30, "the produce metrics endpoint")
        scrape = http_get(f"{base}/metrics")[1]
        for lane in ("realtime", "bulk"):
            for outcome in ("delivered", "failed", "rejected"):
                series = f'streamproc_produced_messages_total{{lane="{lane}",outcome="{outcome}"}}'
                assert f"{series} 0.0" in scrape
    finally:
        lines = [
            json.dumps({"chunk_html": f"<p>{i}</p>", "tracking_id": f"rt-{i}"}) for i in range(3)
        ]
        out, _ = process.communicate("\n".join(lines) + "\n", timeout=60)
    assert process.returncode == 0, out
    promtool = shutil.which("promtool")
    if promtool:
        result = subprocess.run(
            [promtool, "check", "metrics"],
            input=scrape,
            capture_output=True,
            text=True,
            check=False,
        )
        assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_producer_metrics_count_delivery_reports(kafka_bootstrap: str, topic_prefix: str) -> None:
    """What ``streamproc produce`` wires: ChunkProducer delivery reports into ProducerMetrics."""
    create_topics(kafka_bootstrap, topic_prefix, partitions=1)
    metrics = ProducerMetrics(lanes=["realtime", "bulk"])
    settings = ProducerSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix)
    with ChunkProducer(
        settings, on_delivery=lambda d: metrics.delivered(d.lane, ok=d.ok)
    ) as producer:
        produce(producer, 3, low_priority=False, tag="rt")
        produce(producer, 2, low_priority=True, tag="bulk")

    def count(lane: str, outcome: str) -> float | None:
        labels = {"lane": lane, "outcome": outcome}
        return metrics.registry.get_sample_value("streamproc_produced_messages_total", labels)

    assert (count("realtime", "delivered"), count("bulk", "delivered")) == (3, 2)
    assert (count("realtime", "failed"), count("bulk", "failed")) == (0, 0)
