"""The dispatcher: realtime first, FIFO per lane, per-key and per-partition order, the reserve."""

from __future__ import annotations

from collections.abc import Hashable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.dispatch import Dispatcher, Ordering, WorkItem

REALTIME, BULK = 0, 1


def item(
    rank: int, partition: int, offset: int, key: bytes | None = None, now: float = 0.0
) -> WorkItem[str]:
    topic = "chunks.realtime" if rank == REALTIME else "chunks.bulk"
    return WorkItem(rank, topic, partition, offset, key, f"{rank}/{partition}@{offset}", now)


def take_all(dispatcher: Dispatcher[str], now: float = 0.0) -> list[WorkItem[str]]:
    started = []
    while (started_item := dispatcher.take(now)) is not None:
        started.append(started_item)
    return started


def test_realtime_starts_before_bulk_and_fifo_within_a_lane() -> None:
    dispatcher: Dispatcher[str] = Dispatcher(2, concurrency=1, ordering="unordered")
    for offset in range(3):
        dispatcher.add(item(BULK, 0, offset))
    dispatcher.add(item(REALTIME, 0, 0))
    dispatcher.add(item(REALTIME, 1, 0))
    order = []
    while (next_item := dispatcher.take(100.0)) is not None:
        order.append(next_item.payload)
        dispatcher.done(next_item)
    assert order == ["0/0@0", "0/1@0", "1/0@0", "1/0@1", "1/0@2"]


def test_concurrency_bounds_running_items() -> None:
    dispatcher: Dispatcher[str] = Dispatcher(2, concurrency=3, ordering="unordered", reserved=0)
    for offset in range(10):
        dispatcher.add(item(BULK, 0, offset))
    started = take_all(dispatcher)
    assert len(started) == 3
    assert dispatcher.running == 3
    dispatcher.done(started[0])
    assert dispatcher.take(0.0) is not None
    assert dispatcher.take(0.0) is None
    assert dispatcher.size(BULK) == 9


def test_key_mode_never_runs_one_key_twice_and_keeps_its_order() -> None:
    dispatcher: Dispatcher[str] = Dispatcher(2, concurrency=8, ordering="key", reserved=0)
    dispatcher.add(item(BULK, 0, 0, b"a"))
    dispatcher.add(item(BULK, 0, 1, b"a"))
    dispatcher.add(item(BULK, 0, 2, b"b"))
    dispatcher.add(item(BULK, 0, 3, b"a"))
    dispatcher.add(item(BULK, 0, 4, None))  # no key: no constraint
    started = take_all(dispatcher)
    assert [s.offset for s in started] == [0, 2, 4]
    dispatcher.done(started[0])
    assert [s.offset for s in take_all(dispatcher)] == [1]


def test_a_released_key_item_and_a_given_back_one_start_in_the_order_taken() -> None:
    dispatcher: Dispatcher[str] = Dispatcher(2, concurrency=1, ordering="key")
    for offset, key in enumerate((b"a", b"b", b"a", b"c")):
        dispatcher.add(item(BULK, 0, offset, key))
    first = dispatcher.take(0.0)
    assert first is not None and first.offset == 0
    dispatcher.done(first)  # offset 2 (key a) is released between 1 and 3, not after 3
    second = dispatcher.take(0.0)
    assert second is not None and second.offset == 1
    dispatcher.give_back(second)  # not run: ahead of everything taken after it again
    order = []
    while (next_item := dispatcher.take(0.0)) is not None:
        order.append(next_item.offset)
        dispatcher.done(next_item)
    assert order == [1, 2, 3]


def test_same_key_in_another_partition_is_another_key() -> None:
    dispatcher: Dispatcher[str] = Dispatcher(2, concurrency=8, ordering="key", reserved=0)
    dispatcher.add(item(BULK, 0, 0, b"a"))
    dispatcher.add(item(BULK, 1, 0, b"a"))
    dispatcher.add(item(REALTIME, 0, 0, b"a"))
    assert len(take_all(dispatcher)) == 3


