"""The consumer loop against in-memory Kafka clients: priority, turns, pauses, rebalances, stop.

These drive :class:`~streamproc.consumer.PriorityConsumer` through ``subscribe()`` and ``tick()``
(or ``run()`` on a thread) with the fakes of ``fake_kafka``; the same behaviours are proven against
the real broker in tests/integration and tests/fault.
"""

from __future__ import annotations

import gc
import itertools
import logging
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from confluent_kafka import KafkaError
from fake_kafka import FakeBroker, FakeClients, FakeConsumer

from streamproc.chunk import Chunk
from streamproc.codec import ChunkCodec
from streamproc.consumer import PriorityConsumer
from streamproc.consumer.loop import AHEAD_AFTER_IDLE_S
from streamproc.errors import SinkUnavailableError
from streamproc.handlers import ChunkRecord
from streamproc.settings import ConsumerSettings

REALTIME, BULK = "chunks.realtime", "chunks.bulk"
CODEC = ChunkCodec()


def broker(realtime: int = 0, bulk: int = 0, partitions: int = 2) -> FakeBroker:
    fake = FakeBroker({REALTIME: partitions, BULK: partitions})
    for topic, count in ((REALTIME, realtime), (BULK, bulk)):
        for index in range(count):
            value = CODEC.encode(Chunk(tracking_id=f"{topic}-{index}"))
            fake.produce(topic, index % partitions, value, key=f"{topic}-{index}".encode())
    return fake


class Recorder:
    """A batch handler that records every batch (lane, size) and can be slowed or blocked."""

    def __init__(self, cost_s: Callable[[str], float] = lambda lane: 0.0) -> None:
        self.batches: list[tuple[str, int]] = []
        self.handled: dict[str, int] = {"realtime": 0, "bulk": 0}
        self.cost_s = cost_s
        self.gate: threading.Event | None = None
        self.on_batch: Callable[[str, int], None] | None = None

    def handle_batch(self, records: Sequence[ChunkRecord]) -> None:
        lane = records[0].context.lane
        if self.on_batch is not None:
            self.on_batch(lane, len(records))
        if self.gate is not None:
            self.gate.wait(5)
        time.sleep(self.cost_s(lane) * len(records))
        self.batches.append((lane, len(records)))
        self.handled[lane] += len(records)


def produce_live_on_bulk_batches(fake: FakeBroker, handler: Recorder, every: int = 1) -> None:
    """As a bulk batch starts (one in ``every``, counted by the batches handled), one realtime
    chunk arrives."""

    def produce_live(lane: str, size: int) -> None:
        if lane == "bulk" and len(handler.batches) % every == 0:
            fake.produce(REALTIME, 0, CODEC.encode(Chunk(tracking_id="live")), key=b"live")

    handler.on_batch = produce_live


def consumer_on(
    fake: FakeBroker, handler: Any, **overrides: Any
) -> tuple[PriorityConsumer, FakeClients]:
    settings = ConsumerSettings(
        **{"bootstrap_servers": "fake:9092", "poll_timeout_s": 0.02, **overrides}
    )
    clients = FakeClients(fake)
    return PriorityConsumer(settings, handler, codec=CODEC, clients=clients), clients


def lane_consumer(clients: FakeClients, lane: str) -> FakeConsumer:
    return clients.consumers[f"streamproc-{lane}"]


