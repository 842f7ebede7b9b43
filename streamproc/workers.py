"""Run dispatched work off the poll thread: a thread pool for sync handlers, one event loop for
``async def`` handlers.

The poll thread adds taken items; whenever a worker slot frees up, the finishing worker starts the
next item the :class:`~streamproc.dispatch.Dispatcher` allows, so the pool never waits for the
poll loop's next tick. Results are queued for the poll thread, which alone stores offsets and
touches the Kafka client. Every dispatcher call happens under one lock.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

from streamproc.dispatch import Dispatcher, PartitionKey, WorkItem

T = TypeVar("T")
R = TypeVar("R")


class WorkerPool(Generic[T, R]):
    """Runs items at most ``dispatcher.concurrency`` at a time, in the dispatcher's order.

    Exactly one of ``run_sync`` and ``run_async`` is given. Neither may raise: each returns the
    outcome the poll thread collects with :meth:`finished`.

    Args:
        dispatcher: Decides what starts next.
        run_sync: Handles one item on a pool thread.
        run_async: Handles one item as a coroutine on the pool's event loop thread.
        on_start: Called (under the lock, on whichever thread starts it) as an item starts.
    """

    def __init__(
        self,
        dispatcher: Dispatcher[T],
        *,
        run_sync: Callable[[WorkItem[T]], R] | None = None,
        run_async: Callable[[WorkItem[T]], Awaitable[R]] | None = None,
        on_start: Callable[[WorkItem[T], float], None] | None = None,
    ) -> None:
        if (run_sync is None) == (run_async is None):
            raise ValueError("give exactly one of run_sync and run_async")
        self._dispatcher = dispatcher
        self._run_sync = run_sync
        self._run_async = run_async
        self._on_start = on_start
        self._lock = threading.Condition(threading.RLock())
        self._results: list[tuple[WorkItem[T], R | BaseException]] = []
        self._halted = False
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        if run_sync is not None:
            self._executor = ThreadPoolExecutor(
                max_workers=dispatcher.concurrency, thread_name_prefix="streamproc-worker"
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
            for item in items:
                self._dispatcher.add(item)
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

    def drop_partitions(self, partitions: Iterable[PartitionKey]) -> list[WorkItem[T]]:
        """Remove waiting items of ``partitions``; running ones go on (see :meth:`abandon`)."""
        with self._lock:
            return self._dispatcher.drop_partitions(partitions)

    def wait_partitions(self, partitions: Iterable[PartitionKey], timeout_s: float) -> bool:
        """Wait until no item of ``partitions`` runs; True if so within ``timeout_s``."""
        keys = set(partitions)
        with self._lock:
            return self._wait_for(lambda: not self._dispatcher.running_in(keys), timeout_s)

    def drain(self, partitions: Iterable[PartitionKey] | None, timeout_s: float) -> bool:
        """Run every taken item of ``partitions`` (all when None) to the end, waiting up to
        ``timeout_s``; lanes held by the flow policy are released meanwhile so nothing waits
        on them. Once halted, only the running items are waited for. Returns True when none is
        left to wait for.
        """
        keys = None if partitions is None else set(partitions)
        with self._lock:
            held = self._dispatcher.held_lanes
            self._dispatcher.hold_lanes(())
            self._launch()
            try:
                return self._wait_for(lambda: not self._left_to_drain(keys), timeout_s)
            finally:
                self._dispatcher.hold_lanes(held)

    def _left_to_drain(self, keys: set[PartitionKey] | None) -> int:
        if self._halted:  # nothing more starts: only the running items can still finish
            running = self._dispatcher.running
            return running if keys is None else len(self._dispatcher.running_in(keys))
        return len(self._dispatcher) if keys is None else self._dispatcher.pending_in(keys)

    def abandon_partitions(self, partitions: Iterable[PartitionKey]) -> int:
        """Stop counting still-running items of ``partitions``; their results will be stale."""
        with self._lock:
            running = self._dispatcher.running_in(partitions)
            self._dispatcher.abandon(running)
            self._launch()
            return len(running)

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
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
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
        """Start every item the dispatcher allows now."""
        if self._halted:
            return
        now = time.monotonic()
        while (item := self._dispatcher.take(now)) is not None:
            if self._on_start is not None:
                self._on_start(item, now)
            future: Future[R]
            try:
                if self._executor is not None and self._run_sync is not None:
                    future = self._executor.submit(self._run_sync, item)
                elif self._loop is not None and self._run_async is not None:
                    coroutine = _call(self._run_async, item)
                    future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
                else:  # pragma: no cover - the constructor guarantees one of the two
                    raise AssertionError("no runner")
            except RuntimeError:
                # The pool or the interpreter is shutting down: the item never runs (its offset
                # is never stored, so it comes back), and nothing else starts.
                self._halted = True
                return
            future.add_done_callback(functools.partial(self._finish, item))

    def _finish(self, item: WorkItem[T], future: Future[R]) -> None:
        with self._lock:
            if not future.cancelled():
                error = future.exception()
                self._results.append((item, future.result() if error is None else error))
            self._dispatcher.done(item)
            self._launch()
            self._lock.notify_all()


async def _call(run: Callable[[WorkItem[T]], Awaitable[R]], item: WorkItem[T]) -> R:
    return await run(item)
