"""Building blocks of the fault scenarios: a private broker, producing with a ledger, child
consumers, committed offsets, the drain, sampling commit safety while a scenario runs, and
sampling the flow state child consumers publish on /metrics."""

from __future__ import annotations

import bisect
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # NewTopic: public, untyped
    AdminClient,
    NewTopic,
)
from prometheus_client.parser import text_string_to_metric_families

from streamproc.chunk import Chunk
from streamproc.consumer import PriorityConsumer
from streamproc.messages import coordinates
from streamproc.producer import ChunkProducer
from streamproc.settings import ProducerSettings
from tests.conftest import kafka_local
from tests.fault.checker import PartitionKey, commit_safety_violations
from tests.fault.ledger import (
    Acked,
    AckLedger,
    read_acked,
    read_dead_lettered,
    read_processed,
)
from tests.fault.proxy import TcpProxy
from tests.integration.kafka_helpers import Cluster, wait_until

REPO = Path(__file__).resolve().parents[2]

# I6 allows one policy tick plus one poll (poll_timeout_s, 0.1 s by default, is both) between
# realtime lag going over pause_lag and bulk being paused; chunks started within that are fine.
PRIORITY_GRACE_S = 0.2


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
            warm_up(self.bootstrap)
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


def warm_up(bootstrap: str, timeout_s: float = 60.0) -> None:
    """Do once, on a broker just formatted, what its first clients would: the scenarios test a
    restart of a broker in use, not one of a broker seconds old.

    A first idempotent producer waits for the broker's first block of producer ids
    (InitProducerId answers "coordinator load in progress" meanwhile), and a first consumer group
    creates ``__consumer_offsets`` and loads its coordinator. A restart in the middle of either
    is a scenario of its own (and left librdkafka clients stuck for minutes).
    """
    topic = "warm-up"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(timeout_s)
    delivered: list[KafkaError | None] = []
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    producer.produce(topic, b"warm-up", on_delivery=lambda error, _: delivered.append(error))
    producer.flush(timeout_s)
    assert delivered == [None], f"the warm-up message was not delivered: {delivered}"
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "warm-up", "auto.offset.reset": "earliest"}
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout_s
        message = None
        while message is None or message.error() is not None:
            assert time.monotonic() < deadline, "the warm-up consumer got nothing"
            message = consumer.poll(0.5)
        consumer.commit(message=message, asynchronous=False)
    finally:
        consumer.close()


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