def run_until(
    consumer: PriorityConsumer, done: Callable[[], bool], timeout_s: float = 10.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out"
        consumer.tick()


def test_each_lane_has_its_own_consumer_in_the_group_subscribed_to_its_topic_only() -> None:
    consumer, clients = consumer_on(broker(), Recorder(), group_id="indexer")
    consumer.subscribe()
    # One member per lane, and one consumer that never joins: the lag monitor asks through it.
    assert set(clients.consumers) == {"streamproc-realtime", "streamproc-bulk", "streamproc-query"}
    assert lane_consumer(clients, "query").topics == []
    for lane, topic in (("realtime", REALTIME), ("bulk", BULK)):
        fake = lane_consumer(clients, lane)
        assert fake.topics == [topic]
        assert fake.config["group.id"] == "indexer"
        assert fake.config["enable.auto.offset.store"] is False
    consumer.close()


def test_static_membership_gets_one_instance_id_per_lane_consumer() -> None:
    _, clients = consumer_on(broker(), Recorder(), librdkafka_extra={"group.instance.id": "pod-0"})
    ids = {c.config.get("group.instance.id") for c in clients.consumers.values()}
    assert ids == {"pod-0-realtime", "pod-0-bulk", None}


def test_realtime_is_handled_before_a_bulk_backlog_taken_at_the_same_time() -> None:
    fake = broker(realtime=20, bulk=200)
    handler = Recorder()
    consumer, _ = consumer_on(fake, handler)
    consumer.subscribe()
    run_until(
        consumer, lambda: handler.handled["bulk"] == 200 and handler.handled["realtime"] == 20
    )
    consumer.close()
    assert handler.batches[0] == ("realtime", 20)
    assert all(lane == "bulk" for lane, _ in handler.batches[1:])


def test_bulk_turns_are_sized_by_the_time_budget() -> None:
    fake = broker(bulk=300)
    handler = Recorder(cost_s=lambda lane: 0.002)  # 2 ms a chunk, budget 10 ms: 5 a turn
    # Realtime that took nothing for a while lets bulk plan longer turns: not here.
    produce_live_on_bulk_batches(fake, handler, every=10)
    consumer, _ = consumer_on(fake, handler, bulk_turn_ms=10)
    consumer.subscribe()
    run_until(consumer, lambda: handler.handled["bulk"] == 300, timeout_s=20)
    consumer.close()
    sizes = [size for lane, size in handler.batches if lane == "bulk"]
    # The first turn uses the 1 ms first guess (10 chunks); then the measured 2 ms rules.
    assert sizes[0] <= 10
    assert max(sizes[3:]) <= 6, sizes
    # 2 ms of sleep plus decoding and scheduling: 4 or 5 chunks fit in 10 ms.
    assert 4 <= statistics.median(sizes[3:]) <= 5, sizes


def test_realtime_arriving_during_bulk_waits_at_most_one_turn() -> None:
    fake = broker(bulk=400)
    handler = Recorder(cost_s=lambda lane: 0.001)
    consumer, _ = consumer_on(fake, handler, bulk_turn_ms=5)
    arrived: list[int] = []

    def produce_realtime_once(lane: str, size: int) -> None:
        if lane == "bulk" and len(handler.batches) == 10 and not arrived:
            arrived.append(len(handler.batches))
            fake.produce(REALTIME, 0, CODEC.encode(Chunk(tracking_id="live")), key=b"live")

    handler.on_batch = produce_realtime_once
    consumer.subscribe()
    run_until(consumer, lambda: handler.handled["realtime"] == 1, timeout_s=10)
    consumer.close()
    realtime_at = handler.batches.index(("realtime", 1))
    # Produced while batch 10 ran (it was not recorded yet): only that bulk turn may finish first.
    assert realtime_at <= arrived[0] + 1, handler.batches[: realtime_at + 1]


def test_a_bulk_turn_yields_between_chunks_to_realtime_that_arrives_meanwhile() -> None:
    fake = broker(bulk=400, partitions=1)
    order: list[str] = []  # tracking ids in handling order
    live_sent_at: list[int] = []

    def handle(record: ChunkRecord) -> None:
        order.append(record.chunk.tracking_id or "")
        time.sleep(0.001)
        if record.context.lane == "bulk" and len(order) == 100:
            live_sent_at.append(len(order))
            fake.produce(REALTIME, 0, CODEC.encode(Chunk(tracking_id="live")), key=b"live")

    # 50 ms turns: about 40 chunks each, so a turn that ran to its end would show here.
    consumer, _ = consumer_on(fake, handle, bulk_turn_ms=50)
    consumer.subscribe()
    run_until(consumer, lambda: len(order) == 401, timeout_s=20)
    consumer.close()
    # The running chunk finishes; the rest of its turn waits until realtime is handled.
    assert order.index("live") <= live_sent_at[0] + 1, order[live_sent_at[0] - 2 :][:10]
    bulk = [tracking_id for tracking_id in order if tracking_id != "live"]
    assert bulk == [f"{BULK}-{index}" for index in range(400)]  # every one once, in order
    assert consumer.stats.lanes["bulk"].handled == 400


def test_flow_control_pauses_bulk_partitions_while_realtime_lags_and_resumes_when_drained() -> None:
    fake = broker(realtime=600, bulk=100)
    handler = Recorder(cost_s=lambda lane: 0.0002 if lane == "realtime" else 0.0)
    consumer, clients = consumer_on(fake, handler, pause_lag=100, max_batch_messages=50)
    bulk = lane_consumer(clients, "bulk")
    bulk_while_paused = []
    handler.on_batch = lambda lane, size: (
        bulk_while_paused.append(size) if lane == "bulk" and consumer.paused_lanes else None
    )
    consumer.subscribe()
    # The bulk consumer gets its partitions on its first poll, paused at once if bulk is held.
    run_until(consumer, lambda: bulk.paused == {(BULK, 0), (BULK, 1)})
    assert "bulk" in consumer.paused_lanes
    assert consumer.paused_partitions == {(BULK, 0), (BULK, 1)}
    run_until(consumer, lambda: handler.handled["bulk"] == 100 and not consumer.paused_lanes)
    consumer.close()
    assert bulk.paused == set()
    # Nothing of a held lane reaches the handler once it is held; the pipeline looks just
    # before the handler, and the lane is held before paused_lanes says so. A batch already
    # handed over in that instant (with its turn queued behind realtime from the first tick, it
    # can be) is seen here as running while paused: one at most, with one slot.
    assert len(bulk_while_paused) <= 1, bulk_while_paused
    assert consumer.metrics.lanes["bulk"].pauses._value.get() >= 1
    # The pause state is published to the group as commit metadata on the bulk consumer.
    assert any(name == "commit_metadata" for name, _ in bulk.calls)


def test_every_lane_consumer_is_polled_while_a_handler_blocks() -> None:
    fake = broker(realtime=1, bulk=50)
    handler = Recorder()
    handler.gate = threading.Event()
    consumer, clients = consumer_on(fake, handler)
    thread = threading.Thread(target=consumer.run, kwargs={"install_signal_handlers": False})
    thread.start()
    time.sleep(0.6)  # the first batch is blocked on the gate all along
    handler.gate.set()
    deadline = time.monotonic() + 5
    while handler.handled["bulk"] < 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    consumer.stop()
    thread.join(5)
    for lane in ("realtime", "bulk"):
        polls = lane_consumer(clients, lane).polls
        gaps = [later - earlier for earlier, later in itertools.pairwise(polls)]
        assert max(gaps) < 0.25, f"{lane} consumer not polled for {max(gaps):.2f}s"
    assert handler.handled == {"realtime": 1, "bulk": 50}


def test_revoke_stores_and_commits_finished_work_then_resumes_and_unassigns() -> None:
    fake = broker(realtime=300, bulk=40)
    handler = Recorder(cost_s=lambda lane: 0.0002 if lane == "realtime" else 0.0)
    consumer, clients = consumer_on(fake, handler, pause_lag=50, max_batch_messages=20)
    bulk = lane_consumer(clients, "bulk")
    consumer.subscribe()
    run_until(consumer, lambda: bool(bulk.paused))
    bulk.revoke([(BULK, 0), (BULK, 1)])
    run_until(consumer, lambda: not any(key[0] == BULK for key in consumer.assignment))
    names = [name for name, _ in bulk.calls]
    revoke_calls = names[names.index("pause") :]
    # Paused partitions are resumed before they go (librdkafka keeps the flag across unassign).
    assert revoke_calls.index("resume") < revoke_calls.index("unassign")
    assert bulk.paused == set()
    consumer.close()


def test_revoke_commits_what_finished_before_the_partitions_go() -> None:
    fake = broker(bulk=30, partitions=1)
    handler = Recorder()
    consumer, clients = consumer_on(fake, handler)
    consumer.subscribe()
    run_until(consumer, lambda: handler.handled["bulk"] == 30)
    bulk = lane_consumer(clients, "bulk")
    bulk.revoke([(BULK, 0)])
    run_until(consumer, lambda: not consumer.assignment or (BULK, 0) not in consumer.assignment)
    names = [name for name, _ in bulk.calls]
    assert names.index("commit") < names.index("unassign")
    assert fake.committed[(BULK, 0)] == 30
    consumer.close()


def test_lost_partitions_are_not_committed() -> None:
    fake = broker(bulk=30, partitions=1)
    handler = Recorder()
    consumer, clients = consumer_on(fake, handler)
    consumer.subscribe()
    bulk = lane_consumer(clients, "bulk")
    run_until(consumer, lambda: handler.handled["bulk"] == 30)
    commits_before = [call for call in bulk.calls if call[0] == "commit"]
    bulk.revoke([(BULK, 0)], lost=True)
    run_until(consumer, lambda: (BULK, 0) not in consumer.assignment)
    assert [call for call in bulk.calls if call[0] == "commit"] == commits_before
    consumer.close()


def test_stop_policy_stores_nothing_past_the_failure_and_exits_1() -> None:
    fake = broker(partitions=1)
    for index in range(3):
        fake.produce(REALTIME, 0, CODEC.encode(Chunk(tracking_id=f"ok-{index}")))
    fake.produce(REALTIME, 0, b"garbage")
    fake.produce(REALTIME, 0, CODEC.encode(Chunk(tracking_id="after")))
    handler = Recorder()
    consumer, _ = consumer_on(fake, handler, error_actions={"undecodable": "stop"})
    assert consumer.run(install_signal_handlers=False) == 1
    assert handler.handled["realtime"] == 3
    assert fake.committed[(REALTIME, 0)] == 3


def test_run_sets_the_gc_threshold_and_switch_interval_while_it_runs_and_restores_them() -> None:
    fake = broker(partitions=1)
    fake.produce(REALTIME, 0, CODEC.encode(Chunk(tracking_id="one")))
    fake.produce(REALTIME, 0, b"garbage")  # the stop policy ends run() here
    handler = Recorder()
    seen: list[tuple[int, float]] = []
    handler.on_batch = lambda lane, size: seen.append(
        (gc.get_threshold()[0], sys.getswitchinterval())
    )
    consumer, _ = consumer_on(
        fake,
        handler,
        error_actions={"undecodable": "stop"},
        gc_young_threshold=12_345,
        gil_switch_interval_ms=0.25,
    )
    before = gc.get_threshold(), sys.getswitchinterval()
    assert consumer.run(install_signal_handlers=False) == 1
    assert [threshold for threshold, _ in seen] == [12_345]
    assert [interval for _, interval in seen] == [pytest.approx(0.00025)]
    assert (gc.get_threshold(), sys.getswitchinterval()) == before


def test_undecodable_message_is_parked_and_the_rest_goes_on() -> None:
    fake = broker(partitions=1)
    fake.produce(BULK, 0, b"garbage")
    fake.produce(BULK, 0, CODEC.encode(Chunk(tracking_id="fine", low_priority=True)))
    handler = Recorder()
    consumer, clients = consumer_on(fake, handler)
    consumer.subscribe()
    run_until(consumer, lambda: handler.handled["bulk"] == 1)
    consumer.close()
    assert [(m.offset(), lane) for m, lane in clients.dlq.parked] == [(0, "bulk")]
    assert fake.committed[(BULK, 0)] == 2


@pytest.mark.parametrize("shape", ["per-chunk", "batch", "async"])
def test_shutdown_during_retries_leaves_chunks_for_redelivery_not_the_dead_letter_topic(
    shape: str,
) -> None:
    fake = broker(partitions=1)
    fake.produce(REALTIME, 0, CODEC.encode(Chunk(tracking_id="fine")))
    for index in range(3):
        fake.produce(REALTIME, 0, CODEC.encode(Chunk(tracking_id=f"sink-down-{index}")))
    calls: list[str] = []
    failing = threading.Event()

    def handle(record: ChunkRecord) -> None:
        calls.append(record.chunk.tracking_id or "")
        if record.chunk.tracking_id != "fine":
            failing.set()
            raise SinkUnavailableError("the index is down")

    class Batch:
        def handle_batch(self, records: Sequence[ChunkRecord]) -> None:
            for record in records:
                handle(record)

    async def handle_async(record: ChunkRecord) -> None:
        handle(record)

    handler: Any = {"per-chunk": handle, "batch": Batch(), "async": handle_async}[shape]
    # Retries would outlast the test by far: only shutdown ends them.
    consumer, clients = consumer_on(
        fake, handler, max_retries=1000, retry_backoff_s=0.01, retry_backoff_max_s=0.01
    )
    runner = threading.Thread(target=consumer.run, kwargs={"install_signal_handlers": False})
    runner.start()
    assert failing.wait(10)
    time.sleep(0.1)  # a few retries
    consumer.stop()
    runner.join(10)
    assert not runner.is_alive()
    assert clients.dlq.parked == []  # nothing healthy parked because the consumer stopped
    # Stored up to the failing chunk, never past it: it comes back after the restart.
    assert fake.committed.get((REALTIME, 0), 0) <= 1
    assert len(calls) > 2  # it was retried until then


def test_retry_action_outlasts_max_retries_and_keeps_the_consumer_healthy() -> None:
    fake = broker(partitions=1)
    for index in range(3):
        fake.produce(BULK, 0, CODEC.encode(Chunk(tracking_id=f"b{index}", low_priority=True)))
    down_until = time.monotonic() + 0.6  # the sink is down for far more than max_retries
    attempts: list[float] = []
    health: list[tuple[bool, str]] = []
    handled: list[str] = []

    def handle(record: ChunkRecord) -> None:
        attempts.append(time.monotonic())
        if time.monotonic() < down_until:
            raise SinkUnavailableError("the index is down")
        handled.append(record.chunk.tracking_id or "")

    consumer, clients = consumer_on(
        fake,
        handle,
        max_retries=2,
        retry_backoff_s=0.02,
        retry_backoff_max_s=0.02,
        health_max_tick_age_s=0.3,  # the outage lasts twice as long
        error_actions={"sink_unavailable": "retry"},
    )
    consumer.subscribe()

    def done() -> bool:
        health.append(consumer.healthy())
        return len(handled) == 3

    run_until(consumer, done)
    consumer.close()
    assert handled == ["b0", "b1", "b2"]
    assert clients.dlq.parked == []
    assert fake.committed[(BULK, 0)] == 3
    assert len(attempts) > 3 + 2  # far more attempts than max_retries allows
    assert all(ok for ok, _ in health), [why for ok, why in health if not ok][:1]


def test_without_retry_action_exhausted_retries_dead_letter() -> None:
    fake = broker(partitions=1)
    fake.produce(BULK, 0, CODEC.encode(Chunk(tracking_id="b0", low_priority=True)))
    attempts: list[int] = []

    def handle(record: ChunkRecord) -> None:
        attempts.append(1)
        raise SinkUnavailableError("the index is down")

    consumer, clients = consumer_on(
        fake, handle, max_retries=2, retry_backoff_s=0.001, retry_backoff_max_s=0.001
    )
    consumer.subscribe()
    run_until(consumer, lambda: len(clients.dlq.parked) == 1)
    consumer.close()
    assert len(attempts) == 3
    assert fake.committed[(BULK, 0)] == 1


def test_close_finishes_taken_work_commits_each_lane_consumer_and_closes_it() -> None:
    fake = broker(realtime=10, bulk=10, partitions=1)
    handler = Recorder()
    consumer, clients = consumer_on(fake, handler)
    consumer.subscribe()
    consumer.tick()
    consumer.close()
    assert handler.handled["realtime"] == 10
    assert fake.committed[(REALTIME, 0)] == 10
    for fake_consumer in clients.consumers.values():
        assert fake_consumer.closed
    assert consumer.shutdown_complete


def test_close_gives_up_a_commit_nobody_answers_within_close_timeout_and_says_what_is_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = broker(realtime=10, bulk=10, partitions=1)
    consumer, clients = consumer_on(fake, Recorder(), close_timeout_s=0.3)
    consumer.subscribe()
    consumer.tick()
    broker_back = threading.Event()
    realtime = lane_consumer(clients, "realtime")
    # What confluent-kafka's commit(asynchronous=False) does without a group coordinator.
    realtime.commit = lambda *args, **kwargs: broker_back.wait(30)
    started = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING):
            consumer.close()
        took = time.monotonic() - started
    finally:
        broker_back.set()
    assert took < 1.0, "close returns once close_timeout_s is spent"
    assert not consumer.shutdown_complete
    assert (REALTIME, 0) not in fake.committed
    assert not any(c.closed for c in clients.consumers.values()), "later steps are skipped"
    assert (
        f"lane realtime: its commit was given up; not committed: {REALTIME}[0] up to offset 9"
        in caplog.text
    )


