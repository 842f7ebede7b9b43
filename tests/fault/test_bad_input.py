"""Scenarios 4-7: bad input and failing handlers, mixed into a real stream on both lanes."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from fastavro import parse_schema, schemaless_writer

from streamproc.chunk import Chunk
from streamproc.codec import ChunkCodec, chunk_to_record, schema_fingerprint
from streamproc.consumer import PriorityConsumer
from streamproc.deadletter import HEADER_ERROR_CLASS, HEADER_ERROR_REASON
from streamproc.errors import OversizeError, RetriableHandlerError, SinkUnavailableError
from streamproc.handlers import ChunkRecord
from streamproc.lanes import Lane, dead_letter_topic
from streamproc.messages import headers
from streamproc.samples import sample_chunks
from tests.fault.checker import Fault, check, scenario_id
from tests.fault.ledger import (
    AckLedger,
    DeadLettered,
    LedgerHandler,
    read_acked,
    read_dead_lettered,
    read_processed,
    record_dead_letters,
)
from tests.fault.scenario import (
    committed,
    committed_to_the_end,
    high_watermarks,
    produce,
    producer_for,
)
from tests.integration.kafka_helpers import Cluster, ThreadedConsumer, read_topic, wait_until

REPO = Path(__file__).resolve().parents[2]


def run_until_drained(
    cluster: Cluster, group: str, consumer: PriorityConsumer, directory: Path
) -> list[DeadLettered]:
    """Run ``consumer`` until the group has committed every lane to its end, stop it cleanly
    (exit 0), and record what it parked in the dead-letter ledger."""
    threaded = ThreadedConsumer(consumer).start()
    try:
        wait_until(
            lambda: committed_to_the_end(cluster, group), timeout_s=90, what="the commit to the end"
        )
    finally:
        assert threaded.stop() == 0
    return record_dead_letters(directory, cluster)


def total_dead_letters(consumer: PriorityConsumer) -> float:
    return sum(
        sample.value
        for metric in consumer.metrics.dead_letters.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


def interleave(
    acks: AckLedger,
    raw: Producer,
    cluster: Cluster,
    good: list[Chunk],
    bad: list[tuple[str, bytes]],
) -> None:
    """Produce ``good`` chunks and ``bad`` (id, value) pairs spread among them, on both lanes."""
    codec = ChunkCodec()
    rng = random.Random(4)  # test data
    lanes: list[Lane] = list(cluster.lanes)
    every: list[tuple[str, bytes, Lane]] = [
        (chunk.key, codec.encode(chunk), cluster.lanes.route(chunk)) for chunk in good
    ]
    for index, (key, value) in enumerate(bad):
        every.insert(rng.randrange(len(every) + 1), (key, value, lanes[index % len(lanes)]))
    for key, value, lane in every:
        acks.produce_raw(raw, lane.topic, key, value)
    raw.flush(30)


@pytest.mark.parametrize("concurrency", [1, 8], ids=["concurrency-1", "concurrency-8"])
def test_04_poison_pills_are_parked_only_after_the_dead_letter_is_acknowledged(
    cluster: Cluster, tmp_path: Path, concurrency: int
) -> None:
    cluster.create_topics(partitions=3)
    group = f"poison-{concurrency}"
    codec = ChunkCodec()
    template = codec.encode(Chunk(chunk_html="<p>x</p>", tracking_id="template"))
    pills = [(f"garbage-{i}", bytes(random.Random(i).randbytes(40))) for i in range(10)]
    pills += [(f"truncated-{i}", template[: 10 + i]) for i in range(10)]
    acks = AckLedger(tmp_path)
    good = list(sample_chunks(1_000, low_priority_ratio=0.5, prefix="p4"))
    interleave(acks, Producer({"bootstrap.servers": cluster.bootstrap}), cluster, good, pills)

    # Phase 1: the realtime dead-letter topic is gone, so parking there is never acknowledged:
    # the consumer must stop without committing past the first realtime pill.
    realtime_dlq = dead_letter_topic(cluster.lanes.top.topic)
    cluster.admin.delete_topics([realtime_dlq])[realtime_dlq].result()
    wait_until(
        lambda: realtime_dlq not in cluster.admin.list_topics(timeout=10).topics,
        what="the dead-letter topic to be gone",
    )
    handler = LedgerHandler(tmp_path)
    settings = cluster.consumer_settings(group, dlq_flush_timeout_s=2.0, concurrency=concurrency)
    stopped = PriorityConsumer(settings, handler)
    first = ThreadedConsumer(stopped).start()
    wait_until(lambda: not first.alive, timeout_s=60, what="the consumer to stop on the failure")
    assert first.exit_code == 1, "an unacknowledged dead letter must stop the consumer"
    committed_at_stop = committed(cluster, group)
    first_pill_at = {
        (a.topic, a.partition): a.offset
        for a in reversed(read_acked(tmp_path))
        if a.id.startswith(("garbage", "truncated"))
        and a.topic == cluster.lanes.top.topic
        and a.offset is not None
    }
    for key, offset in first_pill_at.items():
        assert committed_at_stop[key] <= offset, f"{key} committed past an unparked pill"

    # Phase 2: the dead-letter topic is back; a restarted consumer parks every pill and goes on.
    cluster.create_topics(partitions=3)
    consumer = PriorityConsumer(
        cluster.consumer_settings(group, concurrency=concurrency), LedgerHandler(tmp_path)
    )
    parked = run_until_drained(cluster, group, consumer, tmp_path)
    figures = check(
        scenario_id("04-poison-pill", concurrency),
        "Poison pills (garbage bytes, truncated Avro) on both lanes; DLQ down, then back"
        f" (concurrency {concurrency})",
        tmp_path,
        produced=acks.produced,
        committed=committed(cluster, group),
        high_watermarks=high_watermarks(cluster),
        duplicates="uncommitted_window",
        faults=[Fault("dead letter not acknowledged", committed_at_stop)],
        notes={"dead_letter_counter": total_dead_letters(stopped) + total_dead_letters(consumer)},
    )
    figures.assert_ok()
    assert sorted(p.id for p in parked) == sorted(key for key, _ in pills), "each pill parked once"
    assert {p.reason for p in parked} <= {"undecodable", "unknown_framing", "unknown_schema"}
    # +1 per pill exactly, over both runs: a pill parked before the stop is not parked again.
    counted = total_dead_letters(stopped) + total_dead_letters(consumer)
    assert counted == len(pills), "the dead-letter counter: +1 per pill"
    for topic in cluster.lanes.topics:
        for message in read_topic(cluster.bootstrap, dead_letter_topic(topic)):
            found = dict(headers(message))
            assert found[HEADER_ERROR_REASON] and found[HEADER_ERROR_CLASS]


def test_05_oversized_chunks_are_refused_before_produce(cluster: Cluster, tmp_path: Path) -> None:
    cluster.create_topics(partitions=3)
    group = "oversize"
    acks = AckLedger(tmp_path)
    limit = 20_000
    producer = producer_for(cluster.bootstrap, cluster.prefix, acks, max_chunk_bytes=limit)
    refused = 0
    for index, chunk in enumerate(sample_chunks(600, low_priority_ratio=0.5, prefix="o5")):
        if index % 50 == 7:
            chunk = chunk.model_copy(update={"chunk_html": "<p>" + "x" * (2 * limit) + "</p>"})
        try:
            produce(producer, acks, [chunk])
        except OversizeError as exc:
            assert exc.size > exc.limit == limit
            refused += 1
    producer.flush()
    assert refused == 12
    assert producer.stats.rejected == refused
    # A large chunk from another client (under the consumer's limits, bigger than one fetch)
    # must not wedge the consumer either.
    big = Chunk(chunk_html="<p>" + "y" * 300_000 + "</p>", tracking_id="o5-big", low_priority=True)
    raw = Producer({"bootstrap.servers": cluster.bootstrap, "message.max.bytes": 2_000_000})
    acks.produce_raw(raw, cluster.lanes.bottom.topic, big.key, ChunkCodec().encode(big))
    raw.flush(30)

    consumer = PriorityConsumer(cluster.consumer_settings(group), LedgerHandler(tmp_path))
    run_until_drained(cluster, group, consumer, tmp_path)
    figures = check(
        "05-oversize",
        "Oversized chunks refused with a typed error before produce; consumer unaffected",
        tmp_path,
        produced=acks.produced,
        committed=committed(cluster, group),
        high_watermarks=high_watermarks(cluster),
        notes={"refused_before_produce": refused},
    )
    figures.assert_ok()
    assert figures.acknowledged == figures.produced - refused
    assert figures.dead_lettered == 0


def _schema_dir(tmp_path: Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The current schema plus two history versions: one compatible, one incompatible."""
    current = json.loads((REPO / "avro" / "chunk.avsc").read_text())
    compatible = json.loads(json.dumps(current))
    compatible["fields"].append({"name": "summary", "type": "string", "default": ""})
    incompatible = json.loads(json.dumps(current))
    for schema_field in incompatible["fields"]:
        if schema_field["name"] == "low_priority":
            schema_field["type"] = "string"  # boolean -> string does not resolve
            schema_field.pop("default", None)
    directory = tmp_path / "schemas"
    (directory / "history").mkdir(parents=True)
    (directory / "chunk.avsc").write_text(json.dumps(current))
    (directory / "history" / "chunk.v1.avsc").write_text(json.dumps(compatible))
    (directory / "history" / "chunk.v2.avsc").write_text(json.dumps(incompatible))
    return directory, compatible, incompatible


