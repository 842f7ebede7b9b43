"""Shared fixtures: one real Kafka broker per test session, unique topics per test.

The broker is chosen in this order:
1. ``KAFKA_BOOTSTRAP_SERVERS`` if set (an existing cluster; nothing is started or stopped);
2. testcontainers' Kafka module, if a Docker engine answers;
3. ``scripts/kafka-local`` (Apache Kafka in KRaft mode from its Maven Central jars).

Tests under ``tests/integration`` are marked ``integration`` automatically, so
``pytest -m "not integration"`` needs no broker at all.

The PostgreSQL server of the sink's tests is ``STREAMPROC_TEST_POSTGRES_URL`` if set, else
``scripts/postgres-local`` with its state in ``STREAMPROC_TEST_POSTGRES_HOME`` (default: a
directory under the system temp dir, keyed by the repository's path).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KAFKA_LOCAL = REPO / "scripts" / "kafka-local"
TEST_BROKER_HOME = REPO / ".streamproc" / "kafka-test"
# The secured broker (SASL_SSL, SCRAM-SHA-512, ACLs) of tests marked ``security``.
TEST_SECURED_BROKER_HOME = REPO / ".streamproc" / "kafka-sasl-ssl-test"
REGISTRY_LOCAL = REPO / "scripts" / "registry-local"
TEST_REGISTRY_HOME = REPO / ".streamproc" / "registry-test"
POSTGRES_LOCAL = REPO / "scripts" / "postgres-local"
# Outside the repository: when the tests run as root the server runs as the postgres user, which
# must reach its data directory.
TEST_POSTGRES_HOME = Path(
    os.environ.get(
        "STREAMPROC_TEST_POSTGRES_HOME",
        Path(tempfile.gettempdir())
        / f"streamproc-postgres-test-{os.getuid()}-{hashlib.sha256(bytes(REPO)).hexdigest()[:10]}",
    )
)
_HOME_VARIABLE = {
    KAFKA_LOCAL: "STREAMPROC_KAFKA_HOME",
    REGISTRY_LOCAL: "STREAMPROC_REGISTRY_HOME",
    POSTGRES_LOCAL: "STREAMPROC_POSTGRES_HOME",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in item.path.as_posix():
            item.add_marker(pytest.mark.integration)


# Where the security tests' outcomes go, beside the fault scenarios' figures (scripts/reliability-
# report renders both into docs/reliability.md).
SECURITY_RESULTS = (
    Path(os.environ.get("STREAMPROC_RELIABILITY_RESULTS", REPO / ".streamproc" / "reliability"))
    / "security"
)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Record the outcome of every test marked ``security`` (its call, or a failed setup)."""
    report = yield
    if item.get_closest_marker("security") is not None and (
        report.when == "call" or (report.when == "setup" and not report.passed)
    ):
        _record_security_outcome(item, report)
    return report


def _record_security_outcome(item: pytest.Item, report: pytest.TestReport) -> None:
    doc = getattr(getattr(item, "function", None), "__doc__", None)
    SECURITY_RESULTS.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", item.name).strip("-")
    (SECURITY_RESULTS / f"{name}.json").write_text(
        json.dumps(
            {
                "test": item.name,
                "doc": (doc or "").strip().split("\n")[0],
                "outcome": report.outcome,
                "seconds": round(report.duration, 2),
                "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
            },
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )


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


def run_local(script: Path, home: Path, command: str, *extra: str) -> str:
    """Run ``scripts/<script> COMMAND`` for the service kept in ``home``; return its last line.

    ``script`` is ``KAFKA_LOCAL``, ``REGISTRY_LOCAL`` or ``POSTGRES_LOCAL``; raises if the command
    fails.
    """
    result = _run_local(script, home, command, *extra)
    if result.returncode != 0:
        raise RuntimeError(f"{script.name} {command} failed:\n{result.stderr}")
    lines = result.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def _run_local(
    script: Path, home: Path, command: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), command, *extra],
        env={**os.environ, _HOME_VARIABLE[script]: str(home)},
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


def kafka_local(command: str, home: Path = TEST_BROKER_HOME, *extra: str) -> str:
    """Run ``scripts/kafka-local COMMAND`` for a broker kept in ``home``; return its last line."""
    return run_local(KAFKA_LOCAL, home, command, *extra)


def _session_service(script: Path, home: Path) -> Iterator[str]:
    """Start the service of ``home`` (or find it running); stop it at the end if started here.

    Another test session (or `make demo`) may share it: stop it only if this session started it.
    """
    already_running = _run_local(script, home, "status").returncode == 0
    yield run_local(script, home, "start")
    if not already_running:
        run_local(script, home, "stop")


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
    yield from _session_service(KAFKA_LOCAL, TEST_BROKER_HOME)


@dataclass(frozen=True)
class SecuredBroker:
    """The secured broker of ``scripts/kafka-local --security sasl_ssl``: its client env files.

    Each ``*_env`` is the ``STREAMPROC_*`` variables of one user's ``client*.env``: ``client``
    (produce, consume, lag, topics on the lane topics, their dead letters and its group),
    ``limited`` (no READ on the bulk topic, no access to the client's group) and ``admin`` (the
    super user).
    """

    home: Path
    bootstrap: str
    client_env: dict[str, str]
    limited_env: dict[str, str]
    admin_env: dict[str, str]


def read_env_file(path: Path) -> dict[str, str]:
    """``export NAME=value`` lines of a client env file, as a mapping."""
    variables: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            variables[name] = value
    return variables


@pytest.fixture(scope="session")
def secured_broker() -> Iterator[SecuredBroker]:
    """A broker that demands TLS, SCRAM-SHA-512 and ACLs, started once per session (if not
    already running, then stopped at the end), beside the plaintext one."""
    home = TEST_SECURED_BROKER_HOME
    already_running = _run_local(KAFKA_LOCAL, home, "status", "--security", "sasl_ssl")
    bootstrap = kafka_local("start", home, "--security", "sasl_ssl")
    yield SecuredBroker(
        home=home,
        bootstrap=bootstrap,
        client_env=read_env_file(home / "client.env"),
        limited_env=read_env_file(home / "client-limited.env"),
        admin_env=read_env_file(home / "client-admin.env"),
    )
    if already_running.returncode != 0:
        kafka_local("stop", home)


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
    yield from _session_service(REGISTRY_LOCAL, TEST_REGISTRY_HOME)


def postgres_local(command: str, *extra: str) -> str:
    """Run ``scripts/postgres-local COMMAND`` for the tests' server; return its last line."""
    return run_local(POSTGRES_LOCAL, TEST_POSTGRES_HOME, command, *extra)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """Connection URL of the session's real PostgreSQL server.

    ``STREAMPROC_TEST_POSTGRES_URL`` if set (nothing started or stopped); else
    ``scripts/postgres-local``, stopped afterwards if started here.
    """
    configured = os.environ.get("STREAMPROC_TEST_POSTGRES_URL")
    if configured:
        yield configured
        return
    yield from _session_service(POSTGRES_LOCAL, TEST_POSTGRES_HOME)
