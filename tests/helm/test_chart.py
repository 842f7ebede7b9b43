"""The Helm chart: lint, schema-valid manifests, and the rendered content that matters.

Core kinds are validated with kubernetes-validate (offline schemas of a pinned Kubernetes
version); custom resources against the upstream CRDs of the KEDA and Prometheus Operator releases
the chart targets (``scripts/crd-schemas``: their pinned Go modules), with unknown fields refused
as the API server's strict field validation does.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import pytest
import typer
import yaml
from helmchart import (
    CHART,
    CI_VALUES,
    KUBERNETES_MIN_VERSION,
    KUBERNETES_VERSION,
    NAMESPACE,
    RELEASE,
    REPO,
    Rendered,
    crd_directory,
    render,
    render_error,
    run_helm,
)

from streamproc.cli import app
from streamproc.flow import FlowSettings
from streamproc.settings import ConsumerSettings

pytestmark = pytest.mark.usefixtures("helm")

CUSTOM_KINDS = {
    "ServiceMonitor",
    "PodMonitor",
    "PrometheusRule",
    "ScaledObject",
    "TriggerAuthentication",
}
FULLNAME = f"{RELEASE}-streamproc"
ALL = "all-features-values.yaml"
KEDA = "keda-values.yaml"
SCALE_TO_ZERO = "keda-scale-to-zero-values.yaml"
STATIC = "static-membership-values.yaml"
SASL = "sasl-existing-secret-values.yaml"
DEFAULTS = "defaults-values.yaml"
CHART_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]


def ci_values(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "ci" / name).read_text()) or {}
    return loaded


def env_name(field: str) -> str:
    return f"STREAMPROC_{field.upper()}"


def pod_spec(rendered: Rendered) -> dict[str, Any]:
    spec: dict[str, Any] = rendered.one("Deployment")["spec"]["template"]["spec"]
    return spec


def consumer_container(rendered: Rendered) -> dict[str, Any]:
    deployment = rendered.one("Deployment")
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "consumer")


def config_env(rendered: Rendered) -> dict[str, str]:
    data: dict[str, str] = rendered.one("ConfigMap", FULLNAME)["data"]
    return data


# -- lint and validity ----------------------------------------------------------------------


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_lint_strict(values: Path) -> None:
    output = run_helm("lint", "--strict", str(CHART), "--values", str(values))
    assert "[WARNING]" not in output and "[ERROR]" not in output, output


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema of every CRD that scripts/crd-schemas fetched."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(crd_directory().glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group = crd["spec"]["group"]
            kind = crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = version["schema"]["openAPIV3Schema"]
                schemas[(f"{group}/{version['name']}", kind)] = strict_structural(schema)
    return schemas


def strict_structural(schema: dict[str, Any]) -> dict[str, Any]:
    """Refuse unknown fields where the CRD lists its properties, like strict field validation.

    A structural schema prunes unknown fields silently; a typo in a monitor would vanish instead
    of failing. ``x-kubernetes-preserve-unknown-fields`` and explicit additionalProperties stay.
    """
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(schema)
    # metadata is checked by the API server, not by the CRD schema.
    schema.get("properties", {}).get("metadata", {}).pop("additionalProperties", None)
    return schema


def validate_manifest(manifest: dict[str, Any], kube_version: str) -> None:
    kind = manifest["kind"]
    if kind in CUSTOM_KINDS:
        schema = crd_schemas().get((manifest["apiVersion"], kind))
        assert schema is not None, f"no CRD schema for {manifest['apiVersion']} {kind}"
        validator = jsonschema.Draft7Validator(schema)
        errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
        assert not errors, "\n".join(
            f"{kind}/{manifest['metadata']['name']} at {'/'.join(map(str, e.absolute_path))}: "
            f"{e.message}"
            for e in errors
        )
        return
    try:
        kubernetes_validate.validate(manifest, kube_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise AssertionError(
            f"{kind}/{manifest['metadata']['name']} (Kubernetes {kube_version}): {exc}"
        ) from exc


@pytest.mark.parametrize("kube_version", [KUBERNETES_VERSION, KUBERNETES_MIN_VERSION])
@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_every_manifest_is_valid(values: Path, kube_version: str) -> None:
    rendered = render(values, kube_version=kube_version)
    assert rendered.manifests
    for manifest in rendered.manifests:
        validate_manifest(manifest, kube_version)


def test_ci_values_cover_every_kind() -> None:
    kinds = set().union(*(render(values).kinds for values in CI_VALUES))
    expected = {
        "Deployment", "ConfigMap", "Secret", "ServiceAccount", "Service", "ServiceMonitor",
        "PodMonitor", "PrometheusRule", "ScaledObject", "TriggerAuthentication",
        "HorizontalPodAutoscaler", "PodDisruptionBudget", "Job", "NetworkPolicy",
    }  # fmt: skip
    assert expected <= kinds


def test_crds_are_the_pinned_releases() -> None:
    versions = dict(
        line.split() for line in (crd_directory() / ".complete").read_text().splitlines()
    )
    assert versions == {"keda": "v2.20.2", "prometheus-operator": "v0.93.1"}
    assert set(crd_schemas()) == {
        ("keda.sh/v1alpha1", "ScaledObject"),
        ("keda.sh/v1alpha1", "TriggerAuthentication"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("monitoring.coreos.com/v1", "PodMonitor"),
        ("monitoring.coreos.com/v1", "PrometheusRule"),
    }
    monitors = crd_directory() / "monitoring.coreos.com_servicemonitors.yaml"
    crd = yaml.safe_load(monitors.read_text())
    assert crd["metadata"]["annotations"]["operator.prometheus.io/version"] == "0.93.1"


@pytest.mark.parametrize(
    ("kind", "path", "value", "message"),
    [
        ("ServiceMonitor", ("spec", "endpoints", 0, "intervall"), "30s", "intervall"),
        ("ServiceMonitor", ("spec", "endpoints", 0, "scheme"), "gopher", "'gopher' is not one of"),
        ("ScaledObject", ("spec", "minReplicaCountt"), 0, "minReplicaCountt"),
        ("ScaledObject", ("spec", "minReplicaCount"), "zero", "'zero' is not of type 'integer'"),
        ("ScaledObject", ("spec", "triggers", 0, "metadata", "lagThreshold"), 50, "50 is not"),
        ("PrometheusRule", ("spec", "groups", 0, "rules", 0, "for"), "5 minutes", "5 minutes"),
    ],
)
def test_crd_check_refuses_invalid_custom_resources(
    kind: str, path: tuple[str | int, ...], value: Any, message: str
) -> None:
    """Unknown fields, wrong types, values off an enum or a pattern: each fails the check."""
    manifest = copy.deepcopy(render(ALL).one(kind))
    validate_manifest(manifest, KUBERNETES_VERSION)
    node: Any = manifest
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(AssertionError, match=message):
        validate_manifest(manifest, KUBERNETES_VERSION)


# -- environment ----------------------------------------------------------------------------


def test_every_flow_setting_is_mapped_to_its_env_var() -> None:
    flow = ci_values(ALL)["flow"]
    env = config_env(render(ALL))
    for field in FlowSettings.model_fields:
        camel = "".join(
            part if i == 0 else part.capitalize() for i, part in enumerate(field.split("_"))
        )
        assert camel in flow, f"ci values do not set flow.{camel}"
        assert float(env[env_name(field)]) == pytest.approx(flow[camel]), field


def test_unset_optional_flow_settings_are_left_to_streamproc() -> None:
    env = config_env(render(DEFAULTS))
    for field in ("pause_delay_s", "max_pause_s", "min_bulk_share"):
        assert env_name(field) not in env
    assert env["STREAMPROC_PAUSE_LAG"] == "1000"


def test_every_consumer_setting_and_cli_option_has_a_value() -> None:
    rendered = render(ALL)
    env = set(config_env(rendered))
    env |= {e["name"] for e in consumer_container(rendered).get("env", [])}
    not_exposed = {"lanes", "error_actions"}  # lanes are fixed; errors go by --on-error
    settings_env = {env_name(f) for f in ConsumerSettings.model_fields if f not in not_exposed}
    assert settings_env - env == set()
    consume = typer.main.get_command(app).commands["consume"]  # type: ignore[attr-defined]
    cli_env = {p.envvar for p in consume.params if p.envvar}
    assert cli_env - env == set()


def test_rendered_env_is_accepted_by_the_consumer_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The chart's strings parse into ConsumerSettings with the values the chart was given."""
    rendered = render(ALL)
    env = config_env(rendered)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("STREAMPROC_SASL_USERNAME", "from-secret")
    monkeypatch.setenv("STREAMPROC_SASL_PASSWORD", "from-secret")
    settings = ConsumerSettings()
    values = ci_values(ALL)
    assert settings.bootstrap_servers == values["kafka"]["bootstrapServers"]
    assert settings.group_id == values["consumer"]["groupId"]
    assert settings.max_poll_interval_ms == values["consumer"]["maxPollIntervalMs"]
    assert settings.librdkafka_extra == values["kafka"]["librdkafkaExtra"]
    assert settings.ssl_ca_location == "/etc/streamproc/tls/ca.crt"
    assert settings.flow_settings().min_bulk_share == values["flow"]["minBulkShare"]
    assert env["STREAMPROC_ON_ERROR"] == "invalid=stop,undecodable=dead_letter"