def _encode_with(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buffer = BytesIO()
    buffer.write(b"\xc3\x01" + schema_fingerprint(schema).to_bytes(8, "little"))
    schemaless_writer(buffer, parse_schema(schema), record)
    return buffer.getvalue()


def test_06_unknown_and_incompatible_writer_schemas(cluster: Cluster, tmp_path: Path) -> None:
    cluster.create_topics(partitions=3)
    group = "schemas"
    schema_dir, compatible, incompatible = _schema_dir(tmp_path)
    codec = ChunkCodec(schema_dir)
    acks = AckLedger(tmp_path)
    chunks = list(sample_chunks(300, low_priority_ratio=0.5, prefix="w6"))
    bad: list[tuple[str, bytes]] = []
    evolved: list[tuple[str, bytes]] = []
    for index, chunk in enumerate(chunks[:30]):
        record = chunk_to_record(chunk)
        if index % 3 == 0:
            value = codec.encode(chunk)
            bad.append((f"unknown-{index}", b"\xc3\x01" + bytes(8 * [index + 1]) + value[10:]))
        elif index % 3 == 1:
            wrong = {**record, "low_priority": "yes"}
            bad.append((f"incompatible-{index}", _encode_with(incompatible, wrong)))
        else:
            evolved_record = {**record, "summary": "s", "tracking_id": f"evolved-{index}"}
            evolved.append((f"evolved-{index}", _encode_with(compatible, evolved_record)))
    interleave(
        acks,
        Producer({"bootstrap.servers": cluster.bootstrap}),
        cluster,
        chunks[30:],
        [*bad, *evolved],
    )

    handler = LedgerHandler(tmp_path)
    consumer = PriorityConsumer(cluster.consumer_settings(group), handler, codec=codec)
    parked = run_until_drained(cluster, group, consumer, tmp_path)
    figures = check(
        "06-writer-schemas",
        "Unknown and incompatible writer schemas parked; a compatible evolution decodes",
        tmp_path,
        produced=acks.produced,
        committed=committed(cluster, group),
        high_watermarks=high_watermarks(cluster),
    )
    figures.assert_ok()
    reasons = {p.id: p.reason for p in parked}
    assert {k for k, r in reasons.items() if r == "unknown_schema"} == {
        k for k, _ in bad if k.startswith("unknown")
    }
    assert {k for k, r in reasons.items() if r == "incompatible_schema"} == {
        k for k, _ in bad if k.startswith("incompatible")
    }
    assert figures.handled == len(chunks) - len(bad)
    assert {e.id for e in read_processed(tmp_path)} >= {key for key, _ in evolved}


class FailingHandler(LedgerHandler):
    """Fails batches holding ``retry-*`` chunks twice (retriable) and ``bad-*`` ones always."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, before=self._fail)
        self.attempts: dict[str, int] = {}

    def _fail(self, records: Sequence[ChunkRecord]) -> None:
        for record in records:
            key = record.chunk.key
            self.attempts[key] = self.attempts.get(key, 0) + 1
            if key.startswith("bad-"):
                raise ValueError(f"cannot index {key}")
            if key.startswith("retry-") and self.attempts[key] <= 2:
                raise RetriableHandlerError(f"throttled on {key}")


def _failing_chunks() -> list[Chunk]:
    chunks = list(sample_chunks(400, low_priority_ratio=0.5, prefix="h7"))
    for index in range(0, 400, 40):
        chunks[index] = chunks[index].model_copy(update={"tracking_id": f"retry-{index}"})
        chunks[index + 20] = chunks[index + 20].model_copy(update={"tracking_id": f"bad-{index}"})
    return chunks


@pytest.mark.parametrize("permanent", ["dead_letter", "stop"])
def test_07_handler_errors_retried_then_parked_or_stopped(
    cluster: Cluster, tmp_path: Path, permanent: str
) -> None:
    cluster.create_topics(partitions=3)
    group = f"handler-{permanent}"
    acks = AckLedger(tmp_path)
    producer = producer_for(cluster.bootstrap, cluster.prefix, acks)
    chunks = _failing_chunks()
    produce(producer, acks, chunks)
    producer.flush()
    faults: list[Fault] = []
    attempts: dict[str, int] = {}
    if permanent == "stop":
        settings = cluster.consumer_settings(
            group, retry_backoff_s=0.01, error_actions={"handler_error": "stop"}
        )
        stopper = FailingHandler(tmp_path)
        stopping = ThreadedConsumer(PriorityConsumer(settings, stopper)).start()
        wait_until(lambda: not stopping.alive, timeout_s=60, what="the stop on a permanent error")
        assert stopping.exit_code == 1
        assert read_dead_lettered(tmp_path) == []
        faults.append(Fault("stop policy", committed(cluster, group)))
        attempts.update(stopper.attempts)
        # I3 at the stop: nothing committed past an unhandled chunk (checked below with I2/I3).
    handler = FailingHandler(tmp_path)
    consumer = PriorityConsumer(cluster.consumer_settings(group, retry_backoff_s=0.01), handler)
    parked = run_until_drained(cluster, group, consumer, tmp_path)
    figures = check(
        f"07-handler-errors-{permanent.replace('_', '-')}",
        f"Handler raises: retriable retried with backoff, permanent {permanent.replace('_', ' ')}"
        + (" (then restarted with dead_letter)" if permanent == "stop" else ""),
        tmp_path,
        produced=acks.produced,
        committed=committed(cluster, group),
        high_watermarks=high_watermarks(cluster),
        duplicates="uncommitted_window" if faults else "none",
        faults=faults,
        notes={"retried": sum(consumer.stats.lanes[lane].retried for lane in consumer.stats.lanes)},
    )
    figures.assert_ok()
    bad = {chunk.key for chunk in chunks if chunk.key.startswith("bad-")}
    assert {p.id for p in parked} == bad
    assert {p.reason for p in parked} == {"handler_error"}
    retried = {chunk.key for chunk in chunks if chunk.key.startswith("retry-")}
    for key, count in handler.attempts.items():
        attempts[key] = attempts.get(key, 0) + count
    assert all(attempts[key] >= 3 for key in retried), "a retriable failure is tried again"


class OutageHandler(LedgerHandler):
    """A sink that goes down after ``handled_before`` chunks until :meth:`recover` is called:
    every batch meanwhile fails with :class:`SinkUnavailableError` (retriable), whatever its
    size (a sink down for a large batch but up for a smaller one is no outage: handled behind
    the chunk left in hand, such a batch's offsets can never be committed, and it runs twice)."""

    def __init__(self, directory: Path, handled_before: int) -> None:
        super().__init__(directory, before=self._maybe_down)
        self.handled_before = handled_before
        self.seen = 0
        self.attempts_while_down = 0
        self.down = threading.Event()
        self.recovered = threading.Event()

    def recover(self) -> None:
        self.recovered.set()

    def _maybe_down(self, records: Sequence[ChunkRecord]) -> None:
        if not self.recovered.is_set() and (
            self.down.is_set() or self.seen + len(records) > self.handled_before
        ):
            self.down.set()
            self.attempts_while_down += 1
            raise SinkUnavailableError("the index is down")
        self.seen += len(records)


def test_07_sink_outage_outlasting_retries_with_the_retry_action(
    cluster: Cluster, tmp_path: Path
) -> None:
    """An outage far longer than max_retries: with --on-error sink_unavailable=retry nothing is
    parked, a SIGTERM-like stop mid-outage leaves the chunk in hand for redelivery (exit 0), and
    the restarted consumer waits the outage out and drains."""
    cluster.create_topics(partitions=3)
    group = "handler-outage"
    acks = AckLedger(tmp_path)
    producer = producer_for(cluster.bootstrap, cluster.prefix, acks)
    chunks = list(sample_chunks(600, low_priority_ratio=0.5, prefix="h7o"))
    produce(producer, acks, chunks)
    producer.flush()
    settings = cluster.consumer_settings(
        group,
        max_retries=2,
        retry_backoff_s=0.05,
        retry_backoff_max_s=0.2,
        error_actions={"sink_unavailable": "retry"},
    )
    # 1. The sink goes down mid-stream; the consumer is stopped while it still retries.
    first = OutageHandler(tmp_path, handled_before=150)
    stopping = ThreadedConsumer(PriorityConsumer(settings, first)).start()
    assert first.down.wait(60), "the outage began"
    wait_until(lambda: first.attempts_while_down > 10, timeout_s=30, what="retries past 2")
    assert stopping.stop() == 0
    assert read_dead_lettered(tmp_path) == []  # nothing healthy parked on the way out
    faults = [Fault("stop during the outage", committed(cluster, group))]
    # 2. Restarted while the sink is still down: it keeps retrying, then drains once it is back.
    second = OutageHandler(tmp_path, handled_before=0)
    consumer = PriorityConsumer(settings, second)
    threaded = ThreadedConsumer(consumer).start()
    try:
        assert second.down.wait(60)
        wait_until(lambda: second.attempts_while_down > 10, timeout_s=30, what="retries past 2")
        assert threaded.alive and consumer.healthy()[0], consumer.healthy()
        second.recover()
        wait_until(
            lambda: committed_to_the_end(cluster, group), timeout_s=90, what="the commit to the end"
        )
    finally:
        assert threaded.stop() == 0
    parked = record_dead_letters(tmp_path, cluster)
    figures = check(
        "07-sink-outage-retry",
        "Sink down far beyond max_retries with the retry action: stopped mid-outage, restarted,"
        " recovered",
        tmp_path,
        produced=acks.produced,
        committed=committed(cluster, group),
        high_watermarks=high_watermarks(cluster),
        duplicates="none",
        faults=faults,
        notes={
            "attempts while down": first.attempts_while_down + second.attempts_while_down,
            "max_retries": 2,
        },
    )
    figures.assert_ok()
    assert parked == []
    assert figures.handled == len(chunks)