def ten_handled(
    commit_errors: list[int], close_timeout_s: float
) -> tuple[PriorityConsumer, FakeClients, FakeBroker, FakeConsumer]:
    """Ten realtime chunks handled; the next synchronous commits fail with ``commit_errors``."""
    fake = broker(realtime=10, partitions=1)
    consumer, clients = consumer_on(fake, Recorder(), close_timeout_s=close_timeout_s)
    consumer.subscribe()
    run_until(consumer, lambda: consumer.stats.lanes["realtime"].handled == 10)
    realtime = lane_consumer(clients, "realtime")
    realtime.commit_errors = commit_errors
    return consumer, clients, fake, realtime


def test_close_tries_a_commit_again_while_the_group_coordinator_is_away() -> None:
    # A broker restarting: the coordinator moves, then loads the group's offsets.
    away = [KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS]
    consumer, _, fake, realtime = ten_handled(away, close_timeout_s=5)
    consumer.close()
    assert [name for name, _ in realtime.calls if name.startswith("commit")][-3:] == [
        "commit_failed",
        "commit_failed",
        "commit",
    ]
    assert fake.committed[(REALTIME, 0)] == 10
    assert consumer.shutdown_complete
    assert consumer.metrics.commits.labels(outcome="failed")._value.get() == 0