def test_large_integers_are_not_rendered_in_exponent_form() -> None:
    env = config_env(render(DEFAULTS, sets=["consumer.maxPollIntervalMs=12000000"]))
    assert env["STREAMPROC_MAX_POLL_INTERVAL_MS"] == "12000000"


def test_config_checksum_rolls_the_pods() -> None:
    def checksum(*sets: str) -> str:
        template = render(DEFAULTS, sets=list(sets)).one("Deployment")["spec"]["template"]
        value: str = template["metadata"]["annotations"]["checksum/config"]
        return value

    assert checksum() != checksum("flow.pauseLag=2000")


# -- pods -----------------------------------------------------------------------------------


def test_probes_use_the_metrics_port() -> None:
    rendered = render(DEFAULTS)
    container = consumer_container(rendered)
    assert container["args"] == ["consume"]
    port = next(p for p in container["ports"] if p["name"] == "metrics")
    assert port["containerPort"] == 9464
    assert config_env(rendered)["STREAMPROC_METRICS_PORT"] == "9464"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_grace_period_exceeds_the_shutdown_bound() -> None:
    rendered = render(DEFAULTS)
    spec = rendered.one("Deployment")["spec"]["template"]["spec"]
    fields = ConsumerSettings.model_fields
    bound = fields["dlq_flush_timeout_s"].default + fields["close_timeout_s"].default
    assert spec["terminationGracePeriodSeconds"] == 60
    assert spec["terminationGracePeriodSeconds"] > bound + 5
    assert float(config_env(rendered)["STREAMPROC_CLOSE_TIMEOUT_S"]) == (
        fields["close_timeout_s"].default
    )
    error = render_error(
        DEFAULTS, sets=["terminationGracePeriodSeconds=40", "consumer.dlqFlushTimeoutS=40"]
    )
    assert "must exceed consumer.dlqFlushTimeoutS" in error
    # The flush timeout alone fits; with the commits' and closes' bound it does not.
    error = render_error(
        DEFAULTS, sets=["terminationGracePeriodSeconds=44", "consumer.closeTimeoutS=10"]
    )
    assert "+ consumer.closeTimeoutS (10) by more than 5 s" in error


