"""Metric definitions, the HTTP endpoint, the alert rules under promtool, and the run picture.

No broker: the registry is filled by hand. The live scrape of a real consumer is checked in
``tests/integration/test_observability.py``.
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from streamproc.errors import DEAD_LETTER_REASONS, MetricsPortInUseError
from streamproc.metrics import (
    LATENCY_BUCKETS,
    ConsumerMetrics,
    MetricsServer,
    ProducerMetrics,
    observe_many,
)
from streamproc.plot import RunSample, plot_run

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "helm" / "streamproc" / "files" / "prometheus-rules.yaml"
PROMTOOL_TESTS = sorted((REPO / "tests" / "promtool").glob("*.test.yaml"))
DOCS = REPO / "docs" / "metrics.md"


def promtool() -> str:
    """promtool's path; skipped when absent outside CI, an error in CI (.ci/run installs it)."""
    path = shutil.which("promtool")
    if path:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail("promtool not found in CI: .ci/run installs the Debian package prometheus")
    pytest.skip("promtool not installed (apt-get install prometheus); CI runs this test")


def run_promtool(*args: str, stdin: str | None = None) -> tuple[int, str]:
    result = subprocess.run(
        [promtool(), *args], input=stdin, capture_output=True, text=True, check=False
    )
    return result.returncode, result.stdout + result.stderr


def filled_consumer_metrics() -> ConsumerMetrics:
    metrics = ConsumerMetrics(["realtime", "bulk"])
    metrics.describe(consumer_group="indexer", topic_prefix="chunks")
    metrics.set_partition_lags(
        [("realtime", "chunks.realtime", 0, 3), ("bulk", "chunks.bulk", 0, 9)]
    )
    for lane in metrics.lanes.values():
        lane.handled_ok.inc(5)
        lane.latency.observe(0.02)
        lane.handler_duration.observe(0.001)
    metrics.dead_letters.labels(lane="bulk", reason="undecodable").inc()
    return metrics


def test_consumer_metrics_pass_promtool_check_metrics() -> None:
    text = generate_latest(filled_consumer_metrics().registry).decode()
    assert run_promtool("check", "metrics", stdin=text) == (0, "")


def test_producer_metrics_pass_promtool_check_metrics() -> None:
    metrics = ProducerMetrics(lanes=["realtime", "bulk"])
    metrics.delivered("realtime", ok=True)
    metrics.delivered("bulk", ok=False)
    metrics.rejected()
    metrics.resent("bulk")
    text = generate_latest(metrics.registry).decode()
    assert 'streamproc_produce_resends_total{lane="bulk"} 1.0' in text
    assert 'streamproc_produce_resends_total{lane="realtime"} 0.0' in text
    assert 'streamproc_produced_messages_total{lane="realtime",outcome="delivered"} 1.0' in text
    assert 'streamproc_produced_messages_total{lane="bulk",outcome="failed"} 1.0' in text
    assert 'streamproc_produced_messages_total{lane="unknown",outcome="rejected"} 1.0' in text
    assert 'streamproc_produced_messages_total{lane="bulk",outcome="rejected"} 0.0' in text
    assert run_promtool("check", "metrics", stdin=text) == (0, "")


def test_names_units_and_labels() -> None:
    text = generate_latest(filled_consumer_metrics().registry).decode()
    families = {line.split()[2]: line.split()[3] for line in text.splitlines() if "# TYPE" in line}
    for name, kind in families.items():
        if name.endswith("_created"):
            continue  # prometheus_client's creation timestamps of counters and histograms
        if name.startswith(("process_", "python_")):
            continue  # prometheus_client's process and platform collectors
        assert name.startswith("streamproc_"), name
        assert name.endswith("_total") == (kind == "counter"), name
        assert "milli" not in name, f"{name}: base units only"
    assert LATENCY_BUCKETS[0] == 0.001 and LATENCY_BUCKETS[-1] == 600.0
    assert 'streamproc_consumer_info{consumer_group="indexer",topic_prefix="chunks"} 1.0' in text
    for label in ("offset", "key"):
        assert f'{label}="' not in text, f"unbounded label {label}"


def test_partition_lag_series_follow_the_assignment() -> None:
    metrics = ConsumerMetrics(["realtime", "bulk"])
    metrics.set_partition_lags([("bulk", "chunks.bulk", 0, 4), ("bulk", "chunks.bulk", 1, 5)])
    metrics.set_partition_lags([("bulk", "chunks.bulk", 1, 6), ("bulk", "chunks.bulk", 2, None)])
    text = generate_latest(metrics.registry).decode()
    assert 'streamproc_lag_messages{lane="bulk",partition="1",topic="chunks.bulk"} 6.0' in text
    assert 'partition="0"' not in text  # revoked: gone, not stale
    assert 'partition="2"' not in text  # unknown lag: no series rather than a guess
    metrics.partition_lag.clear()  # what a reassignment does
    metrics.set_partition_lags([])