def test_close_gives_up_a_commit_the_coordinator_fails_until_close_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer, clients, fake, realtime = ten_handled(
        [KafkaError.NOT_COORDINATOR] * 100, close_timeout_s=3.6
    )
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        consumer.close()
    assert time.monotonic() - started < 5.0
    # Its share of the budget: a third (the bulk commit and the closes get the rest).
    assert 2 <= 100 - len(realtime.commit_errors) <= 3, "one attempt every 0.5 s for 1.2 s"
    assert all(c.closed for c in clients.consumers.values()), "the closes still had their time"
    assert (REALTIME, 0) not in fake.committed
    assert "lane realtime: its synchronous commit failed (" in caplog.text


def test_a_commit_failing_for_another_reason_is_not_tried_again() -> None:
    consumer, _, fake, realtime = ten_handled([KafkaError.UNKNOWN_MEMBER_ID], close_timeout_s=5)
    consumer.close()
    assert [name for name, _ in realtime.calls if name.startswith("commit")][-1] == "commit_failed"
    assert (REALTIME, 0) not in fake.committed
    assert consumer.metrics.commits.labels(outcome="failed")._value.get() == 1


def test_a_chunk_still_running_at_drain_timeout_leaves_the_shutdown_incomplete() -> None:
    fake = broker(realtime=4, partitions=1)
    handler = Recorder()
    handler.gate = threading.Event()  # the handler waits for it (up to 5 s)
    consumer, clients = consumer_on(fake, handler, drain_timeout_s=0.2)
    consumer.subscribe()
    consumer.tick()
    try:
        consumer.close()
    finally:
        handler.gate.set()
    assert not consumer.shutdown_complete, "a worker thread still runs: exit past it"
    assert (REALTIME, 0) not in fake.committed
    assert all(c.closed for c in clients.consumers.values()), "the clients still close"