def test_partition_mode_runs_one_item_per_partition() -> None:
    dispatcher: Dispatcher[str] = Dispatcher(2, concurrency=8, ordering="partition", reserved=0)
    for partition in range(2):
        for offset in range(3):
            dispatcher.add(item(BULK, partition, offset, f"k{offset}".encode()))
    started = take_all(dispatcher)
    assert sorted((s.partition, s.offset) for s in started) == [(0, 0), (1, 0)]


def test_held_lane_starts_nothing_until_released() -> None:
    dispatcher: Dispatcher[str] = Dispatcher(2, concurrency=4, ordering="key", reserved=0)
    dispatcher.add(item(BULK, 0, 0))
    dispatcher.add(item(REALTIME, 0, 0))
    dispatcher.hold_lanes([BULK])
    assert [s.lane_rank for s in take_all(dispatcher)] == [REALTIME]
    dispatcher.hold_lanes([])
    assert [s.lane_rank for s in take_all(dispatcher)] == [BULK]


def test_bulk_leaves_reserved_workers_while_realtime_is_active() -> None:
    dispatcher: Dispatcher[str] = Dispatcher(
        2, concurrency=8, ordering="unordered", reserve_window_s=1.0
    )
    assert dispatcher.reserved == 1
    dispatcher.add(item(REALTIME, 0, 0, now=10.0))
    realtime = dispatcher.take(10.0)
    assert realtime is not None
    dispatcher.done(realtime)
    for offset in range(20):
        dispatcher.add(item(BULK, 0, offset, now=10.0))
    assert len(take_all(dispatcher, now=10.5)) == 7, "one worker kept for realtime"
    dispatcher.add(item(REALTIME, 0, 1, now=10.5))
    started = dispatcher.take(10.5)
    assert started is not None
    assert started.lane_rank == REALTIME
    dispatcher.done(started)
    assert len(take_all(dispatcher, now=12.0)) == 1, "realtime quiet for 1.5 s: all 8 for bulk"


@pytest.mark.parametrize(
    ("concurrency", "reserved"),
    [(1, 0), (4, 0), (7, 0), (8, 1), (16, 1), (31, 1), (32, 2), (64, 4)],
)
def test_the_default_reserve_is_one_from_8_workers_and_a_sixteenth_from_32(
    concurrency: int, reserved: int
) -> None:
    assert Dispatcher(2, concurrency=concurrency, ordering="unordered").reserved == reserved


def test_drop_partitions_removes_waiting_items_and_frees_their_keys() -> None:
    dispatcher: Dispatcher[str] = Dispatcher(2, concurrency=1, ordering="key")
    dispatcher.add(item(BULK, 0, 0, b"a"))
    dispatcher.add(item(BULK, 0, 1, b"a"))
    dispatcher.add(item(BULK, 0, 2, b"b"))
    dispatcher.add(item(BULK, 1, 0, b"a"))
    running = dispatcher.take(0.0)
    assert running is not None
    assert running.offset == 0
    dropped = dispatcher.drop_partitions([("chunks.bulk", 0)])
    assert sorted(d.offset for d in dropped) == [1, 2]
    assert dispatcher.size(BULK) == 2  # the running one and partition 1's
    assert dispatcher.running_in([("chunks.bulk", 0)]) == [running]
    dispatcher.abandon([running])
    assert dispatcher.running == 0
    remaining = take_all(dispatcher)
    assert [(r.partition, r.offset) for r in remaining] == [(1, 0)]
    dispatcher.done(running)  # a late result of an abandoned item changes nothing
    assert dispatcher.running == 1


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        Dispatcher(2, concurrency=0)
    with pytest.raises(ValueError, match="ordering"):
        Dispatcher(2, concurrency=2, ordering="random")  # type: ignore[arg-type]  # on purpose


operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.integers(0, 1),  # lane
            st.integers(0, 2),  # partition
            st.one_of(st.none(), st.sampled_from([b"a", b"b", b"c"])),  # key
        ),
        st.tuples(st.just("take"), st.just(0), st.just(0), st.none()),
        st.tuples(st.just("done"), st.integers(0, 50), st.just(0), st.none()),
    ),
    max_size=120,
)


@settings(max_examples=200, deadline=None)
@given(
    ops=operations,
    ordering=st.sampled_from(["key", "partition", "unordered"]),
    concurrency=st.integers(1, 6),
)
def test_dispatch_invariants_hold_for_any_interleaving(
    ops: list[tuple[str, int, int, bytes | None]], ordering: Ordering, concurrency: int
) -> None:
    dispatcher: Dispatcher[str] = Dispatcher(
        2, concurrency=concurrency, ordering=ordering, reserved=0
    )
    next_offset: dict[tuple[int, int], int] = {}
    added: list[WorkItem[str]] = []
    started: list[WorkItem[str]] = []
    running: list[WorkItem[str]] = []

    def order_key(x: WorkItem[str]) -> Hashable | None:
        if ordering == "partition":
            return x.partition_key
        if ordering == "key" and x.key is not None:
            return (x.partition_key, x.key)
        return None

    def startable(x: WorkItem[str]) -> bool:
        """Not started, and every earlier item of its order key finished."""
        if x in started:
            return False
        key = order_key(x)
        if key is None:
            return True
        earlier = [y for y in added if order_key(y) == key and added.index(y) < added.index(x)]
        return all(y in started and y not in running for y in earlier)

    def take() -> None:
        taken = dispatcher.take(0.0)
        if taken is None:
            # Nothing may start only when all workers are busy or nothing is startable.
            assert len(running) >= concurrency or not any(startable(x) for x in added)
            return
        assert startable(taken)
        # Realtime first: no startable realtime item is passed over for a bulk one.
        if taken.lane_rank == BULK:
            assert not any(startable(x) for x in added if x.lane_rank == REALTIME)
        # FIFO within a lane among startable items.
        assert not any(
            startable(x) and added.index(x) < added.index(taken)
            for x in added
            if x.lane_rank == taken.lane_rank
        )
        started.append(taken)
        running.append(taken)
        assert len(running) <= concurrency
        keys = [order_key(r) for r in running if order_key(r) is not None]
        assert len(keys) == len(set(keys)), "two items of one order key in flight"

    for op, a, b, key in ops:
        if op == "add":
            offset = next_offset.get((a, b), 0)
            next_offset[(a, b)] = offset + 1
            new = item(a, b, offset, key)
            added.append(new)
            dispatcher.add(new)
        elif op == "take":
            take()
        elif running:
            finished = running.pop(a % len(running))
            dispatcher.done(finished)
    # Everything added eventually runs, exactly once.
    while running or len(started) < len(added):
        if running:
            dispatcher.done(running.pop(0))
        take()
    assert sorted(map(id, started)) == sorted(map(id, added))
    assert len(dispatcher) == 0


def test_a_lower_lane_waiting_longer_than_overdue_starts_next() -> None:
    dispatcher: Dispatcher[str] = Dispatcher(2, concurrency=1, ordering="unordered", overdue_s=0.1)
    dispatcher.add(WorkItem(BULK, "chunks.bulk", 0, 0, None, "b0", taken_at=10.0))
    dispatcher.add(WorkItem(REALTIME, "chunks.realtime", 0, 0, None, "r0", taken_at=10.05))
    started = dispatcher.take_batch(10.08, lambda rank: 5)
    assert [i.payload for i in started] == ["r0"]
    dispatcher.add(WorkItem(REALTIME, "chunks.realtime", 0, 1, None, "r1", taken_at=10.09))
    dispatcher.done(started[0])
    # b0 has waited 0.15 s > 0.1 s: it goes before the realtime chunk that waits.
    assert [i.payload for i in dispatcher.take_batch(10.15, lambda rank: 5)] == ["b0"]


