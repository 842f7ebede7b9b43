"""Transactional producers against the real broker: markers and aborts never leave a lane stuck.

Realtime is written in transactions (one in five aborted) over a bulk backlog, the way Kafka
Streams, Connect with exactly-once or any producer with a ``transactional.id`` writes. Every
transaction leaves a commit or abort marker per partition (an offset no consumer gets), and
aborted records a ``read_committed`` consumer never gets. streamproc must handle every committed
chunk once and no aborted one, resume bulk once realtime is drained, and commit the log end, so
that ``streamproc lag`` and Kafka's own ``kafka-consumer-groups`` both show lag 0.

Two transactional producers write the same transactions: the Java client of ``examples/java``
(``--transactional-id``, what Kafka Streams and Connect use underneath) and confluent-kafka's
(librdkafka).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import Producer
from kafka_helpers import Cluster, ThreadedConsumer, wait_until
from test_examples import java_producer
from typer.testing import CliRunner

from streamproc.chunk import Chunk
from streamproc.cli import app
from streamproc.codec import ChunkCodec
from streamproc.consumer import PriorityConsumer
from streamproc.handlers import ChunkRecord
from streamproc.samples import sample_chunks

RunConsumer = Callable[[PriorityConsumer], ThreadedConsumer]
WriteInTransactions = Callable[..., "Written"]
REPO = Path(__file__).resolve().parents[2]
KAFKA_LOCAL = REPO / "scripts" / "kafka-local"


@dataclass
class Written:
    committed: list[str] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)


def produce_in_transactions(
    bootstrap: str,
    topic: str,
    chunks: Iterable[Chunk],
    *,
    per_transaction: int,
    abort_every: int,
    transactional_id: str,
) -> Written:
    """Write ``chunks`` to ``topic`` in transactions; every ``abort_every``-th is aborted."""
    codec = ChunkCodec()
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": transactional_id,
            "partitioner": "murmur2_random",
            "linger.ms": 5,
        }
    )
    producer.init_transactions(30)
    written = Written()
    batch: list[Chunk] = []

    def end_transaction(number: int) -> None:
        producer.begin_transaction()
        for chunk in batch:
            producer.produce(topic, codec.encode(chunk), key=chunk.key)
        producer.flush(30)
        ids = [chunk.tracking_id or "" for chunk in batch]
        if number % abort_every == abort_every - 1:
            producer.abort_transaction(30)
            written.aborted += ids
        else:
            producer.commit_transaction(30)
            written.committed += ids
        batch.clear()

    number = 0
    for chunk in chunks:
        batch.append(chunk)
        if len(batch) == per_transaction:
            end_transaction(number)
            number += 1
    if batch:
        end_transaction(number)
    return written


def produce_in_transactions_java(
    bootstrap: str,
    topic: str,
    chunks: Iterable[Chunk],
    *,
    per_transaction: int,
    abort_every: int,
    transactional_id: str,
    work_dir: Path,
) -> Written:
    """The same with the Java example (kafka-clients' transactional producer)."""
    command = java_producer()  # skips the test when java or mvn is missing
    chunk_list = list(chunks)
    prefix = topic.rsplit(".", 1)[0]
    assert all(not chunk.low_priority for chunk in chunk_list) and topic == f"{prefix}.realtime"
    source = work_dir / "transactions.jsonl"
    source.write_text(
        "".join(json.dumps(c.model_dump(mode="json", exclude_none=True)) + "\n" for c in chunk_list)
    )
    result = subprocess.run(
        [*command, "--bootstrap-servers", bootstrap, "--topic-prefix", prefix,
         "--input", str(source), "--transactional-id", transactional_id,
         "--transaction-size", str(per_transaction), "--abort-every", str(abort_every)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    written = Written()
    for number, start in enumerate(range(0, len(chunk_list), per_transaction)):
        ids = [c.tracking_id or "" for c in chunk_list[start : start + per_transaction]]
        if number % abort_every == abort_every - 1:
            written.aborted += ids
        else:
            written.committed += ids
    transactions = -(-len(chunk_list) // per_transaction)
    assert (
        f"in {transactions} transactions ({transactions // abort_every} aborted): "
        f"{len(written.committed)} realtime" in result.stdout
    ), result.stdout
    return written


@dataclass
class Recorder:
    """Every chunk handled, by lane (ids in handling order)."""

    handled: dict[str, list[str]] = field(default_factory=lambda: {"realtime": [], "bulk": []})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle_batch(self, records: Sequence[ChunkRecord]) -> None:
        with self.lock:
            for record in records:
                self.handled[record.context.lane].append(record.chunk.tracking_id or "")

    def count(self, lane: str) -> int:
        with self.lock:
            return len(self.handled[lane])


def kafka_consumer_groups_lag(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    """LAG per partition as Kafka's own ``kafka-consumer-groups --describe`` prints it."""
    result = subprocess.run(
        [str(KAFKA_LOCAL), "consumer-groups", "--bootstrap-server", bootstrap,
         "--describe", "--group", group],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lags: dict[tuple[str, int], int] = {}
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[0] == group and fields[2].isdigit():
            assert fields[5].isdigit(), line  # "-" would mean no committed offset
            lags[(fields[1], int(fields[2]))] = int(fields[5])
    return lags


@pytest.mark.slow
@pytest.mark.parametrize("client", ["java", "librdkafka"])
def test_transactions_with_aborts_over_a_bulk_backlog_drain_and_commit_the_log_end(
    cluster: Cluster, run_consumer: RunConsumer, tmp_path: Path, client: str
) -> None:
    cluster.create_topics(partitions=3)
    realtime, bulk = cluster.lanes.top.topic, cluster.lanes.bottom.topic
    bulk_count = cluster.produce(sample_chunks(200, low_priority_ratio=1.0, prefix="bulk"))
    options: dict[str, object] = {"work_dir": tmp_path} if client == "java" else {}
    write: WriteInTransactions = (
        produce_in_transactions_java if client == "java" else produce_in_transactions
    )
    written = write(
        cluster.bootstrap,
        realtime,
        sample_chunks(1_000, low_priority_ratio=0.0, prefix="rt", seed=7),
        per_transaction=100,
        abort_every=5,
        transactional_id=f"{cluster.prefix}-rt",
        **options,
    )
    assert len(written.committed) == 800 and len(written.aborted) == 200
    # Markers and aborted records: the high watermarks are far past what can be delivered.
    assert sum(cluster.high_watermarks(realtime).values()) > 1_000

    recorder = Recorder()
    group = f"{cluster.prefix}-txn"  # one group per run: the broker is shared by the session
    # pause_lag well below the realtime backlog: bulk is held first, and must be resumed.
    consumer = PriorityConsumer(
        cluster.consumer_settings(group, pause_lag=100, max_batch_messages=50), recorder
    )
    threaded = run_consumer(consumer)
    wait_until(
        lambda: consumer.metrics.lanes["bulk"].pauses._value.get() >= 1,
        what="bulk to be paused behind the realtime backlog",
    )
    wait_until(
        lambda: (
            recorder.count("realtime") >= 800
            and recorder.count("bulk") >= bulk_count
            and not consumer.paused_lanes
        ),
        timeout_s=120,
        what="every committed realtime chunk and the bulk backlog, bulk resumed",
    )
    # Offsets reach the log end once the stored positions are committed (auto-commit).
    wait_until(
        lambda: all(
            cluster.committed(group, topic) == cluster.high_watermarks(topic)
            for topic in (realtime, bulk)
        ),
        what="committed offsets at the log end, past the last markers",
    )
    snapshot = consumer.stats.last_snapshot
    assert snapshot is not None
    assert snapshot.lanes["realtime"].lag_messages == 0
    assert consumer.metrics.lanes["bulk"].paused._value.get() == 0
    assert consumer.metrics.lanes["realtime"].lag._value.get() == 0
    assert threaded.stop() == 0

    handled_realtime = recorder.handled["realtime"]
    assert sorted(handled_realtime) == sorted(written.committed)  # each exactly once
    assert not set(handled_realtime) & set(written.aborted)
    assert len(recorder.handled["bulk"]) == len(set(recorder.handled["bulk"])) == bulk_count
    for topic in (realtime, bulk):
        assert cluster.committed(group, topic) == cluster.high_watermarks(topic), topic

    result = CliRunner().invoke(
        app,
        ["lag", "--bootstrap-servers", cluster.bootstrap, "--topic-prefix", cluster.prefix,
         "--group", group],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert re.search(r"^realtime: lag 0$", result.output, re.MULTILINE), result.output
    assert re.search(r"^bulk: lag 0$", result.output, re.MULTILINE), result.output

    # Kafka's own tool agrees (what KEDA's Kafka scaler and most dashboards compute).
    lags = kafka_consumer_groups_lag(cluster.bootstrap, group)
    assert {topic for topic, _ in lags} == {realtime, bulk}
    assert len(lags) == 6
    assert set(lags.values()) == {0}, lags