def test_pods_run_non_root_with_a_read_only_root_and_a_writable_sink() -> None:
    rendered = render(DEFAULTS)
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    container = consumer_container(rendered)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/data"]]
    assert config_env(rendered)["STREAMPROC_SINK"] == "sqlite:/data/streamproc.sqlite"
    assert container["resources"]["requests"]["memory"]


def test_labels_and_selectors_agree() -> None:
    rendered = render(ALL)
    standard = {
        "app.kubernetes.io/name": "streamproc",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/managed-by": "Helm",
        "helm.sh/chart": f"streamproc-{CHART_VERSION}",
        "team": "search",
    }
    for manifest in rendered.manifests:
        if "search-indexer-config" in manifest["metadata"]["name"]:
            continue  # extraObjects carry their own labels
        labels = manifest["metadata"]["labels"]
        assert standard.items() <= labels.items(), manifest["metadata"]["name"]
    deployment = rendered.one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert rendered.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    service = rendered.one("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = rendered.one("ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    pod_monitor = render(SASL).one("PodMonitor")
    assert pod_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


# -- dashboards and rules -------------------------------------------------------------------


def test_dashboard_configmap_holds_the_repository_dashboard() -> None:
    source = (CHART / "files" / "grafana-dashboard.json").read_text()
    dashboard = render(DEFAULTS).one("ConfigMap", f"{FULLNAME}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["streamproc.json"] == source.rstrip("\n")
    assert json.loads(dashboard["data"]["streamproc.json"]) == json.loads(source)
    custom = render(ALL).one("ConfigMap", f"{FULLNAME}-dashboard")
    assert custom["metadata"]["namespace"] == "monitoring"
    assert custom["metadata"]["labels"]["team"] == "search"
    assert custom["metadata"]["annotations"] == {"grafana_folder": "Streaming"}


def test_dashboard_label_is_configurable() -> None:
    rendered = render(
        DEFAULTS,
        sets=["grafanaDashboard.labels.grafana_dashboard=null", "grafanaDashboard.labels.dash=yes"],
    )
    labels = rendered.one("ConfigMap", f"{FULLNAME}-dashboard")["metadata"]["labels"]
    assert "grafana_dashboard" not in labels and labels["dash"] == "yes"


def test_plain_rules_file_is_the_prometheus_rule_with_default_values() -> None:
    """files/prometheus-rules.yaml is generated (scripts/alert-rules): it must be current."""
    rules = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    rendered = render(DEFAULTS, sets=["metrics.prometheusRule.enabled=true"])
    assert rendered.one("PrometheusRule")["spec"]["groups"] == rules["groups"], (
        "files/prometheus-rules.yaml is stale: run scripts/alert-rules"
    )
    rule = render(ALL).one("PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert "PrometheusRule" not in render(DEFAULTS).kinds


def _alerts(rendered: Any) -> dict[str, dict[str, Any]]:
    groups = rendered.one("PrometheusRule")["spec"]["groups"]
    found: dict[str, dict[str, Any]] = {}
    for rule in (rule for group in groups for rule in group["rules"] if "alert" in rule):
        key = rule["alert"] + ("/" + rule["labels"]["burn"] if "burn" in rule["labels"] else "")
        found[key] = rule
    return found


def test_alert_thresholds_severities_and_runbooks_come_from_values(tmp_path: Path) -> None:
    on = "metrics.prometheusRule.enabled=true"
    alerts = _alerts(render(DEFAULTS, sets=[on, "flow.pauseLag=400"]))
    # The realtime lag threshold follows pauseLag unless set.
    assert alerts["StreamprocRealtimeLagHigh"]["expr"].strip().endswith("> 400")
    overrides = tmp_path / "alerts-values.yaml"
    overrides.write_text(
        yaml.safe_dump(
            {
                "metrics": {
                    "prometheusRule": {
                        "enabled": True,
                        "runbookBaseUrl": "https://docs.example.com/streamproc/metrics/",
                        "alerts": {
                            "realtimeLagHigh": {"messages": 2500},
                            "laneStarved": {"window": "1h", "pausedShare": 0.75},
                            "rebalanceStorm": {"severity": "page"},
                            "realtimeLatencyBudgetBurn": {"objectiveSeconds": 2.5},
                        },
                    }
                }
            }
        )
    )
    rendered = render(DEFAULTS, overrides)
    alerts = _alerts(rendered)
    assert alerts["StreamprocRealtimeLagHigh"]["expr"].strip().endswith("> 2500")
    starved = alerts["StreamprocLaneStarved"]["expr"]
    assert "[1h]" in starved and starved.strip().endswith("> 0.75")
    assert alerts["StreamprocRebalanceStorm"]["labels"]["severity"] == "page"
    assert alerts["StreamprocNoProgress"]["annotations"]["runbook_url"] == (
        "https://docs.example.com/streamproc/metrics/#streamprocnoprogress"
    )
    groups = rendered.one("PrometheusRule")["spec"]["groups"]
    records = {rule["record"]: rule["expr"] for rule in groups[0]["rules"]}
    assert (
        'le=~"2\\\\.5(\\\\.0)?"' in records["streamproc:realtime_latency_slo_errors:ratio_rate5m"]
    )


# -- autoscaling ----------------------------------------------------------------------------


def test_keda_scales_on_the_realtime_topic_and_the_group() -> None:
    rendered = render(KEDA)
    scaled = rendered.one("ScaledObject")
    values = ci_values(KEDA)
    assert scaled["spec"]["scaleTargetRef"]["name"] == FULLNAME
    (trigger,) = scaled["spec"]["triggers"]  # the bulk lane does not drive scale-out
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["topic"] == f"{values['kafka']['topicPrefix']}.realtime"
    assert trigger["metadata"]["consumerGroup"] == values["consumer"]["groupId"]
    assert trigger["metadata"]["lagThreshold"] == "2000"  # derived from the chart's defaults
    assert trigger["metadata"]["offsetResetPolicy"] == "earliest"
    assert trigger["metadata"]["ensureEvenDistributionOfPartitions"] == "true"
    assert "authenticationRef" not in trigger
    assert "replicas" not in rendered.one("Deployment")["spec"]
    assert "TriggerAuthentication" not in rendered.kinds


def test_keda_bulk_trigger_only_when_configured() -> None:
    triggers = render(ALL).one("ScaledObject")["spec"]["triggers"]
    assert [t["metadata"]["topic"] for t in triggers] == ["search.realtime", "search.bulk"]
    assert {t["metadata"]["consumerGroup"] for t in triggers} == {"search-indexer"}
    realtime, bulk = (t["metadata"] for t in triggers)
    assert realtime["excludePersistentLag"] == "false"
    # The bulk lane's own rules: held-paused partitions left out, only partitions in work count.
    assert bulk["excludePersistentLag"] == "true"
    assert bulk["limitToPartitionsWithLag"] == "true"
    assert bulk["ensureEvenDistributionOfPartitions"] == "false"
    assert bulk["allowIdleConsumers"] == "false"


def lag_threshold_formula(values: dict[str, Any]) -> int:
    """docs/deploy.md: max(pauseLag, 2 x (maxBatchMessages + rate x commit interval))."""
    consumer, keda = values["consumer"], values["autoscaling"]["keda"]
    between_commits = math.ceil(keda["ratePerReplica"] * consumer["autoCommitIntervalMs"] / 1000)
    floor = consumer["maxBatchMessages"] + between_commits
    return int(max(values["flow"]["pauseLag"], 2 * floor))


@pytest.mark.parametrize(
    "sets",
    [
        [],
        ["flow.pauseLag=5000"],
        ["consumer.maxBatchMessages=100", "autoscaling.keda.ratePerReplica=150"],
        ["consumer.autoCommitIntervalMs=1500", "autoscaling.keda.ratePerReplica=333"],
    ],
)
def test_keda_lag_threshold_is_derived_from_the_committed_lag_floor_and_pause_lag(
    sets: list[str],
) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for item in sets:
        path, value = item.split("=")
        *sections, key = path.split(".")
        node = values
        for part in sections:
            node = node[part]
        node[key] = yaml.safe_load(value)
    (trigger,) = render(KEDA, sets=sets).one("ScaledObject")["spec"]["triggers"]
    assert int(trigger["metadata"]["lagThreshold"]) == lag_threshold_formula(values)
    explicit = render(KEDA, sets=[*sets, "autoscaling.keda.lagThreshold=750"])
    assert explicit.one("ScaledObject")["spec"]["triggers"][0]["metadata"]["lagThreshold"] == "750"


def test_keda_offset_reset_policy_follows_the_consumer() -> None:
    for policy in ("earliest", "latest"):
        rendered = render(SCALE_TO_ZERO, sets=[f"consumer.autoOffsetReset={policy}"])
        triggers = rendered.one("ScaledObject")["spec"]["triggers"]
        assert {t["metadata"]["offsetResetPolicy"] for t in triggers} == {policy}
        assert config_env(rendered)["STREAMPROC_AUTO_OFFSET_RESET"] == policy
    error = render_error(KEDA, sets=["autoscaling.keda.offsetResetPolicy=latest"])
    assert "additional properties 'offsetResetPolicy' not allowed" in error


@pytest.mark.parametrize(
    "sets",
    [
        ["autoscaling.keda.minReplicaCount=0"],
        ["autoscaling.keda.idleReplicaCount=0"],
        [
            "autoscaling.keda.minReplicaCount=0",
            "autoscaling.keda.bulkLane.enabled=true",
            "autoscaling.keda.bulkLane.excludePersistentLag=false",
        ],
    ],
)
def test_schema_refuses_scale_to_zero_without_the_bulk_trigger(sets: list[str]) -> None:
    error = render_error(KEDA, sets=sets)
    assert "values don't meet the specifications of the schema" in error
    assert "at '/autoscaling/keda/bulkLane/" in error


def test_scale_to_zero_with_the_bulk_trigger() -> None:
    spec = render(SCALE_TO_ZERO).one("ScaledObject")["spec"]
    assert spec["minReplicaCount"] == 0
    assert [t["name"] for t in spec["triggers"]] == ["realtime-lag", "bulk-lag"]
    assert spec["triggers"][1]["metadata"]["excludePersistentLag"] == "true"
    assert spec["initialCooldownPeriod"] == 300
    assert spec["fallback"] == {"failureThreshold": 3, "replicas": 2}
    plain = render(KEDA, sets=["autoscaling.keda.bulkLane.enabled=true"]).one("ScaledObject")
    assert "idleReplicaCount" not in plain["spec"] and "fallback" not in plain["spec"]
    assert render(ALL).one("ScaledObject")["spec"]["idleReplicaCount"] == 0


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            [
                "autoscaling.keda.allowIdleConsumers=true",
                "autoscaling.keda.limitToPartitionsWithLag=true",
                "autoscaling.keda.ensureEvenDistributionOfPartitions=false",
            ],
            "allowIdleConsumers and autoscaling.keda.limitToPartitionsWithLag cannot both be true",
        ),
        (
            ["autoscaling.keda.limitToPartitionsWithLag=true"],
            "limitToPartitionsWithLag and autoscaling.keda.ensureEvenDistributionOfPartitions",
        ),
        (
            ["autoscaling.keda.minReplicaCount=7"],
            "minReplicaCount (7) must not exceed maxReplicaCount (6)",
        ),
        (["autoscaling.keda.fallback.replicas=2"], "at '/autoscaling/keda"),
        (["autoscaling.keda.idleReplicaCount=1"], "at '/autoscaling/keda/idleReplicaCount'"),
    ],
)  # fmt: skip
def test_keda_combinations_keda_would_refuse_fail_at_render(sets: list[str], message: str) -> None:
    assert message in render_error(KEDA, sets=sets)


