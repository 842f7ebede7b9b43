"""The worker pool: real threads and a real event loop, `concurrency` at most, keys kept apart."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future

import pytest

from streamproc.dispatch import Dispatcher, WorkItem
from streamproc.workers import WorkerPool


class Probe:
    """Records how many items run at once, overall and per key."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.keys_running: set[bytes | None] = set()
        self.overlaps = 0
        self.order: list[str] = []

    def enter(self, item: WorkItem[str]) -> None:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            if item.key in self.keys_running:
                self.overlaps += 1
            self.keys_running.add(item.key)
            self.order.append(item.payload)

    def leave(self, item: WorkItem[str]) -> None:
        with self.lock:
            self.running -= 1
            self.keys_running.discard(item.key)


def each(run: Callable[[WorkItem[str]], str]) -> Callable[[list[WorkItem[str]]], list[str]]:
    """A batch runner from a per-item one."""
    return lambda batch: [run(item) for item in batch]


def each_async(
    run: Callable[[WorkItem[str]], Awaitable[str]],
) -> Callable[[list[WorkItem[str]]], Awaitable[list[str]]]:
    async def run_batch(batch: list[WorkItem[str]]) -> list[str]:
        return [await run(item) for item in batch]

    return run_batch


def items(count: int, keys: int) -> list[WorkItem[str]]:
    return [
        WorkItem(1, "chunks.bulk", 0, offset, f"k{offset % keys}".encode(), f"k{offset % keys}")
        for offset in range(count)
    ]


def wait_for_results(
    pool: WorkerPool[str, str], count: int, timeout_s: float = 10.0
) -> list[tuple[WorkItem[str], str | BaseException]]:
    results: list[tuple[WorkItem[str], str | BaseException]] = []
    deadline = time.monotonic() + timeout_s
    while len(results) < count and time.monotonic() < deadline:
        results += pool.finished()
        time.sleep(0.005)
    return results


def run_all(
    pool: WorkerPool[str, str], batch: list[WorkItem[str]]
) -> list[tuple[WorkItem[str], str | BaseException]]:
    """Add ``batch``, collect its results, close the pool."""
    try:
        pool.add(batch)
        return wait_for_results(pool, len(batch))
    finally:
        pool.close()


def test_sync_pool_runs_concurrently_bounded_and_keeps_keys_apart() -> None:
    probe = Probe()

    def run(item: WorkItem[str]) -> str:
        probe.enter(item)
        time.sleep(0.005)
        probe.leave(item)
        return item.payload

    pool: WorkerPool[str, str] = WorkerPool(
        Dispatcher(2, concurrency=4, ordering="key", reserved=0), run_sync=each(run)
    )
    results = run_all(pool, items(40, keys=6))
    assert len(results) == 40
    assert probe.most <= 4
    assert probe.most > 1, "six keys and four workers: more than one item ran at once"
    assert probe.overlaps == 0
    for key in range(6):  # per key, started in the order taken
        offsets = [item.offset for item, _ in results if item.payload == f"k{key}"]
        assert offsets == sorted(offsets)


def test_async_pool_runs_coroutines_on_one_loop() -> None:
    probe = Probe()
    threads: set[int] = set()

    async def run(item: WorkItem[str]) -> str:
        threads.add(threading.get_ident())
        probe.enter(item)
        await asyncio.sleep(0.005)
        probe.leave(item)
        return item.payload

    pool: WorkerPool[str, str] = WorkerPool(
        Dispatcher(2, concurrency=8, ordering="unordered", reserved=0), run_async=each_async(run)
    )
    results = run_all(pool, items(32, keys=32))
    assert len(results) == 32
    assert len(threads) == 1
    assert 1 < probe.most <= 8


def test_exceptions_come_back_as_results_and_halt_stops_new_starts() -> None:
    release = threading.Event()

    def run(item: WorkItem[str]) -> str:
        release.wait(5)
        if item.offset == 0:
            raise RuntimeError("boom")
        return item.payload

    pool: WorkerPool[str, str] = WorkerPool(
        Dispatcher(2, concurrency=2, ordering="unordered", reserved=0), run_sync=each(run)
    )
    try:
        pool.add(items(5, keys=5))
        assert pool.running() == 2
        pool.halt()
        release.set()
        assert pool.wait_idle(5)
        results = wait_for_results(pool, 2)
        assert pool.sizes() == [0, 3], "three never started: they wait"
    finally:
        pool.close()
    outcomes = {item.offset: outcome for item, outcome in results}
    assert isinstance(outcomes[0], RuntimeError)
    assert outcomes[1] == "k1"


