"""Handling one batch of one lane: decode, call the handler with retries, park what fails.

The same steps for a sync and an ``async def`` handler; only the call and the sleep between
retries differ. Every message of a batch ends with one :class:`Outcome`, in order:

1. Decode each message (an undecodable or invalid one is parked in its dead-letter topic, or the
   error policy says stop).
2. Call the handler: a batch handler gets the decoded chunks at once, retried as a whole on
   retriable errors; if it still fails, the chunks are handed over one by one so the bad one is
   isolated. A per-chunk handler gets them one by one from the start, and a lower lane's batch
   yields between chunks: once a more urgent chunk waits for a slot (or the flow policy holds
   the lane), the chunks not yet handled end ``given_back`` and wait again in their place.
3. A chunk that still fails is parked (its dead letter acknowledged before the outcome says so),
   or the policy says stop: that chunk and every later one of the batch end ``stop`` / ``skipped``
   and are never stored, so they come back.

Runs on worker threads (or the event loop); touches no consumer: outcomes go back to the poll
thread, which stores offsets.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, cast

from confluent_kafka import Message

from streamproc.backoff import full_jitter_delay
from streamproc.codec import ChunkCodec
from streamproc.consumer.turns import TurnPlanner
from streamproc.deadletter import DeadLetterQueue, error_reason
from streamproc.dispatch import WorkItem
from streamproc.errors import (
    ChunkValidationError,
    DecodeError,
    HandlerError,
    ProduceError,
    StreamprocError,
)
from streamproc.handlers import (
    AnyHandler,
    AsyncBatchHandler,
    AsyncHandler,
    BatchHandler,
    ChunkRecord,
    Handler,
    chunk_record,
    is_async,
    message_context,
)
from streamproc.lanes import Lane
from streamproc.messages import coordinates, headers, timestamp_ms
from streamproc.metrics import ConsumerMetrics
from streamproc.settings import ConsumerSettings

log = logging.getLogger(__name__)

OutcomeKind = Literal["ok", "dead_lettered", "stop", "skipped", "given_back"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one message ended.

    ``ok``: handled; ``dead_lettered``: parked and acknowledged; ``stop``: the error policy (or a
    refused dead letter) says stop here; ``skipped``: after a stop in the same batch, not run;
    ``given_back``: not run, it goes back to wait in its place: its lane was held after the
    batch was taken, or a more urgent chunk arrived while its lower-lane batch ran (the batch
    yields between chunks).
    Only ``ok`` and ``dead_lettered`` count as finished (their offsets may be stored).
    """

    kind: OutcomeKind
    attempts: int = 1
    reason: str = ""
    detail: str = ""

    @property
    def finished(self) -> bool:
        return self.kind in ("ok", "dead_lettered")


OK = Outcome("ok")
SKIPPED = Outcome("skipped")
# The one given-back outcome: the worker pool recognises it by identity.
GIVEN_BACK = Outcome("given_back")