@pytest.mark.parametrize("concurrency", [1, 4])
def test_async_and_threaded_handlers_take_the_same_path(concurrency: int) -> None:
    fake = broker(realtime=50, bulk=50)
    seen: list[str] = []

    async def handle(record: ChunkRecord) -> None:
        seen.append(record.context.lane)

    consumer, _ = consumer_on(fake, handle, concurrency=concurrency)
    consumer.subscribe()
    run_until(consumer, lambda: len(seen) == 100)
    consumer.close()
    assert fake.committed[(REALTIME, 0)] == fake.committed[(REALTIME, 1)] == 25
    assert fake.committed[(BULK, 0)] == fake.committed[(BULK, 1)] == 25


class Computing:
    """A batch handler that computes ``cpu_s`` and then waits ``wait_s`` per chunk, and notes,
    per batch, its size and whether another batch ran beside it."""

    def __init__(self, cpu_s: float = 0.001, wait_s: float = 0.0) -> None:
        self.batches: list[tuple[int, bool]] = []
        self._cpu_s = cpu_s
        self._wait_s = wait_s
        self._lock = threading.Lock()
        self._running = 0

    def handled(self) -> int:
        return sum(size for size, _ in self.batches)

    def handle_batch(self, records: Sequence[ChunkRecord]) -> None:
        with self._lock:
            self._running += 1
            beside = self._running > 1
        end = time.thread_time() + self._cpu_s * len(records)
        while time.thread_time() < end:
            pass
        if self._wait_s:
            time.sleep(self._wait_s * len(records))
        with self._lock:
            beside = beside or self._running > 1
            self._running -= 1
            self.batches.append((len(records), beside))

    def after(self, chunks: int) -> list[tuple[int, bool]]:
        """The batches that ended once ``chunks`` chunks were handled."""
        handled = 0
        for index, (size, _) in enumerate(self.batches):
            handled += size
            if handled >= chunks:
                return self.batches[index + 1 :]
        return []


def beside_share(batches: list[tuple[int, bool]]) -> float:
    return sum(1 for _, was_beside in batches if was_beside) / len(batches)


@pytest.mark.parametrize("serial_cpu_share", [0.8, 2.0])
def test_a_handler_that_only_computes_runs_one_batch_at_a_time_in_whole_turns(
    serial_cpu_share: float,
) -> None:
    fake = broker(bulk=4000, partitions=4)
    handler = Computing()
    consumer, _ = consumer_on(
        fake, handler, concurrency=8, ordering="unordered", serial_cpu_share=serial_cpu_share
    )
    consumer.subscribe()
    run_until(consumer, lambda: handler.handled() >= 4000, timeout_s=30)
    serial = consumer.metrics.registry.get_sample_value("streamproc_serial")
    consumer.close()
    assert serial == (1 if serial_cpu_share <= 1 else 0)
    # A second and a half side by side, then half a second serial: the pool has chosen by then.
    settled = handler.after(2800)
    mean_size = sum(size for size, _ in settled) / len(settled)
    if serial_cpu_share <= 1:
        assert beside_share(settled) < 0.1, settled[:40]
        assert mean_size > 2, settled[:40]  # a turn, not a chunk per batch
    else:  # eight threads, a chunk each, side by side
        assert beside_share(settled) > 0.5, settled[:40]
        assert mean_size == 1


def test_a_handler_that_also_waits_is_tried_serial_and_keeps_its_threads() -> None:
    # 0.2 ms computing and 0.8 ms waiting a chunk: eight threads saturate the GIL, so the
    # handler's share reads as high as one that only computes, but side by side is faster.
    fake = broker(bulk=7000, partitions=4)
    handler = Computing(cpu_s=0.0002, wait_s=0.0008)
    consumer, _ = consumer_on(fake, handler, concurrency=8, ordering="unordered")
    tried: list[bool] = []
    handler_batch = handler.handle_batch

    def noting_serial(records: Sequence[ChunkRecord]) -> None:
        if consumer._planner.serial() and not tried:
            tried.append(True)
        handler_batch(records)

    handler.handle_batch = noting_serial  # type: ignore[method-assign]
    consumer.subscribe()
    run_until(consumer, lambda: handler.handled() >= 7000, timeout_s=30)
    serial = consumer.metrics.registry.get_sample_value("streamproc_serial")
    consumer.close()
    assert tried, "serial was never tried"
    assert serial == 0
    last = handler.batches[-500:]
    assert beside_share(last) > 0.5 and max(size for size, _ in last) == 1, last[:40]


