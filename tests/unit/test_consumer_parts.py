"""Parts of the consumer without the loop: the pause book, the turn planner, the pipeline."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Message
from fake_kafka import FakeDeadLetters

from streamproc.chunk import Chunk
from streamproc.codec import ChunkCodec
from streamproc.consumer.pausebook import PauseBook
from streamproc.consumer.pipeline import Pipeline
from streamproc.consumer.turns import TurnPlanner
from streamproc.dispatch import WorkItem
from streamproc.handlers import ChunkRecord
from streamproc.metrics import ConsumerMetrics
from streamproc.settings import ConsumerSettings

A, B, C = ("chunks.bulk", 0), ("chunks.bulk", 1), ("chunks.bulk", 2)


def test_a_partition_is_paused_while_any_reason_holds_it() -> None:
    book = PauseBook()
    book.hold("priority", [A, B])
    book.hold("backpressure", [B, C])
    to_pause, to_resume = book.plan()
    assert (to_pause, to_resume) == ({A, B, C}, set())
    book.applied(to_pause, to_resume)
    book.hold("priority", [])
    assert book.plan() == (set(), {A})  # B is still held by backpressure
    book.applied(*book.plan())
    assert book.paused == {B, C}
    assert book.held_for("priority") == frozenset()


def test_plan_is_a_diff_against_what_was_applied() -> None:
    book = PauseBook()
    book.hold("priority", [A])
    book.applied(*book.plan())
    assert book.plan() == (set(), set())
    book.hold("priority", [A, B])
    assert book.plan() == ({B}, set())


def test_forget_drops_every_reason_and_names_what_must_be_resumed_first() -> None:
    book = PauseBook()
    book.hold("priority", [A, B])
    book.hold("backpressure", [A])
    book.applied({A}, set())  # B was never applied
    assert book.forget([A, B]) == {A}
    assert book.desired == frozenset()
    assert book.paused == frozenset()


def test_an_eager_assign_forgets_the_applied_pauses() -> None:
    book = PauseBook()
    book.hold("priority", [A])
    book.applied(*book.plan())
    book.unapplied([A])
    assert book.plan() == ({A}, set())  # re-applied after the assignment


def test_top_lane_takes_whole_batches_and_lower_lanes_a_budget() -> None:
    planner = TurnPlanner(2, budget_s=0.005, most=500, first_guess_s=0.001)
    assert planner.turn_size(0) == 500
    assert planner.turn_size(1) == 5
    for size in [4, 12, 8, 16, 10] * 40:
        planner.record(1, size, 0.0005 * size)  # 0.5 ms a chunk, no fixed part
    fixed, per_chunk = planner.cost(1)
    assert per_chunk == pytest.approx(0.0005, rel=0.01)
    assert fixed == pytest.approx(0.0, abs=1e-6)
    assert planner.turn_size(1) == 10


def test_a_fixed_cost_per_batch_is_fitted_and_leaves_the_rest_of_the_budget() -> None:
    planner = TurnPlanner(2, budget_s=0.010, most=500)
    for size in [5, 20, 10, 40, 15] * 40:
        planner.record(1, size, 0.002 + 0.0001 * size)  # a 2 ms commit + 0.1 ms a chunk
    fixed, per_chunk = planner.cost(1)
    assert fixed == pytest.approx(0.002, rel=0.01)
    assert per_chunk == pytest.approx(0.0001, rel=0.01)
    assert planner.turn_size(1) == 80  # (10 ms - 2 ms) / 0.1 ms


def test_a_fixed_cost_over_the_budget_is_amortised_not_repeated() -> None:
    planner = TurnPlanner(2, budget_s=0.005, most=500)
    for size in [5, 20, 10, 40, 15] * 40:
        planner.record(1, size, 0.008 + 0.0001 * size)  # an 8 ms fsync per batch
    # Fewer chunks cannot make a turn shorter than 8 ms: take many, not one per fsync; at most
    # what the plain average per chunk (fsync included) says fits in twice the fixed part.
    fixed, per_chunk = planner.cost(1)
    mean = (fixed + per_chunk * 18) / 18  # the batches above average about 18 chunks
    assert 20 <= planner.turn_size(1) <= min(80, 2 * 0.008 / mean + 2)


def test_a_turn_is_at_least_one_chunk_and_at_most_a_batch() -> None:
    planner = TurnPlanner(3, budget_s=0.005, most=50, first_guess_s=1.0)
    assert planner.turn_size(2) == 1
    fast = TurnPlanner(3, budget_s=0.005, most=50, first_guess_s=1e-7)
    assert fast.turn_size(2) == 50


def test_several_slots_run_one_chunk_each_and_a_turn_holds_a_budget_per_slot() -> None:
    planner = TurnPlanner(2, budget_s=0.01, most=500, slots=4, first_guess_s=0.001)
    assert planner.batch_limit(1) == 1
    assert planner.batch_limit(0) == 1
    assert planner.turn_size(1) == 40
    single = TurnPlanner(2, budget_s=0.01, most=500, slots=1, first_guess_s=0.001)
    assert single.batch_limit(1) == single.turn_size(1) == 10
    assert single.batch_limit(0) == 500


def test_a_lane_on_the_cpu_most_of_its_time_is_cpu_bound() -> None:
    planner = TurnPlanner(2, budget_s=0.01, most=500, first_guess_s=0.001)
    assert not planner.cpu_bound(1)  # nothing measured: treated as waiting, not computing
    for _ in range(20):
        planner.record(1, 10, 0.010, 0.009)
    assert planner.cpu_bound(1)
    waiting = TurnPlanner(2, budget_s=0.01, most=500, first_guess_s=0.001)
    for _ in range(20):
        waiting.record(1, 1, 0.020, 0.0002)
    assert not waiting.cpu_bound(1)


def test_the_cpu_share_counts_the_gil_shared_with_the_batches_running_beside() -> None:
    # Eight CPU-bound batches at once: each is on the CPU an eighth of its time, all GIL-bound.
    crowded = TurnPlanner(2, budget_s=0.01, most=500, slots=8, first_guess_s=0.001)
    for _ in range(20):
        crowded.record(1, 1, 0.004, 0.0005, beside=8)
    assert crowded.cpu_bound(1)
    # The same share with no company is a handler that mostly waits.
    alone = TurnPlanner(2, budget_s=0.01, most=500, slots=8, first_guess_s=0.001)
    for _ in range(20):
        alone.record(1, 1, 0.004, 0.0005, beside=1)
    assert not alone.cpu_bound(1)
    # Thirty-two waiting batches (20 ms calls, 0.1 ms on the CPU each) stay I/O-bound.
    io = TurnPlanner(2, budget_s=0.01, most=500, slots=32, first_guess_s=0.001)
    for _ in range(20):
        io.record(1, 1, 0.020, 0.0001, beside=32)
    assert not io.cpu_bound(1)


def test_a_cpu_bound_lane_plans_one_slot_budget_not_one_per_slot() -> None:
    planner = TurnPlanner(2, budget_s=0.01, most=500, slots=4, first_guess_s=0.001)
    assert planner.turn_size(1) == 40
    for _ in range(20):
        planner.record(1, 1, 0.001, 0.0007)  # computing 70% of its time: not serial
    assert planner.cpu_bound(1) and not planner.serial()
    assert planner.turn_size(1) == 10  # it runs alone beside realtime: one budget in all
    assert planner.batch_limit(1) == 1


class Clock:
    """Monotonic seconds a test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def finish(
    planner: TurnPlanner,
    clock: Clock,
    seconds: float,
    *,
    per_s: float,
    chunks: int,
    cpu: float,
    beside: int = 1,
    rank: int = 1,
) -> None:
    """Batches of ``chunks`` end for ``seconds`` of the clock, ``per_s`` chunks a second; each
    took ``chunks * beside / per_s`` seconds, ``cpu`` of them on the CPU."""
    batch_s = chunks * beside / per_s
    for _ in range(round(seconds * per_s / chunks)):
        clock.now += chunks / per_s
        planner.record(rank, chunks, batch_s, cpu, beside=beside)