def test_endpoint_serves_metrics_health_and_readiness() -> None:
    metrics = filled_consumer_metrics()
    state = {"healthy": True, "ready": False}
    server = MetricsServer(
        metrics.registry,
        port=0,
        host="127.0.0.1",
        healthy=lambda: (state["healthy"], "detail-h"),
        ready=lambda: (state["ready"], "detail-r"),
    ).start()
    base = f"http://127.0.0.1:{server.port}"

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(base + path, timeout=5) as response:  # noqa: S310
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()

    try:
        status, body = get("/metrics")
        assert status == 200 and "streamproc_lane_paused" in body
        assert get("/healthz") == (200, "detail-h\n")
        assert get("/readyz") == (503, "detail-r\n")
        state.update(healthy=False, ready=True)
        assert get("/healthz") == (503, "detail-h\n")
        assert get("/readyz") == (200, "detail-r\n")
        assert get("/nope")[0] == 404
    finally:
        server.stop()


def test_endpoint_negotiates_openmetrics_and_gzip() -> None:
    server = MetricsServer(filled_consumer_metrics().registry, port=0, host="127.0.0.1").start()
    url = f"http://127.0.0.1:{server.port}/metrics"

    def get(headers: dict[str, str]) -> tuple[str, str, bytes]:
        request = urllib.request.Request(url, headers=headers)  # loopback
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return (
                response.headers["Content-Type"],
                response.headers.get("Content-Encoding", ""),
                response.read(),
            )

    try:
        kind, encoding, body = get({})
        assert kind.startswith("text/plain; version=0.0.4") and encoding == ""
        assert b"# EOF" not in body
        kind, _, body = get({"Accept": "application/openmetrics-text; version=1.0.0"})
        assert kind.startswith("application/openmetrics-text")
        assert body.rstrip().endswith(b"# EOF")
        kind, encoding, body = get({"Accept-Encoding": "gzip"})
        assert encoding == "gzip"
        assert b"streamproc_lane_paused" in gzip.decompress(body)
    finally:
        server.stop()


def test_endpoint_has_the_process_and_platform_collectors() -> None:
    for registry in (ConsumerMetrics(["realtime"]).registry, ProducerMetrics().registry):
        assert registry.get_sample_value("process_cpu_seconds_total") is not None
        assert (registry.get_sample_value("process_resident_memory_bytes") or 0) > 0
        text = generate_latest(registry).decode()
        assert "python_info{" in text
        assert "python_gc_collections_total{" in text


def test_every_known_label_combination_exists_at_zero() -> None:
    registry = ConsumerMetrics(["realtime", "bulk"]).registry
    assert {"undecodable", "unknown_schema", "invalid", "handler_error"} <= set(DEAD_LETTER_REASONS)
    for lane in ("realtime", "bulk"):
        for reason in DEAD_LETTER_REASONS:
            labels = {"lane": lane, "reason": reason}
            assert registry.get_sample_value("streamproc_dead_letters_total", labels) == 0
        for outcome in ("ok", "retried", "dead_lettered"):
            labels = {"lane": lane, "outcome": outcome}
            assert registry.get_sample_value("streamproc_messages_handled_total", labels) == 0
        for name in ("streamproc_lane_pauses_total", "streamproc_lane_paused_seconds_total"):
            assert registry.get_sample_value(name, {"lane": lane}) == 0
    for outcome in ("ok", "failed"):
        assert registry.get_sample_value("streamproc_commits_total", {"outcome": outcome}) == 0
    for kind in ("assign", "revoke", "lost"):
        assert registry.get_sample_value("streamproc_rebalances_total", {"kind": kind}) == 0


def test_endpoint_on_a_taken_port_says_so() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsPortInUseError, match=f"metrics port {port} is already in use"):
            MetricsServer(ConsumerMetrics(["realtime"]).registry, port=port, host="127.0.0.1")


def shipped_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_rules_pass_promtool_check_rules() -> None:
    code, output = run_promtool("check", "rules", str(RULES))
    assert code == 0, output
    assert f"SUCCESS: {len(shipped_rules())} rules found" in output


def test_rules_alert_on_what_operators_asked_for() -> None:
    alerts = {rule["alert"] for rule in shipped_rules() if "alert" in rule}
    assert alerts == {
        "StreamprocConsumersAbsent",
        "StreamprocConsumerNotReady",
        "StreamprocRealtimeLagHigh",
        "StreamprocRealtimeLatencyBudgetBurn",
        "StreamprocLaneStarved",
        "StreamprocDeadLettersIncreasing",
        "StreamprocCommitsFailing",
        "StreamprocRebalanceStorm",
        "StreamprocPartitionsNeverFetched",
        "StreamprocNoProgress",
        "StreamprocOpenTransactionHoldsPartition",
    }
    records = {rule["record"] for rule in shipped_rules() if "record" in rule}
    assert "streamproc:lag_messages:sum" in records
    burns = [rule for rule in shipped_rules() if rule.get("alert", "").endswith("BudgetBurn")]
    assert sorted(rule["labels"]["burn"] for rule in burns) == ["fast", "slow"]


