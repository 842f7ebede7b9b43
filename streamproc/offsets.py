"""Which offset is safe to store when messages finish out of order.

Concurrent handling finishes messages in any order. The offset stored for a partition must never
pass a message that is not finished yet, or a crash would skip it: so the tracker stores the end of
the *contiguous* run of finished offsets (``faust``'s ``_new_offset`` rule), never the maximum.

Offsets are recorded in the order they were taken from the partition (increasing; gaps from
compaction or transaction markers are fine). A finished message is one that was handled or
dead-lettered; nothing else moves the stored offset.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from itertools import pairwise
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class PartitionOffsets:
    """Offsets taken from one partition and not yet passed by the stored offset."""

    __slots__ = ("_done", "_open", "_order", "_store")

    def __init__(self) -> None:
        self._order: deque[int] = deque()  # taken, not yet passed by the stored offset, in order
        self._open: set[int] = set()  # the same offsets, for membership
        self._done: set[int] = set()  # those of them that finished
        self._store: int | None = None

    @property
    def store_offset(self) -> int | None:
        """The next offset to store (end of the contiguous finished run + 1); None if none yet."""
        return self._store

    @property
    def unfinished(self) -> int:
        return len(self._open) - len(self._done)

    def taken(self, offset: int) -> None:
        """Record that ``offset`` was taken from the partition (in partition order).

        An offset at or below one already taken means the partition went back (a seek or an
        offset reset): the entries from there on will be taken again, so they are forgotten.
        """
        if self._order and offset <= self._order[-1]:
            kept = [o for o in self._order if o < offset]
            self._order = deque(kept)
            self._open = set(kept)
            self._done &= self._open
        if self._store is not None and offset < self._store:
            self._store = offset
        self._order.append(offset)
        self._open.add(offset)

    def taken_run(self, offsets: list[int]) -> None:
        """Record a run of offsets taken at once (in partition order): :meth:`taken` for each,
        in one step when the run simply continues the partition."""
        order = self._order
        if (order and offsets[0] <= order[-1]) or not _ascending(offsets):
            for offset in offsets:
                self.taken(offset)
            return
        if self._store is not None and offsets[0] < self._store:
            self._store = offsets[0]
        order.extend(offsets)
        self._open.update(offsets)

    def finished_run(self, offsets: list[int]) -> bool:
        """Record that each of ``offsets`` was handled or parked: :meth:`finished` for each, in
        one step when they are the oldest open offsets, in order (finishes in the order taken).

        Returns:
            True when the offset to store moved.
        """
        order, count = self._order, len(offsets)
        if (
            self._done
            or count > len(order)
            or order[0] != offsets[0]
            or order[count - 1] != offsets[-1]
            or not _ascending(offsets)
        ):
            moved = False
            for offset in offsets:
                moved = self.finished(offset) or moved
            return moved
        # Ascending, first and last the run's ends: they are exactly the oldest ``count``.
        popleft = order.popleft
        for _ in range(count):
            popleft()
        self._open.difference_update(offsets)
        self._store = offsets[-1] + 1
        return True

    def finished(self, offset: int) -> bool:
        """Record that ``offset`` was handled or parked.

        Returns:
            True when the offset to store moved.
        """
        if offset not in self._open:
            return False  # not taken here (stale, or forgotten after a seek)
        self._done.add(offset)
        moved = False
        while self._order and self._order[0] in self._done:
            first = self._order.popleft()
            self._done.discard(first)
            self._open.discard(first)
            self._store = first + 1
            moved = True
        return moved


class OffsetTracker(Generic[K]):
    """Per-partition :class:`PartitionOffsets`, keyed by partition (e.g. ``(topic, partition)``)."""

    def __init__(self) -> None:
        self._partitions: dict[K, PartitionOffsets] = {}
        self._moved: set[K] = set()

    def taken(self, partition: K, offset: int) -> None:
        offsets = self._partitions.get(partition)
        if offsets is None:  # not setdefault: that would build a PartitionOffsets per message
            offsets = self._partitions[partition] = PartitionOffsets()
        offsets.taken(offset)

    def taken_run(self, partition: K, offsets: list[int]) -> None:
        """:meth:`taken` for a run of offsets of one partition (at least one), in order."""
        tracked = self._partitions.get(partition)
        if tracked is None:
            tracked = self._partitions[partition] = PartitionOffsets()
        tracked.taken_run(offsets)

    def finished(self, partition: K, offset: int) -> None:
        offsets = self._partitions.get(partition)
        if offsets is not None and offsets.finished(offset):
            self._moved.add(partition)

    def finished_run(self, partition: K, offsets: list[int]) -> None:
        """:meth:`finished` for several offsets of one partition (at least one)."""
        tracked = self._partitions.get(partition)
        if tracked is not None and tracked.finished_run(offsets):
            self._moved.add(partition)

    def tracks(self, partition: K) -> bool:
        """A chunk of ``partition`` was taken since it was assigned (or last forgotten)."""
        return partition in self._partitions

    def store_offset(self, partition: K) -> int | None:
        offsets = self._partitions.get(partition)
        return offsets.store_offset if offsets is not None else None

    def unfinished(self, partition: K) -> int:
        offsets = self._partitions.get(partition)
        return offsets.unfinished if offsets is not None else 0

    def to_store(self) -> dict[K, int]:
        """Offsets to store for the partitions whose store offset moved since the last call."""
        moved = {}
        for partition in self._moved:
            offset = self.store_offset(partition)
            if offset is not None:
                moved[partition] = offset
        self._moved.clear()
        return moved

    def forget(self, partitions: Iterable[K]) -> None:
        """Drop revoked or lost partitions (what was unfinished comes back to the next owner)."""
        for partition in partitions:
            self._partitions.pop(partition, None)
            self._moved.discard(partition)


def _ascending(offsets: list[int]) -> bool:
    """Strictly increasing (no offset twice)."""
    return all(a < b for a, b in pairwise(offsets))