def test_a_handler_computing_nearly_all_the_time_is_tried_serial_and_kept_so_when_faster() -> None:
    clock = Clock()
    planner = TurnPlanner(2, budget_s=0.01, most=500, slots=8, first_guess_s=0.001, clock=clock)
    assert not planner.serial() and planner.batch_limit(0) == planner.batch_limit(1) == 1
    # Eight at once, each on the CPU an eighth of its time: 1,000 chunks a second.
    finish(planner, clock, 1.0, per_s=1000, chunks=1, cpu=0.001, beside=8)
    assert not planner.serial()  # a mode runs a second and a half before a trial
    finish(planner, clock, 0.6, per_s=1000, chunks=1, cpu=0.001, beside=8)
    assert planner.serial()  # tried
    # Every lane is batched as with one slot: realtime whole, a lower lane one budget.
    assert planner.batch_limit(0) == 500
    assert planner.batch_limit(1) == planner.turn_size(1)
    # Alone it handles 1,050 a second: kept (side by side was not 10% faster).
    finish(planner, clock, 1.0, per_s=1050, chunks=10, cpu=0.0095)
    assert planner.serial()
    finish(planner, clock, 28.0, per_s=1050, chunks=10, cpu=0.0095)
    assert planner.serial()
    # After the hold, threads are tried again, measured no faster, and serial comes back for a
    # hold twice as long.
    finish(planner, clock, 1.45, per_s=1050, chunks=10, cpu=0.0095)
    assert not planner.serial()
    finish(planner, clock, 0.6, per_s=1000, chunks=1, cpu=0.001, beside=8)
    assert planner.serial()
    finish(planner, clock, 40.0, per_s=1050, chunks=10, cpu=0.0095)
    assert planner.serial()