def test_a_lower_lane_batch_yields_unless_a_guard_started_it_ahead_of_waiting_chunks() -> None:
    dispatcher: Dispatcher[str] = Dispatcher(2, concurrency=1, ordering="unordered", overdue_s=0.1)
    dispatcher.add(WorkItem(BULK, "chunks.bulk", 0, 0, None, "b0", taken_at=10.0))
    dispatcher.add(WorkItem(BULK, "chunks.bulk", 0, 1, None, "b1", taken_at=10.0))
    first = dispatcher.take_batch(10.0, lambda rank: 1)
    assert [(i.payload, i.yields) for i in first] == [("b0", True)]  # nothing more urgent waits
    dispatcher.add(WorkItem(REALTIME, "chunks.realtime", 0, 0, None, "r0", taken_at=10.01))
    assert dispatcher.waiting_ahead_of(BULK) and not dispatcher.waiting_ahead_of(REALTIME)
    dispatcher.hold_lanes([REALTIME])  # a held lane's chunks cannot start: nothing to yield to
    assert not dispatcher.waiting_ahead_of(BULK)
    dispatcher.hold_lanes([])
    dispatcher.add(WorkItem(REALTIME, "chunks.realtime", 0, 1, None, "r1", taken_at=10.01))
    dispatcher.done(first[0])
    realtime = dispatcher.take_batch(10.02, lambda rank: 1)
    assert [(i.payload, i.yields) for i in realtime] == [("r0", False)]  # nothing to yield to
    dispatcher.done(realtime[0])
    # b1 is overdue: it starts ahead of r1, on purpose, and runs to its end.
    overdue = dispatcher.take_batch(10.2, lambda rank: 1)
    assert [(i.payload, i.yields) for i in overdue] == [("b1", False)]


def test_an_overdue_lane_gets_every_other_batch_at_most() -> None:
    dispatcher: Dispatcher[str] = Dispatcher(2, concurrency=1, ordering="unordered", overdue_s=0.1)
    for offset in range(3):  # a backlog of old bulk chunks (say, held through a pause)
        dispatcher.add(WorkItem(BULK, "chunks.bulk", 0, offset, None, f"b{offset}", taken_at=1.0))
    for offset in range(2):
        dispatcher.add(WorkItem(REALTIME, "chunks.realtime", 0, offset, None, f"r{offset}", 9.9))
    order = []
    while batch := dispatcher.take_batch(10.0, lambda rank: 1):
        order.append(batch[0].payload)
        dispatcher.done(batch[0])
    assert order == ["b0", "r0", "b1", "r1", "b2"]


def test_an_overdue_solo_lane_goes_first_but_never_beside_a_running_batch() -> None:
    dispatcher: Dispatcher[str] = Dispatcher(2, concurrency=4, ordering="unordered", overdue_s=0.1)
    dispatcher.solo_lanes([BULK])
    dispatcher.add(WorkItem(BULK, "chunks.bulk", 0, 0, None, "b0", taken_at=10.15))
    for offset in range(2):
        dispatcher.add(WorkItem(REALTIME, "chunks.realtime", 0, offset, None, f"r{offset}", 10.1))
    running = dispatcher.take_batch(10.2, lambda rank: 1)
    assert [i.payload for i in running] == ["r0"]  # realtime first: nothing was overdue yet
    # b0 is overdue now, but a realtime chunk runs: a CPU-bound bulk batch would only slow it.
    assert [i.payload for i in dispatcher.take_batch(10.3, lambda rank: 1)] == ["r1"]
    assert dispatcher.take_batch(10.3, lambda rank: 1) == []
    # In a starvation slice it runs beside: the flow policy asked for it.
    dispatcher.favour_lanes([BULK])
    assert [i.payload for i in dispatcher.take_batch(10.3, lambda rank: 1)] == ["b0"]


