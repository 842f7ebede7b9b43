"""The contiguous-offset tracker: the stored offset never passes an unfinished message."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streamproc.offsets import OffsetTracker, PartitionOffsets


def test_store_offset_is_the_end_of_the_contiguous_finished_run() -> None:
    offsets = PartitionOffsets()
    for offset in (10, 11, 12, 13):
        offsets.taken(offset)
    assert offsets.store_offset is None
    assert not offsets.finished(12)
    assert offsets.store_offset is None, "12 finished but 10 and 11 did not"
    assert offsets.finished(10)
    assert offsets.store_offset == 11
    assert offsets.finished(11)
    assert offsets.store_offset == 13, "10..12 done: the next to handle is 13"
    assert offsets.unfinished == 1
    assert offsets.finished(13)
    assert offsets.store_offset == 14
    assert offsets.unfinished == 0


def test_gaps_in_offsets_do_not_block_the_run() -> None:
    offsets = PartitionOffsets()
    for offset in (5, 8, 9):  # 6 and 7 are compacted away or transaction markers
        offsets.taken(offset)
    offsets.finished(8)
    offsets.finished(5)
    assert offsets.store_offset == 9


def test_unknown_and_repeated_finishes_change_nothing() -> None:
    offsets = PartitionOffsets()
    offsets.taken(0)
    assert not offsets.finished(7)
    assert offsets.finished(0)
    assert not offsets.finished(0)
    assert offsets.store_offset == 1


def test_going_back_forgets_what_will_be_taken_again() -> None:
    offsets = PartitionOffsets()
    for offset in range(5):
        offsets.taken(offset)
    offsets.finished(0)
    offsets.finished(3)
    offsets.taken(2)  # the partition was rewound to 2: 2, 3, 4 come again
    offsets.finished(1)
    assert offsets.store_offset == 2, "3 finished before the rewind does not count twice"
    offsets.finished(2)
    assert offsets.store_offset == 3


def test_tracker_reports_moved_partitions_once_and_forgets() -> None:
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    a, b = ("t", 0), ("t", 1)
    tracker.taken(a, 0)
    tracker.taken(b, 0)
    tracker.taken(b, 1)
    tracker.finished(b, 1)
    assert tracker.to_store() == {}
    tracker.finished(a, 0)
    tracker.finished(b, 0)
    assert tracker.to_store() == {a: 1, b: 2}
    assert tracker.to_store() == {}
    tracker.forget([a])
    assert tracker.store_offset(a) is None
    tracker.finished(a, 0)
    assert tracker.to_store() == {}
    assert tracker.unfinished(b) == 0


@given(
    gaps=st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=60),
    data=st.data(),
)
def test_stored_offset_never_passes_an_unfinished_one(gaps: list[int], data: st.DataObject) -> None:
    taken: list[int] = []
    offset = data.draw(st.integers(min_value=0, max_value=1_000))
    for gap in gaps:
        taken.append(offset)
        offset += gap
    order = data.draw(st.permutations(taken))
    finish_count = data.draw(st.integers(min_value=0, max_value=len(taken)))
    offsets = PartitionOffsets()
    for o in taken:
        offsets.taken(o)
    done: set[int] = set()
    for o in order[:finish_count]:
        offsets.finished(o)
        done.add(o)
        unfinished = [t for t in taken if t not in done]
        stored = offsets.store_offset
        if stored is not None:
            # I3: everything below the stored offset finished; never the maximum by accident.
            assert all(t in done for t in taken if t < stored)
            if unfinished:
                assert stored <= min(unfinished)
        # The run is as long as it can be: the first unfinished offset is the only blocker.
        prefix = [t for t in taken if not unfinished or t < min(unfinished)]
        expected = prefix[-1] + 1 if prefix else None
        assert stored == expected


run_of_offsets = st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=8)


@given(
    steps=st.lists(st.tuples(st.sampled_from(["taken", "finished"]), run_of_offsets), max_size=30)
)
def test_runs_do_what_one_offset_at_a_time_does(steps: list[tuple[str, list[int]]]) -> None:
    # Runs in order or not, repeated, stale, rewinding: the one-step paths must agree.
    one_by_one, by_run = PartitionOffsets(), PartitionOffsets()
    for kind, offsets in steps:
        if kind == "taken":
            offsets = sorted(offsets)  # taken runs come in partition order
            for offset in offsets:
                one_by_one.taken(offset)
            by_run.taken_run(offsets)
        else:
            moved = False
            for offset in offsets:
                moved = one_by_one.finished(offset) or moved
            assert by_run.finished_run(offsets) == moved
        assert by_run.store_offset == one_by_one.store_offset
        assert by_run.unfinished == one_by_one.unfinished


def test_a_run_finished_in_order_moves_the_stored_offset_past_it() -> None:
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    a = ("t", 0)
    tracker.taken_run(a, [3, 4, 6, 7])
    tracker.finished_run(a, [3, 4])
    assert tracker.to_store() == {a: 5}
    tracker.finished_run(a, [7])
    assert tracker.to_store() == {}, "6 is not finished"
    tracker.finished_run(a, [6])
    assert tracker.to_store() == {a: 8}
    assert tracker.unfinished(a) == 0
