"""Run dispatched work off the poll thread: a thread pool for sync handlers, one event loop for
``async def`` handlers.

The poll thread adds taken items; whenever a worker slot frees up, the finishing worker starts the
next batch the :class:`~streamproc.dispatch.Dispatcher` allows (up to ``batch_limit(rank)`` items
of one lane), so the pool never waits for the poll loop's next tick. Results are queued for the
poll thread, which alone stores offsets and touches the Kafka clients; it can sleep until a slot
is free (:meth:`WorkerPool.wait_for_slot`) without holding the GIL. Every dispatcher call happens
under one lock.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

from streamproc.dispatch import Dispatcher, WorkItem
from streamproc.messages import PartitionKey

T = TypeVar("T")
R = TypeVar("R")


class WorkerPool(Generic[T, R]):
    """Runs batches at most ``dispatcher.concurrency`` at a time, in the dispatcher's order.

    Exactly one of ``run_sync`` and ``run_async`` is given. Each takes a batch and returns one
    outcome per item, in order; neither should raise (if one does, every item of the batch gets
    the exception as its result). The poll thread collects outcomes with :meth:`finished`.

    Args:
        dispatcher: Decides what starts next.
        run_sync: Handles one batch on a pool thread.
        run_async: Handles one batch as a coroutine on the pool's event loop thread.
        on_start: Called (under the lock, on whichever thread starts it) as a batch starts.
        batch_limit: Most items of a batch of the lane of this rank (default 1).
        given_back: The outcome (one object, compared by identity) that means "not run, it
            gives way": the item goes back to the dispatcher where it was
            (:meth:`Dispatcher.give_back`).
    """

    def __init__(
        self,
        dispatcher: Dispatcher[T],
        *,
        run_sync: Callable[[list[WorkItem[T]]], list[R]] | None = None,
        run_async: Callable[[list[WorkItem[T]]], Awaitable[list[R]]] | None = None,
        on_start: Callable[[list[WorkItem[T]], float], None] | None = None,
        batch_limit: Callable[[int], int] = lambda rank: 1,
        given_back: R | None = None,
    ) -> None:
        if (run_sync is None) == (run_async is None):
            raise ValueError("give exactly one of run_sync and run_async")
        self._dispatcher = dispatcher
        self._run_sync = run_sync
        self._run_async = run_async
        self._on_start = on_start
        self._batch_limit = batch_limit
        self._given_back = given_back
        self._lock = threading.Condition(threading.RLock())
        self._results: list[tuple[WorkItem[T], R | BaseException]] = []
        self._halted = False
        self._executor: ThreadPoolExecutor | None = None
        # With several slots, serial batches (Dispatcher.serial_lanes) run on a thread of their
        # own: handed to the many-thread executor, each batch would wake an idle thread that
        # takes the GIL from the running batch only to find nothing to do.
        self._serial_executor: ThreadPoolExecutor | None = None
        self._serial_running = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        if run_sync is not None:
            self._executor = ThreadPoolExecutor(
                max_workers=dispatcher.concurrency, thread_name_prefix="streamproc-worker"
            )
            if dispatcher.concurrency > 1:
                self._serial_executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="streamproc-worker-serial"
                )
        else:
            self._loop = asyncio.new_event_loop()
            self._loop_thread = threading.Thread(
                target=self._loop.run_forever, name="streamproc-event-loop", daemon=True
            )
            self._loop_thread.start()

    # -- poll-thread side ------------------------------------------------------------------------

    def add(self, items: Iterable[WorkItem[T]]) -> None:
        with self._lock:
            self._dispatcher.add_many(items)
            self._launch()

    def hold_lanes(self, ranks: Iterable[int]) -> None:
        with self._lock:
            self._dispatcher.hold_lanes(ranks)
            self._launch()

    def finished(self) -> list[tuple[WorkItem[T], R | BaseException]]:
        """Results since the last call, in the order they finished (an exception if it raised)."""
        with self._lock:
            results, self._results = self._results, []
        return results

    def sizes(self) -> list[int]:
        """Items taken and not finished, per lane rank."""
        with self._lock:
            return [self._dispatcher.size(rank) for rank in range(self._dispatcher.lanes)]

    def running(self) -> int:
        with self._lock:
            return self._dispatcher.running

    def free_slots(self) -> int:
        with self._lock:
            return 0 if self._halted else self._dispatcher.free_slots(time.monotonic())

    def most_urgent_running(self) -> int | None:
        """The most urgent lane with a chunk running now (None when nothing runs or halted)."""
        with self._lock:
            return None if self._halted else self._dispatcher.most_urgent_running

    def ready(self, rank: int) -> int:
        """Items of a lane waiting for a free slot."""
        with self._lock:
            return self._dispatcher.ready(rank)

    def solo_lanes(self, ranks: Iterable[int]) -> None:
        with self._lock:
            self._dispatcher.solo_lanes(ranks)

    def serial_lanes(self, ranks: Iterable[int]) -> None:
        with self._lock:
            self._dispatcher.serial_lanes(ranks)
            self._launch()

    def launch(self) -> None:
        """Start what the dispatcher allows now (a serial lane's running batch may have
        stalled since the last start or finish)."""
        with self._lock:
            self._launch()

    def favour_lanes(self, ranks: Iterable[int]) -> None:
        with self._lock:
            self._dispatcher.favour_lanes(ranks)
            self._launch()

    def wait_for_slot(self, timeout_s: float) -> bool:
        """Sleep (without the GIL) until a worker slot is free or a result waits; True if so."""
        with self._lock:
            return self._wait_for(
                lambda: bool(self._results) or self._dispatcher.free_slots(time.monotonic()) > 0,
                timeout_s,
            )

    def release_partitions(
        self, partitions: Iterable[PartitionKey]
    ) -> tuple[list[WorkItem[T]], int]:
        """Let go of ``partitions`` (revoked or lost): remove their waiting items and stop
        counting their running ones, whose results will be stale. One step under the lock, so a
        running batch that gives items back afterwards gives back nothing (they no longer run).

        Returns:
            The waiting items removed, and how many running items were abandoned.
        """
        keys = set(partitions)
        with self._lock:
            dropped = self._dispatcher.drop_partitions(keys)
            running = self._dispatcher.running_in(keys)
            self._dispatcher.abandon(running)
            self._launch()
            return dropped, len(running)

    def wait_partitions(self, partitions: Iterable[PartitionKey], timeout_s: float) -> bool:
        """Wait until no item of ``partitions`` runs; True if so within ``timeout_s``."""
        keys = set(partitions)
        with self._lock:
            return self._wait_for(lambda: not self._dispatcher.running_in(keys), timeout_s)

    def drain(self, partitions: Iterable[PartitionKey] | None, timeout_s: float) -> bool:
        """Run every taken item of ``partitions`` (all when None) to the end, waiting up to
        ``timeout_s``. Items of lanes the flow policy holds that have not started are dropped
        instead (:meth:`Dispatcher.drop_held`): nothing of a held lane starts. Once halted,
        only the running items are waited for. Returns True when none is left to wait for.
        """
        keys = None if partitions is None else set(partitions)
        with self._lock:
            self._dispatcher.drop_held(keys)
            self._launch()
            return self._wait_for(lambda: not self._left_to_drain(keys), timeout_s)

    def _left_to_drain(self, keys: set[PartitionKey] | None) -> int:
        if self._halted:  # nothing more starts: only the running items can still finish
            running = self._dispatcher.running
            return running if keys is None else len(self._dispatcher.running_in(keys))
        return len(self._dispatcher) if keys is None else self._dispatcher.pending_in(keys)

    def halt(self) -> None:
        """Start nothing more (shutdown or stop): running items finish, waiting ones stay."""
        with self._lock:
            self._halted = True

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing runs; True if so within ``timeout_s``."""
        with self._lock:
            return self._wait_for(lambda: not self._dispatcher.running, timeout_s)

    def close(self) -> None:
        """Release the threads (running work is not waited for: call :meth:`wait_idle` first)."""
        self.halt()
        for executor in (self._executor, self._serial_executor):
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
        loop, thread = self._loop, self._loop_thread
        if loop is not None and thread is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=1.0)
            if not thread.is_alive():
                loop.close()

    # -- any thread, under the lock --------------------------------------------------------------

    def _wait_for(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Wait (releasing the lock) until ``done()``, checked at each finish and at least every
        0.1 s; True if so within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._lock.wait(min(remaining, 0.1))
        return True

    def _launch(self) -> None:
        """Start every batch the dispatcher allows now."""
        if self._halted:
            return
        now = time.monotonic()
        while batch := self._dispatcher.take_batch(now, self._batch_limit):
            if self._on_start is not None:
                self._on_start(batch, now)
            future: Future[list[R]]
            serial = False
            try:
                if (
                    self._serial_executor is not None
                    and self._run_sync is not None
                    and not self._serial_running
                    and self._dispatcher.all_serial
                ):
                    future = self._serial_executor.submit(self._run_sync, batch)
                    serial = self._serial_running = True
                elif self._executor is not None and self._run_sync is not None:
                    future = self._executor.submit(self._run_sync, batch)
                elif self._loop is not None and self._run_async is not None:
                    coroutine = _call(self._run_async, batch)
                    future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
                else:  # pragma: no cover - the constructor guarantees one of the two
                    raise AssertionError("no runner")
            except RuntimeError:
                # The pool or the interpreter is shutting down: the batch never runs (its offsets
                # are never stored, so it comes back), and nothing else starts.
                self._halted = True
                return
            future.add_done_callback(functools.partial(self._finish, batch, serial=serial))

    def _finish(
        self, batch: list[WorkItem[T]], future: Future[list[R]], *, serial: bool = False
    ) -> None:
        with self._lock:
            if serial:
                self._serial_running = False
            outcomes: list[R | BaseException] = []
            if not future.cancelled():
                error = future.exception()
                outcomes = [error] * len(batch) if error is not None else list(future.result())
            if not outcomes:  # cancelled at shutdown: never ran, never stored
                self._dispatcher.done_many(batch)
            else:
                given_back = self._given_back
                ended = list(zip(batch, outcomes, strict=True))
                if given_back is not None and any(outcome is given_back for outcome in outcomes):
                    kept = []
                    for item, outcome in ended:
                        if outcome is given_back:
                            self._dispatcher.give_back(item)
                        else:
                            kept.append((item, outcome))
                    ended = kept
                self._results += ended
                self._dispatcher.done_many(item for item, _ in ended)
            self._launch()
            self._lock.notify_all()


async def _call(
    run: Callable[[list[WorkItem[T]]], Awaitable[list[R]]], batch: list[WorkItem[T]]
) -> list[R]:
    return await run(batch)