def test_default_scaling_behaviour_takes_one_pod_down_at_a_time() -> None:
    keda = render(KEDA).one("ScaledObject")["spec"]["advanced"]["horizontalPodAutoscalerConfig"]
    hpa = render(SASL).one("HorizontalPodAutoscaler")["spec"]
    for behavior in (keda["behavior"], hpa["behavior"]):
        down = behavior["scaleDown"]
        (policy,) = down["policies"]
        assert (policy["type"], policy["value"]) == ("Pods", 1)
        assert 60 <= policy["periodSeconds"] <= 120
        assert down["stabilizationWindowSeconds"] >= 60
        assert behavior["scaleUp"]["policies"][0]["type"] == "Pods"
    # advanced.horizontalPodAutoscalerConfig.behavior of the values wins, the rest is kept.
    advanced = render(ALL).one("ScaledObject")["spec"]["advanced"]
    assert advanced["restoreToOriginalReplicaCount"] is True
    assert advanced["horizontalPodAutoscalerConfig"]["behavior"] == {
        "scaleDown": {"stabilizationWindowSeconds": 600}
    }


def test_keda_authenticates_with_the_existing_secrets() -> None:
    rendered = render(SASL, KEDA, sets=["autoscaling.hpa.enabled=false"])
    auth = rendered.one("TriggerAuthentication")
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs == {
        "username": ("streamproc-kafka-user", "username"),
        "password": ("streamproc-kafka-user", "password"),
        "ca": ("events-cluster-ca-cert", "ca.crt"),
    }
    (trigger,) = rendered.one("ScaledObject")["spec"]["triggers"]
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    assert trigger["metadata"]["sasl"] == "scram_sha512"
    assert trigger["metadata"]["tls"] == "enable"


