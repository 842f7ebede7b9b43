"""Which taken message starts next: the priority queue of concurrent handling.

Pure policy: no threads, no Kafka. The consumer adds every message it takes as a
:class:`WorkItem`; :meth:`Dispatcher.take` answers which item may start now, and
:meth:`Dispatcher.done` releases a finished one. The rules, in order:

1. At most ``concurrency`` batches run at once (one per worker slot). A batch is one or more
   items of one lane, started together (:meth:`Dispatcher.take_batch`); :meth:`Dispatcher.take`
   is a batch of one.
2. Lanes by rank: an item of a more urgent lane always starts before one of a less urgent lane;
   FIFO within a lane (by the order taken, among the items allowed to start). Lanes the flow
   policy holds paused start nothing (their items wait). A lane in a starvation slice
   (:meth:`Dispatcher.favour_lanes`) gets every other batch although a more urgent lane has work,
   and a lower lane whose oldest item has waited longer than ``overdue_s`` starts next.
3. While a more urgent lane has been active within ``reserve_window_s``, the less urgent lanes
   leave ``reserved`` workers free for it, so an urgent message never waits behind a full house of
   slow bulk work; a lane whose handlers are CPU-bound (:meth:`Dispatcher.solo_lanes`) starts a
   batch then only when no other batch runs, overdue or not (only a starvation slice lets it run
   beside). A lane whose handlers compute nearly all the time (:meth:`Dispatcher.serial_lanes`)
   starts a batch only when no other batch runs, whatever lane and however idle the others: its
   threads would only hand the GIL to each other. A batch running longer than ``serial_stall_s``
   no longer counts: it waits on something (a hung call), and the others start beside it.
4. Ordering (``key`` by default): items with the same order key never run at the same time and
   start in the order taken. ``key`` orders by message key within a partition (where Kafka itself
   orders them; a message without a key has no order constraint), ``partition`` runs one item per
   partition at a time (today's sequential semantics, concurrent across partitions), ``unordered``
   has no constraint.

An item whose order key is busy waits in that key's queue, not in its lane's ready queue, so taking
the next item costs O(1) however many items wait behind a hot key. A lane's ready queue is a deque
kept in the order taken: a taken item goes to its end, a given-back one to its front, and only a
key's next item, released when the earlier one ends, is put in its place by bisection.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from streamproc.messages import PartitionKey

Ordering = Literal["key", "partition", "unordered"]
# A batch of a serial lane running longer than this waits on something, not computing (or is
# far longer than a turn): batches start beside it again (see ``Dispatcher.serial_lanes``).
SERIAL_STALL_S = 0.25
ORDERINGS: tuple[Ordering, ...] = ("key", "partition", "unordered")

T = TypeVar("T")


@dataclass(eq=False, slots=True)
class WorkItem(Generic[T]):
    """One taken message waiting to be (or being) handled.

    Attributes:
        lane_rank: 0 for the most urgent lane.
        topic: Kafka topic.
        partition: Kafka partition.
        offset: Offset in the partition.
        key: The message key (None when the message has none).
        payload: What the worker gets (the message).
        taken_at: Monotonic time it was taken from Kafka (for the queue wait).
        epoch: Assignment epoch of its partition (a finished item of an older epoch is stale).
        order_key: Items sharing it never run at once (set by the dispatcher).
        sequence: Its place in the order taken (set by the dispatcher).
        batch: The batch it runs in while running (set by the dispatcher).
        yields: Its batch should give way to a more urgent chunk arriving while it runs: a
            lower lane's batch started when nothing more urgent waited (set by the dispatcher;
            a batch a starvation guard starts ahead of waiting chunks runs to its end).
    """

    lane_rank: int
    topic: str
    partition: int
    offset: int
    key: bytes | None
    payload: T
    taken_at: float = 0.0
    epoch: int = 0
    order_key: Hashable | None = field(default=None, init=False)
    sequence: int = field(default=0, init=False)
    batch: int = field(default=-1, init=False)
    yields: bool = field(default=False, init=False)

    @property
    def partition_key(self) -> PartitionKey:
        return (self.topic, self.partition)


def _sequence_of(item: WorkItem[Any]) -> int:
    return item.sequence


def default_reserved(concurrency: int) -> int:
    """Workers kept for the top lane by default: one from 8 workers, a sixteenth from 32 (none
    below 8).

    Measured with a 20 ms I/O handler at concurrency 32 and realtime at half the capacity
    (``benchmarks/latency.py``): 4 kept (an eighth) capped bulk at 0.78 of the capacity realtime
    leaves, 2 gave 0.89 with the same realtime p99, 0 gave 0.97 with a p99 1.2 x higher.
    """
    return 0 if concurrency < 8 else max(1, concurrency // 16)


class _Batch:
    """A running batch: its items not done yet, and when it started."""

    __slots__ = ("left", "started")

    def __init__(self, left: int, started: float) -> None:
        self.left = left
        self.started = started


class Dispatcher(Generic[T]):
    """The bounded-priority, order-preserving queue of taken messages.

    Args:
        lanes: How many lanes (ranks 0..lanes-1).
        concurrency: Most items running at once.
        ordering: ``key``, ``partition`` or ``unordered``.
        reserved: Workers less urgent lanes leave free while a more urgent lane is active
            (default :func:`default_reserved`); never more than ``concurrency - 1``.
        reserve_window_s: How long a lane counts as active after its last item was taken.
        overdue_s: A lower lane whose oldest ready item has waited longer than this starts the
            next batch, whatever waits above it (None: never): lanes the flow policy lets run
            are never starved by a more urgent lane that keeps every slot busy.
        serial_stall_s: A batch running longer than this does not keep a serial lane's batch
            from starting beside it.
    """

    def __init__(
        self,
        lanes: int,
        *,
        concurrency: int,
        ordering: Ordering = "key",
        reserved: int | None = None,
        reserve_window_s: float = 1.0,
        overdue_s: float | None = None,
        serial_stall_s: float = SERIAL_STALL_S,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if ordering not in ORDERINGS:
            raise ValueError(f"ordering must be one of {ORDERINGS}, not {ordering!r}")
        self.lanes = lanes
        self.concurrency = concurrency
        self.ordering: Ordering = ordering
        wanted = default_reserved(concurrency) if reserved is None else reserved
        self.reserved = max(0, min(wanted, concurrency - 1))
        self.reserve_window_s = reserve_window_s
        self.overdue_s = overdue_s
        self.serial_stall_s = serial_stall_s
        # Per lane, the items allowed to start, in the order they were taken (by sequence): a
        # deque, as nearly every item arrives after all the others (taken, or given back ahead
        # of them); a key's later item released when its earlier one ends is put in its place.
        self._ready: list[deque[WorkItem[T]]] = [deque() for _ in range(lanes)]
        self._sequence = itertools.count()
        # An order key is held from the moment one of its items is ready or running until the
        # last of its items finished; the deque holds its later items, in the order taken (an
        # empty tuple until it has one: most keys never do, and a deque each costs).
        self._held: dict[Hashable, deque[WorkItem[T]] | tuple[()]] = {}
        self._running: set[WorkItem[T]] = set()
        # Each running batch (by ``WorkItem.batch``): a worker slot is busy until the last item
        # of its batch is done.
        self._batches: dict[int, _Batch] = {}
        self._batch_ids = itertools.count()
        self._size_per_lane = [0] * lanes
        self._last_taken_at: list[float | None] = [None] * lanes
        self._held_lanes: frozenset[int] = frozenset()
        self._favoured_lanes: frozenset[int] = frozenset()
        self._solo_lanes: frozenset[int] = frozenset()
        self._serial_lanes: frozenset[int] = frozenset()
        self._last_batch_rank = 0

    # -- figures ---------------------------------------------------------------------------------

    @property
    def running(self) -> int:
        """Items running now."""
        return len(self._running)

    @property
    def busy_slots(self) -> int:
        """Worker slots running a batch now."""
        return len(self._batches)

    @property
    def most_urgent_running(self) -> int | None:
        """The lowest lane rank among the running items (None when nothing runs)."""
        return min((item.lane_rank for item in self._running), default=None)

    @property
    def all_serial(self) -> bool:
        """Every lane is serial: the pool runs as one slot."""
        return len(self._serial_lanes) == self.lanes

    def free_slots(self, now: float | None = None) -> int:
        """Slots a batch could start in at ``now`` (unknown: any running batch is recent):
        none while every lane is serial and a batch runs that started less than
        ``serial_stall_s`` ago (the pool then runs as one slot)."""
        busy = len(self._batches)
        if busy and self.all_serial and self._serial_blocked(now):
            return 0
        return self.concurrency - busy

    def _serial_blocked(self, now: float | None) -> bool:
        """A running batch started less than ``serial_stall_s`` before ``now``."""
        if now is None:
            return bool(self._batches)
        stall = self.serial_stall_s
        return any(now - batch.started < stall for batch in self._batches.values())

    def ready(self, rank: int) -> int:
        """Items of a lane allowed to start now (waiting for a slot only)."""
        return len(self._ready[rank])

    def waiting_ahead_of(self, rank: int) -> bool:
        """A chunk of a lane more urgent than ``rank`` is ready and waits for a slot.

        Read by the worker threads between chunks, without the pool's lock: each lane's length
        is read at once, and a stale answer only delays a yield by one chunk.
        """
        ready, held = self._ready, self._held_lanes
        for r in range(rank):  # noqa: SIM110  # any() over a generator: twice the cost
            if ready[r] and r not in held:
                return True
        return False

    def size(self, rank: int) -> int:
        """Items of a lane taken and not finished (waiting or running)."""
        return self._size_per_lane[rank]

    def __len__(self) -> int:
        return sum(self._size_per_lane)

    # -- policy ----------------------------------------------------------------------------------

    @property
    def held_lanes(self) -> frozenset[int]:
        return self._held_lanes

    def hold_lanes(self, ranks: Iterable[int]) -> None:
        """Start nothing from these lanes (the flow policy paused them) until released."""
        self._held_lanes = frozenset(ranks)

    def solo_lanes(self, ranks: Iterable[int]) -> None:
        """Lanes whose handlers are CPU-bound: while a more urgent lane is active, one of their
        batches starts only when no other batch runs. Threads share the GIL, so a CPU-bound
        batch beside an urgent one only slows the urgent one down."""
        self._solo_lanes = frozenset(ranks)

    def serial_lanes(self, ranks: Iterable[int]) -> None:
        """Lanes whose handlers compute nearly all the time: one of their batches starts only when
        no other batch runs, whatever lane, at any time. Under the GIL their batches side by side
        run no faster than one after the other and each waits for the others' hand-overs."""
        self._serial_lanes = frozenset(ranks)

    def favour_lanes(self, ranks: Iterable[int]) -> None:
        """Lanes in a starvation slice: every other batch is theirs while they have work."""
        self._favoured_lanes = frozenset(ranks)

    def add(self, item: WorkItem[T]) -> None:
        """Queue a taken item (items of one partition are added in offset order)."""
        self.add_many((item,))

    def add_many(self, items: Iterable[WorkItem[T]]) -> None:
        """Queue taken items, in the order given (items of one partition in offset order)."""
        sizes, last_taken_at, ready = self._size_per_lane, self._last_taken_at, self._ready
        held, sequence = self._held, self._sequence
        by_partition, by_key = self.ordering == "partition", self.ordering == "key"
        for item in items:
            rank = item.lane_rank
            sizes[rank] += 1
            last_taken_at[rank] = item.taken_at
            item.sequence = next(sequence)  # after every item taken so far: last in its lane
            if by_key and item.key is not None:
                order_key: Hashable | None = (item.topic, item.partition, item.key)
            elif by_partition:
                order_key = (item.topic, item.partition)
            else:
                ready[rank].append(item)
                continue
            item.order_key = order_key
            waiting = held.get(order_key)
            if waiting is None:
                held[order_key] = ()
                ready[rank].append(item)
            elif isinstance(waiting, tuple):
                held[order_key] = deque((item,))
            else:
                waiting.append(item)

    def _make_ready(self, item: WorkItem[T]) -> None:
        """Put ``item`` among its lane's ready items in its place (the order it was taken)."""
        ready = self._ready[item.lane_rank]
        sequence = item.sequence
        if not ready or ready[-1].sequence < sequence:
            ready.append(item)
        elif ready[0].sequence > sequence:
            ready.appendleft(item)  # given back: ahead of everything taken after it
        else:
            ready.insert(bisect.bisect(ready, sequence, key=_sequence_of), item)

    def take(self, now: float) -> WorkItem[T] | None:
        """The next item to start now as a batch of its own, marked running; None when nothing
        may start."""
        batch = self.take_batch(now, lambda rank: 1)
        return batch[0] if batch else None

    def take_batch(self, now: float, limit: Callable[[int], int]) -> list[WorkItem[T]]:
        """The next batch to start in a free slot: up to ``limit(rank)`` ready items of the most
        urgent lane that may start (a favoured lane first when the last batch was not its own).

        Items of one order key are never in one batch (the later one waits for the earlier).
        Returns an empty list when no slot is free or nothing may start.
        """
        busy = len(self._batches)
        if busy >= self.concurrency:
            return []
        ranks: Iterable[int] = range(len(self._ready))
        favoured = [r for r in self._favoured_lanes if self._ready[r] and r not in self._held_lanes]
        if not (favoured and self._last_batch_rank not in self._favoured_lanes):
            favoured = []
        first = [*self._overdue(now), *favoured]
        if first:
            ranks = [*first, *ranks]
        for rank in ranks:
            ready = self._ready[rank]
            if not ready or rank in self._held_lanes:
                continue
            if busy and rank in self._serial_lanes and self._serial_blocked(now):
                if rank in first:
                    continue  # the lanes in their usual order may still start
                return []  # it waits for the running batch, and nothing less urgent passes it
            if rank > 0 and rank not in favoured:
                if rank not in first and busy >= self.concurrency - self._reserve_for(rank, now):
                    return []
                # Overdue moves a solo lane ahead, never beside: a CPU-bound batch beside an
                # urgent one only slows it down (a starvation slice is the flow policy's call).
                if busy and rank in self._solo_lanes and self._higher_active(rank, now):
                    if rank in first:
                        continue  # the lanes in their usual order may still start
                    return []
            batch_id = next(self._batch_ids)
            popleft = ready.popleft
            batch = [popleft() for _ in range(min(max(1, limit(rank)), len(ready)))]
            yields = rank > 0 and not self.waiting_ahead_of(rank)
            for item in batch:
                item.batch = batch_id
                item.yields = yields
            self._running.update(batch)
            self._batches[batch_id] = _Batch(len(batch), now)
            self._last_batch_rank = rank
            return batch
        return []

    def _overdue(self, now: float) -> list[int]:
        """Lower lanes whose oldest ready item has waited longer than ``overdue_s``; none right
        after an overdue batch, so an overdue lane gets every other batch at most (a backlog of
        old items, say after a pause, never runs all at once ahead of a more urgent lane)."""
        if self.overdue_s is None or self._last_batch_rank > 0:
            return []
        return [
            rank
            for rank in range(1, len(self._ready))
            if self._ready[rank]
            and rank not in self._held_lanes
            and now - self._ready[rank][0].taken_at > self.overdue_s
        ]

    def _reserve_for(self, rank: int, now: float) -> int:
        """Workers lane ``rank`` leaves free: ``reserved`` while a more urgent lane is active."""
        if not self.reserved:
            return 0
        return self.reserved if self._higher_active(rank, now) else 0

    def _higher_active(self, rank: int, now: float) -> bool:
        """A more urgent lane has work in hand or took some within ``reserve_window_s``."""
        for higher in range(rank):
            last = self._last_taken_at[higher]
            if self._size_per_lane[higher] or (
                last is not None and now - last < self.reserve_window_s
            ):
                return True
        return False

    def done(self, item: WorkItem[T]) -> None:
        """Release a finished (or abandoned) running item; its key's next item becomes ready."""
        self.done_many((item,))

    def done_many(self, items: Iterable[WorkItem[T]]) -> None:
        """:meth:`done` for each of ``items``: :meth:`_stop_running` and the release of the
        item's order key, inlined (this runs once per handled chunk)."""
        running, batches, sizes = self._running, self._batches, self._size_per_lane
        held, make_ready = self._held, self._make_ready
        for item in items:
            if item not in running:
                continue  # already dropped with its partition
            running.discard(item)
            batch = batches[item.batch]
            batch.left -= 1
            if not batch.left:
                del batches[item.batch]
            item.batch = -1
            sizes[item.lane_rank] -= 1
            order_key = item.order_key
            if order_key is not None and (waiting := held.get(order_key)) is not None:
                if isinstance(waiting, deque) and waiting:
                    make_ready(waiting.popleft())
                else:
                    del held[order_key]

    def give_back(self, item: WorkItem[T]) -> None:
        """Put a running item back where it was, not done (its lane was held after it was
        taken, before its handler ran): it starts again, first of its key, once allowed."""
        if not self._stop_running(item):
            return
        self._make_ready(item)

    def _stop_running(self, item: WorkItem[T]) -> bool:
        """Take ``item`` off the running set and its batch's slot (freed with the batch's last
        item); False when it was not running."""
        if item not in self._running:
            return False
        self._running.discard(item)
        batch = self._batches[item.batch]
        batch.left -= 1
        if not batch.left:
            del self._batches[item.batch]
        item.batch = -1
        return True

    def drop_partitions(self, partitions: Iterable[PartitionKey]) -> list[WorkItem[T]]:
        """Remove the waiting items of ``partitions`` (revoked or lost): they come back to the
        next owner. Running items stay until :meth:`done` or :meth:`abandon`.

        Returns:
            The dropped items.
        """
        gone = set(partitions)
        if not gone:
            return []
        dropped: list[WorkItem[T]] = []
        for rank, ready in enumerate(self._ready):
            dropped += [item for item in ready if item.partition_key in gone]
            self._ready[rank] = deque(item for item in ready if item.partition_key not in gone)
        running_keys = {item.order_key for item in self._running}
        for order_key, waiting in list(self._held.items()):
            # Every order key starts with its partition: (topic, partition[, message key]).
            if not (isinstance(order_key, tuple) and order_key[:2] in gone):
                continue
            dropped += waiting
            if order_key in running_keys:
                self._held[order_key] = ()
            else:
                del self._held[order_key]
        for item in dropped:
            self._size_per_lane[item.lane_rank] -= 1
        return dropped

    def drop_held(self, partitions: Iterable[PartitionKey] | None = None) -> list[WorkItem[T]]:
        """Remove the waiting items of held lanes (of ``partitions`` only, when given).

        A held lane's waiting items are the tail of their partitions (nothing later of them was
        started), so dropping them loses nothing: their offsets are never stored, and the next
        owner, or this member after a restart, takes them again.
        """
        keys: set[PartitionKey] = set()
        for rank in self._held_lanes:
            keys.update(item.partition_key for item in self._ready[rank])
        for waiting in self._held.values():
            keys.update(
                item.partition_key for item in waiting if item.lane_rank in self._held_lanes
            )
        if partitions is not None:
            keys &= set(partitions)
        return self.drop_partitions(keys)

    def abandon(self, items: Iterable[WorkItem[T]]) -> None:
        """Stop counting running items whose results will be ignored (partition gone)."""
        self.done_many(items)

    def pending_in(self, partitions: Iterable[PartitionKey]) -> int:
        """Items of ``partitions`` taken and not finished (ready, waiting for a key, running)."""
        gone = set(partitions)
        ready = sum(1 for queue in self._ready for item in queue if item.partition_key in gone)
        waiting = sum(
            1 for queue in self._held.values() for item in queue if item.partition_key in gone
        )
        return ready + waiting + len(self.running_in(gone))

    def running_in(self, partitions: Iterable[PartitionKey]) -> list[WorkItem[T]]:
        gone = set(partitions)
        return [item for item in self._running if item.partition_key in gone]
