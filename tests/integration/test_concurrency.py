"""Concurrent handling on the real broker: SIGKILL, a member joining, a handler slower than
``max.poll.interval.ms``, async handlers and dead letters, all with many chunks in flight.

Chunks share keys (60 keys over thousands of chunks, so a key has many versions in flight at
once); the child processes' handler fsyncs each chunk to a ledger before returning
(RELIABILITY.md). Checked: I1 no loss (every acknowledged (topic, partition, offset) handled), I2/I3
committed offsets never past a gap of handled offsets, I4 duplicates (none after clean stops and
revokes, only the uncommitted window after a kill), I5 one offset never maps to two ids, and per-key
order: within one process, the offsets of one key are handled in increasing order.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka_helpers import (
    Cluster,
    ThreadedConsumer,
    check_committed_at_high_watermarks,
    start_ledger_consumer,
    stop,
    wait_until,
)
from ledger_handler import Processed, read_ledger

from streamproc.chunk import Chunk
from streamproc.consumer import PriorityConsumer
from streamproc.errors import HandlerError
from streamproc.handlers import ChunkRecord
from streamproc.producer import ChunkProducer, Delivery
from streamproc.samples import sample_chunks
from streamproc.settings import ProducerSettings

pytestmark = pytest.mark.integration

KEYS = 60
Coordinates = tuple[str, int, int]
RunConsumer = Callable[[PriorityConsumer], ThreadedConsumer]


def keyed_chunks(count: int, *, seed: int = 11) -> Iterator[Chunk]:
    """Chunks whose keys repeat: each key gets ``count / KEYS`` versions, on both lanes."""
    for index, chunk in enumerate(sample_chunks(count, low_priority_ratio=0.3, seed=seed)):
        yield chunk.model_copy(update={"tracking_id": f"key-{index % KEYS}"})


def produce_acked(cluster: Cluster, count: int, *, seed: int = 11) -> set[Coordinates]:
    acked: set[Coordinates] = set()

    def record(delivery: Delivery) -> None:
        if delivery.ok and delivery.offset is not None:  # the count below says if one lacks it
            acked.add((delivery.topic, delivery.partition, delivery.offset))

    producer = ChunkProducer(
        ProducerSettings(bootstrap_servers=cluster.bootstrap, topic_prefix=cluster.prefix),
        on_delivery=record,
    )
    producer.produce_many(keyed_chunks(count, seed=seed))
    producer.flush()
    assert len(acked) == count
    return acked


def start_consumer(
    cluster: Cluster, group: str, ledger: Path, *, sleep_s: float, concurrency: int = 16
) -> subprocess.Popen[bytes]:
    child: subprocess.Popen[bytes] = start_ledger_consumer(
        cluster, group, ledger, "--ordering", "key",
        STREAMPROC_TEST_HANDLER_SLEEP_S=str(sleep_s),
        STREAMPROC_CONCURRENCY=str(concurrency),
        # A killed member holds its partitions until its session times out: keep that short.
        STREAMPROC_SESSION_TIMEOUT_MS="6000",
    )  # fmt: skip
    return child


def handled(ledger: Path) -> set[Coordinates]:
    return {(e.topic, e.partition, e.offset) for e in read_ledger(ledger)}


def check_invariants(processed: list[Processed], acked: set[Coordinates]) -> None:
    coordinates = {(e.topic, e.partition, e.offset) for e in processed}
    assert acked <= coordinates, f"I1: {len(acked - coordinates)} acknowledged chunks not handled"
    ids: dict[Coordinates, set[str]] = {}
    for entry in processed:
        ids.setdefault((entry.topic, entry.partition, entry.offset), set()).add(entry.tracking_id)
    assert all(len(names) == 1 for names in ids.values()), "I5: an offset maps to two chunks"
    check_key_order(processed)


def check_key_order(processed: list[Processed]) -> None:
    """Within one process, one key's offsets (per partition) are handled in increasing order."""
    last: dict[tuple[int, str, int, str], int] = {}
    for entry in processed:
        slot = (entry.pid, entry.topic, entry.partition, entry.tracking_id)
        previous = last.get(slot)
        assert previous is None or entry.offset > previous, (
            f"key {entry.tracking_id} of {entry.topic}[{entry.partition}] handled out of order"
            f" by {entry.pid}: {entry.offset} after {previous}"
        )
        last[slot] = entry.offset


def check_committed_safe(cluster: Cluster, group: str, ledger: Path) -> None:
    """I2/I3: everything below each committed offset was handled (no gap is ever committed)."""
    done = handled(ledger)
    for topic in cluster.lanes.topics:
        for partition, committed in cluster.committed(group, topic).items():
            missing = [o for o in range(max(committed, 0)) if (topic, partition, o) not in done]
            assert not missing, f"{topic}[{partition}] committed {committed} past {missing[:5]}"


