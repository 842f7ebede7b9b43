"""The container image and the compose stack, checked offline (there is no Docker engine here).

What can be checked without building: the entry point the image runs exists in the installed
package, the Dockerfile's shape (stages, numeric non-root user, tini as PID 1), and that the
compose stack parses and mounts the very dashboard and rules files the Helm chart ships.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import yaml
from helmchart import CHART, REPO

DOCKERFILE = REPO / "Dockerfile"
COMPOSE_DIR = REPO / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
CHART_FILES = {
    (CHART / "files" / "grafana-dashboard.json").resolve(),
    (CHART / "files" / "prometheus-rules.yaml").resolve(),
}


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, rest = stripped.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


def test_entrypoint_console_script_exists() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["streamproc"] == "streamproc.cli:main"
    (script,) = entry_points(group="console_scripts", name="streamproc")
    assert script.value == "streamproc.cli:main"
    assert callable(script.load())


def test_dockerfile_is_multi_stage_on_slim_python() -> None:
    built = stages()
    assert len(built) >= 2
    text = DOCKERFILE.read_text()
    image = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert image is not None and re.fullmatch(r"python:3\.11-slim(-\w+)?", image.group(1))
    final = built[-1]
    assert final[0][1].startswith("${PYTHON_IMAGE}")
    copies = [rest for keyword, rest in final if keyword == "COPY"]
    assert copies == ["--from=build /opt/streamproc /opt/streamproc"]
    runs = " ".join(rest for keyword, rest in final if keyword == "RUN")
    for tool in ("gcc", "build-essential", "pip install", "git"):
        assert tool not in runs, f"final stage installs {tool}"


def test_final_user_is_numeric_and_not_root() -> None:
    users = [rest for keyword, rest in stages()[-1] if keyword == "USER"]
    assert users, "the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0
    assert not gid or gid.isdigit()


def test_tini_is_pid_1_and_streamproc_the_entrypoint() -> None:
    final = stages()[-1]
    (entrypoint,) = [rest for keyword, rest in final if keyword == "ENTRYPOINT"]
    assert yaml.safe_load(entrypoint) == ["/usr/bin/tini", "--", "streamproc"]
    runs = " ".join(rest for keyword, rest in final if keyword == "RUN")
    assert "apt-get install" in runs and "tini" in shlex.split(runs)


def test_dockerignore_keeps_the_build_context_small() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in lines
    for needed in ("!pyproject.toml", "!README.md", "!avro/", "!streamproc/"):
        assert needed in lines


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def bind_mounts(service: dict[str, Any]) -> dict[Path, str]:
    """Host path -> container path of a service's bind mounts (relative to the compose file)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith((".", "/")):
            mounts[(COMPOSE_DIR / source).resolve()] = target
    return mounts


def test_compose_services_and_mounted_files_exist() -> None:
    services = compose()["services"]
    assert {"kafka", "topics", "consumer", "prometheus", "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    for name, service in services.items():
        for source in bind_mounts(service):
            assert source.exists(), f"{name} mounts missing {source}"


def test_compose_mounts_the_files_the_chart_ships() -> None:
    services = compose()["services"]
    prometheus = bind_mounts(services["prometheus"])
    grafana = bind_mounts(services["grafana"])
    mounted = (set(prometheus) | set(grafana)) & CHART_FILES
    assert mounted == CHART_FILES
    rules_target = prometheus[(CHART / "files" / "prometheus-rules.yaml").resolve()]
    config = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    assert any(Path(rules_target).match(pattern) for pattern in config["rule_files"])
    dashboard_target = grafana[(CHART / "files" / "grafana-dashboard.json").resolve()]
    provider = yaml.safe_load(
        (COMPOSE_DIR / "grafana" / "provisioning" / "dashboards" / "streamproc.yaml").read_text()
    )
    paths = {p["options"]["path"] for p in provider["providers"]}
    assert str(Path(dashboard_target).parent) in paths


def test_compose_prometheus_scrapes_the_consumer_metrics_port() -> None:
    services = compose()["services"]
    port = services["consumer"]["environment"]["STREAMPROC_METRICS_PORT"]
    config = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    targets = [
        t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    ]
    assert f"consumer:{port}" in targets