def test_keda_and_hpa_are_mutually_exclusive() -> None:
    error = render_error(KEDA, sets=["autoscaling.hpa.enabled=true"])
    assert "autoscaling.keda.enabled and autoscaling.hpa.enabled are mutually exclusive" in error


def test_keda_defaults_are_documented_in_deploy_md() -> None:
    deploy = (REPO / "docs" / "deploy.md").read_text()
    assert "lagThreshold = max(flow.pauseLag, 2" in deploy
    assert "excludePersistentLag" in deploy


def test_hpa_targets_the_deployment() -> None:
    rendered = render(SASL)
    hpa = rendered.one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == FULLNAME
    assert "replicas" not in rendered.one("Deployment")["spec"]


# -- secrets --------------------------------------------------------------------------------


def test_existing_secrets_replace_the_chart_secret() -> None:
    rendered = render(SASL)
    assert "Secret" not in rendered.kinds
    container = consumer_container(rendered)
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs["STREAMPROC_SASL_USERNAME"] == {"name": "streamproc-kafka-user", "key": "username"}
    assert refs["STREAMPROC_SASL_PASSWORD"] == {"name": "streamproc-kafka-user", "key": "password"}
    volumes = rendered.one("Deployment")["spec"]["template"]["spec"]["volumes"]
    tls = next(v for v in volumes if v["name"] == "kafka-tls")
    assert tls["secret"]["secretName"] == "events-cluster-ca-cert"
    env = config_env(rendered)
    assert env["STREAMPROC_SSL_CA_LOCATION"] == "/etc/streamproc/tls/ca.crt"
    assert "STREAMPROC_SASL_PASSWORD" not in env