def test_sigkill_with_16_in_flight_then_restart_loses_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.create_topics(partitions=4)
    acked = produce_acked(cluster, 3_000)
    ledger = tmp_path / "processed.tsv"
    first = start_consumer(cluster, "ckill", ledger, sleep_s=0.02)
    wait_until(lambda: len(read_ledger(ledger)) >= 800, what="the first consumer to progress")
    first.kill()
    first.wait(10)
    killed_at = len(read_ledger(ledger))
    # What the killed process committed is covered by its ledger: no gap was ever committed.
    check_committed_safe(cluster, "ckill", ledger)

    second = start_consumer(cluster, "ckill", ledger, sleep_s=0.0)
    wait_until(lambda: acked <= handled(ledger), what="every acknowledged chunk to be handled")
    assert stop(second) == 0
    processed = read_ledger(ledger)
    check_invariants(processed, acked)
    check_committed_at_high_watermarks(cluster, "ckill")

    counts = Counter((e.topic, e.partition, e.offset) for e in processed)
    duplicates = {coordinates for coordinates, n in counts.items() if n > 1}
    pids = {
        c: [e.pid for e in processed if (e.topic, e.partition, e.offset) == c] for c in duplicates
    }
    # I4 after a hard kill: at most once per process; the second time by the restarted one.
    assert all(handlers == [first.pid, second.pid] for handlers in pids.values())
    assert len(duplicates) <= killed_at


