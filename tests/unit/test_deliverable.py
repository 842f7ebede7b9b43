"""Lag arithmetic past commit markers, aborted batches and open transactions (no broker).

A small model of a partition written by transactional producers, and of how librdkafka reads it:
records below the last stable offset are queued in log order (under ``read_committed`` the data of
aborted transactions is dropped, the abort marker that ends it is queued); markers are queued as
control operations, never returned, but the application position moves past each one dequeued.
The consumer takes one message at a time and finishes them out of order (the real
:class:`~streamproc.offsets.OffsetTracker` gives the contiguous position).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import pytest

from streamproc.deliverable import (
    IsolationLevel,
    LsoHolds,
    StableOffsets,
    deliverable_end,
    deliverable_lag,
    drained_position,
    stable_offsets,
)
from streamproc.flow import partition_lag
from streamproc.offsets import OffsetTracker


@dataclass(frozen=True)
class Record:
    kind: str  # "data", "commit" (marker), "abort" (marker)
    txn: int | None  # the transaction a record belongs to; None: written outside any


def transactional_log(shape: list[tuple[int, str]]) -> list[Record]:
    """``(records, ending)`` per transaction, ending "commit", "abort", "open" or "plain"."""
    log: list[Record] = []
    for txn, (count, ending) in enumerate(shape):
        in_txn = None if ending == "plain" else txn
        log += [Record("data", in_txn)] * count
        if ending in ("commit", "abort"):
            log.append(Record(ending, txn))
    return log


class Partition:
    """The log, its LSO and the offsets a consumer at ``isolation`` gets."""

    def __init__(self, log: list[Record], isolation: IsolationLevel) -> None:
        self.log = log
        ended = {r.txn: r.kind for r in log if r.kind != "data"}
        open_offsets = [
            offset for offset, r in enumerate(log) if r.txn is not None and r.txn not in ended
        ]
        self.high = len(log)
        self.last_stable = min(open_offsets, default=self.high)
        self.end = self.last_stable if isolation == "read_committed" else self.high
        self.queue: list[tuple[int, bool]] = []  # (offset, is a message) in log order
        for offset, record in enumerate(log[: self.end]):
            if record.kind != "data":
                self.queue.append((offset, False))
            elif isolation == "read_uncommitted" or ended.get(record.txn) != "abort":
                self.queue.append((offset, True))
        self.deliverable = {offset for offset, is_message in self.queue if is_message}

    def stable_offsets(self) -> StableOffsets:
        return StableOffsets(self.high, self.last_stable)


class Reader:
    """librdkafka's queue and application position, and streamproc's taken/finished chunks."""

    def __init__(self, partition: Partition) -> None:
        self.partition = partition
        self.queue = list(partition.queue)
        self.app_position = -1001
        self.tracker: OffsetTracker[str] = OffsetTracker()
        self.taken: list[int] = []
        self.handled: set[int] = set()

    def take_one(self) -> bool:
        """consume(1): dequeue control operations up to the next message, as librdkafka does."""
        while self.queue:
            offset, is_message = self.queue.pop(0)
            self.app_position = offset + 1
            if is_message:
                self.tracker.taken("p", offset)
                self.taken.append(offset)
                return True
        return False

    def finish(self, offset: int) -> None:
        self.taken.remove(offset)
        self.handled.add(offset)
        self.tracker.finished("p", offset)

    @property
    def position(self) -> int:
        stored = self.tracker.store_offset("p")
        return -1001 if stored is None else stored

    def lag(self, end: int) -> int | None:
        return deliverable_lag(
            low=0,
            end=end,
            app_position=self.app_position,
            position=self.position,
            unfinished=self.tracker.unfinished("p"),
        )

    def truly_waiting(self) -> int:
        return len(self.partition.deliverable - self.handled)


SHAPES = {
    "commit marker last": [(5, "commit")],
    "aborted batch in the middle": [(5, "commit"), (5, "abort"), (3, "commit")],
    "aborted batch last": [(5, "commit"), (5, "abort")],
    "only aborted": [(4, "abort"), (2, "abort")],
    "plain then transactions": [(3, "plain"), (2, "commit"), (4, "abort"), (1, "commit")],
    "open transaction last": [(3, "commit"), (2, "abort"), (4, "open")],
    "open transaction interleaved": [(2, "commit"), (3, "open"), (2, "commit")],
    "one in five aborted": [(10, "abort" if n % 5 == 4 else "commit") for n in range(10)],
}


@pytest.mark.parametrize("isolation", ["read_committed", "read_uncommitted"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_lag_counts_what_is_deliverable_and_reaches_zero_past_markers(
    shape: list[tuple[int, str]], isolation: IsolationLevel
) -> None:
    partition = Partition(transactional_log(shape), isolation)
    reader = Reader(partition)
    rng = random.Random(15)
    end = partition.end if isolation == "read_uncommitted" else partition.high
    if isolation == "read_committed":
        # The LSO of the statistics event, the partition being written in transactions.
        end = deliverable_end(partition.high, partition.stable_offsets(), transactional=True)
    assert end == partition.end
    while True:
        lag = reader.lag(end)
        assert lag is not None
        # Never below what is really waiting: the policy never resumes a lane too early.
        assert lag >= reader.truly_waiting()
        drained = drained_position(
            app_position=reader.app_position,
            position=reader.position,
            unfinished=reader.tracker.unfinished("p"),
        )
        if drained is not None:
            # Storing it never passes a message that was not handled.
            assert all(
                offset in reader.handled for offset in partition.deliverable if offset < drained
            )
        if reader.taken and rng.random() < 0.5:
            reader.finish(rng.choice(reader.taken))  # out of order
        elif not reader.take_one():
            if not reader.taken:
                break
            reader.finish(reader.taken[0])
    # Everything deliverable handled: lag 0, and the drained position reaches the deliverable end
    # (past trailing markers and aborted batches), which the position of the last handled chunk
    # does not when a marker or an aborted batch ends the log.
    assert reader.handled == partition.deliverable
    assert reader.lag(end) == 0
    final = drained_position(
        app_position=reader.app_position, position=reader.position, unfinished=0
    )
    committed = final if final is not None else reader.position
    assert committed == partition.end or (not partition.queue and reader.app_position < 0)


def test_the_position_of_the_last_handled_chunk_never_drains_past_a_commit_marker() -> None:
    """The fault this module exists for: high watermark - (last handled + 1) stays at 1."""
    partition = Partition(transactional_log([(5, "commit")]), "read_committed")
    reader = Reader(partition)
    while reader.take_one():
        reader.finish(reader.taken[0])
    assert reader.position == 5
    assert partition_lag(low=0, high=partition.high, position=5, committed=5) == 1
    assert reader.lag(partition.end) == 0
    assert drained_position(app_position=reader.app_position, position=5, unfinished=0) == 6


def test_an_unfinished_chunk_keeps_the_partition_from_draining() -> None:
    partition = Partition(transactional_log([(3, "commit"), (2, "abort")]), "read_committed")
    reader = Reader(partition)
    for _ in range(3):
        assert reader.take_one()
    assert reader.app_position == 3  # the marker after the last message is not dequeued yet
    reader.finish(0)
    reader.finish(2)
    # 1 unfinished: nothing stored past it; its lag (and what is ahead) is counted.
    assert drained_position(app_position=3, position=reader.position, unfinished=1) is None
    assert reader.lag(partition.end) == (partition.end - 3) + 1
    reader.finish(1)
    assert reader.take_one() is False  # dequeues the commit marker and the abort marker
    assert reader.app_position == partition.end == 7
    assert drained_position(app_position=7, position=reader.position, unfinished=0) == 7


def test_open_transaction_is_not_lag_until_it_commits() -> None:
    partition = Partition(transactional_log([(3, "commit"), (4, "open")]), "read_committed")
    measured = partition.stable_offsets()
    assert (measured.high_watermark, measured.last_stable, measured.held) == (8, 4, 4)
    assert deliverable_end(8, measured, transactional=True) == 4
    # Written since the statistics event, into a transaction still open or not: not counted
    # before the next event says how far the LSO moved.
    assert deliverable_end(11, measured, transactional=True) == 4
    # A partition never seen written in transactions, no statistics yet, or read_uncommitted:
    # the cached high watermark stands.
    assert deliverable_end(11, measured, transactional=False) == 11
    assert deliverable_end(8, None, transactional=True) == 8
    assert deliverable_end(-1001, measured, transactional=True) == -1001
    # A stale LSO is never past the high watermark.
    assert deliverable_end(3, measured, transactional=True) == 3


def test_without_an_application_position_the_committed_offset_and_reset_apply() -> None:
    assert deliverable_lag(low=0, end=10, app_position=-1001, position=4, unfinished=0) == 6
    assert deliverable_lag(low=5, end=10, app_position=-1001, position=-1001, unfinished=0) == 5
    assert (
        deliverable_lag(
            low=5, end=10, app_position=-1001, position=-1001, unfinished=0, reset_to_low=False
        )
        == 0
    )
    assert deliverable_lag(low=-1, end=10, app_position=3, position=3, unfinished=0) is None
    assert deliverable_lag(low=4, end=3, app_position=3, position=3, unfinished=0) is None
    # Nothing is stored before librdkafka has a position, nor backwards.
    assert drained_position(app_position=-1001, position=4, unfinished=0) is None
    assert drained_position(app_position=4, position=4, unfinished=0) is None
    assert drained_position(app_position=3, position=4, unfinished=0) is None


def test_statistics_give_the_end_offsets_of_fetched_partitions() -> None:
    statistics = {
        "ts": 1,
        "topics": {
            "chunks.realtime": {
                "partitions": {
                    "0": {"hi_offset": 16, "ls_offset": 16},
                    "1": {"hi_offset": 1, "ls_offset": 0},
                    "2": {"hi_offset": -1001, "ls_offset": -1001},
                    "-1": {"hi_offset": -1001, "ls_offset": -1001},
                }
            }
        },
    }
    offsets = stable_offsets(json.dumps(statistics))
    assert offsets == {
        ("chunks.realtime", 0): StableOffsets(16, 16),
        ("chunks.realtime", 1): StableOffsets(1, 0),
    }
    assert offsets[("chunks.realtime", 1)].held == 1
    assert stable_offsets("not json") == {}
    assert stable_offsets("[]") == {}


def test_lso_holds_are_reported_every_interval_and_released_when_the_lso_moves() -> None:
    holds = LsoHolds(warn_after_s=10)
    key = ("chunks.realtime", 1)
    held = {key: StableOffsets(high_watermark=9, last_stable=4)}
    assert holds.update(held, now=100) == ([], [])
    assert holds.held_s(key, now=105) == 5
    assert holds.update(held, now=109) == ([], [])
    reported, _ = holds.update(held, now=110)
    assert [(h.partition, h.last_stable, h.held_offsets, h.held_s) for h in reported] == [
        (1, 4, 5, 10)
    ]
    assert holds.update(held, now=115) == ([], [])  # reported once per interval
    reported, _ = holds.update(held, now=121)
    assert [h.held_s for h in reported] == [21]
    # The transaction ends: the LSO reaches the high watermark.
    assert holds.update({key: StableOffsets(10, 10)}, now=122) == ([], [key])
    assert holds.held_s(key, now=130) == 0
    # Another transaction holds it at a new offset: a new hold, from the start.
    holds.update({key: StableOffsets(12, 10)}, now=130)
    holds.update({key: StableOffsets(14, 11)}, now=135)
    assert holds.held_s(key, now=136) == 1
    holds.forget([key])
    assert holds.held_s(key, now=140) == 0
    assert holds.latest(key) is None