def test_a_handler_that_also_waits_is_tried_serial_and_runs_side_by_side_when_faster() -> None:
    # 0.2 ms on the CPU and 0.8 ms waiting a chunk: side by side the GIL is saturated, so its
    # scaled share reads 1 as if it only computed, but eight threads overlap the waits.
    clock = Clock()
    planner = TurnPlanner(2, budget_s=0.01, most=500, slots=8, first_guess_s=0.001, clock=clock)
    finish(planner, clock, 1.6, per_s=2400, chunks=1, cpu=0.00042, beside=8)
    assert planner.serial()  # tried
    finish(planner, clock, 0.6, per_s=1300, chunks=10, cpu=0.0045)
    assert not planner.serial()  # side by side was almost twice as fast
    assert planner.batch_limit(1) == 1
    # Its share still reads 1, but it is not tried serial again before the hold ends: twice
    # the first, as the probe kept the mode it left.
    finish(planner, clock, 59.0, per_s=2400, chunks=1, cpu=0.00042, beside=8)
    assert not planner.serial()
    finish(planner, clock, 1.0, per_s=2400, chunks=1, cpu=0.00042, beside=8)
    assert planner.serial()


def serial_changes(
    planner: TurnPlanner, clock: Clock, limit_s: float, **batches: Any
) -> float | None:
    """Batches end (as :func:`finish` makes them) until ``serial()`` changes: when it did."""
    was, deadline = planner.serial(), clock.now + limit_s
    while clock.now < deadline:
        finish(planner, clock, 0.05, **batches)
        if planner.serial() != was:
            return clock.now
    return None


