"""Metric definitions, the HTTP endpoint, the alert rules under promtool, and the run picture.

No broker: the registry is filled by hand. The live scrape of a real consumer is checked in
``tests/integration/test_observability.py``.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

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
    text = generate_latest(metrics.registry).decode()
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


def test_rules_pass_promtool_check_rules() -> None:
    code, output = run_promtool("check", "rules", str(RULES))
    assert code == 0, output
    assert "SUCCESS: 7 rules found" in output


def test_every_alert_has_a_promtool_unit_test() -> None:
    import yaml

    rules = yaml.safe_load(RULES.read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
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
    import yaml

    docs = DOCS.read_text()
    anchors = {
        "#" + line.lstrip("#").strip().lower() for line in docs.splitlines() if line[:3] == "###"
    }
    rules = yaml.safe_load(RULES.read_text())
    for rule in (rule for group in rules["groups"] for rule in group["rules"]):
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["for"], rule["alert"]
        runbook = rule["annotations"]["runbook_url"]
        path, _, anchor = runbook.partition("#")
        assert path == "docs/metrics.md", rule["alert"]
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