def test_member_joins_with_16_in_flight_no_loss_no_duplicates(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.create_topics(partitions=4)
    acked = produce_acked(cluster, 4_000)
    ledger = tmp_path / "processed.tsv"
    first = start_consumer(cluster, "cjoin", ledger, sleep_s=0.01)
    wait_until(lambda: len(read_ledger(ledger)) >= 500, what="the first member to progress")
    second = start_consumer(cluster, "cjoin", ledger, sleep_s=0.01)
    # Keep the first member busy (chunks in flight) until the rebalance gives the second one
    # work: the first would otherwise finish the backlog alone while the second starts and joins.
    deadline = time.monotonic() + 60
    for seed in itertools.count(12):
        if second.pid in {e.pid for e in read_ledger(ledger)}:
            break
        assert time.monotonic() < deadline, "timed out waiting for the second member to get work"
        acked |= produce_acked(cluster, 100, seed=seed)
        time.sleep(0.1)
    wait_until(lambda: acked <= handled(ledger), what="every acknowledged chunk to be handled")
    assert stop(second) == 0
    assert stop(first) == 0
    processed = read_ledger(ledger)
    check_invariants(processed, acked)
    check_committed_at_high_watermarks(cluster, "cjoin")
    # Revoke waits for the revoked partitions' running chunks and commits them: nothing twice.
    assert len(processed) == len(acked), "I4: a revoke with in-flight work caused duplicates"


class SlowFirst:
    """Sleeps longer than max.poll.interval.ms on the first chunk; the rest are quick."""

    def __init__(self, sleep_s: float) -> None:
        self.sleep_s = sleep_s
        self.handled = 0
        self._lock = threading.Lock()
        self._slept = False

    def __call__(self, record: ChunkRecord) -> None:
        with self._lock:
            slow, self._slept = not self._slept, True
        if slow:
            time.sleep(self.sleep_s)
        with self._lock:
            self.handled += 1


def test_handler_slower_than_max_poll_interval_causes_no_rebalance(
    cluster: Cluster, run_consumer: RunConsumer
) -> None:
    cluster.create_topics(partitions=2)
    cluster.produce(sample_chunks(200, prefix="slow"))
    handler = SlowFirst(sleep_s=9.0)
    settings = cluster.consumer_settings(
        "slow",
        concurrency=2,
        max_poll_interval_ms=6_000,
        session_timeout_ms=6_000,
        health_max_tick_age_s=3.0,
    )
    consumer = PriorityConsumer(settings, handler)
    threaded = run_consumer(consumer)
    wait_until(lambda: handler.handled == 199, what="every chunk but the slow one")
    assert consumer.healthy()[0], "the poll loop ticks and chunks finish"
    # Only the slow chunk left: nothing finishes for longer than the health limit.
    wait_until(lambda: not consumer.healthy()[0], timeout_s=8, what="/healthz to report it")
    wait_until(lambda: handler.handled == 200, timeout_s=30, what="the slow chunk")
    wait_until(lambda: consumer.healthy()[0], timeout_s=5, what="/healthz to recover")
    assert threaded.stop() == 0
    rebalances = consumer.metrics.rebalances
    assert rebalances.labels(kind="lost")._value.get() == 0
    # One member per lane consumer: each was assigned once and revoked once, by the close.
    lanes = len(cluster.lanes.all)
    assert rebalances.labels(kind="revoke")._value.get() == lanes, "only the revokes of the close"
    assert rebalances.labels(kind="assign")._value.get() == lanes
    top = cluster.lanes.top.topic
    assert cluster.committed("slow", top) == cluster.high_watermarks(top)


class AsyncRecorder:
    """An async handler: parks chunk ``bad-3`` (permanent error), records the rest."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.most_at_once = 0
        self._running = 0

    async def __call__(self, record: ChunkRecord) -> None:
        self._running += 1
        self.most_at_once = max(self.most_at_once, self._running)
        try:
            await asyncio.sleep(0.01)
            if record.chunk.tracking_id == "bad-3":
                raise HandlerError("this chunk cannot be indexed")
            self.seen.append(record.chunk.tracking_id or "")
        finally:
            self._running -= 1


def test_async_handler_runs_many_at_once_and_dead_letters_failures(
    cluster: Cluster, run_consumer: RunConsumer
) -> None:
    cluster.create_topics(partitions=3)
    cluster.produce(sample_chunks(300, prefix="bad", low_priority_ratio=0.5))
    handler = AsyncRecorder()
    consumer = PriorityConsumer(
        cluster.consumer_settings("async", concurrency=32, ordering="unordered"), handler
    )
    assert consumer.concurrent
    threaded = run_consumer(consumer)
    wait_until(lambda: len(handler.seen) == 299, what="299 chunks handled")
    wait_until(lambda: sum(s.dead_lettered for s in consumer.stats.lanes.values()) == 1)
    assert threaded.stop() == 0
    assert handler.most_at_once > 1
    assert "bad-3" not in handler.seen
    dlq = [topic + ".dlq" for topic in cluster.lanes.topics]
    parked = [m for topic in dlq for m in cluster.read_all(topic)]
    assert [m.key() for m in parked] == [b"bad-3"]
    check_committed_at_high_watermarks(cluster, "async")


def test_stop_policy_with_concurrency_commits_nothing_past_the_failure(
    cluster: Cluster, run_consumer: RunConsumer
) -> None:
    cluster.create_topics(partitions=1)
    cluster.produce(sample_chunks(100, prefix="bad"))

    def handler(record: ChunkRecord) -> None:
        if record.chunk.tracking_id == "bad-40":
            raise ValueError("broken")

    consumer = PriorityConsumer(
        cluster.consumer_settings(
            "cstop", concurrency=8, ordering="unordered", error_actions={"handler_error": "stop"}
        ),
        handler,
    )
    threaded = run_consumer(consumer)
    wait_until(lambda: not threaded.alive, what="the consumer to stop on the failure")
    assert threaded.exit_code == 1
    committed = cluster.committed("cstop", cluster.lanes.top.topic)
    assert committed[0] <= 40, f"committed {committed[0]} past the failed offset 40"


class LaneProbe:
    """Counts bulk chunks started while the flow policy holds bulk paused."""

    def __init__(self, sleep_s: float) -> None:
        self.sleep_s = sleep_s
        self.consumer: PriorityConsumer | None = None
        self.handled = Counter[str]()
        self.bulk_while_paused = 0
        self._lock = threading.Lock()

    def __call__(self, record: ChunkRecord) -> None:
        assert self.consumer is not None
        lane = record.context.lane
        paused = lane == "bulk" and "bulk" in self.consumer.paused_lanes
        time.sleep(self.sleep_s)
        with self._lock:
            self.handled[lane] += 1
            self.bulk_while_paused += paused


def test_paused_bulk_waits_in_the_buffer_while_realtime_runs(
    cluster: Cluster, run_consumer: RunConsumer
) -> None:
    cluster.create_topics(partitions=3)
    bulk_count, burst = 6_000, 3_000
    cluster.produce(sample_chunks(bulk_count, low_priority_ratio=1.0, prefix="bulk"))
    probe = LaneProbe(sleep_s=0.002)
    settings = cluster.consumer_settings("cflow", pause_lag=300, concurrency=8)
    consumer = PriorityConsumer(settings, probe)
    probe.consumer = consumer
    threaded = run_consumer(consumer)
    wait_until(lambda: probe.handled["bulk"] > 500, what="bulk to start")
    cluster.produce(sample_chunks(burst, prefix="live", seed=3))
    wait_until(lambda: probe.handled["realtime"] == burst, what="the realtime burst")
    wait_until(lambda: probe.handled["bulk"] == bulk_count, what="bulk to drain")
    assert threaded.stop() == 0
    pauses = consumer.metrics.lanes["bulk"].pauses._value.get()
    assert pauses >= 1, "the burst over pause_lag must pause bulk"
    # Taken bulk chunks wait while bulk is paused; only those already started when a pause
    # took effect (at most one per worker) can be seen running under it.
    assert probe.bulk_while_paused <= settings.concurrency * pauses
    check_committed_at_high_watermarks(cluster, "cflow")
