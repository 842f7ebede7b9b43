"""The Grafana dashboard shipped by the Helm chart, checked structurally (no Grafana needed).

Whether every query returns data is proven against a real Prometheus in
``tests/integration/test_observability.py``; here: the shape Grafana needs and the promises of
the metrics reference (rows, variables, ``$__rate_interval``, only metrics that exist).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from streamproc.metrics import ConsumerMetrics, ProducerMetrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "helm" / "streamproc" / "files" / "grafana-dashboard.json"
# Variables Grafana itself defines.
BUILTIN_VARIABLES = {
    "__rate_interval",
    "__interval",
    "__interval_ms",
    "__range",
    "__range_s",
    "__range_ms",
    "__dashboard",
    "__from",
    "__to",
}
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))|\[\[(\w+)\]\]")
METRIC = re.compile(r"\b(streamproc_[a-z_]+)\b")


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in all_panels(dashboard) if panel["type"] != "row"]


def variables_used(value: object) -> set[str]:
    """Names of every ``$var``, ``${var}``, ``${var:format}`` or ``[[var]]`` inside ``value``."""
    text = json.dumps(value)
    return {next(group for group in match.groups() if group) for match in VARIABLE.finditer(text)}


def exported_metric_names() -> set[str]:
    """Every series name ConsumerMetrics exposes (histogram and counter suffixes included)."""
    metrics = ConsumerMetrics(["realtime", "bulk"])
    metrics.dead_letters.labels(lane="bulk", reason="undecodable").inc()
    metrics.describe(consumer_group="g", topic_prefix="chunks")
    metrics.set_partition_lags([("bulk", "chunks.bulk", 0, 7)])
    metrics.set_lso_held([("realtime", "chunks.realtime", 0, 0.0)])
    metrics.fetch_queue_messages.labels(lane="bulk").set(3)
    metrics.broker_rtt_avg.labels(lane="bulk", broker="b:9092").set(0.001)
    metrics.broker_rtt_p99.labels(lane="bulk", broker="b:9092").set(0.002)
    producer = ProducerMetrics(lanes=["realtime", "bulk"])
    producer.describe(topic_prefix="chunks")
    text = generate_latest(metrics.registry).decode() + generate_latest(producer.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def annotation_queries(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in dashboard["annotations"]["list"] if a.get("expr")]


def test_schema_is_current_and_identity_is_stable() -> None:
    dashboard = load()
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] == "streamproc-consumer"
    assert dashboard["title"]
    ids = [panel["id"] for panel in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_every_panel_has_a_datasource_and_a_query() -> None:
    for panel in query_panels(load()):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"{panel['title']}: empty query"
            assert target["datasource"] == panel["datasource"], panel["title"]
            assert target["refId"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert panel["description"], f"{panel['title']}: say what the panel shows"


def test_every_variable_used_is_defined() -> None:
    dashboard = load()
    defined = {variable["name"] for variable in dashboard["templating"]["list"]}
    used = variables_used(dashboard["panels"]) | variables_used(dashboard["templating"])
    assert used - defined - BUILTIN_VARIABLES == set()
    assert {"datasource", "namespace", "consumer_group"} <= defined


def test_variables_select_datasource_namespace_and_group() -> None:
    variables = {v["name"]: v for v in load()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "consumer_group"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"]["uid"] == "${datasource}"
        assert variable["query"]["query"].startswith("label_values(streamproc_consumer_info")
        # "All" must match series without the label too (Prometheus outside Kubernetes).
        assert variable["includeAll"] and variable["allValue"] == ".*"


def test_every_query_filters_by_namespace_and_group() -> None:
    for panel in query_panels(load()):
        for target in panel["targets"]:
            expr = target["expr"]
            assert 'namespace=~"$namespace"' in expr, panel["title"]
            assert 'consumer_group=~"$consumer_group"' in expr, panel["title"]


def test_rates_use_rate_interval() -> None:
    for panel in query_panels(load()):
        for target in panel["targets"]:
            for window in re.findall(r"\[([^\]]+)\]", target["expr"]):
                assert window == "$__rate_interval", f"{panel['title']}: [{window}]"


def test_rows_as_documented() -> None:
    dashboard = load()
    rows = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"]
    assert rows == ["Lanes", "Lag and drain", "Handling", "Consumer health", "Process and client"]
    titles = {panel["title"] for panel in query_panels(dashboard)}
    assert {
        "Lag per partition",
        "Lag in seconds by lane",
        "Time to drain by lane",
        "Bulk delay",
        "Produced rate",
        "Queue wait",
        "Process CPU",
        "Process memory",
        "Prefetched messages",
        "Broker round-trip time",
        "Lag by lane",
        "Pause timeline",
        "Realtime end-to-end latency",
        "Bulk throughput",
        "Handled by lane and outcome",
        "Dead letters by lane and reason",
        "Handler duration",
        "Rebalances",
        "Commits",
        "Readiness",
    } <= titles


def test_realtime_latency_panel_shows_p50_p95_p99() -> None:
    panel = next(p for p in query_panels(load()) if p["title"] == "Realtime end-to-end latency")
    quantiles = [re.match(r"histogram_quantile\(([\d.]+),", t["expr"]) for t in panel["targets"]]
    assert [m.group(1) if m else None for m in quantiles] == ["0.5", "0.95", "0.99"]


def test_panels_do_not_overlap() -> None:
    occupied: set[tuple[int, int]] = set()
    for panel in all_panels(load()):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_only_metrics_that_exist_are_queried(source: str) -> None:
    if source == "dashboard":
        exprs = [t["expr"] for panel in query_panels(load()) for t in panel["targets"]]
        exprs += [annotation["expr"] for annotation in annotation_queries(load())]
    else:
        rules = yaml.safe_load(DASHBOARD.with_name("prometheus-rules.yaml").read_text())
        exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    names = set(METRIC.findall("\n".join(exprs)))
    assert names, "no streamproc metric referenced"
    assert names - exported_metric_names() == set()


def test_pauses_are_annotated_as_regions_per_lane() -> None:
    dashboard = load()
    (pauses,) = annotation_queries(dashboard)
    assert pauses["name"] == "Pauses" and pauses["enable"]
    assert pauses["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert "streamproc_lane_paused" in pauses["expr"] and pauses["expr"].endswith("== 1")
    assert 'namespace=~"$namespace"' in pauses["expr"]
    assert 'consumer_group=~"$consumer_group"' in pauses["expr"]
    assert pauses["target"]["expr"] == pauses["expr"]
    assert "{{lane}}" in pauses["titleFormat"]
