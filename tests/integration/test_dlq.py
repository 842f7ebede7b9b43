"""``streamproc dlq`` against the real broker: dead letters parked by the real consumer are
summarized, listed and replayed; an interrupted replay (SIGKILL) resumes where it stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.cimpl import NewTopic
from kafka_helpers import Cluster, ThreadedConsumer, read_topic, wait_until
from typer.testing import CliRunner

from streamproc.chunk import Chunk
from streamproc.cli import app
from streamproc.codec import ChunkCodec
from streamproc.consumer import PriorityConsumer
from streamproc.deadletter import (
    HEADER_ERROR_CLASS,
    HEADER_ERROR_REASON,
    HEADER_LANE,
    HEADER_OFFSET,
    HEADER_PARTITION,
    HEADER_TIMESTAMP,
    HEADER_TOPIC,
)
from streamproc.errors import HandlerError
from streamproc.handlers import ChunkRecord
from streamproc.messages import coordinates, headers, timestamp_ms
from streamproc.redrive import (
    HEADER_REPLAY_COUNT,
    HEADER_REPLAY_FROM_OFFSET,
    HEADER_REPLAY_FROM_PARTITION,
    HEADER_REPLAY_FROM_TOPIC,
    HEADER_REPLAY_ORIGINAL_OFFSET,
    HEADER_REPLAY_ORIGINAL_TIMESTAMP,
    HEADER_REPLAY_ORIGINAL_TOPIC,
    HEADER_REPLAY_REASON,
)

REPO = Path(__file__).resolve().parents[2]
CODEC = ChunkCodec()


class Rejecting:
    """Handles every chunk but those whose tracking id starts with ``bad`` (while ``broken``)."""

    def __init__(self) -> None:
        self.broken = True
        self.handled: list[ChunkRecord] = []
        self._lock = threading.Lock()

    def __call__(self, record: ChunkRecord) -> None:
        if self.broken and str(record.chunk.tracking_id).startswith("bad"):
            raise HandlerError("the index rejected it")
        with self._lock:
            self.handled.append(record)


def total(highs: dict[int, int]) -> int:
    return sum(highs.values())


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_dead_letters_parked_by_the_consumer_are_summarized_listed_and_replayed(
    cluster: Cluster,
) -> None:
    cluster.create_topics(partitions=3)
    realtime, bulk = cluster.lanes.top, cluster.lanes.bottom
    chunks = [Chunk(chunk_html=f"<p>good {i}</p>", tracking_id=f"good-{i}") for i in range(10)]
    chunks += [Chunk(chunk_html=f"<p>bad {i}</p>", tracking_id=f"bad-rt-{i}") for i in range(6)]
    chunks += [
        Chunk(chunk_html=f"<p>bad {i}</p>", tracking_id=f"bad-bulk-{i}", low_priority=True)
        for i in range(4)
    ]
    cluster.produce(chunks)
    raw = Producer({"bootstrap.servers": cluster.bootstrap})
    for index in range(2):  # not Avro at all
        raw.produce(realtime.topic, b"not a chunk %d" % index, key=f"garbage-{index}")
    raw.flush()

    handler = Rejecting()
    first = ThreadedConsumer(PriorityConsumer(cluster.consumer_settings("app"), handler)).start()
    wait_until(
        lambda: (
            total(cluster.high_watermarks(realtime.dlq_topic)) == 8
            and total(cluster.high_watermarks(bulk.dlq_topic)) == 4
            and len(handler.handled) == 10
        ),
        what="8 realtime and 4 bulk dead letters",
    )
    first.stop()
    b, prefix = ["-b", cluster.bootstrap], ["--topic-prefix", cluster.prefix]

    # summary: by lane, reason and age
    code, output = cli("dlq", "summary", *b, *prefix, "--output", "json")
    assert code == 0, output
    rows = {(row["lane"], row["reason"]): row for row in json_lines(output)}
    assert {key: row["count"] for key, row in rows.items()} == {
        ("realtime", "handler_error"): 6,
        ("realtime", "unknown_framing"): 2,
        ("bulk", "handler_error"): 4,
    }
    assert rows[("bulk", "handler_error")]["by_age"] == {"<1h": 4, "<1d": 0, "<7d": 0, ">=7d": 0}
    code, table = cli("dlq", "summary", *b, *prefix)
    assert code == 0 and "unknown_framing" in table and "12 dead letter(s)" in table

    # list: decoded chunks with their reason headers; raw bytes of the undecodable ones
    code, output = cli(
        "dlq", "list", *b, *prefix, "--lane", "realtime", "--reason", "handler_error", "-o", "json"
    )
    assert code == 0, output
    listed = json_lines(output)
    assert sorted(str(d["chunk"]["tracking_id"]) for d in listed) == [  # type: ignore[index]
        f"bad-rt-{i}" for i in range(6)
    ]
    first_listed = listed[0]
    assert first_listed["error_class"] == "HandlerError"
    assert first_listed["error_message"] == "the index rejected it"
    assert first_listed["original"]["topic"] == realtime.topic  # type: ignore[index]
    code, output = cli("dlq", "list", *b, *prefix, "--reason", "unknown_framing", "-o", "json")
    assert code == 0, output
    garbage = json_lines(output)
    assert len(garbage) == 2
    assert all(
        d["chunk"] is None and "UnknownFramingError" in str(d["decode_error"]) for d in garbage
    )
    assert {d["key"] for d in garbage} == {"garbage-0", "garbage-1"}
    code, table = cli("dlq", "list", *b, *prefix, "--reason", "unknown_framing", "--raw")
    assert code == 0 and b"not a chunk".hex() in table

    # dry run: counts, produces nothing, commits nothing
    lanes_before = {
        lane.topic: total(cluster.high_watermarks(lane.topic)) for lane in cluster.lanes
    }
    code, output = cli("dlq", "replay", *b, *prefix, "--reason", "handler_error", "--dry-run")
    assert code == 0, output
    assert "would replay 10 dead letter(s) (handler_error 10), 2 not selected" in output
    assert lanes_before == {
        lane.topic: total(cluster.high_watermarks(lane.topic)) for lane in cluster.lanes
    }

    # replay: back to the original lane topics, marked, with the original timestamps
    originals = {
        str(m.key().decode()): m
        for lane in cluster.lanes
        for m in read_topic(cluster.bootstrap, lane.topic)
    }
    code, output = cli("dlq", "replay", *b, *prefix, "--reason", "handler_error")
    assert code == 0, output
    assert "replayed 10 dead letter(s) (handler_error 10), 2 not selected" in output
    for lane, count in ((realtime, 6), (bulk, 4)):
        assert total(cluster.high_watermarks(lane.topic)) == lanes_before[lane.topic] + count
        replayed = [
            m
            for m in read_topic(cluster.bootstrap, lane.topic)
            if dict(headers(m)).get(HEADER_REPLAY_COUNT)
        ]
        assert len(replayed) == count
        for message in replayed:
            marks = dict(headers(message))
            original = originals[message.key().decode()]
            assert message.value() == original.value()
            assert timestamp_ms(message) == timestamp_ms(original)
            assert marks[HEADER_REPLAY_COUNT] == b"1"
            assert marks[HEADER_REPLAY_REASON] == b"handler_error"
            assert marks[HEADER_REPLAY_FROM_TOPIC] == lane.dlq_topic.encode()
            assert int(marks[HEADER_REPLAY_FROM_OFFSET]) >= 0
            assert int(marks[HEADER_REPLAY_FROM_PARTITION]) >= 0
            assert marks[HEADER_REPLAY_ORIGINAL_TOPIC] == lane.topic.encode()
            _, _, original_offset = coordinates(original)
            assert int(marks[HEADER_REPLAY_ORIGINAL_OFFSET]) == original_offset
            for parking in (HEADER_ERROR_REASON, HEADER_ERROR_CLASS, HEADER_TOPIC, HEADER_LANE):
                assert parking not in marks

    # the cause fixed, the consumer (same group) handles exactly the replayed chunks
    handler.broken = False
    handled_before = len(handler.handled)
    second = ThreadedConsumer(PriorityConsumer(cluster.consumer_settings("app"), handler)).start()
    wait_until(lambda: len(handler.handled) == handled_before + 10, what="the replayed chunks")
    second.stop()
    again = handler.handled[handled_before:]
    assert sorted(str(r.chunk.tracking_id) for r in again) == sorted(
        [f"bad-rt-{i}" for i in range(6)] + [f"bad-bulk-{i}" for i in range(4)]
    )
    assert all(dict(r.context.headers)[HEADER_REPLAY_COUNT] == b"1" for r in again)

    # the same command again resumes at the end: nothing more
    code, output = cli("dlq", "replay", *b, *prefix, "--reason", "handler_error")
    assert code == 0, output
    assert "replayed 0 dead letter(s)" in output
    # another selection has a group of its own; --to sends elsewhere
    other = f"{cluster.prefix}.quarantine"
    replay_elsewhere = ("dlq", "replay", *b, *prefix, "--reason", "unknown_framing", "--to", other)
    failed = CliRunner().invoke(app, list(replay_elsewhere))
    assert failed.exit_code == 1
    assert f"replay target topic {other} does not exist" in failed.stderr
    cluster.admin.create_topics([NewTopic(other, 1)])[other].result()
    code, output = cli(*replay_elsewhere)
    assert code == 0, output
    moved = read_topic(cluster.bootstrap, other)
    assert sorted(m.key() for m in moved) == [b"garbage-0", b"garbage-1"]
    assert {m.value() for m in moved} == {b"not a chunk 0", b"not a chunk 1"}


def test_filters_by_partition_offset_and_time(cluster: Cluster) -> None:
    cluster.create_topics(partitions=2)
    dlq = cluster.lanes.top.dlq_topic
    parked_at = int(time.time() * 1000) - 3 * 3600 * 1000  # three hours ago
    producer = Producer({"bootstrap.servers": cluster.bootstrap})
    for index in range(20):
        producer.produce(
            dlq,
            b"v%d" % index,
            key=b"k%d" % index,
            partition=index % 2,
            timestamp=parked_at if index < 10 else parked_at + 2 * 3600 * 1000,
            headers=dead_letter_headers(cluster.lanes.top.topic, index),
        )
    producer.flush()
    b, prefix = ["-b", cluster.bootstrap], ["--topic-prefix", cluster.prefix]

    def listed(*args: str) -> list[str]:
        code, output = cli("dlq", "list", *b, *prefix, "--raw", "-o", "json", *args)
        assert code == 0, output
        return sorted(str(d["key"]) for d in json_lines(output))

    assert len(listed()) == 20
    assert listed("--partition", "1") == sorted(f"k{i}" for i in range(1, 20, 2))
    # partition 0 holds k0, k2, ... at offsets 0, 1, ...: offsets 2..3 are k4 and k6
    assert listed("--partition", "0", "--from-offset", "2", "--to-offset", "3") == ["k4", "k6"]
    assert listed("--since", "2h") == sorted(f"k{i}" for i in range(10, 20))
    assert listed("--until", "2h") == sorted(f"k{i}" for i in range(10))
    result = CliRunner().invoke(app, ["dlq", "list", *b, *prefix, "--since", "yesterday-ish"])
    assert result.exit_code == 2 and "is not a time" in result.output
    result = CliRunner().invoke(app, ["dlq", "summary", *b, *prefix, "--lane", "nope"])
    assert result.exit_code == 2 and "unknown lane" in result.output

    code, output = cli("dlq", "replay", *b, *prefix, "--partition", "1", "--since", "2h")
    assert code == 0, output
    replayed = read_topic(cluster.bootstrap, cluster.lanes.top.topic)
    assert sorted(m.key() for m in replayed) == sorted(b"k%d" % i for i in range(11, 20, 2))


def dead_letter_headers(lane_topic: str, index: int) -> list[tuple[str, str | bytes | None]]:
    """What the consumer's dead-letter queue writes (streamproc/deadletter.py)."""
    return [
        ("trace", b"t%d" % index),
        (HEADER_ERROR_CLASS, b"HandlerError"),
        (HEADER_ERROR_REASON, b"handler_error"),
        (HEADER_TOPIC, lane_topic.encode()),
        (HEADER_PARTITION, str(index % 2).encode()),
        (HEADER_OFFSET, str(index).encode()),
        (HEADER_TIMESTAMP, str(1_700_000_000_000 + index).encode()),
        (HEADER_LANE, b"realtime"),
    ]


