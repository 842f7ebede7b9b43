"""Fixtures of the integration tier (helpers live in kafka_helpers.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from kafka_helpers import Cluster, ThreadedConsumer, kill_children

from streamproc.consumer import PriorityConsumer


@pytest.fixture
def cluster(kafka_bootstrap: str, topic_prefix: str) -> Cluster:
    return Cluster(kafka_bootstrap, topic_prefix)


@pytest.fixture
def run_consumer() -> Iterator[Callable[[PriorityConsumer], ThreadedConsumer]]:
    """Start consumers on threads; every one still running is stopped after the test."""
    started: list[ThreadedConsumer] = []

    def start(consumer: PriorityConsumer) -> ThreadedConsumer:
        threaded = ThreadedConsumer(consumer).start()
        started.append(threaded)
        return threaded

    yield start
    for threaded in started:
        if threaded.alive:
            threaded.stop()


@pytest.fixture(autouse=True)
def _no_child_consumer_outlives_its_test() -> Iterator[None]:
    yield
    kill_children()