def test_an_overdue_solo_lane_starts_ahead_of_realtime_once_nothing_runs() -> None:
    dispatcher: Dispatcher[str] = Dispatcher(2, concurrency=4, ordering="unordered", overdue_s=0.1)
    dispatcher.solo_lanes([BULK])
    dispatcher.add(WorkItem(BULK, "chunks.bulk", 0, 0, None, "b0", taken_at=10.0))
    dispatcher.add(WorkItem(REALTIME, "chunks.realtime", 0, 0, None, "r0", taken_at=10.1))
    assert [i.payload for i in dispatcher.take_batch(10.3, lambda rank: 1)] == ["b0"]
    assert [i.payload for i in dispatcher.take_batch(10.3, lambda rank: 1)] == ["r0"]


def test_a_serial_pool_starts_one_batch_at_a_time_whatever_its_lane() -> None:
    dispatcher: Dispatcher[str] = Dispatcher(2, concurrency=8, ordering="unordered")
    dispatcher.serial_lanes([REALTIME, BULK])
    for offset in range(3):
        dispatcher.add(item(BULK, 0, offset))
    assert dispatcher.free_slots() == 8
    bulk = dispatcher.take_batch(0.0, lambda rank: 2)
    assert [i.payload for i in bulk] == ["1/0@0", "1/0@1"]
    assert dispatcher.free_slots() == 0  # it runs as one slot
    dispatcher.add(item(REALTIME, 0, 0))
    dispatcher.add(item(REALTIME, 1, 0))
    # Realtime waits for the running batch (which yields to it), and bulk waits behind realtime.
    assert dispatcher.take_batch(0.0, lambda rank: 2) == []
    dispatcher.done_many(bulk)
    assert dispatcher.free_slots() == 8
    realtime = dispatcher.take_batch(0.0, lambda rank: 100)
    assert [i.payload for i in realtime] == ["0/0@0", "0/1@0"]
    assert dispatcher.take_batch(0.0, lambda rank: 2) == []
    dispatcher.done_many(realtime)
    assert [i.payload for i in dispatcher.take_batch(0.0, lambda rank: 2)] == ["1/0@2"]


def test_a_serial_lane_beside_a_parallel_one_leaves_the_parallel_one_its_slots() -> None:
    dispatcher: Dispatcher[str] = Dispatcher(2, concurrency=4, ordering="unordered")
    dispatcher.serial_lanes([BULK])
    dispatcher.add(item(BULK, 0, 0))
    dispatcher.add(item(BULK, 0, 1))
    assert [i.payload for i in dispatcher.take_batch(5.0, lambda rank: 1)] == ["1/0@0"]
    assert dispatcher.free_slots() == 3  # realtime may still start beside it
    assert dispatcher.take_batch(5.0, lambda rank: 1) == []  # the next bulk batch may not
    dispatcher.add(item(REALTIME, 0, 0))
    assert [i.payload for i in dispatcher.take_batch(5.0, lambda rank: 1)] == ["0/0@0"]


def test_a_batch_stalled_past_serial_stall_s_lets_the_others_start_beside_it() -> None:
    dispatcher: Dispatcher[str] = Dispatcher(
        2, concurrency=8, ordering="unordered", serial_stall_s=0.25
    )
    dispatcher.serial_lanes([REALTIME, BULK])
    dispatcher.add(item(BULK, 0, 0))
    dispatcher.add(item(BULK, 0, 1))
    hung = dispatcher.take_batch(10.0, lambda rank: 1)
    assert dispatcher.free_slots(10.2) == 0
    assert dispatcher.take_batch(10.2, lambda rank: 1) == []
    # Past the stall bound the hung batch no longer holds the pool: a hung call, not computing.
    assert dispatcher.free_slots(10.3) == 7
    beside = dispatcher.take_batch(10.3, lambda rank: 1)
    assert [i.payload for i in beside] == ["1/0@1"]
    dispatcher.add(item(REALTIME, 0, 0))
    assert dispatcher.take_batch(10.35, lambda rank: 1) == []  # the new one is recent
    dispatcher.done_many(beside)
    assert [i.payload for i in dispatcher.take_batch(10.35, lambda rank: 1)] == ["0/0@0"]
    dispatcher.done_many(hung)