def undeliverable_offsets(cluster: Cluster, timeout_s: float = 60) -> dict[PartitionKey, set[int]]:
    """Offsets of the lane partitions that a read_committed consumer never gets.

    Transaction markers and the records of aborted transactions: read every partition from its
    start until the consumer's position (which passes markers) reaches the high watermark.
    """
    highs = high_watermarks(cluster)
    consumer = Consumer(
        {
            "bootstrap.servers": cluster.bootstrap,
            "group.id": "undeliverable",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    delivered: dict[PartitionKey, set[int]] = {key: set() for key in highs}
    try:
        consumer.assign([TopicPartition(t, p, 0) for t, p in highs])
        deadline = time.monotonic() + timeout_s
        pending = {key for key, high in highs.items() if high > 0}
        while pending:
            assert time.monotonic() < deadline, f"not read to the end: {sorted(pending)}"
            for message in consumer.consume(500, 0.2):
                if message.error() is None:
                    topic, partition, offset = coordinates(message)
                    delivered[(topic, partition)].add(offset)
            for tp in consumer.position([TopicPartition(t, p) for t, p in pending]):
                if tp.offset >= highs[(tp.topic, tp.partition)]:
                    pending.discard((tp.topic, tp.partition))
    finally:
        consumer.close()
    return {key: set(range(highs[key])) - delivered[key] for key in highs}


def committed(cluster: Cluster, group: str) -> dict[PartitionKey, int]:
    """Committed offsets of every lane partition (0 where nothing is committed yet)."""
    found: dict[PartitionKey, int] = {}
    for topic in cluster.lanes.topics:
        for partition, offset in cluster.committed(group, topic).items():
            found[(topic, partition)] = max(offset, 0)
    return found


def committed_to_the_end(cluster: Cluster, group: str) -> bool:
    """The group has committed every lane partition up to its high watermark (False while the
    group coordinator does not answer, as after a broker restart)."""
    try:
        return committed(cluster, group) == high_watermarks(cluster)
    except KafkaException:
        return False


def partition_owners(cluster: Cluster, group: str) -> dict[PartitionKey, str]:
    """The client id of the group member each lane partition is assigned to, as the coordinator
    tells it (a partition of no member is left out)."""
    future = cluster.admin.describe_consumer_groups([group], request_timeout=10)[group]
    description = future.result()
    return {
        (tp.topic, tp.partition): member.client_id
        for member in description.members or ()
        for tp in (member.assignment.topic_partitions if member.assignment else ())
    }


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


def wait_drained(
    directory: Path,
    ledger: AckLedger,
    timeout_s: float = 120,
    consumer: PriorityConsumer | None = None,
) -> None:
    """Wait until every acknowledged id is in the processed or dead-letter ledger.

    On a timeout the error says where the chunks not handled are and, given the ``consumer``
    running in this process, what it holds: enough to tell a stuck fetch from a held lane.
    """

    def missing() -> list[Acked]:
        done = {e.id for e in read_processed(directory)} | {
            e.id for e in read_dead_lettered(directory)
        }
        return [a for a in read_acked(directory) if a.id not in done]

    try:
        wait_until(
            lambda: not missing(),
            timeout_s=timeout_s,
            what="every acknowledged chunk to be handled",
        )
    except AssertionError as timed_out:
        found = describe_missing(missing(), directory)
        if consumer is not None:
            found += f"; consumer: {describe_consumer(consumer)}"
        raise AssertionError(f"{timed_out}; {found}") from None


def describe_consumer(consumer: PriorityConsumer) -> str:
    """A running consumer's state in one line: assignment, holds, health and readiness."""
    assigned = ",".join(f"{topic}[{partition}]" for topic, partition in consumer.assignment)
    held = ",".join(f"{topic}[{partition}]" for topic, partition in consumer.paused_partitions)
    return (
        f"assigned {assigned or 'nothing'}; held {held or 'nothing'};"
        f" healthy {consumer.healthy()}; ready {consumer.ready()}"
    )


def describe_missing(missing: list[Acked], directory: Path) -> str:
    """Where the acknowledged chunks not handled are, per partition, beside how far handling got
    there: tells a partition never fetched from one fetched but held, at a glance."""
    handled: dict[PartitionKey, int] = {}
    for entry in read_processed(directory):
        key = (entry.topic, entry.partition)
        handled[key] = max(handled.get(key, -1), entry.offset)
    by_partition: dict[PartitionKey, list[int]] = {}
    for acked in missing:
        offsets = by_partition.setdefault((acked.topic, acked.partition), [])
        if acked.offset is not None:
            offsets.append(acked.offset)
    parts = [
        f"{topic}[{partition}]: {len(offsets)} missing from offset"
        f" {min(offsets, default='?')}, handled up to {handled.get((topic, partition), 'none')}"
        for (topic, partition), offsets in sorted(by_partition.items())
    ]
    return f"{len(missing)} not handled: " + "; ".join(parts)


def spawn_consumer(
    bootstrap: str,
    prefix: str,
    group: str,
    directory: Path,
    *,
    sleep_s: float = 0.0,
    batch: int = 50,
    extra_env: dict[str, str] | None = None,
    metrics_port: int = 0,
) -> subprocess.Popen[bytes]:
    """``streamproc consume`` as a child process with the ledger handler.

    ``metrics_port`` 0 runs it without /metrics; :class:`MetricsSampler` reads a port given here.
    """
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
        "--metrics-port", str(metrics_port), "--log-level", "INFO",
    ]  # fmt: skip
    log = directory / f"{group}-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def signal_and_wait(
    process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 30
) -> int:
    process.send_signal(sig)
    return process.wait(timeout_s)