def test_every_alert_has_a_promtool_unit_test() -> None:
    alerts = {rule["alert"] for rule in shipped_rules() if "alert" in rule}
    tested: set[str] = set()
    for path in PROMTOOL_TESTS:
        document = yaml.safe_load(path.read_text())
        for test in document["tests"]:
            for case in test.get("alert_rule_test", []):
                if case["exp_alerts"]:
                    tested.add(case["alertname"])
    assert alerts == tested


def test_alert_unit_tests_pass_promtool_test_rules() -> None:
    assert PROMTOOL_TESTS
    code, output = run_promtool("test", "rules", *map(str, PROMTOOL_TESTS))
    assert code == 0, output


def test_every_alert_has_severity_for_and_a_documented_runbook() -> None:
    docs = DOCS.read_text()
    anchors = {
        "#" + line.lstrip("#").strip().lower() for line in docs.splitlines() if line[:3] == "###"
    }
    values = yaml.safe_load((REPO / "helm" / "streamproc" / "values.yaml").read_text())
    base = values["metrics"]["prometheusRule"]["runbookBaseUrl"]
    assert base.startswith(("http://", "https://")), "runbook URLs must be absolute"
    for rule in (rule for rule in shipped_rules() if "alert" in rule):
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["for"], rule["alert"]
        runbook = rule["annotations"]["runbook_url"]
        page, _, anchor = runbook.partition("#")
        assert page == base, rule["alert"]
        assert anchor == rule["alert"].lower()
        assert f"#{anchor}" in anchors, f"{rule['alert']}: no '### ' heading for {anchor}"


def test_plot_run_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    samples = [
        RunSample(
            t_s=float(t),
            lag_by_lane={"realtime": 80 if 5 <= t < 10 else 0, "bulk": 5000 - 100 * t},
            paused_by_lane={"realtime": False, "bulk": 5 <= t < 11},
            realtime_p50_s=None if t == 0 else 0.01,
            realtime_p99_s=None if t == 0 else 0.5,
            handled_per_s_by_lane={"realtime": 50.0, "bulk": 0.0 if 5 <= t < 11 else 400.0},
        )
        for t in range(20)
    ]
    path = plot_run(samples, tmp_path / "run.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_run_refuses_no_samples(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no samples"):
        plot_run([], tmp_path / "run.png")


def test_in_flight_and_queue_wait_are_per_lane() -> None:
    metrics = ConsumerMetrics(["realtime", "bulk"])
    metrics.lanes["realtime"].in_flight.set(3)
    metrics.lanes["bulk"].queue_wait.observe(0.2)
    registry = metrics.registry
    assert registry.get_sample_value("streamproc_in_flight_messages", {"lane": "realtime"}) == 3
    assert registry.get_sample_value("streamproc_in_flight_messages", {"lane": "bulk"}) == 0
    count = "streamproc_queue_wait_seconds_count"
    assert registry.get_sample_value(count, {"lane": "bulk"}) == 1
    assert registry.get_sample_value(count, {"lane": "realtime"}) == 0


def _histogram_samples(histogram: Histogram) -> dict[str, float]:
    return {
        f"{sample.name}{sorted(sample.labels.items())}": sample.value
        for metric in histogram.collect()
        for sample in metric.samples
        if not sample.name.endswith("_created")
    }


@pytest.mark.parametrize(
    "values",
    [
        [],
        [0.0],
        [0.001, 0.005, 0.005, 0.0051, 2.5, 1e9, -3.0],
        [float("inf"), float("-inf"), 0.25, 0.25, 0.25],
        [i / 997 for i in range(2000)],
        [0.1, float("nan"), 0.3],
        [0.3, float("nan"), 0.3, float("nan"), float("nan"), 0.3, 0.001, 0.001],
    ],
)
def test_observe_many_equals_observing_one_by_one(values: list[float]) -> None:
    buckets = (0.001, 0.005, 0.01, 0.25, 1.0, 2.5)
    one_by_one = Histogram("one", "one", buckets=buckets, registry=CollectorRegistry())
    for value in values:
        one_by_one.observe(value)
    at_once = Histogram("one", "one", buckets=buckets, registry=CollectorRegistry())
    observe_many(at_once, values)
    expected, got = _histogram_samples(one_by_one), _histogram_samples(at_once)
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        if name.startswith("one_sum") and not math.isnan(value):
            assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
        elif name.startswith("one_sum"):
            assert math.isnan(got[name])
        else:
            assert got[name] == value, name
