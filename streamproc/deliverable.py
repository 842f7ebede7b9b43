"""What a partition can still deliver: lag past commit markers, aborted and open transactions.

Pure arithmetic, no Kafka client. A transactional producer leaves offsets in the log that no
consumer ever gets: one commit or abort marker (a control record) per transaction and partition,
and under ``read_committed`` the records of aborted transactions. Nor does a ``read_committed``
consumer get anything past the *last stable offset* (LSO), the first offset of the oldest
transaction still open. So "high watermark minus the next offset to handle" never reaches 0 when
the log ends with a marker, and a lane held back until its lane above drains would wait forever.

The figures used instead, per partition:

* **application position**: librdkafka's ``position()``, the offset after the last record the
  consumer took from its queue. Control records (commit and abort markers) are queued in log order
  like messages, never returned, and move it when they are dequeued; aborted batches are dropped
  at fetch and followed by their abort marker. So it passes markers and aborted batches as soon as
  everything before them was taken, exactly and without a broker round trip. Before anything is
  taken from a freshly assigned partition it is unknown, and then the committed offset stands in.
* **deliverable end**: the high watermark under ``read_uncommitted``; under ``read_committed`` the
  LSO. librdkafka's cached "high watermark" is the real high watermark in both modes (it keeps the
  LSO apart, reported in its statistics as ``ls_offset``). On a partition written in transactions
  every record is written past the LSO first, so a fresher high watermark says nothing about what
  can be delivered: there the end is the LSO of the last statistics event; on a partition never
  seen with an open transaction it is the cached high watermark (:func:`deliverable_end`).

Lag = ``end - application position`` + chunks taken and not finished (:func:`deliverable_lag`). It
reaches 0 once everything deliverable was handled, which is what resuming a lower lane and KEDA's
scaling need, and never counts a record no consumer will get once that record is passed. A partition
is *drained* when nothing taken from it is unfinished: its application position may then be stored
(:func:`drained_position`), so the committed offset moves past trailing markers and aborted batches
and reaches the log end, as Kafka's own ``kafka-consumer-groups`` expects. It never passes a message
that was not handled: every record below the application position was taken by the consumer, and
none of those is unfinished.

:class:`LsoHolds` tells how long an open transaction has held a partition's LSO back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from streamproc.kafkastats import Statistics, statistics_document

__all__ = [
    "STATISTICS_INTERVAL_MS",
    "IsolationLevel",
    "LsoHold",
    "LsoHolds",
    "StableOffsets",
    "deliverable_end",
    "deliverable_lag",
    "drained_position",
    "stable_offsets",
]

IsolationLevel = Literal["read_committed", "read_uncommitted"]
"""librdkafka ``isolation.level``: whether records of open and aborted transactions are read."""

_INVALID: Final = -1001
STATISTICS_INTERVAL_MS: Final = 250
"""How often librdkafka reports its statistics (the LSO of each fetched partition) under
``read_committed``: the LSO only matters while a transaction is open, and one event costs a JSON
parse of a few kilobytes per lane consumer."""


@dataclass(frozen=True, slots=True)
class StableOffsets:
    """One partition's end offsets from a fetch response, as librdkafka's statistics report them.

    Args:
        high_watermark: ``hi_offset``: the offset the next record written will get.
        last_stable: ``ls_offset``: the first offset of the oldest open transaction, or the high
            watermark when none is open.
    """

    high_watermark: int
    last_stable: int

    @property
    def held(self) -> int:
        """Offsets past the LSO (records of open transactions, and any written after them)."""
        if self.high_watermark < 0 or self.last_stable < 0:
            return 0
        return max(0, self.high_watermark - self.last_stable)


def stable_offsets(statistics_json: Statistics) -> dict[tuple[str, int], StableOffsets]:
    """Per-partition end offsets from a librdkafka statistics event (``stats_cb``).

    Partitions whose offsets are not known yet (never fetched) and librdkafka's internal partition
    ``-1`` are left out; undecodable JSON gives nothing.
    """
    try:
        statistics = statistics_document(statistics_json)
        topics = statistics.get("topics", {})
    except (ValueError, AttributeError):
        return {}
    offsets: dict[tuple[str, int], StableOffsets] = {}
    for topic, described in topics.items():
        for name, partition in (described.get("partitions") or {}).items():
            number = int(name)
            high = int(partition.get("hi_offset", _INVALID))
            stable = int(partition.get("ls_offset", _INVALID))
            if number >= 0 and high >= 0 and stable >= 0:
                offsets[(topic, number)] = StableOffsets(high, stable)
    return offsets


def deliverable_end(
    high_watermark: int, last_measured: StableOffsets | None, *, transactional: bool
) -> int:
    """The offset a ``read_committed`` consumer can read up to.

    Args:
        high_watermark: librdkafka's cached high watermark (fresher than the statistics).
        last_measured: The partition's offsets at the last statistics event, if any.
        transactional: The partition was seen written in transactions (an open transaction at a
            statistics event, or markers passed). Its records are all written past the LSO
            before their transaction commits, so counting a fresher high watermark would count
            records of open transactions as lag (and could pause lower lanes for them): the end
            is the LSO of the last statistics event, late by at most one statistics interval.
            Otherwise the cached high watermark is the end, as without transactions.
    """
    if high_watermark < 0 or last_measured is None or not transactional:
        return high_watermark
    return min(high_watermark, last_measured.last_stable)


def deliverable_lag(
    *,
    low: int,
    end: int,
    app_position: int,
    position: int,
    unfinished: int,
    reset_to_low: bool = True,
) -> int | None:
    """Messages of one partition still to handle: what is deliverable and not yet handled.

    Args:
        low: Low watermark (first retained offset); negative when unknown.
        end: The deliverable end (:func:`deliverable_end`); negative when unknown.
        app_position: librdkafka's application position (past markers and aborted batches), or a
            negative special offset while nothing was taken since the assignment.
        position: The next offset to handle as streamproc knows it: after the last contiguous
            handled chunk, or the committed offset; negative when neither is known.
        unfinished: Chunks taken from the partition and not handled or parked yet (they are all
            below ``app_position``).
        reset_to_low: ``auto.offset.reset`` is ``earliest`` (a partition with no usable offset
            starts at ``low``; with ``latest`` it starts at the end).

    Returns:
        The lag, never negative, or None when the watermarks are unknown or contradict each other.
    """
    if low < 0 or end < 0 or end < low:
        return None
    if app_position >= 0:
        # Everything below it was taken: what is unfinished of it is counted on its own.
        return max(0, end - app_position) + max(0, unfinished)
    next_offset = position
    if next_offset < low:  # no offset yet, or deleted by retention: auto.offset.reset applies
        next_offset = low if reset_to_low else end
    return max(0, end - next_offset)


def drained_position(*, app_position: int, position: int, unfinished: int) -> int | None:
    """The offset to store for a drained partition, or None when there is none to store.

    A partition is drained when every chunk taken from it is finished. Then every offset below the
    application position is handled or a record no consumer gets (a marker, an aborted batch), and
    storing it moves the committed offset past markers and aborted batches. Only ever forward.
    """
    if unfinished > 0 or app_position < 0 or app_position <= position:
        return None
    return app_position


@dataclass(frozen=True, slots=True)
class LsoHold:
    """A partition whose LSO an open transaction holds back."""

    topic: str
    partition: int
    last_stable: int
    held_offsets: int
    held_s: float


class LsoHolds:
    """How long each partition's LSO has stayed at the same offset with records past it.

    Fed with :class:`StableOffsets` per statistics event. A hold starts when the LSO is seen below
    the high watermark and lasts while the LSO stays at the same offset; a moving LSO (transactions
    ending) starts a new hold. Pure: the caller reads the clock and logs.

    Args:
        warn_after_s: A hold is reported (:meth:`update` returns it) once it lasts this long, and
            again every ``warn_after_s`` while it lasts.
    """

    def __init__(self, warn_after_s: float) -> None:
        self._warn_after_s = warn_after_s
        # (LSO, since, last reported hold length) per partition held now.
        self._holds: dict[tuple[str, int], tuple[int, float, float]] = {}
        self._latest: dict[tuple[str, int], StableOffsets] = {}

    def update(
        self, offsets: Mapping[tuple[str, int], StableOffsets], now: float
    ) -> tuple[list[LsoHold], list[tuple[str, int]]]:
        """Record one statistics event's offsets (partitions not in it keep their state).

        Returns:
            ``(to_report, released)``: holds that just reached ``warn_after_s`` (or another
            multiple of it), and partitions whose hold just ended.
        """
        to_report: list[LsoHold] = []
        released: list[tuple[str, int]] = []
        for key, measured in offsets.items():
            self._latest[key] = measured
            hold = self._holds.get(key)
            if measured.held == 0:
                if hold is not None:
                    del self._holds[key]
                    if hold[2] > 0:
                        released.append(key)
                continue
            if hold is None or hold[0] != measured.last_stable:
                if hold is not None and hold[2] > 0:
                    released.append(key)
                self._holds[key] = (measured.last_stable, now, 0.0)
                continue
            lso, since, reported = hold
            held_s = now - since
            if held_s >= self._warn_after_s and held_s >= reported + self._warn_after_s:
                self._holds[key] = (lso, since, held_s)
                to_report.append(LsoHold(key[0], key[1], lso, measured.held, held_s))
        return to_report, released

    def held_s(self, key: tuple[str, int], now: float) -> float:
        """Seconds the partition's LSO has been held at its offset (0 when it is not held)."""
        hold = self._holds.get(key)
        return 0.0 if hold is None else max(0.0, now - hold[1])

    def latest(self, key: tuple[str, int]) -> StableOffsets | None:
        """The partition's end offsets at the last statistics event that listed it."""
        return self._latest.get(key)

    def forget(self, keys: Iterable[tuple[str, int]]) -> None:
        """Drop revoked or lost partitions."""
        for key in keys:
            self._holds.pop(key, None)
            self._latest.pop(key, None)
