"""PriorityConsumer: one consumer group over every lane, lower lanes paused while higher ones lag.

The poll loop, in order, every tick:

1. ``consume()`` a batch (rebalance callbacks run inside this call, between batches).
2. Split the batch by lane and handle the lanes from most to least urgent. Before each lower lane,
   re-measure lag and re-run the flow policy: if that lane has just been paused, its messages in
   this batch are not handled; their partitions are rewound (``seek``) to the first of them, so
   they are fetched again after the resume. Nothing is handled from a paused lane.
3. Handle a lane's messages: decode (undecodable or invalid messages are parked in the DLQ),
   call the handler (retriable errors retried with backoff; permanent ones parked or stop, by
   policy), then store the next offset of each partition. Offsets are stored only after the
   message was handled or its dead letter was acknowledged; librdkafka's auto-commit commits
   stored offsets on an interval.
4. Measure lag and run the flow policy; pause or resume partitions to match the desired set.

Rebalances (cooperative-sticky by default; eager assignors supported):

* assign: ``incremental_assign`` (or ``assign``) first, then pause the new partitions of lanes the
  policy holds paused: the desired paused set is ours, re-applied after every assignment.
* revoke: (the batch is already finished) commit stored offsets synchronously, then unassign and
  drop the partitions from the paused set.
* lost: drop without committing (another member may already own them).

Long batches keep the membership (concurrency 1). Steps 2-3 run on a batch thread while the poll
thread waits for them. A batch still running after ``min(1 s, max.poll.interval.ms / 10)`` turns
into a hold: every assigned partition is paused (a third pause bookkeeping, united with the
others), and the poll thread keeps calling ``consume()`` (which returns nothing) so librdkafka's
``max.poll.interval.ms`` never runs out and rebalance callbacks are served on time. When the batch
ends, the pauses go back to what flow control wants; fetching resumes where the batch ended. A
revoke during a hold first waits for the batch (up to ``revoke_timeout_s``), so its offsets are
stored and committed before the partitions go; what the batch does afterwards for partitions no
longer assigned is neither stored nor counted (their next owner redoes it). Only the poll thread
calls the consumer: the batch thread stages the offsets to store. What both threads change
(positions, staged offsets, the assignment seen by rebalance callbacks) changes under one lock.

Shutdown on SIGTERM/SIGINT: stop polling, finish the batch in hand, flush dead letters, commit
synchronously, close the consumer (leaving the group), return 0. A second signal exits at once.

Concurrent handling (``concurrency`` > 1, or an ``async def`` handler). The poll thread only
polls, decides and stores; handlers run on a thread pool (sync) or one event loop (async), so a
handler slower than ``max.poll.interval.ms`` never costs the group membership. Every tick:

1. Collect finished chunks: mark them in the per-partition
   :class:`~streamproc.offsets.OffsetTracker` and store the end of each partition's contiguous
   finished run (never the maximum).
2. Backpressure: a lane holding ``in_flight_limit`` chunks taken and unfinished has its
   partitions paused until it is back at half. This pause is bookkeeping of its own: the
   partitions actually paused are the priority-paused ones united with the backpressure-paused
   ones, applied as a diff, so neither pause undoes the other.
3. ``consume()`` whatever librdkafka has ready (its prefetch queue is one FIFO for all
   partitions: a realtime message gets its priority only once taken); each message becomes a
   work item of the :class:`~streamproc.dispatch.Dispatcher` (realtime first, FIFO per lane,
   per-key order). Items of a lane the flow policy pauses wait; workers start the next item as
   they finish one. The poll goes on whatever the workers do, so a handler slower than
   ``max.poll.interval.ms`` costs no rebalance.
4. Flow control as above.

Revoke: finish the revoked partitions' taken chunks (waiting and running, so the finished run
stays contiguous) for up to ``revoke_timeout_s``, drop what is left, store what finished, commit
synchronously, unassign; results arriving later are ignored (their partition's epoch moved on).
Lost: drop and ignore, commit nothing. Shutdown: take nothing more, finish every taken chunk for
up to ``drain_timeout_s``, store, then flush, commit and close as above. A stop by the error
policy starts nothing more, waits for the running chunks, stores what is contiguous, stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Literal

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from streamproc.codec import ChunkCodec
from streamproc.deadletter import DeadLetterQueue, error_reason
from streamproc.dispatch import Dispatcher, WorkItem
from streamproc.errors import (
    ChunkValidationError,
    DecodeError,
    HandlerError,
    ProduceError,
    SchemaRegistryUnavailableError,
    StreamprocError,
)
from streamproc.flow import FlowController, FlowDecision
from streamproc.handlers import (
    AnyHandler,
    BatchHandler,
    ChunkRecord,
    MessageContext,
    as_async_single,
    as_single,
    is_async,
)
from streamproc.lag import (
    PAUSED_METADATA,
    RUNNING_METADATA,
    LagMonitor,
    LagSnapshot,
    TopicPartitionKey,
)
from streamproc.lanes import Lane
from streamproc.messages import coordinates, headers, timestamp_ms
from streamproc.metrics import ConsumerMetrics
from streamproc.offsets import OffsetTracker
from streamproc.registry import RegistrySchemaIds, registry_codec
from streamproc.settings import ConsumerSettings
from streamproc.workers import WorkerPool

log = logging.getLogger(__name__)

LATENCY_WINDOW = 4096
# Poll wait while a lane is paused for backpressure, so the resume follows the drain closely.
BACKPRESSURE_TICK_S = 0.01
# A batch running longer than this (or a tenth of max.poll.interval.ms) turns into a hold.
HOLD_AFTER_S = 1.0
# Poll wait during a hold: how soon the end of the batch is noticed.
HOLD_POLL_S = 0.05


class StopConsumer(StreamprocError):
    """Raised inside the loop when the error policy says stop: nothing past the failure commits."""

    reason = "stopped"


@dataclass(slots=True)
class LaneStats:
    """Running figures of one lane (for the live view and tests)."""

    handled: int = 0
    dead_lettered: int = 0
    retried: int = 0
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))


@dataclass(frozen=True, slots=True)
class WorkOutcome:
    """How one chunk ended on a worker: handled, dead-lettered, or the policy says stop."""

    kind: Literal["ok", "dead_lettered", "stop"]
    attempts: int = 1
    reason: str = ""
    detail: str = ""


@dataclass(slots=True)
class ConsumerStats:
    lanes: dict[str, LaneStats]
    rebalances: int = 0
    last_snapshot: LagSnapshot | None = None
    last_decision: FlowDecision | None = None


class PriorityConsumer:
    """Consume every lane in one group, pausing lower lanes while a higher lane lags.

    Args:
        settings: Connection, group, flow policy and error policy.
        handler: A per-chunk callable or a :class:`~streamproc.handlers.BatchHandler`.
        codec: Avro codec (built from the bundled schemas if omitted).
        metrics: Where to record metrics (a private registry if omitted).
    """

    def __init__(
        self,
        settings: ConsumerSettings,
        handler: AnyHandler,
        *,
        codec: ChunkCodec | None = None,
        metrics: ConsumerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.lanes = settings.topology
        self._schema_ids: RegistrySchemaIds | None = None
        if codec is None:
            codec, self._schema_ids = registry_codec(settings.schema_registry(), self.lanes.topics)
        self.codec = codec
        self.metrics = metrics or ConsumerMetrics(lane.name for lane in self.lanes)
        self.metrics.describe(consumer_group=settings.group_id, topic_prefix=settings.topic_prefix)
        self.stats = ConsumerStats({lane.name: LaneStats() for lane in self.lanes})
        # A batch handler gets whole batches (one call per lane per poll); a per-chunk handler
        # is called chunk by chunk, so a failure never re-runs chunks that already succeeded.
        self._handle_batch = handler.handle_batch if isinstance(handler, BatchHandler) else None
        self._handle_one = as_single(handler)
        self._async = is_async(handler)
        self._handle_one_async = as_async_single(handler) if self._async else None
        self._lane_of_topic: dict[str, Lane] = {lane.topic: lane for lane in self.lanes}
        self._flow = FlowController([lane.name for lane in self.lanes], settings.flow_settings())
        self._stop = threading.Event()
        self._signals = 0
        # Partitions actually paused = priority-paused | backpressure-paused (two bookkeepings).
        self._paused: set[TopicPartitionKey] = set()
        self._priority_paused: set[TopicPartitionKey] = set()
        self._backpressure_lanes: set[str] = set()
        self._paused_lanes: frozenset[str] = frozenset()
        self._last_tick = time.monotonic()
        self._last_flow_tick = time.monotonic()
        self._broker_down_since: float | None = None
        self._last_broker_probe = 0.0
        self._closed = False
        self._parked_in_batch = 0
        self._offsets: OffsetTracker[TopicPartitionKey] = OffsetTracker()
        self._epochs: dict[TopicPartitionKey, int] = {}
        self._stop_reason: str | None = None
        self._last_finish = time.monotonic()
        self._dlq_lock = threading.Lock()
        # Positions and staged offsets: changed by the batch thread and, during a hold, by
        # rebalance callbacks on the poll thread.
        self._state_lock = threading.RLock()
        self._batch_runner: futures.ThreadPoolExecutor | None = None
        self._batch: futures.Future[None] | None = None
        self._batch_started: float | None = None
        self._holding = False
        # Partitions were revoked or lost while the batch in hand ran (only possible in a hold).
        self._revoked_in_batch = False
        # Next offsets handled on the batch thread, stored by the poll thread.
        self._staged: dict[TopicPartitionKey, int] = {}
        self._hold_after_s = min(HOLD_AFTER_S, settings.max_poll_interval_ms / 10_000)
        self._pool: WorkerPool[Message, WorkOutcome] | None = None
        if settings.concurrency > 1 or self._async:
            dispatcher: Dispatcher[Message] = Dispatcher(
                len(self.lanes.all),
                concurrency=settings.concurrency,
                ordering=settings.ordering,
                reserved=settings.reserved_workers,
            )
            self._pool = WorkerPool(
                dispatcher,
                run_sync=None if self._async else self._work,
                run_async=self._work_async if self._async else None,
                on_start=self._on_work_start,
            )
        else:
            self._batch_runner = futures.ThreadPoolExecutor(
                1, thread_name_prefix="streamproc-batch"
            )

        self._consumer = Consumer(settings.to_librdkafka(self._on_error, self._on_commit))
        self._admin = AdminClient(settings.admin_config())
        self._dlq = DeadLetterQueue(
            settings.dead_letter_producer_config(), flush_timeout_s=settings.dlq_flush_timeout_s
        )
        self._lag = LagMonitor(
            self._consumer,
            self._admin,
            self.lanes,
            group_id=settings.group_id,
            scope=settings.scope,
            watermark_refresh_s=settings.watermark_refresh_s,
            group_refresh_s=settings.group_refresh_s,
            group_lag_slack=settings.group_lag_slack,
            offset_reset=settings.auto_offset_reset,
        )
        # Evaluated at scrape time, so it always agrees with /readyz.
        self.metrics.ready.set_function(lambda: 1.0 if self.ready()[0] else 0.0)

    # -- public surface -------------------------------------------------------------------

    @property
    def paused_lanes(self) -> frozenset[str]:
        """Lanes the policy currently holds paused."""
        return self._paused_lanes

    @property
    def paused_partitions(self) -> frozenset[TopicPartitionKey]:
        """Partitions the flow policy holds paused (backpressure pauses are not counted)."""
        return frozenset(self._priority_paused)

    @property
    def concurrent(self) -> bool:
        """Handlers run off the poll thread (concurrency > 1 or an async handler)."""
        return self._pool is not None

    @property
    def assignment(self) -> tuple[TopicPartitionKey, ...]:
        return self._lag.assignment

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand and shut down cleanly (thread-safe)."""
        self._stop.set()

    def healthy(self) -> tuple[bool, str]:
        """The poll loop ticked recently (within a few poll intervals plus handling time) and,
        with concurrent handling, workers with chunks in hand finished one recently."""
        now = time.monotonic()
        age = now - self._last_tick
        limit = self.settings.health_max_tick_age_s
        if age > limit:
            return False, f"poll loop stalled for {age:.1f}s (limit {limit:.0f}s)"
        if (started := self._batch_started) is not None and now - started > limit:
            return False, f"batch running for {now - started:.1f}s (limit {limit:.0f}s)"
        if self._pool is not None and (running := self._pool.running()):
            idle = now - self._last_finish
            if idle > limit:
                return False, (
                    f"{running} chunks running, none finished for {idle:.1f}s (limit {limit:.0f}s)"
                )
        return True, f"last tick {age:.2f}s ago"

    def ready(self) -> tuple[bool, str]:
        """Assigned at least one partition and the broker reachable."""
        down_since = self._broker_down_since
        if down_since is not None and self._lag.last_broker_answer < down_since:
            return False, "broker unreachable"
        if not self._lag.assignment:
            return False, "no partitions assigned"
        return True, f"{len(self._lag.assignment)} partitions assigned"

    def run(self, *, install_signal_handlers: bool = True) -> int:
        """Run the loop until :meth:`stop` or a signal; return the process exit code.

        Returns:
            0 after a clean shutdown, 1 when the error policy stopped the consumer.
        """
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self._consumer.subscribe(
            list(self.lanes.topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        exit_code = 0
        try:
            while not self._stop.is_set():
                self.tick()
        except StopConsumer as exc:
            log.error("stopping on error policy: %s", exc)
            exit_code = 1
        except SchemaRegistryUnavailableError as exc:
            # Nothing is wrong with the message: stop without storing it, to be restarted.
            log.error("stopping, schema registry unavailable: %s", exc)
            exit_code = 1
        finally:
            self.close(commit=True)
        return exit_code

    def tick(self) -> None:
        """One turn of the loop: poll a batch, handle it by lane priority, apply flow control."""
        if self._pool is not None:
            self._tick_concurrent(self._pool)
            return
        messages = self._poll(self.settings.poll_timeout_s)
        if messages:
            self._batch_started = time.monotonic()
            self._revoked_in_batch = False
            try:
                self._handle(messages)
            finally:
                self._batch_started = None
        self._apply_flow()
        self._probe_broker()

    def _run_keeping_membership(self, lane: Lane, messages: list[Message]) -> None:
        """Handle one lane's messages on the batch thread; hold the partitions if it runs long.

        Only this (poll) thread calls the consumer: the batch thread stages the offsets to
        store, applied here once it is done. Re-raises whatever the batch raised (a stop by the
        error policy, a registry outage), after storing what it finished.
        """
        runner = self._batch_runner
        assert runner is not None  # noqa: S101  # set whenever handling is not concurrent
        batch = runner.submit(self._handle_lane, lane, messages)
        self._batch = batch
        try:
            futures.wait([batch], timeout=self._hold_after_s)
            if not batch.done():
                self._hold(batch)
        finally:
            if not batch.done():  # the hold failed (a fatal consumer error): let the batch end
                futures.wait([batch], timeout=self.settings.drain_timeout_s)
            self._batch = None
            self._store_staged()
        batch.result()

    def _hold(self, batch: futures.Future[None]) -> None:
        """Pause every assigned partition and poll on until ``batch`` ends, then release.

        ``consume()`` resets librdkafka's ``max.poll.interval.ms`` clock and serves rebalance
        callbacks; with everything paused it returns nothing (a stray message, fetched before
        the pause took effect, is given back by a seek).
        """
        log.info(
            "batch running for over %.1fs: partitions paused, polling on to keep the membership",
            self._hold_after_s,
        )
        self._holding = True
        self._sync_paused()
        try:
            while not batch.done():
                stray = self._poll(HOLD_POLL_S)
                if stray:
                    self._give_back(stray)
                self._probe_broker()
        finally:
            self._holding = False
            self._sync_paused()
        log.info(
            "batch done after %.1fs: hold released", time.monotonic() - (self._batch_started or 0)
        )

    def _give_back(self, messages: list[Message]) -> None:
        """Seek back to messages taken during a hold: they are fetched again after it."""
        taken = []
        for message in messages:
            error = message.error()
            if error is not None:
                self._on_consume_error(error)
            elif message.topic() in self._lane_of_topic:
                taken.append(message)
        if taken:
            self._rewind(taken)

    def _poll(self, timeout_s: float) -> list[Message]:
        """Take up to ``max_batch_messages``, waiting up to ``timeout_s`` for the first one."""
        # consume(n, timeout) waits for n messages or the timeout: at a trickle that would add up
        # to a whole timeout of latency. Wait for the first message only, then take what is ready.
        messages = self._consumer.consume(1, timeout_s)
        if messages and self.settings.max_batch_messages > 1:
            messages += self._consumer.consume(self.settings.max_batch_messages - 1, 0)
        self._last_tick = time.monotonic()
        self.metrics.last_poll.set_to_current_time()
        if messages:
            self._broker_down_since = None
        return messages

    def _probe_broker(self) -> None:
        """While the broker is believed down, ask it for metadata, at most once a second.

        An idle consumer gets no message or commit to prove the broker back, and the admin
        client's cached partition leaders can stay stale after a broker restart, so readiness
        would never recover without an answer of its own.
        """
        now = time.monotonic()
        if self._broker_down_since is None or now - self._last_broker_probe < 1.0:
            return
        self._last_broker_probe = now
        try:
            self._consumer.list_topics(self.lanes.top.topic, timeout=0.5)
        except KafkaException:
            return
        self._broker_down_since = None

    def close(self, *, commit: bool = True) -> None:
        """Flush dead letters, commit stored offsets synchronously, leave the group."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._pool is not None:
                self._drain(self._pool)
            self._dlq.close()
            if commit:
                self._commit_sync()
        finally:
            self._consumer.close()
            if self._batch_runner is not None:
                self._batch_runner.shutdown(wait=False)
            if self._schema_ids is not None:
                self._schema_ids.close()

    # -- handling -----------------------------------------------------------------------------

    def _handle(self, messages: list[Message]) -> None:
        by_rank: dict[int, list[Message]] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                self._on_consume_error(error)
                continue
            lane = self._lane_of_topic.get(coordinates(message)[0])
            if lane is not None:
                by_rank.setdefault(lane.rank, []).append(message)
        for rank in sorted(by_rank):
            lane = self.lanes.all[rank]
            if rank > 0:
                # Realtime work just done may have shown a backlog: decide before taking bulk.
                self._apply_flow()
            if lane.name in self._paused_lanes:
                self._rewind(by_rank[rank])
                continue
            self._run_keeping_membership(lane, by_rank[rank])

    def _rewind(self, messages: list[Message]) -> None:
        """Seek each partition back to its first unhandled message in ``messages``."""
        first: dict[TopicPartitionKey, int] = {}
        for message in messages:
            topic, partition, offset = coordinates(message)
            first.setdefault((topic, partition), offset)
        for (topic, partition), offset in first.items():
            if self._lag.owns(topic, partition):  # a revoke during a hold may have taken it
                self._seek(topic, partition, offset)

    def _seek(self, topic: str, partition: int, offset: int) -> None:
        try:
            self._consumer.seek(TopicPartition(topic, partition, offset))
        except KafkaException as exc:
            # Without the seek the rest of the batch would be skipped: refuse to go on.
            raise StopConsumer(f"cannot rewind {topic}[{partition}] to {offset}: {exc}") from exc
        self._lag.rewound(topic, partition, offset)

    def _handle_lane(self, lane: Lane, messages: list[Message]) -> None:
        """Decode, hand to the handler, park failures, store offsets — in that order."""
        lane_metrics = self.metrics.lanes[lane.name]
        stats = self.stats.lanes[lane.name]
        records: list[ChunkRecord] = []
        done: list[Message] = []
        if self._revoked_in_batch:
            messages = self._still_owned(messages)
        lane_metrics.in_flight.set(len(messages))
        try:
            for message in messages:
                try:
                    record = self._decode(lane, message)
                except (DecodeError, ChunkValidationError) as exc:
                    self._policy_or_stop(exc, message, lane, records, done)
                    self._park(message, exc, lane)
                    done.append(message)
                    continue
                records.append(record)
                done.append(message)
            self._run_handler(lane, records, messages_done=done)
        finally:
            lane_metrics.in_flight.set(0)
        self._finish(lane, done, stats)

    def _still_owned(self, messages: list[Message]) -> list[Message]:
        """The messages of partitions still assigned (a revoke during a hold takes some away:
        their next owner handles them; nothing of theirs is counted or stored here)."""
        return [m for m in messages if self._lag.owns(*coordinates(m)[:2])]

    def _policy_or_stop(
        self,
        error: StreamprocError,
        message: Message,
        lane: Lane,
        records: list[ChunkRecord],
        done: list[Message],
    ) -> None:
        """When the policy for ``error`` is stop: finish what came before, then stop."""
        if self.settings.action_for(error) != "stop":
            return
        self._run_handler(lane, records, messages_done=done)
        self._finish(lane, done, self.stats.lanes[lane.name])
        topic, partition, offset = coordinates(message)
        raise StopConsumer(f"{error.reason} at {topic}[{partition}]@{offset}: {error}")

    def _decode(self, lane: Lane, message: Message) -> ChunkRecord:
        value = message.value()
        if value is None:
            raise DecodeError("message has no value (tombstone)", raw=None)
        chunk = self.codec.decode(value)
        topic, partition, offset = coordinates(message)
        key = message.key()
        context = MessageContext(
            lane=lane.name,
            lane_rank=lane.rank,
            topic=topic,
            partition=partition,
            offset=offset,
            timestamp_ms=timestamp_ms(message),
            key=key.encode() if isinstance(key, str) else key,
            headers=tuple(headers(message)),
        )
        return ChunkRecord(chunk, context)

    def _run_handler(
        self, lane: Lane, records: list[ChunkRecord], *, messages_done: list[Message]
    ) -> None:
        """Hand ``records`` to the handler.

        A batch handler gets them as one batch (retried as a whole on retriable errors); if the
        batch still fails, the chunks are handed over one by one so the bad one is isolated and
        parked while the others go through. A per-chunk handler gets them one by one from the
        start.
        """
        if not records:
            return
        lane_metrics = self.metrics.lanes[lane.name]
        if self._handle_batch is not None:
            started = time.perf_counter()
            try:
                self._with_retries(self._handle_batch, records)
            except Exception:  # noqa: BLE001  # any handler failure: isolate the culprit(s) below
                log.warning("batch of %d failed; handling its chunks one by one", len(records))
            else:
                records.clear()
                return
            finally:
                lane_metrics.handler_duration.observe(time.perf_counter() - started)
        self._run_one_by_one(lane, records, messages_done)
        records.clear()

    def _run_one_by_one(
        self, lane: Lane, records: list[ChunkRecord], messages_done: list[Message]
    ) -> None:
        message_of = {coordinates(m): m for m in messages_done}
        handler_duration = self.metrics.lanes[lane.name].handler_duration
        for record in records:
            ctx = record.context
            if self._revoked_in_batch and not self._lag.owns(ctx.topic, ctx.partition):
                continue  # revoked while the batch ran: its next owner handles it
            started = time.perf_counter()
            try:
                attempts = self._with_retries(self._handle_one, record)
            except Exception as exc:  # handler code is the user's: anything goes
                error = exc if isinstance(exc, StreamprocError) else _wrap_handler_error(exc)
                message = message_of[(ctx.topic, ctx.partition, ctx.offset)]
                if self.settings.action_for(error) == "stop":
                    # Everything before it (in arrival order) is handled or parked: store that.
                    self._store(messages_done[: messages_done.index(message)])
                    raise StopConsumer(
                        f"handler failed at {ctx.topic}[{ctx.partition}]@{ctx.offset}: {exc}"
                    ) from exc
                attempts = self.settings.max_retries + 1 if error.retriable else 1
                self._park(message, exc, lane, attempts=attempts)
                continue
            finally:
                handler_duration.observe(time.perf_counter() - started)
            if attempts > 1:
                self.stats.lanes[lane.name].retried += 1
                self.metrics.lanes[lane.name].handled_retried.inc()

    def _with_retries(self, call: Callable[[Any], None], argument: Any) -> int:
        """Call ``call(argument)``, retrying retriable errors with capped exponential backoff.

        Returns:
            How many attempts it took.
        """
        backoff = self.settings.retry_backoff_s
        for attempt in range(1, self.settings.max_retries + 2):
            try:
                call(argument)
            except StreamprocError as exc:
                if not exc.retriable or attempt > self.settings.max_retries or self._stop.is_set():
                    raise
                time.sleep(backoff)
                backoff = min(backoff * 2, self.settings.retry_backoff_max_s)
                continue
            return attempt
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _park(self, message: Message, error: BaseException, lane: Lane, attempts: int = 1) -> None:
        """Dead-letter ``message`` and wait for the acknowledgement (raises if not acknowledged)."""
        reason = error_reason(error)
        topic, partition, offset = coordinates(message)
        log.warning("dead-lettering %s[%d]@%d (%s): %s", topic, partition, offset, reason, error)
        try:
            self._dlq.park(message, error, lane=lane.name, attempts=attempts)
        except ProduceError as exc:
            # Not parked, so not handled: its offset must not be stored, nor any after it.
            raise StopConsumer(f"dead letter of {topic}[{partition}]@{offset}: {exc}") from exc
        self.metrics.dead_letters.labels(lane=lane.name, reason=reason).inc()
        self.metrics.lanes[lane.name].handled_dead_lettered.inc()
        self.stats.lanes[lane.name].dead_lettered += 1
        self._parked_in_batch += 1

    def _finish(self, lane: Lane, done: list[Message], stats: LaneStats) -> None:
        """Record latency for what was handled and store the next offset of each partition."""
        if not done:
            return
        lane_metrics = self.metrics.lanes[lane.name]
        now = time.time()
        with self._state_lock:
            if self._revoked_in_batch:
                done[:] = self._still_owned(done)
            handled = 0
            for message in done:
                produced_ms = timestamp_ms(message)
                latency = max(0.0, now - produced_ms / 1000.0)
                lane_metrics.latency.observe(latency)
                stats.latencies_s.append(latency)
                self._lag.handled(*coordinates(message), produced_ms)
                handled += 1
            stats.handled += handled
            # Dead letters were counted as such when parked; the rest were handled.
            lane_metrics.handled_ok.inc(max(0, handled - self._parked_in_batch))
            self._parked_in_batch = 0
            self._store(done)
        done.clear()

    def _store(self, messages: Sequence[Message]) -> None:
        """Stage next offsets (the highest handled + 1 per partition; messages are in order).

        Runs on the batch thread, which never calls the consumer (a librdkafka call there can
        deadlock with the poll thread's ``consume()`` over the GIL): the poll thread stores
        what is staged (:meth:`_store_staged`) when the batch ends or a revoke comes.
        """
        with self._state_lock:
            for message in messages:
                topic, partition, offset = coordinates(message)
                self._staged[(topic, partition)] = offset + 1

    def _store_staged(self) -> None:
        """Store the staged offsets of the partitions still assigned (poll thread)."""
        with self._state_lock:
            staged, self._staged = self._staged, {}
            offsets = [
                TopicPartition(topic, partition, offset)
                for (topic, partition), offset in staged.items()
                if self._lag.owns(topic, partition)
            ]
        if offsets:
            self._consumer.store_offsets(offsets=offsets)

    # -- concurrent handling (concurrency > 1 or an async handler) ------------------------------

    def _tick_concurrent(self, pool: WorkerPool[Message, WorkOutcome]) -> None:
        """One turn of the concurrent loop: collect, backpressure, poll, enqueue, flow control."""
        self._collect(pool)
        if self._stop_reason is not None:
            self._stop_on_policy(pool)
        self._apply_backpressure(pool)
        # Take whatever librdkafka has ready: its prefetch queue is one FIFO for every
        # partition, so a realtime message behind bulk ones only reaches the dispatcher (and its
        # priority) once the bulk ones ahead of it are taken. Memory stays bounded by pausing a
        # full lane's partitions (backpressure) — and the poll goes on even then: it keeps the
        # group membership alive (max.poll.interval.ms) and runs the rebalance callbacks.
        messages = self._poll(self._poll_wait())
        if messages:
            self._enqueue(pool, messages)
        self._apply_flow()
        self._probe_broker()

    def _poll_wait(self) -> float:
        """How long the poll may wait: short while a backpressure pause waits to be lifted."""
        if self._backpressure_lanes:
            return min(self.settings.poll_timeout_s, BACKPRESSURE_TICK_S)
        return self.settings.poll_timeout_s

    def _apply_backpressure(self, pool: WorkerPool[Message, WorkOutcome]) -> None:
        """Pause a lane's fetching once it holds ``in_flight_limit`` chunks; resume at half.

        The pause is bookkeeping of its own (see :meth:`_sync_paused`).
        """
        limit = self.settings.in_flight_limit
        sizes = pool.sizes()
        lanes = set(self._backpressure_lanes)
        for lane in self.lanes:
            size = sizes[lane.rank]
            self.metrics.lanes[lane.name].in_flight.set(size)
            if size >= limit:
                lanes.add(lane.name)
            elif size <= limit // 2:
                lanes.discard(lane.name)
        if lanes != self._backpressure_lanes:
            for name in lanes - self._backpressure_lanes:
                log.debug("lane %s: %d chunks in flight, fetching paused", name, limit)
            for name in self._backpressure_lanes - lanes:
                log.debug("lane %s: in-flight chunks at half the bound, fetching resumed", name)
            self._backpressure_lanes = lanes
            self._sync_paused()

    def _enqueue(self, pool: WorkerPool[Message, WorkOutcome], messages: list[Message]) -> None:
        now = time.monotonic()
        items: list[WorkItem[Message]] = []
        for message in messages:
            error = message.error()
            if error is not None:
                self._on_consume_error(error)
                continue
            topic, partition, offset = coordinates(message)
            lane = self._lane_of_topic.get(topic)
            if lane is None:
                continue
            key = message.key()
            self._offsets.taken((topic, partition), offset)
            items.append(
                WorkItem(
                    lane.rank,
                    topic,
                    partition,
                    offset,
                    key.encode() if isinstance(key, str) else key,
                    message,
                    taken_at=now,
                    epoch=self._epochs.get((topic, partition), 0),
                )
            )
        if not pool.running():
            self._last_finish = now  # idle until now: the health clock starts with this work
        pool.add(items)

    def _on_work_start(self, item: WorkItem[Message], now: float) -> None:
        self.metrics.lanes[self.lanes.all[item.lane_rank].name].queue_wait.observe(
            now - item.taken_at
        )

    def _collect(self, pool: WorkerPool[Message, WorkOutcome]) -> None:
        """Take finished work: count it, advance the offset trackers, store what is contiguous.

        Runs on the poll thread (also inside rebalance callbacks); never raises: a stop outcome
        is remembered and acted on by the next tick.
        """
        finished = pool.finished()
        if not finished:
            return
        self._last_finish = time.monotonic()
        now = time.time()
        last_timestamp: dict[TopicPartitionKey, int] = {}
        for item, result in finished:
            key = item.partition_key
            if self._epochs.get(key, 0) != item.epoch:
                continue  # the partition was revoked or lost meanwhile: someone else redoes it
            outcome = (
                result
                if isinstance(result, WorkOutcome)
                else WorkOutcome("stop", detail=f"worker failed: {result!r}")
            )
            if outcome.kind == "stop":
                # Not finished: the stored offset of its partition never passes it.
                if self._stop_reason is None:
                    self._stop_reason = outcome.detail
                    pool.halt()
                continue
            lane = self.lanes.all[item.lane_rank]
            lane_metrics = self.metrics.lanes[lane.name]
            stats = self.stats.lanes[lane.name]
            produced_ms = timestamp_ms(item.payload)
            latency = max(0.0, now - produced_ms / 1000.0)
            lane_metrics.latency.observe(latency)
            stats.latencies_s.append(latency)
            stats.handled += 1
            if outcome.kind == "dead_lettered":
                self.metrics.dead_letters.labels(lane=lane.name, reason=outcome.reason).inc()
                lane_metrics.handled_dead_lettered.inc()
                stats.dead_lettered += 1
            else:
                lane_metrics.handled_ok.inc()
                if outcome.attempts > 1:
                    stats.retried += 1
                    lane_metrics.handled_retried.inc()
            self._offsets.finished(key, item.offset)
            last_timestamp[key] = produced_ms
        to_store = self._offsets.to_store()
        if not to_store:
            return
        try:
            self._consumer.store_offsets(
                offsets=[TopicPartition(t, p, offset) for (t, p), offset in to_store.items()]
            )
        except KafkaException as exc:
            # A partition gone in the same tick (lost): nothing to store for it any more.
            log.warning("could not store offsets %s: %s", to_store, exc)
            return
        for (topic, partition), offset in to_store.items():
            produced_ms = last_timestamp.get((topic, partition), 0)
            self._lag.handled(topic, partition, offset - 1, produced_ms)

    def _stop_on_policy(self, pool: WorkerPool[Message, WorkOutcome]) -> None:
        """The error policy said stop: let running work finish, store what is contiguous, stop."""
        pool.halt()
        pool.wait_idle(self.settings.drain_timeout_s)
        self._collect(pool)
        raise StopConsumer(self._stop_reason or "stopped")

    def _drain(self, pool: WorkerPool[Message, WorkOutcome]) -> None:
        """Shutdown: finish every taken chunk (bounded by ``drain_timeout_s``), store them.

        Finishing the waiting chunks too, not only the running ones, keeps each partition's
        finished run contiguous, so a clean stop leaves nothing to redeliver twice. Chunks still
        unfinished at the deadline are not stored: they come back to the next owner.
        """
        if not pool.drain(None, self.settings.drain_timeout_s):
            log.warning(
                "chunks still in flight after %.0fs; not committed, they will be redelivered",
                self.settings.drain_timeout_s,
            )
        pool.halt()
        self._collect(pool)
        pool.close()

    def _settle_revoked(
        self, pool: WorkerPool[Message, WorkOutcome], partitions: list[TopicPartition]
    ) -> None:
        """Revoke, in order: finish the revoked partitions' taken chunks (bounded by
        ``revoke_timeout_s``), drop what is left for the next owner, store what finished."""
        keys = [(tp.topic, tp.partition) for tp in partitions]
        if not pool.drain(keys, self.settings.revoke_timeout_s):
            dropped = pool.drop_partitions(keys)
            abandoned = pool.abandon_partitions(keys)
            log.warning(
                "revoke: %d chunks still running and %d waiting after %.0fs: not committed",
                abandoned,
                len(dropped),
                self.settings.revoke_timeout_s,
            )
        self._collect(pool)

    def _work(self, item: WorkItem[Message]) -> WorkOutcome:
        """Handle one message on a pool thread: decode, call the handler with retries, or park."""
        message = item.payload
        lane = self.lanes.all[item.lane_rank]
        try:
            record = self._decode(lane, message)
        except (DecodeError, ChunkValidationError) as exc:
            return self._settle_failure(message, exc, exc, lane, attempts=1)
        started = time.perf_counter()
        try:
            attempts = self._with_retries(self._handle_one, record)
        except Exception as exc:  # noqa: BLE001  # handler code is the user's: anything goes
            return self._handler_failed(message, exc, lane)
        finally:
            self.metrics.lanes[lane.name].handler_duration.observe(time.perf_counter() - started)
        return WorkOutcome("ok", attempts)

    async def _work_async(self, item: WorkItem[Message]) -> WorkOutcome:
        """Handle one message on the event loop; parking runs on a thread (it blocks)."""
        message = item.payload
        lane = self.lanes.all[item.lane_rank]
        loop = asyncio.get_running_loop()
        try:
            record = self._decode(lane, message)
        except (DecodeError, ChunkValidationError) as exc:
            bad: Exception = exc
            return await loop.run_in_executor(
                None, lambda: self._settle_failure(message, bad, bad, lane, attempts=1)
            )
        started = time.perf_counter()
        try:
            attempts = await self._with_retries_async(record)
        except Exception as exc:  # noqa: BLE001  # handler code is the user's: anything goes
            failure: Exception = exc
            return await loop.run_in_executor(
                None, lambda: self._handler_failed(message, failure, lane)
            )
        finally:
            self.metrics.lanes[lane.name].handler_duration.observe(time.perf_counter() - started)
        return WorkOutcome("ok", attempts)

    async def _with_retries_async(self, record: ChunkRecord) -> int:
        """:meth:`_with_retries` for an async handler (the backoff does not block the loop)."""
        assert self._handle_one_async is not None  # noqa: S101  # set whenever async
        backoff = self.settings.retry_backoff_s
        for attempt in range(1, self.settings.max_retries + 2):
            try:
                await self._handle_one_async(record)
            except StreamprocError as exc:
                if not exc.retriable or attempt > self.settings.max_retries or self._stop.is_set():
                    raise
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.retry_backoff_max_s)
                continue
            return attempt
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _handler_failed(self, message: Message, exc: Exception, lane: Lane) -> WorkOutcome:
        error = exc if isinstance(exc, StreamprocError) else _wrap_handler_error(exc)
        attempts = self.settings.max_retries + 1 if error.retriable else 1
        return self._settle_failure(message, exc, error, lane, attempts=attempts)

    def _settle_failure(
        self,
        message: Message,
        exc: BaseException,
        error: BaseException,
        lane: Lane,
        *,
        attempts: int,
    ) -> WorkOutcome:
        """Park ``message`` (waiting for the ack), or say stop if the policy or the DLQ says so."""
        topic, partition, offset = coordinates(message)
        if self.settings.action_for(error) == "stop":
            reason = getattr(error, "reason", "handler_error")
            return WorkOutcome("stop", detail=f"{reason} at {topic}[{partition}]@{offset}: {exc}")
        reason = error_reason(exc)
        log.warning("dead-lettering %s[%d]@%d (%s): %s", topic, partition, offset, reason, exc)
        try:
            # One park at a time: each waits for its own acknowledgement with a flush.
            with self._dlq_lock:
                self._dlq.park(message, exc, lane=lane.name, attempts=attempts)
        except ProduceError as produce_error:
            return WorkOutcome(
                "stop", detail=f"dead letter of {topic}[{partition}]@{offset}: {produce_error}"
            )
        return WorkOutcome("dead_lettered", attempts, reason=reason)

    # -- flow control ---------------------------------------------------------------------------

    def _apply_flow(self) -> None:
        now = time.monotonic()
        snapshot = self._lag.snapshot(self._paused)
        decision = self._flow.update(snapshot.lanes, now)
        elapsed = now - self._last_flow_tick
        self._last_flow_tick = now
        for lane in self.lanes:
            lane_metrics = self.metrics.lanes[lane.name]
            lag = snapshot.lanes[lane.name]
            lane_metrics.lag.set(lag.lag_messages if lag.lag_messages is not None else float("nan"))
            lane_metrics.delay.set(lag.delay_s if lag.delay_s is not None else float("nan"))
            if lane.name in self._paused_lanes:
                lane_metrics.paused_seconds.inc(elapsed)
        self.metrics.set_partition_lags(
            (p.lane, p.topic, p.partition, p.lag_messages) for p in snapshot.partitions
        )
        self.stats.last_snapshot = snapshot
        self.stats.last_decision = decision
        if decision.to_pause or decision.to_resume or decision.paused != self._paused_lanes:
            self._paused_lanes = decision.paused
            for name in decision.to_pause:
                self.metrics.lanes[name].pauses.inc()
                self.metrics.lanes[name].paused.set(1)
                log.info("pausing lane %s: %s", name, decision.reasons.get(name, ""))
            for name in decision.to_resume:
                self.metrics.lanes[name].resumes.inc()
                self.metrics.lanes[name].paused.set(0)
                log.info("resuming lane %s", name)
            self._sync_paused()

    def _sync_paused(self) -> None:
        """Make the paused partitions match the desired set, applied as a diff.

        Desired = (priority-paused lanes x assignment) | (backpressure-paused lanes x
        assignment) | (the whole assignment during a hold). The pause state published to the
        group is the priority one only.
        """
        assignment = self._lag.assignment
        priority = {key for key in assignment if self._lane_name(key[0]) in self._paused_lanes}
        backpressure = {
            key for key in assignment if self._lane_name(key[0]) in self._backpressure_lanes
        }
        desired = priority | backpressure | (set(assignment) if self._holding else set())
        to_pause = desired - self._paused
        to_resume = self._paused - desired
        if to_pause:
            self._consumer.pause([TopicPartition(t, p) for t, p in to_pause])
        if to_resume:
            self._consumer.resume([TopicPartition(t, p) for t, p in to_resume])
        if newly_paused := priority - self._priority_paused:
            self._publish_pause_state(newly_paused, paused=True)
        if newly_running := self._priority_paused - priority:
            self._publish_pause_state(newly_running, paused=False)
        self._paused = desired
        self._priority_paused = priority
        if self._pool is not None:
            self._pool.hold_lanes(
                lane.rank for lane in self.lanes if lane.name in self._paused_lanes
            )

    def _publish_pause_state(self, keys: set[TopicPartitionKey], *, paused: bool) -> None:
        """Commit the handled position with metadata saying paused or running.

        ``streamproc lag`` reads it back from the group's offsets, so the pause state of every
        member is visible from anywhere. The position committed is the next offset to handle,
        never past anything unhandled, so this commit is as safe as the regular ones.
        """
        metadata = PAUSED_METADATA if paused else RUNNING_METADATA
        offsets = [
            TopicPartition(topic, partition, position, metadata)
            for (topic, partition) in keys
            if (position := self._lag.start_offset(topic, partition)) >= 0
        ]
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            log.debug("could not publish pause state: %s", exc)

    def _lane_name(self, topic: str) -> str:
        return self._lane_of_topic[topic].name

    # -- rebalance callbacks (run inside consume()) ---------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self._state_lock:
            self._assign(consumer, partitions)

    def _assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels(kind="assign").inc()
        self.stats.rebalances += 1
        if self.settings.assignor == "cooperative-sticky":
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
            self._paused.clear()  # an eager assign replaces the whole assignment
            self._priority_paused.clear()
        self._lag.assigned(partitions)
        self._sync_paused()  # after the assignment: pause() on unassigned partitions is a no-op
        self._update_assigned_gauges()
        log.info("assigned %s", _describe(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels(kind="revoke").inc()
        self.stats.rebalances += 1
        if self._pool is not None:
            self._settle_revoked(self._pool, partitions)
        if (batch := self._batch) is not None:  # a hold: let the batch finish and store first
            futures.wait([batch], timeout=self.settings.revoke_timeout_s)
            if not batch.done():
                log.warning(
                    "revoke: batch still running after %.0fs; what it does for %s is not"
                    " committed, the next owner redoes it",
                    self.settings.revoke_timeout_s,
                    _describe(partitions),
                )
            self._store_staged()
        with self._state_lock:
            self._commit_sync()
            self._release(consumer, partitions)
        log.info("revoked %s", _describe(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels(kind="lost").inc()
        self.stats.rebalances += 1
        if self._pool is not None:
            keys = [(tp.topic, tp.partition) for tp in partitions]
            self._pool.drop_partitions(keys)
            self._pool.abandon_partitions(keys)
        with self._state_lock:
            self._release(consumer, partitions)
        log.warning("lost %s (not committed)", _describe(partitions))

    def _release(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Resume what we paused of ``partitions``, unassign them, forget them.

        librdkafka keeps a partition's pause flag across unassign and a later assign, while the
        paused set here forgets it: a partition paused when it went and assigned back later
        would stay paused for good, so it is resumed first.
        """
        paused = [tp for tp in partitions if (tp.topic, tp.partition) in self._paused]
        if paused:
            consumer.resume([TopicPartition(tp.topic, tp.partition) for tp in paused])
        if self.settings.assignor == "cooperative-sticky":
            consumer.incremental_unassign(partitions)
        else:
            consumer.unassign()
        self._forget(partitions)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        if self._batch_started is not None:
            self._revoked_in_batch = True
        for key in keys:
            self._paused.discard(key)
            self._priority_paused.discard(key)
            # Results of this partition's work still running belong to the old epoch: ignored.
            self._epochs[key] = self._epochs.get(key, 0) + 1
        self._offsets.forget(keys)
        self._lag.revoked(partitions)
        self._update_assigned_gauges()

    def _update_assigned_gauges(self) -> None:
        counts = dict.fromkeys((lane.name for lane in self.lanes), 0)
        for topic, _ in self._lag.assignment:
            counts[self._lane_name(topic)] += 1
        for name, count in counts.items():
            self.metrics.lanes[name].assigned.set(count)
        self.metrics.partition_lag.clear()

    def _commit_sync(self) -> None:
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError._NO_OFFSET:
                return  # nothing stored since the last commit
            self.metrics.commits.labels(outcome="failed").inc()
            log.warning("synchronous commit failed: %s", exc)
            return
        self.metrics.commits.labels(outcome="ok").inc()

    # -- librdkafka callbacks (run on the poll thread) -------------------------------------------

    def _on_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._broker_down_since = self._broker_down_since or time.monotonic()
        log.warning("kafka: %s", error.str())

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if error is None:
            self._broker_down_since = None
            self.metrics.commits.labels(outcome="ok").inc()
        elif error.code() != KafkaError._NO_OFFSET:
            self.metrics.commits.labels(outcome="failed").inc()

    def _on_consume_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            raise StopConsumer(f"fatal consumer error: {error.str()}")
        log.warning("consume error: %s", error.str())

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second signal: exiting now without committing")
            os._exit(128 + signum)
        log.info("signal %d: finishing in-flight work, committing, closing", signum)
        self._stop.set()


def _wrap_handler_error(error: BaseException) -> StreamprocError:
    wrapped = HandlerError(f"{type(error).__name__}: {error}")
    wrapped.__cause__ = error
    return wrapped


def _describe(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"