def test_a_serial_pool_does_not_wait_for_a_hung_call() -> None:
    fake = broker(bulk=3000, partitions=4)
    consumer: PriorityConsumer | None = None
    handled_during_hang: list[int] = []

    class HangsOnce(Computing):
        def handle_batch(self, records: Sequence[ChunkRecord]) -> None:
            serial = consumer is not None and consumer._planner.serial()
            if serial and self.handled() >= 300 and not handled_during_hang:
                handled_during_hang.append(-self.handled())
                time.sleep(1.5)  # a call that hangs, once the pool runs one batch at a time
                handled_during_hang[0] += self.handled()
            super().handle_batch(records)

    handler = HangsOnce()
    consumer, _ = consumer_on(fake, handler, concurrency=8, ordering="unordered")
    consumer.subscribe()
    run_until(consumer, lambda: handler.handled() >= 3000, timeout_s=30)
    consumer.close()
    # A quarter of a second into the hang the others start beside it: 1 ms a chunk.
    assert handled_during_hang and handled_during_hang[0] > 200, handled_during_hang


def test_a_running_bulk_lane_gets_turns_while_realtime_keeps_the_slot_busy() -> None:
    fake = broker(realtime=600, bulk=100, partitions=1)
    handler = Recorder()
    bulk_during_realtime: list[int] = []

    def fixed_cost(lane: str, size: int) -> None:
        time.sleep(0.005)  # a commit per batch: realtime batches of 5 keep the slot busy
        if lane == "bulk" and handler.handled["realtime"] < 600:
            bulk_during_realtime.append(size)

    handler.on_batch = fixed_cost
    # Flow control never holds bulk here: only the overdue turn can let it in.
    consumer, _ = consumer_on(fake, handler, pause_lag=1_000_000, max_batch_messages=5)
    consumer.subscribe()
    run_until(consumer, lambda: handler.handled["realtime"] == 600, timeout_s=20)
    consumer.close()
    # 120 realtime batches of >= 5 ms: at least one bulk turn per 100 ms in between.
    assert len(bulk_during_realtime) >= 3, handler.batches[:40]
    assert handler.batches[0][0] == "realtime"


def test_with_realtime_idle_bulk_works_one_turn_ahead_and_realtime_still_goes_first() -> None:
    fake = broker(bulk=600)
    consumer: PriorityConsumer | None = None
    waiting_after: list[int] = []  # bulk chunks waiting for the slot as each bulk batch ends
    live_sent_after = 0

    class AheadRecorder(Recorder):
        def handle_batch(self, records: Sequence[ChunkRecord]) -> None:
            nonlocal live_sent_after
            super().handle_batch(records)
            if records[0].context.lane == "bulk" and consumer is not None:
                waiting_after.append(consumer._pool.ready(1))
                if len(waiting_after) == 20:
                    live_sent_after = len(self.batches)
                    fake.produce(REALTIME, 0, CODEC.encode(Chunk(tracking_id="live")), key=b"l")

    handler = AheadRecorder(cost_s=lambda lane: 0.001)
    consumer, _ = consumer_on(fake, handler, bulk_turn_ms=5)
    consumer.subscribe()
    time.sleep(AHEAD_AFTER_IDLE_S)  # realtime has taken nothing since the consumer started
    run_until(
        consumer,
        lambda: handler.handled["bulk"] == 600 and handler.handled["realtime"] == 1,
        timeout_s=20,
    )
    consumer.close()
    # The next turn is already in the pool when most batches end: the slot never waits for
    # the loop to wake.
    assert sum(1 for waiting in waiting_after[3:18] if waiting) >= 12, waiting_after
    # Turns planned for AHEAD_TURN_STRETCH times the budget while realtime is idle.
    assert max(size for lane, size in handler.batches if lane == "bulk") > 5 * 2
    # The first realtime chunk after the idle spell waits for the running and the queued turn
    # at most.
    assert handler.batches.index(("realtime", 1)) <= live_sent_after + 2, handler.batches


def test_while_realtime_streams_the_next_bulk_turn_waits_queued_behind_it() -> None:
    """With a bulk backlog, a bulk turn is queued while realtime runs: when the realtime batch
    ends, the slot starts it at once instead of idling until the loop wakes, takes a turn and
    hands it over (at concurrency 1 under a CPU-bound handler that idle gap cost a tenth of the
    capacity realtime leaves)."""
    fake = broker(bulk=400)
    consumer: PriorityConsumer | None = None
    queued_at_realtime_end: list[int] = []

    class QueueRecorder(Recorder):
        def handle_batch(self, records: Sequence[ChunkRecord]) -> None:
            super().handle_batch(records)
            if records[0].context.lane == "realtime" and consumer is not None:
                queued_at_realtime_end.append(consumer._pool.ready(1))

    handler = QueueRecorder(cost_s=lambda lane: 0.003 if lane == "realtime" else 0.001)
    produce_live_on_bulk_batches(fake, handler)
    consumer, _ = consumer_on(fake, handler, bulk_turn_ms=5)
    consumer.subscribe()
    run_until(consumer, lambda: handler.handled["bulk"] == 400, timeout_s=20)
    consumer.close()
    realtime_ends = queued_at_realtime_end[2:-2]  # not the first (before any measurement)
    assert len(realtime_ends) >= 20, handler.batches
    assert sum(1 for queued in realtime_ends if queued) >= 0.8 * len(realtime_ends), realtime_ends
    # Realtime still goes first: the chunk produced as a bulk batch starts runs next, ahead of
    # the bulk turn queued meanwhile.
    after_bulk = [
        handler.batches[i + 1][0]
        for i, (lane, _) in enumerate(handler.batches[:-1])
        if lane == "bulk"
    ]
    assert after_bulk.count("realtime") >= 0.9 * len(after_bulk), handler.batches