class Retry:
    """Capped exponential backoff for retriable errors: one policy for sync and async calls."""

    def __init__(
        self,
        settings: ConsumerSettings,
        stopping: threading.Event,
        *,
        sleep: Callable[[float], object] = time.sleep,
        sleep_async: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._settings = settings
        self._max_retries = settings.max_retries
        self._first_s = settings.retry_backoff_s
        self._max_s = settings.retry_backoff_max_s
        self._stopping = stopping
        self._sleep = sleep
        self._sleep_async = sleep_async
        # When a retriable failure last scheduled another attempt (monotonic): a handler retrying
        # a sink that is down is alive, unlike one that never returns.
        self.last_attempt = 0.0

    @property
    def most_attempts(self) -> int:
        return self._max_retries + 1

    def delay_after(self, attempt: int, error: BaseException) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to give up now."""
        retriable = isinstance(error, StreamprocError) and error.retriable
        if not retriable or self._stopping.is_set():
            return None
        if attempt > self._max_retries and self._settings.action_for(error) != "retry":
            return None
        self.last_attempt = time.monotonic()
        return full_jitter_delay(attempt, self._first_s, self._max_s)

    def call(self, function: Callable[[], object]) -> int:
        """Call until it succeeds or :meth:`delay_after` gives up; returns the attempts."""
        attempt = 1
        while True:
            try:
                function()
            except StreamprocError as exc:
                delay = self.delay_after(attempt, exc)
                if delay is None:
                    raise
                self._sleep(delay)
                attempt += 1
                continue
            return attempt

    async def call_async(self, function: Callable[[], Awaitable[object]]) -> int:
        """:meth:`call` for a coroutine function (the backoff does not block the loop)."""
        attempt = 1
        while True:
            try:
                await function()
            except StreamprocError as exc:
                delay = self.delay_after(attempt, exc)
                if delay is None:
                    raise
                await self._sleep_async(delay)
                attempt += 1
                continue
            return attempt


def wrap_handler_error(error: BaseException) -> StreamprocError:
    """A handler's own exception as a :class:`HandlerError` (permanent), keeping the cause."""
    if isinstance(error, StreamprocError):
        return error
    wrapped = HandlerError(f"{type(error).__name__}: {error}")
    wrapped.__cause__ = error
    return wrapped


class Pipeline:
    """Decode, handle and park one batch; see the module docstring for the steps.

    Args:
        settings: Retry and error policy.
        lanes: The lanes by rank.
        codec: Avro codec.
        handler: Any handler shape (sync or async, per chunk or per batch).
        dead_letters: Where failures are parked.
        metrics: Handler duration and retries are recorded here.
        planner: Told how long each batch took (sizes the next lower-lane turns).
        stopping: Set on shutdown: retries give up at once.
        held: True when the lane of this rank is held by the flow policy now: a batch decoded
            meanwhile is given back instead of handed to the handler.
        busy: Batches running now (this one included): a batch's CPU share is measured against
            the GIL it shares with them.
        urgent: True when a chunk of a lane more urgent than this rank waits for a slot now: a
            lower-lane batch yields to it between chunks (the rest is given back).
        loop_cpu: CPU seconds the poll loop's thread has used so far: what it used during a
            batch, it held the GIL the batch waited for, so that time is not the handler's.
    """

    def __init__(
        self,
        settings: ConsumerSettings,
        lanes: Sequence[Lane],
        codec: ChunkCodec,
        handler: AnyHandler,
        dead_letters: DeadLetterQueue,
        metrics: ConsumerMetrics,
        planner: TurnPlanner,
        stopping: threading.Event,
        held: Callable[[int], bool] = lambda rank: False,
        busy: Callable[[], int] = lambda: 1,
        urgent: Callable[[int], bool] = lambda rank: False,
        loop_cpu: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._settings = settings
        self._held = held
        self._urgent = urgent
        self._busy = busy
        self._loop_cpu = loop_cpu
        self._lanes = lanes
        self._codec = codec
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._planner = planner
        self._retry = Retry(settings, stopping)
        self._stopping = stopping
        self._park_lock = threading.Lock()
        self.is_async = is_async(handler)
        self._batch_handler = isinstance(handler, BatchHandler)
        self._handler = handler

    @property
    def last_retry(self) -> float:
        """When a retriable failure last scheduled another attempt (monotonic; 0 if never)."""
        return self._retry.last_attempt

    # -- sync -----------------------------------------------------------------------------------

    def run(self, items: list[WorkItem[Message]]) -> list[Outcome]:
        """Handle a batch on a worker thread; one outcome per item, in order."""
        started = time.perf_counter()
        cpu_started = time.thread_time()
        busy_at_start = self._busy()
        loop_cpu_at_start = self._loop_cpu()
        lane = self._lanes[items[0].lane_rank]
        if self._batch_handler:
            outcomes = self._run_as_batch(lane, items)
        else:
            outcomes = self._run_each(lane, items)
        cpu_s = time.thread_time() - cpu_started
        # The time the loop held the GIL is not the handler's: without it, a handler computing
        # all the time would look a tenth idle.
        seconds = time.perf_counter() - started
        handling_s = max(cpu_s, seconds - (self._loop_cpu() - loop_cpu_at_start))
        self._planner.record(
            items[0].lane_rank,
            _ran(outcomes),
            seconds,
            cpu_s,
            beside=(busy_at_start + self._busy()) / 2,
            handling_seconds=handling_s,
        )
        return outcomes

    def _run_each(self, lane: Lane, items: list[WorkItem[Message]]) -> list[Outcome]:
        """A per-chunk handler: decode and handle one chunk at a time, yielding between chunks
        (a chunk given back is not decoded yet)."""
        handler = cast(Handler, self._handler)
        outcomes: list[Outcome] = []
        yield_now = self._yield_point(items)
        for index, item in enumerate(items):
            if yield_now is not None and yield_now():
                outcomes += [GIVEN_BACK] * (len(items) - index)
                break
            try:
                record = self.decode(lane, item)
            except (DecodeError, ChunkValidationError) as exc:
                outcome = self._settle(lane, item.payload, exc, exc, attempts=1)
            else:
                outcome = self._one(lane, item, functools.partial(handler, record))
            outcomes.append(outcome)
            if outcome.kind == "stop" or outcome is SKIPPED:
                outcomes += [SKIPPED] * (len(items) - index - 1)
                break
        return outcomes

    def _run_as_batch(self, lane: Lane, items: list[WorkItem[Message]]) -> list[Outcome]:
        """A batch handler: every decoded chunk at once; one by one if the batch still fails."""
        outcomes, records = self._decode_all(lane, items)
        if records and self._give_back_if_held(lane, outcomes, records):
            return [outcome or SKIPPED for outcome in outcomes]
        if records:
            settled = self._settled_as_batch(lane, [r for _, r in records])
            if settled is None:
                pass  # interrupted by shutdown: every chunk left for redelivery
            elif settled and len(records) == len(items):
                return [OK] * len(items)  # the usual batch: every chunk decoded and handled
            elif settled:
                for index, _ in records:
                    outcomes[index] = OK
            else:
                batch = cast(BatchHandler, self._handler).handle_batch
                for index, record in records:
                    if outcomes[index] is not None:
                        continue  # skipped after a stop
                    outcome = self._one(lane, items[index], functools.partial(batch, (record,)))
                    outcomes[index] = outcome
                    if outcome.kind == "stop" or outcome is SKIPPED:
                        _skip_rest(outcomes, index)
                        break
        return [outcome or SKIPPED for outcome in outcomes]

    def _settled_as_batch(self, lane: Lane, records: list[ChunkRecord]) -> bool | None:
        """Hand ``records`` to the batch handler at once, with retries; False (after logging)
        when it still failed: then they go one by one. None when shutdown cut its retries
        short: none of them is handled (see :meth:`_interrupted`)."""
        handle_batch = cast(BatchHandler, self._handler).handle_batch
        started = time.perf_counter()
        try:
            self._retry.call(lambda: handle_batch(records))
        except Exception as exc:  # noqa: BLE001  # any handler failure: isolate the culprit(s)
            if self._interrupted(exc):
                log.info("a %s batch left for redelivery: shutdown during retries", lane.name)
                return None
            log.warning("a %s batch failed; handling its chunks one by one", lane.name)
            return False
        finally:
            self._metrics.lanes[lane.name].handler_duration.observe(time.perf_counter() - started)
        return True

    def _one(self, lane: Lane, item: WorkItem[Message], call: Callable[[], object]) -> Outcome:
        started = time.perf_counter()
        try:
            attempts = self._retry.call(call)
        except Exception as exc:  # noqa: BLE001  # handler code is the user's: anything goes
            return self._failed(lane, item, exc)
        finally:
            self._metrics.lanes[lane.name].handler_duration.observe(time.perf_counter() - started)
        return OK if attempts == 1 else Outcome("ok", attempts)

    # -- async ----------------------------------------------------------------------------------

    async def run_async(self, items: list[WorkItem[Message]]) -> list[Outcome]:
        """Handle a batch on the event loop; parking (it blocks) runs on a thread."""
        started = time.perf_counter()
        lane = self._lanes[items[0].lane_rank]
        loop = asyncio.get_running_loop()
        outcomes, records = await loop.run_in_executor(None, self._decode_all, lane, items)
        if records and self._give_back_if_held(lane, outcomes, records):
            return [outcome or SKIPPED for outcome in outcomes]
        if records:
            done_as_batch = False
            if self._batch_handler:
                handle_batch = cast(AsyncBatchHandler, self._handler).handle_batch
                batch = [r for _, r in records]
                begun = time.perf_counter()
                try:
                    await self._retry.call_async(lambda: handle_batch(batch))
                    done_as_batch = True
                except Exception as exc:  # noqa: BLE001  # isolate the culprit(s) one by one
                    if self._interrupted(exc):
                        log.info(
                            "a %s batch left for redelivery: shutdown during retries", lane.name
                        )
                        return [outcome or SKIPPED for outcome in outcomes]
                    log.warning("a %s batch failed; handling its chunks one by one", lane.name)
                finally:
                    self._metrics.lanes[lane.name].handler_duration.observe(
                        time.perf_counter() - begun
                    )
            if done_as_batch:
                for index, _ in records:
                    outcomes[index] = OK
            else:
                yield_now = self._yield_point(items)
                for position, (index, record) in enumerate(records):
                    if outcomes[index] is not None:
                        continue
                    if yield_now is not None and yield_now():
                        _give_back(outcomes, records[position:])
                        break
                    outcome = await self._one_async(lane, items[index], record)
                    outcomes[index] = outcome
                    if outcome.kind == "stop" or outcome is SKIPPED:
                        _skip_rest(outcomes, index)
                        break
        self._planner.record(
            items[0].lane_rank,
            _ran(outcomes),
            time.perf_counter() - started,
        )
        return [outcome or SKIPPED for outcome in outcomes]

    async def _one_async(self, lane: Lane, item: WorkItem[Message], record: ChunkRecord) -> Outcome:
        if self._batch_handler:
            batch = cast(AsyncBatchHandler, self._handler).handle_batch

            def call() -> Awaitable[None]:
                return batch((record,))
        else:
            single = cast(AsyncHandler, self._handler)

            def call() -> Awaitable[None]:
                return single(record)

        started = time.perf_counter()
        try:
            attempts = await self._retry.call_async(call)
        except Exception as exc:  # noqa: BLE001  # handler code is the user's: anything goes
            failure: Exception = exc
            return await asyncio.get_running_loop().run_in_executor(
                None, lambda: self._failed(lane, item, failure)
            )
        finally:
            self._metrics.lanes[lane.name].handler_duration.observe(time.perf_counter() - started)
        return OK if attempts == 1 else Outcome("ok", attempts)

    # -- shared steps ---------------------------------------------------------------------------

    def _give_back_if_held(
        self,
        lane: Lane,
        outcomes: list[Outcome | None],
        records: list[tuple[int, ChunkRecord]],
    ) -> bool:
        """Nothing of a held lane reaches the handler: give the decoded chunks back."""
        if lane.rank == 0 or not self._held(lane.rank):
            return False
        for index, _ in records:
            outcomes[index] = GIVEN_BACK
        return True

    def _yield_point(self, items: list[WorkItem[Message]]) -> Callable[[], bool] | None:
        """When a lower lane's batch stops between chunks and gives the rest back: the flow
        policy holds its lane now, or a more urgent chunk waits for a slot (unless a starvation
        guard started the batch: see ``WorkItem.yields``). None for the top lane."""
        rank, urgent, held = items[0].lane_rank, self._urgent, self._held
        if rank == 0:
            return None
        if items[0].yields:
            return lambda: held(rank) or urgent(rank)
        return lambda: held(rank)

    def _decode_all(
        self, lane: Lane, items: list[WorkItem[Message]]
    ) -> tuple[list[Outcome | None], list[tuple[int, ChunkRecord]]]:
        """Decode a batch: the records to handle (with their index) and the outcomes so far
        (parked or stopped messages; None for the ones still to handle)."""
        outcomes: list[Outcome | None] = [None] * len(items)
        records: list[tuple[int, ChunkRecord]] = []
        for index, item in enumerate(items):
            try:
                records.append((index, self.decode(lane, item)))
            except (DecodeError, ChunkValidationError) as exc:
                outcome = self._settle(lane, item.payload, exc, exc, attempts=1)
                outcomes[index] = outcome
                if outcome.kind == "stop":
                    # The records before it are still handled; nothing after it is.
                    _skip_rest(outcomes, index)
                    break
        return outcomes, records

    def decode(self, lane: Lane, item: WorkItem[Message]) -> ChunkRecord:
        message = item.payload
        value = message.value()
        if value is None:
            raise DecodeError("message has no value (tombstone)", raw=None)
        chunk = self._codec.decode(value)
        context = message_context(
            lane.name,
            lane.rank,
            item.topic,
            item.partition,
            item.offset,
            timestamp_ms(message),
            item.key,
            tuple(headers(message)) if message.headers() else (),
        )
        return chunk_record(chunk, context)

    def _interrupted(self, exc: BaseException) -> bool:
        """A retriable failure cut short by shutdown: neither handled nor parked. Its offset is
        not stored, so it comes back after the restart instead of going to the dead-letter
        topic healthy (a sink that is down while the consumer stops)."""
        return self._stopping.is_set() and wrap_handler_error(exc).retriable

    def _failed(self, lane: Lane, item: WorkItem[Message], exc: BaseException) -> Outcome:
        error = wrap_handler_error(exc)
        if self._interrupted(error):
            log.info(
                "%s[%d]@%d left for redelivery: shutdown during retries (%s)",
                item.topic, item.partition, item.offset, exc,
            )  # fmt: skip
            return SKIPPED
        attempts = self._retry.most_attempts if error.retriable else 1
        return self._settle(lane, item.payload, exc, error, attempts=attempts)

    def _settle(
        self,
        lane: Lane,
        message: Message,
        exc: BaseException,
        error: BaseException,
        *,
        attempts: int,
    ) -> Outcome:
        """Park ``message`` (waiting for the ack), or say stop if the policy or the DLQ says so."""
        topic, partition, offset = coordinates(message)
        if self._settings.action_for(error) == "stop":
            reason = getattr(error, "reason", "handler_error")
            return Outcome("stop", detail=f"{reason} at {topic}[{partition}]@{offset}: {exc}")
        reason = error_reason(exc)
        log.warning("dead-lettering %s[%d]@%d (%s): %s", topic, partition, offset, reason, exc)
        try:
            with self._park_lock:  # one park at a time: each waits for its own acknowledgement
                self._dead_letters.park(message, exc, lane=lane.name, attempts=attempts)
        except ProduceError as produce_error:
            # Not parked, so not handled: its offset must not be stored, nor any after it.
            return Outcome(
                "stop", detail=f"dead letter of {topic}[{partition}]@{offset}: {produce_error}"
            )
        return Outcome("dead_lettered", attempts, reason=reason)


def _ran(outcomes: Sequence[Outcome | None]) -> int:
    """How many of a batch's chunks ran (were not given back). By identity: ``list.count`` would
    call the dataclass ``__eq__`` for every outcome of every batch."""
    return sum(1 for outcome in outcomes if outcome is not GIVEN_BACK)


def _give_back(outcomes: list[Outcome | None], records: list[tuple[int, ChunkRecord]]) -> None:
    for index, _ in records:
        if outcomes[index] is None:
            outcomes[index] = GIVEN_BACK


def _skip_rest(outcomes: list[Outcome | None], index: int) -> None:
    for later in range(index + 1, len(outcomes)):
        outcomes[later] = SKIPPED