def test_a_serial_handler_that_starts_waiting_tries_threads_before_its_hold_ends() -> None:
    clock = Clock()
    planner = TurnPlanner(2, budget_s=0.01, most=500, slots=8, first_guess_s=0.001, clock=clock)
    computing_alone: dict[str, Any] = {"per_s": 1050, "chunks": 10, "cpu": 0.0095}
    finish(planner, clock, 1.6, per_s=1000, chunks=1, cpu=0.001, beside=8)
    finish(planner, clock, 0.6, **computing_alone)
    assert planner.serial()
    # Threads are tried after the 30 s hold and found no faster: serial holds 60 s now.
    tried_at = serial_changes(planner, clock, 40, **computing_alone)
    assert tried_at is not None and 130 < tried_at < 133
    finish(planner, clock, 0.6, per_s=1000, chunks=1, cpu=0.001, beside=8)
    assert planner.serial()
    kept_at = clock.now
    # The machine preempts its thread for a while: it looks 60% busy, and stays serial.
    finish(planner, clock, 5.0, per_s=1050, chunks=10, cpu=0.0057)
    assert planner.serial()
    # It now waits on I/O most of the time, measured alone: threads are tried 30 s after the
    # last probe, not at the end of the 60 s hold.
    tried_at = serial_changes(planner, clock, 60, per_s=1050, chunks=10, cpu=0.002)
    assert tried_at is not None and kept_at + 29.5 <= tried_at < kept_at + 31
    finish(planner, clock, 0.6, per_s=4000, chunks=1, cpu=0.0002, beside=8)
    assert not planner.serial()  # and kept: four times as fast


def test_an_idle_pause_is_not_counted_in_a_mode_rate() -> None:
    clock = Clock()
    planner = TurnPlanner(2, budget_s=0.01, most=500, slots=8, first_guess_s=0.001, clock=clock)
    # A handler that also waits: 2,400 chunks a second side by side, 1,300 serial. Ten seconds
    # of idle pool in its rate side by side would make threads look slower.
    finish(planner, clock, 1.4, per_s=2400, chunks=1, cpu=0.00042, beside=8)
    clock.now += 10
    finish(planner, clock, 1.2, per_s=2400, chunks=1, cpu=0.00042, beside=8)
    assert not planner.serial()  # a second and a half of work since the pause comes first
    finish(planner, clock, 0.4, per_s=2400, chunks=1, cpu=0.00042, beside=8)
    assert planner.serial()
    finish(planner, clock, 0.6, per_s=1300, chunks=10, cpu=0.0045)
    assert not planner.serial()


def test_a_serial_share_above_one_never_runs_serial_nor_does_one_slot() -> None:
    clock = Clock()
    never = TurnPlanner(2, budget_s=0.01, most=500, slots=8, serial_share=1.5, clock=clock)
    single = TurnPlanner(2, budget_s=0.01, most=500, slots=1, clock=clock)
    finish(never, clock, 3.0, per_s=1000, chunks=1, cpu=0.001, beside=8)
    finish(single, clock, 3.0, per_s=1000, chunks=1, cpu=0.001)
    assert not never.serial() and never.batch_limit(1) == 1
    assert not single.serial()


def test_the_cpu_share_leaves_out_the_time_other_threads_held_the_gil() -> None:
    # 10 ms on the CPU over 13 ms: 77%, but 2.5 ms of it the loop held the GIL. Counted
    # against the whole 13 ms serial would never be tried; without the loop's time it is (95%).
    clock = Clock()
    plain = TurnPlanner(2, budget_s=0.01, most=500, slots=8, clock=clock)
    fair = TurnPlanner(2, budget_s=0.01, most=500, slots=8, clock=clock)
    for _ in range(150):
        clock.now += 0.013
        plain.record(1, 10, 0.013, 0.010)
        fair.record(1, 10, 0.013, 0.010, handling_seconds=0.0105)
    assert not plain.serial()
    assert fair.serial()


def test_empty_measurements_are_ignored() -> None:
    planner = TurnPlanner(2, budget_s=0.005, most=500, first_guess_s=0.001)
    planner.record(1, 0, 1.0)
    planner.record(1, 5, -1.0)
    assert planner.cost(1) == (0.0, 0.001)


def test_a_stretched_lane_plans_longer_turns_and_says_so() -> None:
    planner = TurnPlanner(2, budget_s=0.005, most=1000, first_guess_s=0.0005)
    assert not planner.stretched(1) and planner.turn_s(1) == pytest.approx(0.005)
    base = planner.turn_size(1)
    planner.stretch(1, 8.0)
    assert planner.stretched(1) and planner.turn_s(1) == pytest.approx(0.04)
    assert planner.turn_size(1) == 8 * base
    planner.stretch(1, 1.0)
    assert not planner.stretched(1)


def test_invalid_planner_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="budget_s"):
        TurnPlanner(2, budget_s=0, most=10)