DEAD_LETTERS = 30_000


@pytest.mark.slow
def test_an_interrupted_replay_resumes_where_it_stopped_and_loses_nothing(
    cluster: Cluster,
) -> None:
    cluster.create_topics(partitions=3)
    lane = cluster.lanes.top
    started_ms = int(time.time() * 1000)
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "linger.ms": 20})
    for index in range(DEAD_LETTERS):
        producer.produce(
            lane.dlq_topic,
            b"value-%d" % index,
            key=b"k%d" % index,
            partition=index % 3,
            headers=dead_letter_headers(lane.topic, index),
        )
        if index % 5000 == 0:
            producer.poll(0)
    producer.flush()
    dlq_highs = cluster.high_watermarks(lane.dlq_topic)
    assert total(dlq_highs) == DEAD_LETTERS
    group = f"{cluster.prefix}-replay"
    command = [
        sys.executable, "-m", "streamproc", "dlq", "replay",
        "-b", cluster.bootstrap, "--topic-prefix", cluster.prefix,
        "--group", group, "--batch-size", "100",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    interrupted = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(
            lambda: total(cluster.high_watermarks(lane.topic)) >= DEAD_LETTERS // 10,
            timeout_s=120,
            what="a tenth of the dead letters replayed",
        )
        interrupted.send_signal(signal.SIGKILL)
    finally:
        interrupted.kill()
        interrupted.communicate(timeout=30)
    assert interrupted.returncode == -signal.SIGKILL
    # A partition without a commit yet reads -1001 (no offset): it counts as 0.
    committed = sum(max(0, offset) for offset in cluster.committed(group, lane.dlq_topic).values())
    delivered_when_killed = total(cluster.high_watermarks(lane.topic))
    # Killed midway: part committed, and everything committed was delivered first.
    assert 0 < committed < DEAD_LETTERS, committed
    assert delivered_when_killed >= committed

    resumed = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"replayed {DEAD_LETTERS - committed} dead letter(s)" in resumed.stdout
    # Parked in 2023, far past the topic's retention (the broker default, 7 days): kept, that
    # timestamp would let the broker delete the replayed copies before they are read.
    assert f"{DEAD_LETTERS - committed} produced with the current time" in resumed.stdout
    # The rerun started exactly at the committed offsets, and read to the end.
    assert cluster.committed(group, lane.dlq_topic) == dlq_highs
    messages = read_topic(cluster.bootstrap, lane.topic, timeout_s=120)
    assert len(messages) == delivered_when_killed + DEAD_LETTERS - committed
    origins = set()
    for message in messages:
        marks = dict(headers(message))
        origins.add(
            (int(marks[HEADER_REPLAY_FROM_PARTITION]), int(marks[HEADER_REPLAY_FROM_OFFSET]))
        )
        index = int(message.key()[1:])
        assert message.value() == b"value-%d" % index
        assert marks["trace"] == b"t%d" % index
        assert marks[HEADER_REPLAY_ORIGINAL_TIMESTAMP] == b"%d" % (1_700_000_000_000 + index)
        assert timestamp_ms(message) > started_ms - 60_000, "restamped with the replay's time"
    expected = {
        (partition, offset) for partition, high in dlq_highs.items() for offset in range(high)
    }
    assert origins == expected  # every dead letter arrived at least once