def test_working_ahead_the_loop_wakes_once_per_turn() -> None:
    """A turn queued behind the running batch leaves the loop nothing to do until that batch
    ends: it waits for it (each wake costs GIL time the handlers want) instead of ticking again
    at once to find nothing."""
    fake = broker(bulk=800)
    handler = Recorder(cost_s=lambda lane: 0.0005)
    consumer, _ = consumer_on(fake, handler, bulk_turn_ms=5, poll_timeout_s=0.5)
    consumer.subscribe()
    time.sleep(AHEAD_AFTER_IDLE_S)  # realtime idle: bulk works ahead from the first turn
    ticks = 0

    def drained() -> bool:
        nonlocal ticks
        ticks += 1
        return handler.handled["bulk"] == 800

    run_until(consumer, drained, timeout_s=20)
    consumer.close()
    turns = sum(1 for lane, _ in handler.batches if lane == "bulk")
    assert turns >= 10, handler.batches  # long enough to tell one wake a turn from two
    assert ticks <= 1.3 * turns + 5, (ticks, turns)


# -- partitions written in transactions -------------------------------------------------------
# Control records (commit and abort markers) are never returned but move the application
# position, as librdkafka's do; tests/integration/test_transactions.py proves it on the broker.


def transactional_broker(transactions: int, per_transaction: int, bulk: int) -> FakeBroker:
    """Realtime written in transactions (each ended by a marker per partition), over bulk."""
    fake = FakeBroker({REALTIME: 2, BULK: 2})
    for txn in range(transactions):
        for partition in (0, 1):
            for index in range(per_transaction):
                chunk_id = f"rt-{txn}-{partition}-{index}"
                fake.produce(REALTIME, partition, CODEC.encode(Chunk(tracking_id=chunk_id)))
            fake.produce_marker(REALTIME, partition)
    for index in range(bulk):
        fake.produce(BULK, index % 2, CODEC.encode(Chunk(tracking_id=f"bulk-{index}")))
    return fake


def test_bulk_resumes_and_offsets_pass_the_last_commit_marker() -> None:
    fake = transactional_broker(transactions=6, per_transaction=20, bulk=60)
    handler = Recorder(cost_s=lambda lane: 0.0002 if lane == "realtime" else 0.0)
    consumer, clients = consumer_on(fake, handler, pause_lag=50, max_batch_messages=20)
    bulk = lane_consumer(clients, "bulk")
    realtime = lane_consumer(clients, "realtime")
    consumer.subscribe()
    run_until(consumer, lambda: bool(bulk.paused))
    assert "bulk" in consumer.paused_lanes
    # Before the fix, realtime lag stayed at one marker per partition and bulk stayed paused.
    run_until(consumer, lambda: handler.handled["bulk"] == 60 and not consumer.paused_lanes)
    run_until(consumer, lambda: realtime.stored == {(REALTIME, 0): 126, (REALTIME, 1): 126})
    snapshot = consumer.stats.last_snapshot
    assert snapshot is not None
    assert snapshot.lanes["realtime"].lag_messages == 0
    consumer.close()
    assert handler.handled == {"realtime": 240, "bulk": 60}
    # The committed offsets are the log end: past the last marker, not the last message.
    assert fake.committed[(REALTIME, 0)] == fake.high((REALTIME, 0)) == 126
    assert fake.committed[(REALTIME, 1)] == fake.high((REALTIME, 1)) == 126


def test_nothing_is_stored_past_a_chunk_still_in_hand() -> None:
    fake = transactional_broker(transactions=1, per_transaction=5, bulk=0)
    handler = Recorder()
    handler.gate = threading.Event()  # the first batch blocks
    consumer, clients = consumer_on(fake, handler, max_batch_messages=5)
    realtime = lane_consumer(clients, "realtime")
    consumer.subscribe()
    run_until(consumer, lambda: realtime.app_positions.get((REALTIME, 0), 0) >= 6, timeout_s=5)
    for _ in range(20):
        consumer.tick()
    # Taken past the marker, but the chunks are not handled: nothing stored for them.
    assert (REALTIME, 0) not in realtime.stored
    handler.gate.set()
    run_until(consumer, lambda: realtime.stored.get((REALTIME, 0)) == 6)
    consumer.close()


def test_ready_only_once_every_lane_consumer_has_joined_the_group() -> None:
    fake = broker(realtime=5, bulk=5, partitions=1)
    consumer, clients = consumer_on(fake, Recorder())
    consumer.subscribe()
    assert consumer.ready() == (False, "lane consumer(s) realtime, bulk joining the group")
    # The realtime consumer gets its assignment first (its first poll runs the callback).
    lane_consumer(clients, "realtime").consume(0, 0)
    ready, why = consumer.ready()
    assert not ready, "partitions assigned, but the bulk lane is not consumed by anyone here yet"
    assert why == "lane consumer(s) bulk joining the group"
    lane_consumer(clients, "bulk").consume(0, 0)
    assert consumer.ready() == (True, "2 partitions assigned")
    consumer.close()


def test_under_the_consumer_protocol_one_assigned_partition_is_ready_enough() -> None:
    # KIP-848 announces no empty assignment: a lane consumer without partitions never "joins".
    fake = broker(realtime=5, partitions=1)
    consumer, clients = consumer_on(
        fake, Recorder(), group_protocol="consumer", stuck_fetch_s=STUCK_FETCH_S
    )
    consumer.subscribe()
    lane_consumer(clients, "realtime").consume(0, 0)
    assert consumer.ready() == (True, "1 partitions assigned")
    consumer.close()


STUCK_FETCH_S = 0.001  # the reports of a test are further apart: the second one finds it stuck


