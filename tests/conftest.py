"""Shared fixtures: one real Kafka broker per test session, unique topics per test.

The broker is chosen in this order:
1. ``KAFKA_BOOTSTRAP_SERVERS`` if set (an existing cluster; nothing is started or stopped);
2. testcontainers' Kafka module, if a Docker engine answers;
3. ``scripts/kafka-local`` (Apache Kafka in KRaft mode from its Maven Central jars).

Tests under ``tests/integration`` are marked ``integration`` automatically, so
``pytest -m "not integration"`` needs no broker at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KAFKA_LOCAL = REPO / "scripts" / "kafka-local"
TEST_BROKER_HOME = REPO / ".streamproc" / "kafka-test"
REGISTRY_LOCAL = REPO / "scripts" / "registry-local"
TEST_REGISTRY_HOME = REPO / ".streamproc" / "registry-test"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in item.path.as_posix():
            item.add_marker(pytest.mark.integration)


def _docker_engine_answers() -> bool:
    """True when a Docker engine responds to a ping within a few seconds."""
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        import docker  # type: ignore[import-untyped]  # testcontainers' dependency, untyped

        client = docker.from_env(timeout=3)
    except Exception:  # noqa: BLE001  # any failure means "no engine": fall through to local
        return False
    try:
        client.ping()
    except Exception:  # noqa: BLE001
        return False
    finally:
        client.close()
    return True


def kafka_local(command: str, home: Path = TEST_BROKER_HOME, *extra: str) -> str:
    """Run ``scripts/kafka-local COMMAND`` for a broker kept in ``home``; return its last line."""
    env = {**os.environ, "STREAMPROC_KAFKA_HOME": str(home)}
    result = subprocess.run(
        [sys.executable, str(KAFKA_LOCAL), command, *extra],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kafka-local {command} failed:\n{result.stderr}")
    lines = result.stdout.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of the session's real Kafka broker."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    if _docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("confluentinc/cp-kafka:7.9.0").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    # Another test session (or `make demo`) may share this broker: stop it only if we started it.
    already_running = (
        subprocess.run(
            [sys.executable, str(KAFKA_LOCAL), "status"],
            env={**os.environ, "STREAMPROC_KAFKA_HOME": str(TEST_BROKER_HOME)},
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    yield kafka_local("start")
    if not already_running:
        kafka_local("stop")


@pytest.fixture
def topic_prefix() -> str:
    """A prefix no other test uses, so every test gets its own lane topics."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def schema_registry_url() -> Iterator[str]:
    """URL of a real Confluent-API schema registry for the session.

    ``STREAMPROC_SCHEMA_REGISTRY_URL`` if set; else ``scripts/registry-local`` (Apicurio Registry
    from its Maven Central distribution, in-memory storage), stopped afterwards if started here.
    """
    configured = os.environ.get("STREAMPROC_SCHEMA_REGISTRY_URL")
    if configured:
        yield configured
        return
    env = {**os.environ, "STREAMPROC_REGISTRY_HOME": str(TEST_REGISTRY_HOME)}

    def registry_local(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(REGISTRY_LOCAL), command],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )

    already_running = registry_local("status").returncode == 0
    started = registry_local("start")
    if started.returncode != 0:
        raise RuntimeError(f"registry-local start failed:\n{started.stderr}")
    yield started.stdout.strip().splitlines()[-1]
    if not already_running:
        registry_local("stop")