@dataclass(frozen=True, slots=True)
class FlowSample:
    """One scrape of a child consumer's /metrics: its flow state at ``at`` (Unix seconds)."""

    at: float
    bulk_paused: bool
    realtime_lag: float | None  # the lag the flow policy sees; None while unknown (NaN)
    assigned: Mapping[str, int]  # partitions assigned, per lane

    def bulk_due_paused(self, pause_lag: int) -> bool:
        """I6: bulk held paused, or realtime lag over ``pause_lag`` (bulk must pause)."""
        return self.bulk_paused or (self.realtime_lag is not None and self.realtime_lag > pause_lag)


def scrape_flow(port: int, timeout_s: float = 1.0) -> FlowSample:
    """Read the documented flow series of one consumer: lane paused, lane lag, assignment."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode()
    at = time.time()
    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "lane" in sample.labels:
                values[(sample.name, sample.labels["lane"])] = sample.value
    lag = values.get(("streamproc_lane_lag_messages", "realtime"))
    return FlowSample(
        at=at,
        bulk_paused=values.get(("streamproc_lane_paused", "bulk"), 0.0) == 1.0,
        realtime_lag=None if lag is None or lag != lag else lag,  # NaN != NaN: unknown
        assigned={
            lane: int(value)
            for (name, lane), value in values.items()
            if name == "streamproc_assigned_partitions"
        },
    )


class MetricsSampler:
    """Scrape the /metrics of child consumers every ``interval_s``, keeping each one's samples.

    One thread per child, so a slow answer of one does not thin out the other's samples. A child
    that stopped answering (killed, exiting) simply gets no more samples.
    """

    def __init__(self, ports: Mapping[int, int], interval_s: float = 0.05) -> None:
        self._interval_s = interval_s
        self.samples: dict[int, list[FlowSample]] = {pid: [] for pid in ports}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(pid, port), daemon=True)
            for pid, port in ports.items()
        ]

    def start(self) -> MetricsSampler:
        for thread in self._threads:
            thread.start()
        return self

    def latest(self, pid: int) -> FlowSample | None:
        found = self.samples[pid]
        return found[-1] if found else None

    def _run(self, pid: int, port: int) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.samples[pid].append(scrape_flow(port))
            # Not listening yet, or gone (a kill can cut an answer short: a truncated body).
            except (OSError, http.client.HTTPException, ValueError):
                continue

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)


def bulk_started_while_due_paused(
    samples: list[FlowSample], bulk_starts: Iterable[tuple[float, int]], pause_lag: int
) -> int:
    """I6 from outside a member: bulk chunks it started while bulk had been due paused.

    ``bulk_starts`` are (start time, chunks) of the member's bulk handler calls. A call counts
    when the scrapes on both sides of its start say bulk was due paused, and the run of such
    scrapes before it began more than :data:`PRIORITY_GRACE_S` earlier. Scrapes only see a state
    after it began, so the run is never taken for longer than it was; a start with no scrape
    after it (the member was killed) is not judged.
    """
    times = [sample.at for sample in samples]
    due = [sample.bulk_due_paused(pause_lag) for sample in samples]
    run_began: list[float] = []
    for index, now_due in enumerate(due):
        if not now_due:
            run_began.append(float("inf"))
        elif index > 0 and due[index - 1]:
            run_began.append(run_began[-1])
        else:
            run_began.append(times[index])
    violations = 0
    for started_at, chunks in bulk_starts:
        after = bisect.bisect_left(times, started_at)
        before = after - 1
        if before < 0 or after >= len(times) or not (due[before] and due[after]):
            continue
        if started_at - run_began[before] > PRIORITY_GRACE_S:
            violations += chunks
    return violations
