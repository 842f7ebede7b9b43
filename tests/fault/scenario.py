"""Building blocks of the fault scenarios: a private broker, producing with a ledger, child
consumers, committed offsets, the drain, and sampling commit safety while a scenario runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streamproc.chunk import Chunk
from streamproc.producer import ChunkProducer
from streamproc.settings import ProducerSettings
from tests.conftest import kafka_local
from tests.fault.checker import PartitionKey, commit_safety_violations
from tests.fault.ledger import AckLedger, read_dead_lettered, read_processed
from tests.fault.proxy import TcpProxy
from tests.integration.kafka_helpers import Cluster, wait_until

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateBroker:
    """A broker in its own ``STREAMPROC_KAFKA_HOME``, with a proxy in front of a second listener.

    ``bootstrap`` reaches the broker directly (for producers, admin and read-back);
    ``proxied_bootstrap`` goes through :attr:`proxy`, which :meth:`TcpProxy.cut` cuts.
    """

    def __init__(self, home: Path, *, proxy_port: int) -> None:
        self.home = home
        self.proxy_port = proxy_port
        self.bootstrap = ""
        self.proxy: TcpProxy | None = None

    @property
    def proxied_bootstrap(self) -> str:
        return f"127.0.0.1:{self.proxy_port}"

    def run(self, command: str, *extra: str) -> str:
        return kafka_local(command, self.home, *extra)

    def start(self) -> None:
        if (self.home / "state.json").exists():
            self.bootstrap = self.run("start", "--keep-data")
        else:
            self.bootstrap = self.run("start", "--external-advertised-port", str(self.proxy_port))
        state = json.loads((self.home / "state.json").read_text())
        if self.proxy is None:
            self.proxy = TcpProxy(self.proxy_port, state["external_port"]).start()
        self.proxy.restore()

    def stop(self) -> None:
        self.run("stop")

    def restart(self) -> None:
        self.bootstrap = self.run("restart")

    def running(self) -> bool:
        try:
            self.run("status")
        except RuntimeError:
            return False
        return True

    def ensure_running(self) -> None:
        if not self.running():
            self.start()
        assert self.proxy is not None
        self.proxy.restore()

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
        self.run("stop")


def producer_for(
    bootstrap: str, prefix: str, ledger: AckLedger, **overrides: object
) -> ChunkProducer:
    values: dict[str, object] = {"bootstrap_servers": bootstrap, "topic_prefix": prefix}
    values.update(overrides)
    return ChunkProducer(
        ProducerSettings(**values),  # type: ignore[arg-type]  # test overrides are loose
        on_delivery=ledger.on_delivery,
    )


def produce(producer: ChunkProducer, ledger: AckLedger, chunks: Iterable[Chunk]) -> None:
    for chunk in chunks:
        ledger.produced += 1  # an attempt, even when refused before it reaches the broker
        producer.produce(chunk)


class PacedProducer:
    """Produce chunks on a thread at a steady rate, recording every delivery report."""

    def __init__(
        self, producer: ChunkProducer, ledger: AckLedger, chunks: Iterable[Chunk], per_s: float
    ) -> None:
        self.producer = producer
        self.ledger = ledger
        self._chunks = chunks
        self._interval = 1.0 / per_s
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> PacedProducer:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            next_at = time.monotonic()
            for chunk in self._chunks:
                self.producer.produce(chunk)
                self.ledger.produced += 1
                next_at += self._interval
                # poll returns as soon as it served a delivery report: wait out the interval.
                while (wait_s := next_at - time.monotonic()) > 0:
                    self.producer.poll(wait_s)
            self.producer.flush(180)
        except BaseException as exc:  # noqa: BLE001  # reported by join()
            self.error = exc

    def join(self, timeout_s: float = 240) -> None:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "the producer did not finish"
        if self.error is not None:
            raise self.error


def lane_partitions(cluster: Cluster) -> list[PartitionKey]:
    metadata = cluster.admin.list_topics(timeout=10)
    return [
        (topic, partition)
        for topic in cluster.lanes.topics
        for partition in sorted(metadata.topics[topic].partitions)
    ]


def high_watermarks(cluster: Cluster, timeout_s: float = 30) -> dict[PartitionKey, int]:
    """High watermarks of every lane partition, retried while leaders are being (re)elected."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return {
                (topic, partition): high
                for topic in cluster.lanes.topics
                for partition, high in cluster.high_watermarks(topic).items()
            }
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def committed(cluster: Cluster, group: str) -> dict[PartitionKey, int]:
    """Committed offsets of every lane partition (0 where nothing is committed yet)."""
    found: dict[PartitionKey, int] = {}
    for topic in cluster.lanes.topics:
        for partition, offset in cluster.committed(group, topic).items():
            found[(topic, partition)] = max(offset, 0)
    return found


def committed_via(consumer: Consumer, keys: list[PartitionKey]) -> dict[PartitionKey, int]:
    """Committed offsets asked with an OffsetFetch of a consumer that never joins the group.

    (Not the AdminClient: librdkafka 2.x can abort in its admin coordinator lookup when a
    request times out while the coordinator is loading, exactly what a restarted broker does.)
    """
    found = consumer.committed([TopicPartition(t, p) for t, p in keys], timeout=5)
    return {(tp.topic, tp.partition): max(tp.offset, 0) for tp in found}


class CommitSampler:
    """Check I3 every ``interval_s`` while a scenario runs (committed first, ledgers second)."""

    def __init__(
        self,
        bootstrap: str,
        group: str,
        keys: list[PartitionKey],
        directory: Path,
        interval_s: float = 0.5,
    ) -> None:
        self._reader = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        )
        self._keys = keys
        self._directory = directory
        self._interval_s = interval_s
        self.samples = 0
        self.violations: list[list[str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> CommitSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                offsets = committed_via(self._reader, self._keys)
            except KafkaException:  # broker down or coordinator loading: skip this sample
                continue
            self.samples += 1
            found = commit_safety_violations(offsets, self._directory)
            if found:
                self.violations.append(found)

    def stop(self) -> list[list[str]]:
        self._stop.set()
        self._thread.join(30)
        self._reader.close()
        return self.violations


def wait_drained(directory: Path, ledger: AckLedger, timeout_s: float = 120) -> None:
    """Wait until every acknowledged id is in the processed or dead-letter ledger."""
    from tests.fault.ledger import read_acked

    def drained() -> bool:
        done = {e.id for e in read_processed(directory)} | {
            e.id for e in read_dead_lettered(directory)
        }
        return {a.id for a in read_acked(directory)} <= done

    wait_until(drained, timeout_s=timeout_s, what="every acknowledged chunk to be handled")


def spawn_consumer(
    bootstrap: str,
    prefix: str,
    group: str,
    directory: Path,
    *,
    sleep_s: float = 0.0,
    batch: int = 50,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``streamproc consume`` as a child process with the ledger handler."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "STREAMPROC_TEST_LEDGER_DIR": str(directory),
        "STREAMPROC_TEST_HANDLER_SLEEP_S": str(sleep_s),
        "STREAMPROC_MAX_BATCH_MESSAGES": str(batch),
        **(extra_env or {}),
    }
    command = [
        sys.executable, "-m", "streamproc", "consume",
        "--bootstrap-servers", bootstrap, "--topic-prefix", prefix, "--group", group,
        "--handler", "tests.fault.child_handler:ChildLedgerHandler",
        "--metrics-port", "0", "--log-level", "INFO",
    ]  # fmt: skip
    log = directory / f"{group}-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def signal_and_wait(
    process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 30
) -> int:
    process.send_signal(sig)
    return process.wait(timeout_s)
