"""Rendering the Helm chart for tests: the pinned helm from ``scripts/helm``, renders cached.

No cluster and no broker: ``helm template`` and ``helm lint`` only. The helm binary is built once
by ``scripts/helm`` (``go install`` of a pinned version into ~/.cache/streamproc), and the KEDA and
Prometheus Operator CRDs come from ``scripts/crd-schemas`` (their pinned Go module releases, cached
there too); without Go the chart tests are skipped, except in CI (``CI`` set), where that is a
failure.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "streamproc"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
HELM_WRAPPER = REPO / "scripts" / "helm"
CRD_SCRIPT = REPO / "scripts" / "crd-schemas"
# Kubernetes version manifests are rendered for and validated against (kubernetes-validate ships
# its schemas offline). The chart's kubeVersion floor is checked too.
KUBERNETES_VERSION = "1.37.0"
KUBERNETES_MIN_VERSION = "1.29.0"
RELEASE = "sp"
NAMESPACE = "streaming"


class HelmError(Exception):
    """helm exited non-zero; ``stderr`` holds its message."""

    def __init__(self, stderr: str) -> None:
        super().__init__(stderr)
        self.stderr = stderr


@functools.cache
def helm_binary() -> str:
    """Path of the pinned helm, built by scripts/helm on first use (minutes, once)."""
    pinned = _pinned(HELM_WRAPPER, "HELM_VERSION")
    return _print_path(HELM_WRAPPER, _cache() / f"helm-{pinned}" / "helm", "build helm")


@functools.cache
def crd_directory() -> Path:
    """Directory of the pinned KEDA and Prometheus Operator CRD files (scripts/crd-schemas)."""
    keda = _pinned(CRD_SCRIPT, "KEDA_VERSION")
    operator = _pinned(CRD_SCRIPT, "PROMETHEUS_OPERATOR_VERSION")
    cached = _cache() / f"crds-keda-{keda}-prometheus-operator-{operator}" / ".complete"
    return Path(_print_path(CRD_SCRIPT, cached, "fetch the CRDs"))


def _print_path(script: Path, cached: Path, what: str) -> str:
    """Run ``script --print-path``; skip without Go unless its result is cached or CI is set."""
    if shutil.which("go") is None and not cached.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"Go is needed to {what} (scripts/{script.name}) and CI is set")
        pytest.skip(f"Go is not installed: scripts/{script.name} cannot {what}")
    result = subprocess.run(
        [str(script), "--print-path"],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if result.returncode != 0:
        pytest.fail(f"scripts/{script.name} could not {what}:\n{result.stderr}")
    return result.stdout.strip().splitlines()[-1]


def _pinned(script: Path, variable: str) -> str:
    """The value of ``VARIABLE="..."`` in one of the scripts."""
    pinned = re.search(rf'^{variable}="([^"]+)"', script.read_text(), re.MULTILINE)
    assert pinned is not None, f"{variable} not found in {script}"
    return pinned.group(1)


def _cache() -> Path:
    """The scripts' cache: STREAMPROC_CACHE, else $XDG_CACHE_HOME/streamproc."""
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("STREAMPROC_CACHE") or cache_home / "streamproc")


def run_helm(*args: str) -> str:
    """Run helm with ``args``; return stdout or raise :class:`HelmError`."""
    result = subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, check=False, timeout=120
    )
    if result.returncode != 0:
        raise HelmError(result.stderr)
    return result.stdout


@dataclass(frozen=True)
class Rendered:
    """The manifests of one ``helm template``."""

    manifests: tuple[dict[str, Any], ...]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [m for m in self.of_kind(kind) if name is None or m["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    @property
    def kinds(self) -> set[str]:
        return {m["kind"] for m in self.manifests}


@functools.cache
def _render(values_files: tuple[str, ...], sets: tuple[str, ...], kube_version: str) -> Rendered:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    args += ["--kube-version", kube_version]
    for values_file in values_files:
        args += ["--values", values_file]
    for item in sets:
        args += ["--set", item]
    documents = yaml.safe_load_all(run_helm(*args))
    return Rendered(tuple(doc for doc in documents if doc))


def render(
    *values_files: Path | str,
    sets: Sequence[str] = (),
    kube_version: str = KUBERNETES_VERSION,
) -> Rendered:
    """``helm template`` the chart with values files and ``--set`` items (cached per arguments)."""
    files = tuple(str(CHART / "ci" / f) if isinstance(f, str) else str(f) for f in values_files)
    return _render(files, tuple(sets), kube_version)


def render_error(*values_files: Path | str, sets: Sequence[str] = ()) -> str:
    """The error helm prints for values that must be refused."""
    try:
        render(*values_files, sets=sets)
    except HelmError as exc:
        return exc.stderr
    raise AssertionError(f"helm accepted {values_files} {list(sets)}")