# -- the pipeline: a lower lane's batch yields between chunks ----------------------------------


class _CountingCodec(ChunkCodec):
    def __init__(self) -> None:
        super().__init__()
        self.decoded = 0

    def decode(self, data: bytes) -> Chunk:
        self.decoded += 1
        return super().decode(data)


def _bulk_batch(codec: ChunkCodec, count: int, *, yields: bool) -> list[WorkItem[Message]]:
    items = []
    for offset in range(count):
        value = codec.encode(Chunk(tracking_id=f"b{offset}", low_priority=True))
        message = Message(topic="chunks.bulk", partition=0, offset=offset, value=value)
        item: WorkItem[Message] = WorkItem(1, "chunks.bulk", 0, offset, None, message)
        item.yields = yields
        items.append(item)
    return items


def _pipeline(
    codec: ChunkCodec,
    handler: Callable[[ChunkRecord], None],
    *,
    held: Callable[[int], bool] = lambda rank: False,
    urgent: Callable[[int], bool] = lambda rank: False,
    planner: TurnPlanner | None = None,
    loop_cpu: Callable[[], float] = lambda: 0.0,
) -> Pipeline:
    settings = ConsumerSettings(bootstrap_servers="fake:9092")
    return Pipeline(
        settings,
        settings.topology.all,
        codec,
        handler,
        FakeDeadLetters(),
        ConsumerMetrics(["realtime", "bulk"]),
        planner or TurnPlanner(2, budget_s=0.005, most=100),
        threading.Event(),
        held=held,
        urgent=urgent,
        loop_cpu=loop_cpu,
    )


def test_the_pipeline_measures_a_batch_without_the_time_the_loop_held_the_gil() -> None:
    codec = ChunkCodec()
    loop_cpu = [0.0]

    def handler(record: ChunkRecord) -> None:
        time.sleep(0.02)
        loop_cpu[0] += 0.01  # meanwhile the loop thread computed for 10 ms (as it would say)

    recorded: list[tuple[float, float | None]] = []

    class Recording(TurnPlanner):
        def record(self, *args: Any, **kwargs: Any) -> None:
            recorded.append((args[2], kwargs.get("handling_seconds")))

    planner = Recording(2, budget_s=0.005, most=100)
    pipeline = _pipeline(codec, handler, planner=planner, loop_cpu=lambda: loop_cpu[0])
    pipeline.run(_bulk_batch(codec, 2, yields=False))
    [(seconds, handling)] = recorded
    assert seconds >= 0.04
    assert handling == pytest.approx(seconds - 0.02, abs=1e-9)


@pytest.mark.parametrize("reason", ["urgent", "held"])
def test_a_bulk_batch_gives_the_rest_back_undecoded_once_it_must_yield(reason: str) -> None:
    codec = _CountingCodec()
    items = _bulk_batch(codec, 5, yields=True)
    handled: list[str | None] = []
    pipeline = _pipeline(
        codec,
        lambda record: handled.append(record.chunk.tracking_id),
        held=lambda rank: reason == "held" and len(handled) >= 2,
        urgent=lambda rank: reason == "urgent" and len(handled) >= 2,
    )
    outcomes = pipeline.run(items)
    assert handled == ["b0", "b1"]
    assert [o.kind for o in outcomes] == ["ok", "ok", "given_back", "given_back", "given_back"]
    assert codec.decoded == 2


def test_a_batch_a_starvation_guard_started_runs_to_its_end_but_not_past_a_hold() -> None:
    codec = _CountingCodec()
    handled: list[str | None] = []
    hold = False
    pipeline = _pipeline(
        codec,
        lambda record: handled.append(record.chunk.tracking_id),
        held=lambda rank: hold,
        urgent=lambda rank: True,  # realtime waits all along: the guard let this batch go first
    )
    assert [o.kind for o in pipeline.run(_bulk_batch(codec, 3, yields=False))] == ["ok"] * 3
    hold = True
    assert [o.kind for o in pipeline.run(_bulk_batch(codec, 2, yields=False))] == [
        "given_back",
        "given_back",
    ]
