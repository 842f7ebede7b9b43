"""The PostgreSQL sink against the real server (scripts/postgres-local) and the real broker.

Each test writes its own table. What is checked: a stale bulk copy never replaces a newer
realtime one whichever is handled first; redeliveries after a consumer is killed leave one row
per chunk; a server restart or crash mid-stream loses nothing and parks nothing; many consumers
writing the same chunks at once end with the newest version of each; a row the server refuses
is dead-lettered while the rest of its batch is written.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from kafka_helpers import (
    Cluster,
    ThreadedConsumer,
    check_committed_at_high_watermarks,
    stop,
    wait_until,
)

from streamproc.chunk import Chunk
from streamproc.codec import ChunkCodec
from streamproc.consumer import PriorityConsumer
from streamproc.deadletter import HEADER_ERROR_REASON
from streamproc.errors import SinkUnavailableError
from streamproc.handlers import ChunkRecord
from streamproc.postgres_sink import PostgresSink
from streamproc.samples import sample_chunks
from tests.conftest import postgres_local

RunConsumer = Callable[[PriorityConsumer], ThreadedConsumer]
DATASET = "ds"


@pytest.fixture
def table() -> str:
    return f"chunks_{uuid.uuid4().hex[:12]}"


def sink_uri(postgres_url: str, table: str, **parameters: object) -> str:
    query = "&".join(f"{key}={value}" for key, value in {"table": table, **parameters}.items())
    return f"{postgres_url}{'&' if '?' in postgres_url else '?'}{query}"


def stored(postgres_url: str, table: str) -> dict[str, tuple[int, str, str]]:
    """``chunk_key -> (version, lane, chunk_html)`` of every row."""
    with psycopg.connect(postgres_url) as connection:
        found = connection.execute(
            f"SELECT chunk_key, version, lane, chunk->>'chunk_html' FROM {table}"  # noqa: S608
        ).fetchall()
    return {key: (version, lane, html) for key, version, lane, html in found}


def row_count(postgres_url: str, table: str) -> int:
    try:
        with psycopg.connect(postgres_url, connect_timeout=2) as connection:
            found = connection.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
    except psycopg.errors.UndefinedTable:
        return 0  # the sink of a child process has not created it yet
    except psycopg.OperationalError:
        return -1  # the server is restarting
    return int(found[0]) if found else 0


def copy(key: str, html: str, *, bulk: bool) -> Chunk:
    return Chunk(chunk_html=html, tracking_id=key, dataset_id=DATASET, low_priority=bulk)


def produce_at(cluster: Cluster, chunks: Iterable[tuple[Chunk, int]]) -> int:
    """Produce each chunk to its lane with an explicit timestamp (its version), any-client style."""
    codec = ChunkCodec()
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "linger.ms": 5})
    count = 0
    for chunk, timestamp_ms in chunks:
        producer.produce(
            cluster.lanes.route(chunk).topic,
            codec.encode(chunk),
            chunk.key.encode(),
            timestamp=timestamp_ms,
        )
        count += 1
    assert producer.flush(30) == 0
    return count


def handled(*consumers: PriorityConsumer) -> int:
    return sum(lane.handled for c in consumers for lane in c.stats.lanes.values())


def dead_lettered(*consumers: PriorityConsumer) -> int:
    return sum(lane.dead_lettered for c in consumers for lane in c.stats.lanes.values())


def test_stale_bulk_copy_never_replaces_newer_realtime_in_either_order(
    cluster: Cluster, postgres_url: str, table: str, run_consumer: RunConsumer
) -> None:
    cluster.create_topics(partitions=3)
    sink = PostgresSink.from_uri(sink_uri(postgres_url, table))
    consumer = PriorityConsumer(cluster.consumer_settings("race"), sink)
    threaded = run_consumer(consumer)
    newer = int(time.time() * 1000)
    older = newer - 60_000
    count = 200
    try:
        # (a) the newer realtime version is handled first, the stale bulk copy after it.
        sent = produce_at(cluster, ((copy(f"a-{i}", "realtime", bulk=False), newer)
                                    for i in range(count)))  # fmt: skip
        wait_until(lambda: handled(consumer) == sent, what="the realtime versions of a-*")
        sent += produce_at(cluster, ((copy(f"a-{i}", "bulk", bulk=True), older)
                                     for i in range(count)))  # fmt: skip
        # (b) the stale bulk copy is handled first, the newer realtime version after it.
        sent += produce_at(cluster, ((copy(f"b-{i}", "bulk", bulk=True), older)
                                     for i in range(count)))  # fmt: skip
        wait_until(lambda: handled(consumer) == sent, what="the bulk copies")
        between = stored(postgres_url, table)
        sent += produce_at(cluster, ((copy(f"b-{i}", "realtime", bulk=False), newer)
                                     for i in range(count)))  # fmt: skip
        # (c) both copies waiting at once: the consumer picks the order.
        sent += produce_at(
            cluster,
            (
                item
                for i in range(count)
                for item in (
                    (copy(f"c-{i}", "bulk", bulk=True), older),
                    (copy(f"c-{i}", "realtime", bulk=False), newer),
                )
            ),
        )
        wait_until(lambda: handled(consumer) == sent, what="every copy")
    finally:
        threaded.stop()
        sink.close()

    assert consumer.stats.lanes["bulk"].handled == 3 * count, "every stale copy was handled"
    assert {between[f"a-{i}"] for i in range(count)} == {(newer, "realtime", "realtime")}
    assert {between[f"b-{i}"] for i in range(count)} == {(older, "bulk", "bulk")}
    rows = stored(postgres_url, table)
    assert len(rows) == 3 * count
    assert set(rows.values()) == {(newer, "realtime", "realtime")}
    assert dead_lettered(consumer) == 0


def start_cli_consumer(
    cluster: Cluster, group: str, sink: str, log_dir: Path, **environment: str
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "streamproc", "consume",
        "--bootstrap-servers", cluster.bootstrap, "--topic-prefix", cluster.prefix,
        "--group", group, "--sink", sink, "--metrics-port", "0", "--log-level", "INFO",
    ]  # fmt: skip
    with (log_dir / f"{group}-{time.monotonic_ns()}.log").open("wb") as log:
        return subprocess.Popen(
            command,
            env={**os.environ, **environment},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def test_redeliveries_after_a_consumer_kill_leave_one_row_per_chunk(
    cluster: Cluster, postgres_url: str, table: str, tmp_path: Path
) -> None:
    cluster.create_topics(partitions=3)
    total = 4_000
    chunks = list(sample_chunks(total, low_priority_ratio=0.3, prefix="k", dataset_id=DATASET))
    cluster.produce(chunks)
    uri = sink_uri(postgres_url, table)
    # No commit before the kill: everything the first process wrote is delivered again.
    first = start_cli_consumer(
        cluster, "kill", uri, tmp_path, STREAMPROC_AUTO_COMMIT_INTERVAL_MS="600000",
        STREAMPROC_MAX_BATCH_MESSAGES="50", STREAMPROC_SESSION_TIMEOUT_MS="6000",
    )  # fmt: skip
    wait_until(lambda: row_count(postgres_url, table) >= 1_000, what="the first consumer")
    first.kill()
    first.wait(10)
    written_before_kill = row_count(postgres_url, table)
    committed = {topic: cluster.committed("kill", topic) for topic in cluster.lanes.topics}
    redelivered = sum(
        high - max(committed[topic].get(partition, 0), 0)
        for topic in cluster.lanes.topics
        for partition, high in cluster.high_watermarks(topic).items()
    )
    assert redelivered > total - written_before_kill, "the restarted consumer sees duplicates"

    second = start_cli_consumer(cluster, "kill", uri, tmp_path)
    wait_until(lambda: row_count(postgres_url, table) == total, what="every chunk stored")
    wait_until(
        lambda: all(
            cluster.committed("kill", topic) == cluster.high_watermarks(topic)
            for topic in cluster.lanes.topics
        ),
        what="the second consumer to commit every lane",
    )
    assert stop(second) == 0
    check_committed_at_high_watermarks(cluster, "kill")
    rows = stored(postgres_url, table)
    assert sorted(rows) == sorted(str(chunk.tracking_id) for chunk in chunks)
    assert all(rows[str(chunk.tracking_id)][2] == chunk.chunk_html for chunk in chunks)


class RecordingSink:
    """The sink, recording every error it raises to the consumer."""

    def __init__(self, sink: PostgresSink) -> None:
        self.sink = sink
        self.errors: list[Exception] = []

    def handle_batch(self, records: Sequence[ChunkRecord]) -> None:
        try:
            self.sink.handle_batch(records)
        except Exception as exc:
            self.errors.append(exc)
            raise


def blocked_upserts(postgres_url: str, table: str) -> int:
    """Sessions waiting for a lock in an INSERT into ``table``."""
    with psycopg.connect(postgres_url) as connection:
        found = connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND position('INSERT INTO' in query) > 0 AND position(%s in query) > 0",
            (table,),
        ).fetchone()
    return int(found[0]) if found else 0


def release(postgres_url: str, prepared: str) -> None:
    """Roll the prepared transaction ``prepared`` back (it holds its locks until then)."""
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f"ROLLBACK PREPARED '{prepared}'")


@pytest.mark.parametrize("fault", ["restart", "crash"])
def test_server_restart_mid_stream_loses_nothing(
    cluster: Cluster,
    postgres_url: str,
    table: str,
    run_consumer: RunConsumer,
    fault: str,
) -> None:
    cluster.create_topics(partitions=3)
    sink = RecordingSink(PostgresSink.from_uri(sink_uri(postgres_url, table)))
    consumer = PriorityConsumer(cluster.consumer_settings(f"restart-{fault}"), sink)
    threaded = run_consumer(consumer)
    rounds, per_round = 30, 150
    keys: list[str] = []
    producing = threading.Event()
    producing.set()

    def stream() -> None:
        producer = cluster.producer()
        for round_ in range(rounds):
            batch = list(
                sample_chunks(
                    per_round,
                    low_priority_ratio=0.5,
                    prefix=f"r{round_}",
                    dataset_id=DATASET,
                    seed=round_,
                )
            )
            producer.produce_many(batch)
            producer.flush()
            keys.extend(str(chunk.tracking_id) for chunk in batch)
            time.sleep(0.1)
        producing.clear()

    hold = f"hold-{table}"
    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    try:
        wait_until(lambda: row_count(postgres_url, table) >= 600, what="the stream to start")
        # Hold the table in a prepared transaction, so the next batch's transaction waits, open,
        # when the server goes, and nothing (not even the end of the session that took the
        # lock) releases it before then; it survives the restart and is released after it.
        with psycopg.connect(postgres_url) as locker:
            locker.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
            locker.execute(f"PREPARE TRANSACTION '{hold}'")
        wait_until(lambda: blocked_upserts(postgres_url, table) > 0, what="a batch in flight")
        assert producing.is_set(), "the fault must come mid-stream"
        if fault == "restart":
            postgres_local("restart")  # fast shutdown: clients cut off, then the same cluster
        else:
            postgres_local("kill")  # immediate shutdown, no checkpoint: WAL recovery on start
            postgres_local("start", "--keep-data")
        release(postgres_url, hold)
        streamer.join(60)
        total = rounds * per_round
        wait_until(lambda: row_count(postgres_url, table) == total, what="every chunk stored")
        wait_until(lambda: handled(consumer) == total, what="the consumer to finish")
    finally:
        with contextlib.suppress(psycopg.Error):
            release(postgres_url, hold)  # if the test failed before releasing it
        threaded.stop()
        sink.sink.close()
    assert sink.errors, "the batch in flight failed with the server"
    assert all(isinstance(error, SinkUnavailableError) for error in sink.errors), sink.errors
    assert dead_lettered(consumer) == 0, "nothing parked because of the restart"
    assert sorted(stored(postgres_url, table)) == sorted(keys)


def test_many_consumers_at_once_keep_the_newest_version_of_each_chunk(
    cluster: Cluster, postgres_url: str, table: str, run_consumer: RunConsumer
) -> None:
    cluster.create_topics(partitions=4)
    count = 800
    newer = int(time.time() * 1000)
    older = newer - 60_000
    produce_at(
        cluster,
        (
            item
            for i in range(count)
            for item in (
                (copy(f"m-{i}", "bulk", bulk=True), older),
                (copy(f"m-{i}", "realtime", bulk=False), newer),
            )
        ),
    )
    uri = sink_uri(postgres_url, table, pool_max=2)
    sinks: list[PostgresSink] = []
    consumers: dict[str, list[PriorityConsumer]] = {"indexers": [], "replay": []}
    running: list[ThreadedConsumer] = []
    # Three members of one group taking whole batches, and a second group (a replay job)
    # writing the same chunks at the same time, four at once.
    members: list[tuple[str, dict[str, Any]]] = [("indexers", {})] * 3
    members.append(("replay", {"concurrency": 4}))
    for group, overrides in members:
        sink = PostgresSink.from_uri(uri)
        sinks.append(sink)
        consumer = PriorityConsumer(
            cluster.consumer_settings(group, max_batch_messages=100, **overrides), sink
        )
        consumers[group].append(consumer)
        running.append(run_consumer(consumer))
    try:
        # Rebalances while members join hand some chunks over twice: count by commits, which
        # reach the end of both lanes only once every chunk has been handled.
        for group in consumers:
            wait_until(
                lambda group=group: all(
                    cluster.committed(group, topic) == cluster.high_watermarks(topic)
                    for topic in cluster.lanes.topics
                ),
                timeout_s=120,
                what=f"group {group} to commit every copy",
            )
    finally:
        for threaded in running:
            threaded.stop()
        for sink in sinks:
            sink.close()
    everyone = [consumer for group in consumers.values() for consumer in group]
    assert dead_lettered(*everyone) == 0
    rows = stored(postgres_url, table)
    assert len(rows) == count
    assert set(rows.values()) == {(newer, "realtime", "realtime")}


def test_a_row_the_server_refuses_is_dead_lettered_and_its_batch_written(
    cluster: Cluster, postgres_url: str, table: str, run_consumer: RunConsumer
) -> None:
    cluster.create_topics(partitions=1)
    good = [copy(f"g-{i}", f"<p>{i}</p>", bulk=False) for i in range(20)]
    refused = copy("nul", "text with a NUL \x00 character", bulk=False)  # not storable as jsonb
    chunks = [*good[:10], refused, *good[10:]]
    now = int(time.time() * 1000)
    produce_at(cluster, ((chunk, now) for chunk in chunks))
    sink = PostgresSink.from_uri(sink_uri(postgres_url, table))
    consumer = PriorityConsumer(cluster.consumer_settings("refused"), sink)
    threaded = run_consumer(consumer)
    try:
        topic = cluster.lanes.top.topic
        wait_until(
            lambda: cluster.committed("refused", topic) == {0: len(chunks)},
            what="the commit past every chunk",
        )
    finally:
        threaded.stop()
        sink.close()
    assert sorted(stored(postgres_url, table)) == sorted(str(c.tracking_id) for c in good)
    parked = cluster.read_all(f"{topic}.dlq")
    assert len(parked) == 1
    headers = dict(parked[0].headers())
    assert headers[HEADER_ERROR_REASON] == b"handler_error"
    assert parked[0].key() == refused.key.encode()


def test_demo_runs_with_the_postgresql_sink(
    kafka_bootstrap: str, postgres_url: str, table: str
) -> None:
    command = [
        sys.executable, "-m", "streamproc", "demo", "--bootstrap-servers", kafka_bootstrap,
        "--bulk-count", "2000", "--realtime-seconds", "2", "--realtime-rate", "50",
        "--burst-size", "100", "--burst-every-s", "1", "--sink", sink_uri(postgres_url, table),
    ]  # fmt: skip
    result = subprocess.run(
        command,
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "complete: every produced chunk was handled" in result.stdout
    held = re.search(r"postgresql sink holds ([\d,]+) chunks", result.stdout)
    assert held is not None, result.stdout
    rows = int(held.group(1).replace(",", ""))
    assert rows > 2000  # the bulk backlog (distinct chunks) and the realtime stream
    assert row_count(postgres_url, table) == rows


def test_sink_unavailable_stop_policy_exits_without_committing_or_parking(
    cluster: Cluster, postgres_url: str, table: str, tmp_path: Path
) -> None:
    cluster.create_topics(partitions=1)
    topic = cluster.lanes.top.topic
    now = int(time.time() * 1000)
    produce_at(cluster, ((copy(f"s-{i}", "realtime", bulk=False), now) for i in range(200)))
    uri = sink_uri(postgres_url, table, wait_s=1)
    consumer = start_cli_consumer(
        cluster, "stop-policy", uri, tmp_path,
        STREAMPROC_ON_ERROR="sink_unavailable=stop", STREAMPROC_MAX_RETRIES="1",
    )  # fmt: skip
    try:
        wait_until(lambda: row_count(postgres_url, table) == 200, what="the first chunks")
        postgres_local("stop")
        produce_at(cluster, ((copy(f"s-{i}", "realtime", bulk=False), now)
                             for i in range(200, 300)))  # fmt: skip
        exit_code = consumer.wait(60)
    finally:
        if consumer.poll() is None:
            consumer.kill()
        postgres_local("start", "--keep-data")
    assert exit_code != 0, "the consumer stops when the sink stays unavailable"
    assert cluster.committed("stop-policy", topic)[0] <= 200, "nothing unwritten is committed"
    assert row_count(postgres_url, table) == 200

    second = start_cli_consumer(cluster, "stop-policy", uri, tmp_path)
    wait_until(lambda: row_count(postgres_url, table) == 300, what="the rest after the restart")
    wait_until(
        lambda: cluster.committed("stop-policy", topic) == {0: 300}, what="the commit to the end"
    )
    assert stop(second) == 0
    dead_letter_topics = cluster.admin.list_topics(timeout=10).topics
    if f"{topic}.dlq" in dead_letter_topics:
        assert sum(cluster.high_watermarks(f"{topic}.dlq").values()) == 0, "nothing parked"