def test_revoked_partitions_are_dropped_waited_for_and_abandoned() -> None:
    release = threading.Event()

    def run(item: WorkItem[str]) -> str:
        release.wait(5)
        return item.payload

    pool: WorkerPool[str, str] = WorkerPool(
        Dispatcher(2, concurrency=1, ordering="unordered", reserved=0), run_sync=each(run)
    )
    partition = [("chunks.bulk", 0)]
    try:
        pool.add(items(3, keys=3))
        assert not pool.wait_partitions(partition, timeout_s=0.05)
        dropped, abandoned = pool.release_partitions(partition)
        assert (len(dropped), abandoned) == (2, 1)
        assert pool.wait_partitions(partition, timeout_s=0)
        release.set()
        assert len(wait_for_results(pool, 1)) == 1, "the abandoned item still reports"
    finally:
        pool.close()


def test_an_item_given_back_after_its_partition_was_released_never_comes_back() -> None:
    release = threading.Event()
    given_back = "given back"
    runs: list[str] = []

    def run(item: WorkItem[str]) -> str:
        runs.append(item.payload)
        if item.payload == "fence":
            return "fence"
        release.wait(5)
        return given_back  # its lane was held meanwhile, say

    dispatcher: Dispatcher[str] = Dispatcher(2, concurrency=1, ordering="unordered", reserved=0)
    pool: WorkerPool[str, str] = WorkerPool(dispatcher, run_sync=each(run), given_back=given_back)
    try:
        pool.add(items(2, keys=2))
        dropped, abandoned = pool.release_partitions([("chunks.bulk", 0)])
        assert ([item.payload for item in dropped], abandoned) == (["k1"], 1)
        # One worker thread: the fence runs after the released batch ended and gave back k0.
        pool.add([WorkItem(1, "chunks.bulk", 1, 0, b"fence", "fence")])
        release.set()
        assert [outcome for _, outcome in wait_for_results(pool, 1)] == ["fence"]
        assert pool.sizes() == [0, 0], "the released item went back to wait"
        assert runs == ["k0", "fence"]
    finally:
        pool.close()


def test_exactly_one_runner() -> None:
    dispatcher: Dispatcher[str] = Dispatcher(2, concurrency=1)
    with pytest.raises(ValueError, match="exactly one"):
        WorkerPool(dispatcher)


def test_a_batch_cancelled_at_shutdown_frees_its_slot_and_keys_and_has_no_result() -> None:
    """``close()`` cancels a submitted batch that has not started: its items are done (never
    stored: they come back), the slot is free and the next item of each key may start."""
    dispatcher: Dispatcher[str] = Dispatcher(2, concurrency=1)
    pool: WorkerPool[str, str] = WorkerPool(dispatcher, run_sync=each(lambda item: item.payload))
    try:
        first, second = items(2, keys=1)  # one key: the second waits for the first
        dispatcher.add(first)
        dispatcher.add(second)
        batch = dispatcher.take_batch(time.monotonic(), lambda rank: 1)
        assert batch == [first] and dispatcher.free_slots() == 0
        cancelled: Future[list[str]] = Future()
        cancelled.cancel()
        pool._finish(batch, cancelled)  # what the executor calls back for a cancelled future
        # The first has no result; its key's next item was launched in the freed slot.
        assert [item for item, _ in wait_for_results(pool, 1)] == [second]
        assert dispatcher.size(1) == 0 and dispatcher.free_slots() == 1
    finally:
        pool.close()


def test_serial_batches_run_on_one_thread_of_their_own_and_a_stalled_one_is_not_waited_for() -> (
    None
):
    threads: list[str] = []
    release = threading.Event()

    def run(item: WorkItem[str]) -> str:
        threads.append(threading.current_thread().name)
        if item.payload == "hangs":
            release.wait(5)
        return item.payload

    dispatcher: Dispatcher[str] = Dispatcher(
        2, concurrency=4, ordering="unordered", serial_stall_s=0.1
    )
    dispatcher.serial_lanes([0, 1])
    pool: WorkerPool[str, str] = WorkerPool(dispatcher, run_sync=each(run))
    try:
        pool.add(items(30, keys=30))
        assert len(wait_for_results(pool, 30)) == 30
        # One thread runs them all: no idle thread is woken to take the GIL for nothing.
        assert set(threads) == {"streamproc-worker-serial_0"}
        threads.clear()
        pool.add([WorkItem(1, "chunks.bulk", 1, 0, None, "hangs")])
        time.sleep(0.15)  # the hung batch is past serial_stall_s
        pool.add(items(5, keys=5))
        pool.launch()
        results = wait_for_results(pool, 5)
        assert sorted(str(payload) for _, payload in results) == [f"k{n}" for n in range(5)]
        assert threads[0] == "streamproc-worker-serial_0"
        assert set(threads[1:]) <= {f"streamproc-worker_{n}" for n in range(4)}
    finally:
        release.set()
        pool.close()
