"""Fixtures of the fault tier: the shared broker's lane topics, and a private broker to break.

Scenarios that stop, restart or cut off the broker use :class:`PrivateBroker` (its own
``STREAMPROC_KAFKA_HOME``, started and stopped here), never the session broker other tests share.
Scenarios on several brokers use :class:`BrokerCluster` (``scripts/kafka-local --brokers 3`` in
its own home, started once per session and stopped at its end); they are marked ``cluster``.
Tests under ``tests/fault`` are marked ``fault`` and ``integration`` (they need a real broker).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    # The scenarios import their helpers as tests.fault.* and tests.integration.*.
    sys.path.insert(0, str(REPO))

from tests.conftest import kafka_local  # noqa: E402
from tests.fault.broker_cluster import NODES, BrokerCluster  # noqa: E402
from tests.fault.checker import RESULTS_DIR, SESSION_FIGURES  # noqa: E402
from tests.fault.scenario import PrivateBroker, free_port  # noqa: E402
from tests.integration.kafka_helpers import Cluster  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/fault/" in item.path.as_posix():
            item.add_marker(pytest.mark.fault)
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One figure line per scenario run in this session (also in .streamproc/reliability/)."""
    if not SESSION_FIGURES:
        return
    terminalreporter.section("reliability figures")
    for line in SESSION_FIGURES:
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"results in {RESULTS_DIR}; render with scripts/reliability-report")


@pytest.fixture
def cluster(kafka_bootstrap: str, topic_prefix: str) -> Cluster:
    """The shared session broker, with this test's own lane topics (created by the test)."""
    return Cluster(kafka_bootstrap, topic_prefix)


PRIVATE_HOME_PREFIX = "kafka-fault-session-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_orphaned_brokers(prefix: str = PRIVATE_HOME_PREFIX, *extra: str) -> None:
    """Stop private brokers left by test sessions that died without teardown (a crash, a kill)."""
    for home in (REPO / ".streamproc").glob(f"{prefix}*"):
        owner = home.name.removeprefix(prefix)
        if owner.isdigit() and not _pid_alive(int(owner)):
            kafka_local("stop", home, *extra)
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def private_broker_session() -> Iterator[PrivateBroker]:
    _stop_orphaned_brokers()
    home = REPO / ".streamproc" / f"{PRIVATE_HOME_PREFIX}{os.getpid()}"
    broker = PrivateBroker(home, proxy_port=free_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def private_broker(private_broker_session: PrivateBroker) -> PrivateBroker:
    """A broker of this test session alone, running and reachable when the test starts."""
    private_broker_session.ensure_running()
    return private_broker_session


CLUSTER_HOME_PREFIX = "kafka-cluster-fault-session-"


@pytest.fixture(scope="session")
def broker_cluster_session() -> Iterator[BrokerCluster]:
    _stop_orphaned_brokers(CLUSTER_HOME_PREFIX, "--brokers", str(NODES))
    home = REPO / ".streamproc" / f"{CLUSTER_HOME_PREFIX}{os.getpid()}"
    cluster = BrokerCluster(home, proxy_ports={node: free_port() for node in range(1, NODES + 1)})
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def broker_cluster(broker_cluster_session: BrokerCluster) -> BrokerCluster:
    """The three-broker cluster of this test session, every node up when the test starts."""
    broker_cluster_session.ensure_running()
    return broker_cluster_session