def test_inline_credentials_stay_out_of_the_configmap() -> None:
    rendered = render(ALL)
    secret = rendered.one("Secret", FULLNAME)
    assert set(secret["data"]) == {"sasl-username", "sasl-password", "ca.crt", "tls.crt", "tls.key"}
    assert "not-a-real-password" not in json.dumps(config_env(rendered))


# -- topic Job ------------------------------------------------------------------------------


def test_topic_job_is_a_hook_running_topics_create() -> None:
    rendered = render(ALL)
    job = rendered.one("Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["topics", "create"]
    env = {e["name"]: e for e in container["env"]}
    assert env["STREAMPROC_PARTITIONS"]["value"] == "12"
    assert (
        env["STREAMPROC_BOOTSTRAP_SERVERS"]["value"] == ci_values(ALL)["kafka"]["bootstrapServers"]
    )
    hook_secret = env["STREAMPROC_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"]
    secret = rendered.one("Secret", hook_secret)
    assert secret["metadata"]["annotations"]["helm.sh/hook-weight"] == "-10"
    assert "Job" not in render(DEFAULTS).kinds


# -- values schema --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["flow.pauseLag=0"], "at '/flow/pauseLag': minimum: got 0, want 1"),
        (["flow.pauseLagg=10"], "additional properties 'pauseLagg' not allowed"),
        (["consumer.scope=everywhere"], "at '/consumer/scope'"),
        (["kafka.securityProtocol=TLS"], "at '/kafka/securityProtocol'"),
        (["flow.minBulkShare=1.5"], "at '/flow/minBulkShare'"),
        (["kafka.bootstrapServers=kafka"], "at '/kafka/bootstrapServers'"),
        (["metrics.port=0"], "at '/metrics/port'"),
        (["terminationGracePeriodSeconds=10"], "at '/terminationGracePeriodSeconds'"),
    ],
)
def test_schema_rejects_bad_values_readably(sets: list[str], message: str) -> None:
    error = render_error(DEFAULTS, sets=sets)
    assert "values don't meet the specifications of the schema" in error
    assert message in error


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["flow.resumeLag=1000"], "flow.resumeLag (1000) must be lower than flow.pauseLag (1000)"),
        (["kafka.securityProtocol=SASL_SSL"], "needs kafka.sasl.mechanism"),
        (
            ["kafka.securityProtocol=SASL_SSL", "kafka.sasl.mechanism=PLAIN"],
            "needs kafka.sasl.username and kafka.sasl.password, or kafka.sasl.existingSecret",
        ),
        (["kafka.tls.caCert=PEM"], "use SSL or SASL_SSL"),
        (
            ["metrics.serviceMonitor.enabled=true", "metrics.podMonitor.enabled=true"],
            "would scrape every pod twice",
        ),
    ],
)
def test_inconsistent_values_fail_with_a_message(sets: list[str], message: str) -> None:
    assert message in render_error(DEFAULTS, sets=sets)