def report_twice(consumer: PriorityConsumer, fake: FakeConsumer) -> None:
    """Two statistics reports of one lane consumer, delivered in its next polls."""
    for _ in range(2):
        time.sleep(2 * STUCK_FETCH_S)
        fake.report_statistics()
        run_until(consumer, lambda: fake.statistics_due == 0)


def test_a_partition_assigned_but_never_fetched_is_assigned_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = broker(realtime=40)
    handler = Recorder()
    consumer, clients = consumer_on(fake, handler, stuck_fetch_s=STUCK_FETCH_S)
    realtime = lane_consumer(clients, "realtime")
    # Like librdkafka after a lost committed offset lookup: assigned, never fetched.
    realtime.stuck = {(REALTIME, 0)}
    consumer.subscribe()
    run_until(consumer, lambda: handler.handled["realtime"] == 20)
    for _ in range(20):
        consumer.tick()
    assert handler.handled["realtime"] == 20, "partition 0 is stuck"
    realtime.report_statistics()
    run_until(consumer, lambda: realtime.statistics_due == 0)
    assert ("unassign", [(REALTIME, 0)]) not in realtime.calls, "one report proves nothing"
    report_twice(consumer, realtime)
    run_until(consumer, lambda: handler.handled["realtime"] == 40)
    consumer.close()
    restart = realtime.calls.index(("unassign", [(REALTIME, 0)]))
    assert realtime.calls[restart + 1] == ("assign", [(REALTIME, 0)])
    restarts = consumer.metrics.fetch_restarts
    assert restarts.labels(lane="realtime")._value.get() == 1
    assert restarts.labels(lane="bulk")._value.get() == 0
    assert "assigned but never fetched, assigned again: chunks.realtime[0]" in caplog.text


def test_an_eager_restart_assigns_everything_again_from_the_positions_taken() -> None:
    fake = broker()
    handler = Recorder()
    consumer, clients = consumer_on(fake, handler, assignor="range", stuck_fetch_s=STUCK_FETCH_S)
    realtime = lane_consumer(clients, "realtime")
    consumer.subscribe()
    run_until(consumer, lambda: len(realtime.assigned) == 2)
    realtime.stuck = {(REALTIME, 0)}
    for index in range(40):
        fake.produce(REALTIME, index % 2, CODEC.encode(Chunk(tracking_id=f"r-{index}")))
    run_until(consumer, lambda: handler.handled["realtime"] == 20)
    report_twice(consumer, realtime)
    run_until(consumer, lambda: handler.handled["realtime"] == 40)
    for _ in range(20):
        consumer.tick()
    consumer.close()
    assert ("assign_all", [(REALTIME, 0), (REALTIME, 1)]) in realtime.calls
    # Partition 1 went on from its position, not from its committed offset: nothing twice.
    assert handler.handled["realtime"] == 40
    # The assign forgot what was stored for partition 1: stored again, so the close commits it.
    assert fake.committed[(REALTIME, 0)] == fake.committed[(REALTIME, 1)] == 20


def test_an_eager_restart_of_a_held_lane_pauses_its_partitions_again() -> None:
    fake = broker(realtime=600)
    handler = Recorder(cost_s=lambda lane: 0.01)
    consumer, clients = consumer_on(
        fake, handler, assignor="range", pause_lag=100, stuck_fetch_s=STUCK_FETCH_S
    )
    bulk = lane_consumer(clients, "bulk")
    consumer.subscribe()
    run_until(consumer, lambda: bulk.paused == {(BULK, 0), (BULK, 1)})
    bulk.stuck = {(BULK, 1)}
    report_twice(consumer, bulk)
    run_until(consumer, lambda: any(name == "assign_all" for name, _ in bulk.calls))
    assert "bulk" in consumer.paused_lanes, "realtime still lags"
    assert bulk.paused == {(BULK, 0), (BULK, 1)}
    assert consumer.paused_partitions == {(BULK, 0), (BULK, 1)}
    consumer.close()


def test_under_the_consumer_protocol_a_stuck_partition_is_reported_not_reassigned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = broker(realtime=4)
    consumer, clients = consumer_on(
        fake, Recorder(), group_protocol="consumer", stuck_fetch_s=STUCK_FETCH_S
    )
    realtime = lane_consumer(clients, "realtime")
    realtime.stuck = {(REALTIME, 0)}
    consumer.subscribe()
    report_twice(consumer, realtime)
    report_twice(consumer, realtime)
    consumer.tick()
    consumer.close()
    assert ("unassign", [(REALTIME, 0)]) not in realtime.calls
    reported = "assigned but never fetched (restart this member): chunks.realtime[0]"
    assert caplog.text.count(reported) == 1, "reported once per assignment"


def test_a_partition_something_was_taken_from_is_never_assigned_again() -> None:
    fake = broker(realtime=10)
    handler = Recorder()
    handler.gate = threading.Event()  # partition 1's chunks are taken and wait in the handler
    consumer, clients = consumer_on(fake, handler, stuck_fetch_s=STUCK_FETCH_S)
    realtime = lane_consumer(clients, "realtime")
    consumer.subscribe()
    run_until(
        consumer,
        lambda: consumer.stats.lanes["realtime"].handled == 0 and bool(realtime.app_positions),
    )
    # Statistics that say "not fetching" of partitions chunks were taken from: not believed,
    # finished or not (assigning them again would fetch those chunks again).
    realtime.stuck = {(REALTIME, 0), (REALTIME, 1)}
    try:
        report_twice(consumer, realtime)
        consumer.tick()
    finally:
        handler.gate.set()
    run_until(consumer, lambda: handler.handled["realtime"] == 10)
    report_twice(consumer, realtime)
    consumer.tick()
    consumer.close()
    assert not any(name == "unassign" for name, _ in realtime.calls)
    assert consumer.metrics.fetch_restarts.labels(lane="realtime")._value.get() == 0
