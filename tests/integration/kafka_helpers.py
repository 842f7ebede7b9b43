"""Helpers for integration tests: topics, producing, reading back, consumers on threads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    TopicPartition,
)
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # NewPartitions: public, untyped
    AdminClient,
    NewPartitions,
)

from streamproc.chunk import Chunk
from streamproc.consumer import PriorityConsumer
from streamproc.lag import committed_offsets
from streamproc.lanes import Lanes
from streamproc.messages import coordinates
from streamproc.producer import ChunkProducer
from streamproc.settings import ConsumerSettings, KafkaSettings, ProducerSettings
from streamproc.topics import TopicAdmin, await_writable


@dataclass
class Cluster:
    """One test's view of the broker: its lane topics and clients."""

    bootstrap: str
    prefix: str

    @property
    def lanes(self) -> Lanes:
        return Lanes(self.prefix)

    @cached_property
    def admin(self) -> AdminClient:
        # One client for the test: a client collected while its futures are pending
        # destroys them ("Broker handle destroyed for termination").
        return AdminClient({"bootstrap.servers": self.bootstrap})

    def create_topics(self, partitions: int = 3, *, bulk_partitions: int | None = None) -> None:
        """Create the lane topics; ``bulk_partitions`` gives the bottom lane more partitions (so
        that, of two members, one can own bulk partitions only: each lane consumer is a member
        of its own, and a lone realtime partition goes to one of them)."""
        settings = KafkaSettings(bootstrap_servers=self.bootstrap, topic_prefix=self.prefix)
        TopicAdmin(self.admin, settings.topology).create(partitions=partitions)
        if bulk_partitions is None:
            return
        bulk = self.lanes.bottom.topic
        self.admin.create_partitions([NewPartitions(bulk, bulk_partitions)])[bulk].result()
        wait_until(
            lambda: len(self.admin.list_topics(bulk).topics[bulk].partitions) == bulk_partitions,
            what=f"{bulk} to have {bulk_partitions} partitions",
        )
        await_writable(self.admin, [bulk])  # as TopicAdmin.create does: see its docstring

    def producer(self) -> ChunkProducer:
        return ChunkProducer(
            ProducerSettings(bootstrap_servers=self.bootstrap, topic_prefix=self.prefix)
        )

    def produce(self, chunks: Iterable[Chunk]) -> int:
        producer = self.producer()
        count = producer.produce_many(chunks)
        producer.flush()
        assert producer.stats.failed == 0
        return count

    def consumer_settings(self, group: str, **overrides: object) -> ConsumerSettings:
        values: dict[str, object] = {
            "bootstrap_servers": self.bootstrap,
            "topic_prefix": self.prefix,
            "group_id": group,
            "session_timeout_ms": 10_000,
        }
        values.update(overrides)
        return ConsumerSettings(**values)  # type: ignore[arg-type]  # test overrides are loose

    def high_watermarks(self, topic: str) -> dict[int, int]:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "watermarks"})
        try:
            metadata = consumer.list_topics(topic, timeout=10)
            return {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in metadata.topics[topic].partitions
            }
        finally:
            consumer.close()

    def committed(self, group: str, topic: str) -> dict[int, int]:
        partitions = [TopicPartition(topic, p) for p in self.high_watermarks(topic)]
        offsets = committed_offsets({"bootstrap.servers": self.bootstrap}, group, partitions)
        return {partition: offset for (_, partition), (offset, _) in offsets.items()}

    def read_all(self, topic: str) -> list[object]:
        """Every message of ``topic`` from the beginning up to the current high watermarks."""
        highs = self.high_watermarks(topic)
        consumer = Consumer(
            {"bootstrap.servers": self.bootstrap, "group.id": "reader", "enable.auto.commit": False}
        )
        consumer.assign([TopicPartition(topic, p, 0) for p in highs])
        messages: list[object] = []
        remaining = sum(highs.values())
        deadline = time.monotonic() + 30
        while remaining > 0 and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.5):
                if message.error() is None:
                    messages.append(message)
                    remaining -= 1
        consumer.close()
        return messages


class ThreadedConsumer:
    """A PriorityConsumer running on a thread, stopped cleanly at the end of the test."""

    def __init__(self, consumer: PriorityConsumer) -> None:
        self.consumer = consumer
        self.exit_code: int | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.exit_code = self.consumer.run(install_signal_handlers=False)

    def start(self) -> ThreadedConsumer:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30) -> int | None:
        self.consumer.stop()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "consumer did not stop"
        return self.exit_code

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


def wait_until(condition: Callable[[], bool], timeout_s: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what or condition}")


def high_watermarks(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"hw-{uuid.uuid4().hex}"})
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        return {
            partition: consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[
                1
            ]
            for partition in metadata.topics[topic].partitions
        }
    finally:
        consumer.close()


def read_topic(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[Any]:
    """Every message of ``topic``, from offset 0 up to the high watermarks taken first."""
    highs = high_watermarks(bootstrap, topic)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    messages: list[Any] = []
    try:
        pending = {partition: high for partition, high in highs.items() if high > 0}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in pending])
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.5):
                assert message.error() is None, message.error()
                messages.append(message)
                _, partition, offset = coordinates(message)
                if partition in pending and offset + 1 >= pending[partition]:
                    del pending[partition]
        assert not pending, f"{topic}: partitions {sorted(pending)} not read to the end"
    finally:
        consumer.close()
    return messages


def check_committed_at_high_watermarks(cluster: Cluster, group: str) -> None:
    """After a clean stop the group has committed every lane to its end."""
    for topic in cluster.lanes.topics:
        assert cluster.committed(group, topic) == cluster.high_watermarks(topic), topic


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
    """Signal a child consumer and wait for its exit code."""
    process.send_signal(sig)
    return process.wait(timeout_s)


HERE = Path(__file__).resolve().parent
# Every child consumer started by start_ledger_consumer; the integration conftest kills those
# still running after each test, so a failed test leaves none running into the next one.
CHILDREN: list[subprocess.Popen[bytes]] = []


def start_ledger_consumer(
    cluster: Cluster, group: str, ledger: Path, *args: str, **env: str
) -> subprocess.Popen[bytes]:
    """``streamproc consume`` in a child process, with the ledger handler of ``ledger_handler``.

    ``args`` are extra CLI flags, ``env`` extra environment (``STREAMPROC_*`` settings and the
    handler's ``STREAMPROC_TEST_HANDLER_SLEEP_S``). Its output goes to a log beside the ledger.
    """
    command = [
        sys.executable, "-m", "streamproc", "consume",
        "--bootstrap-servers", cluster.bootstrap, "--topic-prefix", cluster.prefix,
        "--group", group, "--handler", "ledger_handler:LedgerHandler",
        "--metrics-port", "0", "--log-level", "INFO", *args,
    ]  # fmt: skip
    environment = {**os.environ, "PYTHONPATH": str(HERE), "STREAMPROC_TEST_LEDGER": str(ledger)}
    with (ledger.parent / f"{group}-{time.monotonic_ns()}.log").open("wb") as log:
        child = subprocess.Popen(
            command, env={**environment, **env}, stdout=log, stderr=subprocess.STDOUT
        )
    CHILDREN.append(child)
    return child


def kill_children() -> None:
    """Kill the child consumers still running (after a failed test)."""
    while CHILDREN:
        child = CHILDREN.pop()
        if child.poll() is None:
            child.kill()
        child.wait(10)