def test_core_check_refuses_bad_manifests() -> None:
    deployment = copy.deepcopy(render(DEFAULTS).one("Deployment"))
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 60
    with pytest.raises(AssertionError, match="terminationGracePeriod"):
        validate_manifest(deployment, KUBERNETES_VERSION)


# -- membership and client ids ----------------------------------------------------------------


def container_env(rendered: Rendered) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in consumer_container(rendered).get("env", [])}


def test_client_id_is_per_pod_by_default() -> None:
    env = container_env(render(DEFAULTS))
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["STREAMPROC_CLIENT_ID"]["value"] == "streamproc-$(POD_NAME)"
    assert "STREAMPROC_GROUP_INSTANCE_ID" not in env
    named = container_env(render(ALL))["STREAMPROC_CLIENT_ID"]["value"]
    assert named == "search-consumer-$(POD_NAME)"
    shared = container_env(render(DEFAULTS, sets=["kafka.clientIdPerPod=false"]))
    assert "STREAMPROC_CLIENT_ID" not in shared and "POD_NAME" not in shared


def test_static_membership_gives_every_lane_consumer_its_own_instance_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rendered = render(STATIC)
    env = container_env(rendered)
    names = list(env)
    assert names.index("POD_NAME") < names.index("STREAMPROC_GROUP_INSTANCE_ID")
    assert env["STREAMPROC_GROUP_INSTANCE_ID"]["value"] == "$(POD_NAME)"
    # What the kubelet makes of it for two pods of the Deployment, read by the consumer settings.
    instance_ids = set()
    for pod in ("sp-streamproc-6c9f7d5b8-2xk4q", "sp-streamproc-6c9f7d5b8-w7tzm"):
        for name, value in config_env(rendered).items():
            monkeypatch.setenv(name, value)
        for name in ("STREAMPROC_GROUP_INSTANCE_ID", "STREAMPROC_CLIENT_ID"):
            monkeypatch.setenv(name, env[name]["value"].replace("$(POD_NAME)", pod))
        monkeypatch.setenv("STREAMPROC_SASL_USERNAME", "u")
        monkeypatch.setenv("STREAMPROC_SASL_PASSWORD", "p")
        settings = ConsumerSettings()
        assert settings.client_id == f"indexer-{pod}"
        for lane in settings.lanes:
            instance_ids.add(settings.to_librdkafka(lane=lane)["group.instance.id"])
    assert len(instance_ids) == 4
    assert "sp-streamproc-6c9f7d5b8-2xk4q-realtime" in instance_ids


