"""The priority consumer against the real broker: flow control, rebalances, dead letters, sinks."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from confluent_kafka import Producer
from kafka_helpers import Cluster, ThreadedConsumer, wait_until

from streamproc.chunk import Chunk
from streamproc.codec import ChunkCodec
from streamproc.consumer import PriorityConsumer, loop
from streamproc.deadletter import (
    HEADER_ERROR_CLASS,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_REASON,
    HEADER_LANE,
    HEADER_OFFSET,
    HEADER_PARTITION,
    HEADER_TIMESTAMP,
    HEADER_TOPIC,
)
from streamproc.handlers import ChunkRecord, SqliteSink
from streamproc.kafkastats import FetchReport, Statistics, fetch_report
from streamproc.samples import sample_chunks

RunConsumer = Callable[[PriorityConsumer], ThreadedConsumer]


@dataclass
class FlowProbe:
    """A handler that checks, at the moment it handles a bulk chunk, that bulk may run."""

    pause_lag: int
    consumer: PriorityConsumer | None = None
    handled: dict[str, int] = field(default_factory=lambda: {"realtime": 0, "bulk": 0})
    bulk_while_paused: int = 0
    bulk_while_realtime_over: int = 0
    bulk_after_first_pause: int = 0
    delay_realtime_s: float = 0.0
    delay_bulk_s: float = 0.0

    def handle_batch(self, records: Sequence[ChunkRecord]) -> None:
        assert self.consumer is not None
        lane = records[0].context.lane
        if lane == "bulk":
            snapshot = self.consumer.stats.last_snapshot
            realtime_lag = snapshot.lanes["realtime"].lag_messages if snapshot else None
            if "bulk" in self.consumer.paused_lanes:
                self.bulk_while_paused += len(records)
            if realtime_lag is not None and realtime_lag > self.pause_lag:
                self.bulk_while_realtime_over += len(records)
            if self.consumer.metrics.lanes["bulk"].pauses._value.get() > 0:
                self.bulk_after_first_pause += len(records)
            if self.delay_bulk_s:
                time.sleep(self.delay_bulk_s * len(records))
        elif self.delay_realtime_s:
            time.sleep(self.delay_realtime_s * len(records))
        self.handled[lane] += len(records)


def test_bulk_pauses_on_realtime_burst_resumes_when_drained_and_drains(
    cluster: Cluster, run_consumer: RunConsumer
) -> None:
    cluster.create_topics(partitions=3)
    bulk_count, burst = 20_000, 4_000
    cluster.produce(sample_chunks(bulk_count, low_priority_ratio=1.0, prefix="bulk"))
    # Realtime handling costs 0.5 ms a chunk, so a burst builds a backlog the way real traffic does;
    # bulk costs 0.2 ms, so its 20,000 last at least 4 s: long enough that the burst, produced
    # while bulk drains, pauses bulk before bulk is done (the null handler drained it first).
    probe = FlowProbe(pause_lag=500, delay_realtime_s=0.0005, delay_bulk_s=0.0002)
    consumer = PriorityConsumer(cluster.consumer_settings("flow", pause_lag=500), probe)
    probe.consumer = consumer
    threaded = run_consumer(consumer)
    wait_until(lambda: probe.handled["bulk"] > 1_000, what="bulk to start")
    assert "bulk" not in consumer.paused_lanes

    cluster.produce(sample_chunks(burst, prefix="live", seed=3))
    wait_until(lambda: probe.handled["realtime"] == burst, what="the realtime burst")
    wait_until(lambda: probe.handled["bulk"] == bulk_count, what="bulk to drain")
    threaded.stop()

    pauses = consumer.metrics.lanes["bulk"].pauses._value.get()
    resumes = consumer.metrics.lanes["bulk"].resumes._value.get()
    assert pauses >= 1, "the burst over pause_lag must pause bulk"
    assert resumes == pauses, "bulk must be resumed once realtime drained"
    assert probe.bulk_while_paused == 0, "no bulk chunk may be handled while bulk is paused"
    assert probe.bulk_while_realtime_over == 0, "bulk ran although realtime lag was over pause_lag"
    assert probe.bulk_after_first_pause > 0, "bulk must resume and keep draining after a pause"
    assert consumer.stats.last_snapshot is not None
    assert consumer.stats.last_snapshot.lanes["bulk"].lag_messages == 0
    assert consumer.stats.last_snapshot.lanes["realtime"].lag_messages == 0
    assert cluster.committed("flow", cluster.lanes.bottom.topic) == cluster.high_watermarks(
        cluster.lanes.bottom.topic
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("assignor", "protocol"),
    [
        ("cooperative-sticky", "classic"),
        ("roundrobin", "classic"),
        ("cooperative-sticky", "consumer"),
    ],
    ids=["cooperative", "eager", "consumer-protocol"],
)
def test_member_join_and_leave_while_bulk_paused(
    cluster: Cluster, run_consumer: RunConsumer, assignor: str, protocol: str
) -> None:
    """One realtime partition and two bulk ones: of two members, one owns only bulk (each lane
    consumer is a member of its own, so the realtime partition goes to one member): group scope
    holds it."""
    cluster.create_topics(partitions=1, bulk_partitions=2)
    bulk_topic = cluster.lanes.bottom.topic
    cluster.produce(sample_chunks(3_000, low_priority_ratio=1.0, prefix="bulk"))
    # Realtime at about 250/s: its backlog must outlast the join. The consumer protocol hands out
    # assignments with heartbeats (every 5 s on the broker's defaults): a longer backlog.
    live = 2_500 if protocol == "classic" else 6_000
    cluster.produce(sample_chunks(live, prefix="live", seed=5))
    group = f"join-{assignor}-{protocol}"

    def member(name: str) -> tuple[PriorityConsumer, FlowProbe]:
        probe = FlowProbe(pause_lag=100, delay_realtime_s=0.004)
        settings = cluster.consumer_settings(
            group,
            pause_lag=100,
            assignor=assignor,
            group_protocol=protocol,
            client_id=name,
            max_batch_messages=50,
        )
        consumer = PriorityConsumer(settings, probe)
        probe.consumer = consumer
        return consumer, probe

    def owns_realtime(consumer: PriorityConsumer) -> bool:
        return any(topic == cluster.lanes.top.topic for topic, _ in consumer.assignment)

    first, first_probe = member("first")
    first_thread = run_consumer(first)
    wait_until(lambda: "bulk" in first.paused_lanes, what="the first member to pause bulk")

    second, second_probe = member("second")
    second_thread = run_consumer(second)
    wait_until(
        lambda: (
            len(first.assignment) + len(second.assignment) == 3
            and bool(first.assignment)
            and bool(second.assignment)
        ),
        what="the partitions to spread over both members",
    )
    bulk_owner = second if owns_realtime(first) else first
    assert not owns_realtime(bulk_owner)
    # Its realtime lane consumer joined with an empty assignment: the member is ready all the
    # same (with the classic protocol readiness waits for every lane consumer's first
    # assignment, empty or not; the consumer protocol announces no empty one).
    wait_until(lambda: bulk_owner.ready()[0], timeout_s=10, what="the bulk-only member ready")
    # The bulk-only member sees realtime lag through the group (scope auto -> group).
    wait_until(lambda: bulk_owner.paused_partitions == set(bulk_owner.assignment), timeout_s=10)
    for _ in range(20):  # stays paused while the realtime backlog lasts
        assert bulk_owner.paused_partitions == set(bulk_owner.assignment)
        time.sleep(0.05)

    second_thread.stop()
    wait_until(lambda: len(first.assignment) == 3, what="the first member to take everything")
    bulk_keys = {key for key in first.assignment if key[0] == bulk_topic}
    if (
        first_probe.handled["realtime"] < live - 500
    ):  # realtime still has a backlog: bulk stays paused
        wait_until(lambda: bulk_keys <= first.paused_partitions, timeout_s=10)

    wait_until(lambda: first_probe.handled["realtime"] + second_probe.handled["realtime"] >= live)
    wait_until(
        lambda: first_probe.handled["bulk"] + second_probe.handled["bulk"] >= 3_000,
        what="bulk to drain after realtime",
    )
    first_thread.stop()
    for probe in (first_probe, second_probe):
        assert probe.bulk_while_paused == 0


def test_poison_pill_and_unknown_schema_are_dead_lettered_and_processing_continues(
    cluster: Cluster, run_consumer: RunConsumer
) -> None:
    cluster.create_topics(partitions=1)
    codec = ChunkCodec()
    good = [Chunk(chunk_html=f"<p>{i}</p>", tracking_id=f"good-{i}") for i in range(3)]
    unknown_schema = b"\xc3\x01" + bytes(range(8)) + codec.encode(good[0])[10:]
    garbage = b"\xc3\x01" + codec.encode(good[0])[2:10] + b"\xff\xff\xff"  # truncated Avro
    topic = cluster.lanes.top.topic
    raw = Producer({"bootstrap.servers": cluster.bootstrap})
    values = [codec.encode(good[0]), garbage, codec.encode(good[1]), unknown_schema]
    values.append(codec.encode(good[2]))
    for index, value in enumerate(values):
        raw.produce(topic, value, key=f"k{index}", headers=[("trace", b"abc")])
    raw.flush()

    seen: list[str] = []
    consumer = PriorityConsumer(
        cluster.consumer_settings("dlq"), lambda record: seen.append(str(record.chunk.tracking_id))
    )
    threaded = run_consumer(consumer)
    wait_until(lambda: len(seen) == 3, what="the good chunks")
    wait_until(lambda: cluster.committed("dlq", topic) == {0: 5}, what="the commit past both")
    threaded.stop()

    assert seen == ["good-0", "good-1", "good-2"]
    parked = cluster.read_all(f"{topic}.dlq")
    assert len(parked) == 2
    by_offset = {}
    for message in parked:
        headers = dict(message.headers())
        by_offset[int(headers[HEADER_OFFSET])] = (message, headers)
    assert set(by_offset) == {1, 3}
    garbage_message, garbage_headers = by_offset[1]
    assert garbage_message.value() == garbage
    assert garbage_message.key() == b"k1"
    assert garbage_headers["trace"] == b"abc"
    assert garbage_headers[HEADER_ERROR_REASON] == b"undecodable"
    assert garbage_headers[HEADER_ERROR_CLASS] == b"DecodeError"
    assert garbage_headers[HEADER_TOPIC] == topic.encode()
    assert garbage_headers[HEADER_PARTITION] == b"0"
    assert garbage_headers[HEADER_LANE] == b"realtime"
    assert int(garbage_headers[HEADER_TIMESTAMP]) > 0
    assert garbage_headers[HEADER_ERROR_MESSAGE]
    unknown_message, unknown_headers = by_offset[3]
    assert unknown_message.value() == unknown_schema
    assert unknown_headers[HEADER_ERROR_REASON] == b"unknown_schema"
    dead = consumer.metrics.dead_letters
    assert dead.labels(lane="realtime", reason="undecodable")._value.get() == 1
    assert dead.labels(lane="realtime", reason="unknown_schema")._value.get() == 1


def test_offset_is_not_committed_past_a_dead_letter_that_was_not_acknowledged(
    cluster: Cluster, run_consumer: RunConsumer
) -> None:
    """With the DLQ topic gone, parking fails: the consumer stops before the poison pill."""
    cluster.create_topics(partitions=1)
    topic = cluster.lanes.top.topic
    cluster.admin.delete_topics([f"{topic}.dlq"])[f"{topic}.dlq"].result()
    codec = ChunkCodec()
    raw = Producer({"bootstrap.servers": cluster.bootstrap})
    raw.produce(topic, codec.encode(Chunk(tracking_id="before")))
    raw.produce(topic, b"not avro at all")
    raw.produce(topic, codec.encode(Chunk(tracking_id="after")))
    raw.flush()

    seen: list[str] = []
    settings = cluster.consumer_settings("dlq-down", dlq_flush_timeout_s=2.0)
    threaded = run_consumer(
        PriorityConsumer(settings, lambda record: seen.append(str(record.chunk.tracking_id)))
    )
    wait_until(lambda: not threaded.alive, timeout_s=30, what="the consumer to stop")
    assert threaded.exit_code == 1
    # What came before the poison pill is handled; nothing is committed past the pill.
    assert seen == ["before"]
    assert cluster.committed("dlq-down", topic).get(0, -1001) <= 1


def test_stop_policy_commits_nothing_past_the_failure(
    cluster: Cluster, run_consumer: RunConsumer
) -> None:
    cluster.create_topics(partitions=1)
    topic = cluster.lanes.top.topic
    codec = ChunkCodec()
    raw = Producer({"bootstrap.servers": cluster.bootstrap})
    for index in range(3):
        raw.produce(topic, codec.encode(Chunk(tracking_id=f"c{index}")))
    raw.produce(topic, b"garbage")
    raw.produce(topic, codec.encode(Chunk(tracking_id="c4")))
    raw.flush()
    seen: list[str] = []
    settings = cluster.consumer_settings("stop", error_actions={"undecodable": "stop"})
    threaded = run_consumer(
        PriorityConsumer(settings, lambda record: seen.append(str(record.chunk.tracking_id)))
    )
    wait_until(lambda: not threaded.alive, timeout_s=30, what="the consumer to stop")
    assert threaded.exit_code == 1
    assert seen == ["c0", "c1", "c2"]
    assert cluster.committed("stop", topic) == {0: 3}
    assert cluster.read_all(f"{topic}.dlq") == []


def test_retriable_handler_errors_are_retried_and_permanent_ones_dead_lettered(
    cluster: Cluster, run_consumer: RunConsumer
) -> None:
    from streamproc.errors import RetriableHandlerError

    cluster.create_topics(partitions=1)
    cluster.produce(Chunk(tracking_id=f"h{i}") for i in range(6))
    attempts: dict[str, int] = {}
    handled: list[str] = []

    def flaky(record: ChunkRecord) -> None:
        tracking_id = str(record.chunk.tracking_id)
        attempts[tracking_id] = attempts.get(tracking_id, 0) + 1
        if tracking_id == "h1" and attempts[tracking_id] < 3:
            raise RetriableHandlerError("throttled")
        if tracking_id == "h4":
            raise ValueError("cannot index this one")
        handled.append(tracking_id)

    settings = cluster.consumer_settings("retry", retry_backoff_s=0.01)
    consumer = PriorityConsumer(settings, flaky)
    threaded = run_consumer(consumer)
    topic = cluster.lanes.top.topic
    wait_until(lambda: cluster.committed("retry", topic) == {0: 6}, what="all six finished")
    threaded.stop()
    assert sorted(handled) == ["h0", "h1", "h2", "h3", "h5"]
    assert attempts["h1"] == 3
    parked = cluster.read_all(f"{topic}.dlq")
    assert len(parked) == 1
    headers = dict(parked[0].headers())
    assert headers[HEADER_ERROR_REASON] == b"handler_error"
    assert b"cannot index this one" in headers[HEADER_ERROR_MESSAGE]
    assert consumer.metrics.lanes["realtime"].handled_retried._value.get() == 1


@pytest.mark.parametrize("bulk_first", [True, False], ids=["bulk-handled-first", "mixed-batch"])
def test_sqlite_keeps_the_realtime_version_whatever_the_order(
    cluster: Cluster, run_consumer: RunConsumer, tmp_path: Path, bulk_first: bool
) -> None:
    cluster.create_topics(partitions=1)
    database = tmp_path / "chunks.sqlite"
    sink = SqliteSink(str(database))
    stale = Chunk(tracking_id="doc-1", chunk_html="<p>old</p>", low_priority=True, dataset_id="d")
    fresh = Chunk(tracking_id="doc-1", chunk_html="<p>new</p>", dataset_id="d")
    cluster.produce([stale])
    time.sleep(0.01)  # a later producer timestamp for the realtime edit
    consumer = PriorityConsumer(cluster.consumer_settings(f"sqlite-{bulk_first}"), sink)
    if bulk_first:
        threaded = run_consumer(consumer)
        wait_until(lambda: consumer.stats.lanes["bulk"].handled == 1)
        cluster.produce([fresh])
    else:
        cluster.produce([fresh])
        threaded = run_consumer(consumer)
    wait_until(lambda: consumer.stats.lanes["realtime"].handled == 1)
    wait_until(lambda: consumer.stats.lanes["bulk"].handled == 1)
    # A second, older bulk copy arriving late must not win either.
    threaded.stop()
    sink.close()
    with closing(sqlite3.connect(database)) as db:
        rows = db.execute("SELECT lane, chunk FROM chunks").fetchall()
    assert len(rows) == 1
    lane, chunk_json = rows[0]
    assert lane == "realtime"
    assert "<p>new</p>" in chunk_json


def test_group_lag_command_shows_pause_state_and_owner(
    cluster: Cluster, run_consumer: RunConsumer
) -> None:
    from streamproc.lag import describe_group_lag, group_exists

    cluster.create_topics(partitions=1)
    cluster.produce(sample_chunks(500, low_priority_ratio=1.0, prefix="bulk"))
    cluster.produce(sample_chunks(400, prefix="live"))
    release = threading.Event()

    def slow_realtime(record: ChunkRecord) -> None:
        if record.context.lane == "realtime":
            release.wait(0.01)

    consumer = PriorityConsumer(
        cluster.consumer_settings("lagcmd", pause_lag=50, max_batch_messages=20), slow_realtime
    )
    threaded = run_consumer(consumer)
    wait_until(lambda: "bulk" in consumer.paused_lanes, what="bulk paused")
    client = {"bootstrap.servers": cluster.bootstrap}
    topics = cluster.lanes.topics
    assert not group_exists(cluster.admin, "no-such-group", client_config=client, topics=topics)
    assert group_exists(cluster.admin, "lagcmd", client_config=client, topics=topics)

    def bulk_row_paused() -> bool:
        rows = describe_group_lag(cluster.admin, cluster.lanes, "lagcmd", client_config=client)
        return any(row.lane == "bulk" and row.paused for row in rows)

    wait_until(bulk_row_paused, timeout_s=10, what="the paused bulk row")

    def every_row_owned() -> bool:
        # The lane consumers join one after the other: while the group rebalances, a partition
        # has no owner in the description (shown as none, rightly).
        owned = describe_group_lag(cluster.admin, cluster.lanes, "lagcmd", client_config=client)
        return bool(owned) and all(row.owner for row in owned)

    wait_until(every_row_owned, timeout_s=10, what="an owner for every partition")
    rows = describe_group_lag(cluster.admin, cluster.lanes, "lagcmd", client_config=client)
    assert {row.lane for row in rows} == {"realtime", "bulk"}
    # Every lane consumer is a member of its own: client.id suffixed by its lane.
    assert all(row.owner and row.owner.startswith(f"streamproc-{row.lane}@") for row in rows)
    realtime_row = next(row for row in rows if row.lane == "realtime")
    assert realtime_row.high_watermark == 400
    release.set()
    threaded.stop()
    # No member left: the group still exists, and its committed offsets (read through a
    # consumer's OffsetFetch) are what it handled.
    assert group_exists(cluster.admin, "lagcmd", client_config=client, topics=topics)
    rows = describe_group_lag(cluster.admin, cluster.lanes, "lagcmd", client_config=client)
    assert all(row.owner is None for row in rows)
    realtime_row = next(row for row in rows if row.lane == "realtime")
    assert realtime_row.committed is not None and 0 < realtime_row.committed <= 400


@pytest.mark.parametrize("assignor", ["cooperative-sticky", "range"], ids=["cooperative", "eager"])
def test_a_partition_found_not_fetching_is_assigned_again_and_then_consumed_once(
    cluster: Cluster,
    run_consumer: RunConsumer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    assignor: str,
) -> None:
    # A lost committed offset lookup cannot be caused at will, so the statistics are made to say
    # realtime partition 0 is not fetching until it was restarted once: the restart itself, and
    # the real statistics after it, are librdkafka's.
    cluster.create_topics(partitions=2)
    settings = cluster.consumer_settings(
        "restart", assignor=assignor, statistics_interval_s=0.2, stuck_fetch_s=1.0
    )
    handled: list[tuple[str, int, int]] = []

    def handler(record: ChunkRecord) -> None:
        handled.append((record.context.topic, record.context.partition, record.context.offset))

    consumer = PriorityConsumer(settings, handler)
    restarts = consumer.metrics.fetch_restarts.labels(lane="realtime")
    top = cluster.lanes.top.topic

    def reported(document: Statistics, topic: str) -> FetchReport:
        report = fetch_report(document, topic)
        if topic != top or restarts._value.get() > 0:
            return report
        return replace(report, not_fetching=report.not_fetching | {0})

    monkeypatch.setattr(loop, "fetch_report", reported)
    threaded = run_consumer(consumer)
    wait_until(lambda: restarts._value.get() >= 1, what="realtime partition 0 to be restarted")
    count = cluster.produce(sample_chunks(300, low_priority_ratio=0.3, prefix="after"))
    wait_until(lambda: len(handled) >= count, what="every chunk")
    time.sleep(2.0)  # ten more statistics reports, with the real fetch states
    assert threaded.stop() == 0
    assert "assigned but never fetched, assigned again: " + top + "[0] " in caplog.text
    assert sorted(handled) == sorted(set(handled)), "a chunk was handled twice"
    assert len(handled) == count
    assert {p for t, p, _ in handled if t == top} == {0, 1}
    assert restarts._value.get() == 1, "the real statistics found nothing stuck"
    for topic in cluster.lanes.topics:
        assert cluster.committed("restart", topic) == cluster.high_watermarks(topic)