# -- probes, spread, policy, rollout ---------------------------------------------------------


def test_startup_probe_guards_the_first_join() -> None:
    container = consumer_container(render(DEFAULTS))
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    assert container["livenessProbe"]["initialDelaySeconds"] == 0


def test_pods_spread_softly_over_zones_and_hosts() -> None:
    rendered = render(DEFAULTS)
    deployment = rendered.one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    constraints = pod_spec(rendered)["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in constraints] == [
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    ]
    for constraint in constraints:
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
        selector = constraint["labelSelector"]["matchLabels"]
        assert selector == deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()
        assert constraint["matchLabelKeys"] == ["pod-template-hash"]
    own = pod_spec(render(ALL))["topologySpreadConstraints"]
    assert len(own) == 1
    assert own[0]["labelSelector"]["matchLabels"] == {"app.kubernetes.io/instance": RELEASE}
    off = pod_spec(render(DEFAULTS, sets=["defaultTopologySpread.enabled=false"]))
    assert "topologySpreadConstraints" not in off


def test_network_policy_opens_the_metrics_port_and_the_brokers_only() -> None:
    rendered = render(STATIC)
    policy = rendered.one("NetworkPolicy")
    pod_labels = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    test_pod_labels = rendered.one("Pod")["metadata"]["labels"]
    test_peer = ingress["from"][-1]["podSelector"]["matchLabels"]
    assert test_peer.items() <= test_pod_labels.items()
    dns, kafka = policy["spec"]["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert kafka["ports"] == [{"port": 9092, "protocol": "TCP"}]
    assert kafka["to"] == ci_values(STATIC)["networkPolicy"]["kafkaTo"]
    assert render(ALL).one("NetworkPolicy")["spec"]["egress"][0] == {}
    assert "NetworkPolicy" not in render(DEFAULTS).kinds


def test_existing_secret_rotation_rolls_the_pods() -> None:
    static = render(STATIC).one("Deployment")
    assert static["metadata"]["annotations"] == {
        "secret.reloader.stakater.com/reload": "indexer-kafka-user"
    }
    sasl = render(SASL).one("Deployment")
    assert "checksum/existing-secrets" in sasl["spec"]["template"]["metadata"]["annotations"]
    assert "annotations" not in sasl["metadata"]
    plain = render(DEFAULTS).one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/existing-secrets" not in plain
    off = render(SASL, sets=["secretRollout.lookupChecksum=false"]).one("Deployment")
    assert "checksum/existing-secrets" not in off["spec"]["template"]["metadata"]["annotations"]


def test_helm_test_pod_uses_the_release_configuration() -> None:
    rendered = render(SASL)
    pod = rendered.one("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = pod["spec"]["containers"][0]
    assert container["envFrom"] == [{"configMapRef": {"name": FULLNAME}}]
    assert container_env(rendered)["STREAMPROC_SASL_PASSWORD"] in container["env"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "kafka-tls" in {m["name"] for m in container["volumeMounts"]}
    script = container["command"][-1]
    assert '"streamproc", "topics", "describe"' in script
    assert "/metrics" not in script  # these values turn the metrics Service off
    assert "/metrics" in render(DEFAULTS).one("Pod")["spec"]["containers"][0]["command"][-1]
    assert "Pod" not in render(DEFAULTS, sets=["tests.enabled=false"]).kinds


# -- repository files a chart maintainer ships ------------------------------------------------


def test_chart_metadata_readme_license_and_ct_config() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["home"] and chart["sources"] and chart["maintainers"][0]["name"]
    readme = run_helm("show", "readme", str(CHART))
    assert readme.startswith("# streamproc")
    for value in ("autoscaling.keda.lagThreshold", "consumer.staticMembership", "networkPolicy"):
        assert value in readme, value
    license_text = (REPO / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text
    ct = yaml.safe_load((REPO / "ct.yaml").read_text())
    assert [REPO / d for d in ct["chart-dirs"]] == [CHART.parent]
    assert ct["check-version-increment"] is True
