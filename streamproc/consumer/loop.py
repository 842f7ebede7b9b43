"""PriorityConsumer: one Kafka consumer per lane in one group, realtime first, bulk in turns.

One loop owns every lane consumer (see :mod:`streamproc.consumer.clients`). Handlers run on a
worker pool of ``concurrency`` slots (threads for sync handlers, one event loop for ``async def``
ones); concurrency 1 is the same path with one slot. Each slot runs one batch of one lane at a
time (:mod:`streamproc.dispatch`), and the loop only polls, decides and stores. Every turn:

1. Collect finished batches: count their outcomes and store, per partition, the end of the
   contiguous finished run (never past an unfinished chunk).
2. Take realtime: whatever the top lane's consumer has ready, without waiting, up to the lane's
   in-flight bound. It goes ahead of every lower-lane chunk waiting for a slot.
3. Give the next lane a turn whenever none of its turns waits for a slot: a batch sized so it
   ends within ``bulk_turn_ms`` (a moving average of its per-chunk handling time;
   :mod:`streamproc.consumer.turns`). It waits in the pool behind every more urgent chunk, and
   while every slot is busy it waits behind the running batches: the slot that frees first and
   finds nothing more urgent starts it at once, without waiting for the loop to wake (at
   concurrency 1 under a CPU-bound handler, the slot idled over a tenth of its time for that
   wake). A lane the flow policy holds gets no turn, unless a starvation guard grants it a
   slice (then it gets every other batch); a turn that waited ``OVERDUE_TURNS`` budgets starts
   before a more urgent lane that keeps every slot busy. A turn handed to a per-chunk handler
   yields between chunks to a more urgent chunk taken meanwhile
   (:mod:`streamproc.consumer.pipeline`); one a starvation guard started does not.
4. Flow control (every ``FLOW_TICK_S``): measure lag, run the :class:`~streamproc.flow.
   FlowController`, pause or resume the held lanes' partitions (:mod:`streamproc.consumer.
   pausebook`), publish the pause state, store the position of drained partitions (past
   transaction markers: :mod:`streamproc.deliverable`).
5. Keep every lane consumer alive: one polled less recently than ``poll_timeout_s`` is polled now
   (its rebalance callbacks run, ``max.poll.interval.ms`` never runs out), even while realtime
   saturates the slots or a handler runs for minutes. A lane holding its in-flight bound has its
   partitions paused first (backpressure), so such a poll takes nothing more. Partitions assigned
   but never fetched (their committed offset lookup was lost) are assigned again
   (:mod:`streamproc.consumer.fetchwatch`).
6. Wait, without holding the GIL: for realtime on the top lane's consumer (up to
   ``poll_timeout_s``, or until the next lower-lane turn is due), also while lower-lane batches
   fill every slot (a realtime chunk taken then makes the running batch yield); for a free slot
   only while realtime reached its in-flight bound, or has every slot or waits for one with no
   lower-lane turn queued (the loop then queues one as a batch ends), or a lower lane works
   ahead. ``run()`` shortens the interpreter's GIL switch interval (``gil_switch_interval_ms``):
   the loop thread waking for realtime gets the GIL from a computing handler within it.

Offsets are stored only after a chunk is handled or parked; librdkafka's auto-commit commits
stored offsets on an interval. Rebalances: :mod:`streamproc.consumer.rebalance`.

Shutdown on SIGTERM/SIGINT: take nothing more, finish every taken chunk (up to
``drain_timeout_s``), store, flush dead letters, then within ``close_timeout_s`` altogether commit
each lane consumer synchronously (again while the group coordinator is away, as during a broker
restart) and close them (leaving the group), return 0. A commit or close
the broker holds past that deadline is given up (:mod:`streamproc.consumer.shutdown`): what it
did not commit is logged and redelivered. A second signal exits at once, also while a commit or a
close waits. A stop by the error policy starts nothing more, waits for the running chunks, stores
what is contiguous, stops with 1.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from types import FrameType

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from streamproc.access import denial_message, is_denied
from streamproc.codec import ChunkCodec
from streamproc.consumer.clients import (
    COORDINATOR_AWAY,
    ClientFactory,
    KafkaClients,
    LaneConsumer,
)
from streamproc.consumer.fetchwatch import FetchWatchdog
from streamproc.consumer.pausebook import PauseBook
from streamproc.consumer.pipeline import GIVEN_BACK, OK, Outcome, Pipeline
from streamproc.consumer.rebalance import Rebalancer
from streamproc.consumer.shutdown import ShutdownBudget
from streamproc.consumer.turns import TurnPlanner
from streamproc.dispatch import Dispatcher, WorkItem
from streamproc.errors import SchemaRegistryUnavailableError, StreamprocError
from streamproc.flow import FlowController
from streamproc.handlers import AnyHandler
from streamproc.interpreter import gil_switch_interval, young_gc_threshold
from streamproc.kafkastats import Statistics, fetch_report, statistics_document
from streamproc.lag import PAUSED_METADATA, RUNNING_METADATA, LagMonitor, LagSnapshot
from streamproc.messages import PartitionKey
from streamproc.metrics import ConsumerMetrics, observe_many
from streamproc.offsets import OffsetTracker
from streamproc.registry import RegistrySchemaIds, registry_codec
from streamproc.settings import ConsumerSettings
from streamproc.workers import WorkerPool

log = logging.getLogger(__name__)

LATENCY_WINDOW = 4096
# How often lag is measured and the flow policy runs (the loop itself turns far more often).
FLOW_TICK_S = 0.01
# While a revoke waits for running chunks, how often the other lane consumers are polled.
HOLD_POLL_S = 0.05
# How long a lane at its in-flight bound goes unpolled before it is paused and polled.
FULL_LANE_POLL_S = 1.0
# A lower-lane turn waiting this many turns' time (bulk_turn_ms each) starts before a more urgent
# lane that keeps every slot busy (the dispatcher's overdue_s).
OVERDUE_TURNS = 20
# A lower lane whose more urgent lanes have taken nothing for this long works one turn ahead: its
# next turn waits in the pool while the current one runs, so the slot never idles between turns
# while the loop wakes. The first urgent chunk after such a pause waits for up to two turns.
AHEAD_AFTER_IDLE_S = 0.5
# ... and its turns are planned this many times longer: the loop wakes once a turn, and each wake
# costs a few hundred microseconds of a shared GIL (with a 500 us CPU handler on the fake broker:
# 38 us of overhead per chunk at four times, 28 at eight, 21 with 100 ms turns). A more urgent
# chunk taken brings them back to the budget at the next batch.
AHEAD_TURN_STRETCH = 8.0
# On shutdown, how often a commit the group coordinator's absence failed is tried again.
COMMIT_RETRY_S = 0.5


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


@dataclass(slots=True)
class ConsumerStats:
    lanes: dict[str, LaneStats]
    rebalances: int = 0
    last_snapshot: LagSnapshot | None = None


@dataclass(slots=True)
class _Tally:
    """What one collect finished of one lane (booked at once by ``PriorityConsumer._count``)."""

    latencies_s: list[float] = field(default_factory=list)
    dead_lettered: dict[str, int] = field(default_factory=dict)
    retried: int = 0

    def unusual(self, outcome: Outcome) -> None:
        """Count a finished outcome other than a first-attempt success."""
        if outcome.kind == "dead_lettered":
            self.dead_lettered[outcome.reason] = self.dead_lettered.get(outcome.reason, 0) + 1
        elif outcome.attempts > 1:
            self.retried += 1


class PriorityConsumer:
    """Consume every lane in one group, realtime first, pausing lower lanes while a higher lags.

    Args:
        settings: Connection, group, flow policy and error policy.
        handler: A per-chunk callable or a :class:`~streamproc.handlers.BatchHandler`, sync or
            ``async def``.
        codec: Avro codec (built from the bundled schemas, or the registry, if omitted).
        metrics: Where to record metrics (a private registry if omitted).
        clients: Builds the Kafka clients (the real ones if omitted; fakes in unit tests).
    """

    def __init__(
        self,
        settings: ConsumerSettings,
        handler: AnyHandler,
        *,
        codec: ChunkCodec | None = None,
        metrics: ConsumerMetrics | None = None,
        clients: ClientFactory | None = None,
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
        clients = clients or KafkaClients()
        self._stop = threading.Event()
        self._signals = 0
        self._closed = False
        self._closing_clients = False
        self._shutdown_complete = False
        self._last_tick = time.monotonic()
        # The loop thread's CPU time at its last tick's end (read by the handlers' threads).
        self._loop_cpu_s = 0.0
        self._last_flow_tick = 0.0
        self._last_finish = time.monotonic()
        self._broker_down_since: float | None = None
        self._last_broker_probe = 0.0
        self._stop_reason: str | None = None
        self._paused_lanes: frozenset[str] = frozenset()
        self._published_paused: frozenset[PartitionKey] = frozenset()
        # Lanes in a starvation slice: they get turns although a more urgent lane has work.
        self._slice_ranks: frozenset[int] = frozenset()
        # Lower lanes whose handlers are CPU-bound: run alone while a more urgent lane is active.
        self._solo_ranks: frozenset[int] = frozenset()
        # Lanes whose handlers compute nearly all the time: one batch at a time, any lane.
        self._serial_ranks: frozenset[int] = frozenset()
        # Inside a revoke's wait, which polls the other lane consumers (not recursively).
        self._settling = False
        self._offsets: OffsetTracker[PartitionKey] = OffsetTracker()
        self._epochs: dict[PartitionKey, int] = {}
        self._pauses = PauseBook()
        # Per lane topic: its watchdog, and the stuck partitions it found for the loop to restart.
        self._fetch_watch = {
            lane.topic: FetchWatchdog(lane.topic, settings.stuck_fetch_s) for lane in self.lanes
        }
        # Stuck partitions found in statistics reports, with their assignment epoch, for the
        # loop to restart; and those the consumer protocol only lets us report (once each).
        self._stuck: dict[PartitionKey, int] = {}
        self._reported_stuck: set[tuple[PartitionKey, int]] = set()
        self._flow = FlowController([lane.name for lane in self.lanes], settings.flow_settings())

        self._lane_consumers = [
            LaneConsumer(
                lane,
                clients.consumer(
                    settings.to_librdkafka(
                        self._on_error,
                        self._on_commit,
                        lane=lane.name,
                        stats_cb=self._statistics_of(lane.name, lane.topic),
                    )
                ),
            )
            for lane in self.lanes
        ]
        self._consumer_of_topic = {lc.lane.topic: lc for lc in self._lane_consumers}
        self._admin = clients.admin(settings.admin_config())
        # Never subscribes nor polls: the lag monitor's blocking questions go through it.
        query_config = settings.to_librdkafka(lane="query")
        query_config.pop("group.instance.id", None)  # it never joins the group
        self._query = clients.consumer(query_config)
        self._dlq = clients.dead_letters(
            settings.dead_letter_producer_config(), settings.dlq_flush_timeout_s
        )
        self._lag = LagMonitor(
            {lc.lane.topic: lc.consumer for lc in self._lane_consumers},
            self._admin,
            self._query,
            self.lanes,
            group_id=settings.group_id,
            scope=settings.scope,
            watermark_refresh_s=settings.watermark_refresh_s,
            group_refresh_s=settings.group_refresh_s,
            group_lag_slack=settings.group_lag_slack,
            offset_reset=settings.auto_offset_reset,
            isolation_level=settings.isolation_level,
            unfinished=self._offsets.unfinished,
            lso_warn_after_s=settings.transaction_hold_warn_s,
        )
        self._planner = TurnPlanner(
            len(self.lanes.all),
            budget_s=settings.bulk_turn_ms / 1000,
            most=settings.max_batch_messages,
            slots=settings.concurrency,
            serial_share=settings.serial_cpu_share,
        )
        # A running lower lane gets a turn at least this often, however busy realtime keeps the
        # slots: resumed means running, not starving behind back-to-back realtime batches.
        self._overdue_s = OVERDUE_TURNS * settings.bulk_turn_ms / 1000
        self._last_taken = [time.monotonic()] * len(self.lanes.all)
        dispatcher: Dispatcher[Message] = Dispatcher(
            len(self.lanes.all),
            concurrency=settings.concurrency,
            ordering=settings.ordering,
            reserved=settings.reserved_workers,
            overdue_s=self._overdue_s,
        )
        self._pipeline = Pipeline(
            settings,
            self.lanes.all,
            codec,
            handler,
            self._dlq,
            self.metrics,
            self._planner,
            self._stop,
            # What the dispatcher holds now (set before the lane is said to be paused).
            held=lambda rank: rank in dispatcher.held_lanes,
            busy=lambda: dispatcher.busy_slots,
            urgent=dispatcher.waiting_ahead_of,
            loop_cpu=lambda: self._loop_cpu_s,
        )
        self._pool: WorkerPool[Message, Outcome] = WorkerPool(
            dispatcher,
            run_sync=None if self._pipeline.is_async else self._pipeline.run,
            run_async=self._pipeline.run_async if self._pipeline.is_async else None,
            on_start=self._on_work_start,
            batch_limit=self._planner.batch_limit,
            given_back=GIVEN_BACK,
        )
        self._rebalancer = Rebalancer(
            cooperative=settings.incremental_rebalances,
            lag=self._lag,
            pauses=self._pauses,
            metrics=self.metrics,
            settle=self._settle_revoked,
            drop=self._drop_lost,
            forget=self._forget,
            apply_pauses=self._apply_pauses,
            hold_for_priority=self._hold_for_priority,
            commit=self._commit_sync,
        )
        # Evaluated at scrape time, so it always agrees with /readyz.
        self.metrics.ready.set_function(lambda: 1.0 if self.ready()[0] else 0.0)

    # -- public surface -------------------------------------------------------------------------

    @property
    def paused_lanes(self) -> frozenset[str]:
        """Lanes the policy currently holds paused."""
        return self._paused_lanes

    @property
    def paused_partitions(self) -> frozenset[PartitionKey]:
        """Partitions the flow policy holds paused (backpressure pauses are not counted)."""
        return self._pauses.held_for("priority")

    @property
    def concurrent(self) -> bool:
        """More than one chunk may be in hand at once (concurrency > 1 or an async handler)."""
        return self.settings.concurrency > 1 or self._pipeline.is_async

    @property
    def assignment(self) -> tuple[PartitionKey, ...]:
        return self._lag.assignment

    def stop(self) -> None:
        """Ask the loop to finish the chunks in hand and shut down cleanly (thread-safe)."""
        self._stop.set()

    @property
    def shutdown_complete(self) -> bool:
        """:meth:`close` finished everything in time: every taken chunk, every commit, every
        client closed.

        False before :meth:`close`, and after a close that gave something up: chunks still
        running at ``drain_timeout_s``, or a commit or close the broker held past
        ``close_timeout_s``. A step given up is still blocked in librdkafka on its own thread,
        and a running chunk's worker thread would hold the interpreter's exit (it joins them), so
        a process should then end with ``os._exit`` (``streamproc consume`` does); nothing is
        lost, whatever was not committed is redelivered.
        """
        return self._shutdown_complete

    def healthy(self) -> tuple[bool, str]:
        """The loop turned recently and, with chunks in hand, one finished or was retried
        recently (a handler waiting out a sink outage is alive; one that never returns is not)."""
        now = time.monotonic()
        age = now - self._last_tick
        limit = self.settings.health_max_tick_age_s
        if age > limit:
            return False, f"poll loop stalled for {age:.1f}s (limit {limit:.0f}s)"
        if running := self._pool.running():
            idle = now - max(self._last_finish, self._pipeline.last_retry)
            if idle > limit:
                return False, (
                    f"{running} chunks running, none finished or retried for {idle:.1f}s"
                    f" (limit {limit:.0f}s)"
                )
        return True, f"last tick {age:.2f}s ago"

    def ready(self) -> tuple[bool, str]:
        """Every lane consumer in the group, at least one partition assigned, and the broker
        reachable.

        The lane consumers join one after the other: until the last one has its first
        assignment (possibly empty), the lanes it reads are not being consumed by anyone here.
        Under the consumer group protocol (KIP-848) librdkafka announces no empty assignment, so
        a lane consumer left without partitions never looks joined: there, at least one
        partition assigned is enough.
        """
        down_since = self._broker_down_since
        if down_since is not None and self._lag.last_broker_answer < down_since:
            return False, "broker unreachable"
        joining = [lc.lane.name for lc in self._lane_consumers if not lc.joined]
        if joining and self.settings.group_protocol == "classic":
            return False, f"lane consumer(s) {', '.join(joining)} joining the group"
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
        self.subscribe()
        exit_code = 0
        try:
            with (
                young_gc_threshold(self.settings.gc_young_threshold),
                gil_switch_interval(self.settings.gil_switch_interval_ms / 1000),
            ):
                while not self._stop.is_set():
                    self.tick()
        except StopConsumer as exc:
            log.error("stopping: %s", exc)
            exit_code = 1
        except SchemaRegistryUnavailableError as exc:
            # Nothing is wrong with the message: stop without storing it, to be restarted.
            log.error("stopping, schema registry unavailable: %s", exc)
            exit_code = 1
        finally:
            self.close(commit=True)
        return exit_code

    def subscribe(self) -> None:
        """Subscribe every lane consumer to its lane topic (:meth:`run` does it first; call it
        yourself only to drive the loop with :meth:`tick`)."""
        for lane_consumer in self._lane_consumers:
            self._rebalancer.subscribe(lane_consumer)

    def tick(self) -> None:
        """One turn of the loop (see the module docstring)."""
        self._collect()
        if self._stop_reason is not None:
            self._stop_on_policy()
        took = self._take()
        now = time.monotonic()
        if now - self._last_flow_tick >= FLOW_TICK_S:
            self._apply_flow(now)
        self._keep_alive(now)
        if self._serial_ranks:
            self._pool.launch()  # a batch that stalled the serial pool lets the others start
        if self._stuck:
            self._restart_stuck()
        self._probe_broker()
        self._last_tick = time.monotonic()
        self.metrics.last_poll.set_to_current_time()
        if not took:
            self._wait()
        self._loop_cpu_s = time.thread_time()

    def close(self, *, commit: bool = True) -> None:
        """Finish taken chunks, flush dead letters, commit synchronously, leave the group.

        1. Finish every taken chunk (up to ``drain_timeout_s``) and store what finished.
        2. Drop dead letters never acknowledged (their offsets were not stored).
        3. Within ``close_timeout_s`` altogether, one step after another
           (:class:`~streamproc.consumer.shutdown.ShutdownBudget`): measure lag a last time
           (stores the position of drained partitions), commit each lane consumer
           synchronously, close each lane consumer (leaving the group), close the query
           consumer. A step still waiting at the deadline (the broker gone) is given up with
           every later one; a lane whose commit did not happen is logged with the offsets it
           handled, which are redelivered.

        :attr:`shutdown_complete` says whether everything finished.
        """
        if self._closed:
            return
        self._closed = True
        drained = False
        budget: ShutdownBudget | None = None
        try:
            drained = self._drain()
            self._dlq.close()
            budget = ShutdownBudget(self.settings.close_timeout_s)
            # The figures as they are left, for stats and /metrics.
            budget.run("last lag measurement", lambda: self._apply_flow(time.monotonic()))
            if commit:
                lanes = len(self._lane_consumers)
                for index, lane_consumer in enumerate(self._lane_consumers):
                    step = f"commit of lane {lane_consumer.lane.name}"
                    # Tried again while the coordinator is away, within an even share of what
                    # is left for this commit, the later ones and the closes (counted as one).
                    retry_until = time.monotonic() + budget.share_s(lanes - index + 1)
                    commit_step = partial(self._commit_sync, lane_consumer, retry_until)
                    if not budget.run(step, commit_step):
                        self._log_uncommitted(lane_consumer, "its commit was given up")
        finally:
            if budget is None:  # the drain failed: the clients still get their bounded close
                budget = ShutdownBudget(self.settings.close_timeout_s)
            # From here each consumer's close() commits its stored offsets itself (auto-commit
            # on), so the revoke it serves does not commit again: a synchronous commit nested
            # in close() clobbers confluent-kafka's per-call state and a later callback of the
            # same close() can abort the process (CallState_get assertion).
            self._closing_clients = True
            # Lowest lane first: rebalance callbacks served while a lane consumer closes may ask
            # group-wide questions, which go through the top lane's consumer.
            for lane_consumer in reversed(self._lane_consumers):
                budget.run(
                    f"close of the {lane_consumer.lane.name} lane consumer", lane_consumer.close
                )
            budget.run("close of the query consumer", self._query.close)
            if self._schema_ids is not None:
                self._schema_ids.close()
            self._shutdown_complete = drained and budget.complete

    # -- taking work ----------------------------------------------------------------------------

    def _take(self) -> bool:
        """Realtime first, then one budgeted turn per free slot for the next lane; True if
        anything was taken that may be followed by more at once (the next tick comes without
        waiting)."""
        limit = self.settings.in_flight_limit
        sizes = self._pool.sizes()
        top = self._lane_consumers[0]
        took = False
        room = limit - sizes[0]
        if room > 0 and self._enqueue(
            top, top.take(min(room, self.settings.max_batch_messages), 0)
        ):
            took = True
        now = time.monotonic()
        for lane_consumer in self._lane_consumers[1:]:
            rank = lane_consumer.lane.rank
            if lane_consumer.lane.name in self._paused_lanes:
                continue
            ahead = self._ahead(rank, now)
            self._planner.stretch(rank, AHEAD_TURN_STRETCH if ahead else 1.0)
            if self._pool.ready(rank):
                break  # its last turn still waits for a slot
            # No turn queued: queue one now, also while every slot is busy or a more urgent
            # chunk waits. The dispatcher starts it only when nothing more urgent waits (or it
            # is overdue), in the slot that frees first, without waiting for the loop to wake.
            wanted = min(limit - sizes[rank], self._planner.turn_size(rank))
            if wanted > 0 and self._enqueue(lane_consumer, lane_consumer.take(wanted, 0)):
                # Look again at once only while a slot is left: a turn queued behind a running
                # batch waits for its slot, and so can the loop (a finished batch wakes it).
                took = took or self._pool.free_slots() > 0
        return took

    def _ahead(self, rank: int, now: float) -> bool:
        """Lane ``rank`` may queue its next turn behind the running one: no more urgent lane
        took anything for ``AHEAD_AFTER_IDLE_S`` and none has a chunk waiting."""
        return all(
            now - self._last_taken[r] >= AHEAD_AFTER_IDLE_S and not self._pool.ready(r)
            for r in range(rank)
        )

    def _turn_blocked(self, rank: int) -> bool:
        """Every slot is busy, or a chunk of a more urgent lane waits for one."""
        return self._pool.free_slots() <= 0 or any(self._pool.ready(r) for r in range(rank))

    def _enqueue(self, lane_consumer: LaneConsumer, messages: list[Message]) -> bool:
        if not messages:
            return False
        now = time.monotonic()
        lane = lane_consumer.lane
        rank, topic = lane.rank, lane.topic  # a lane consumer reads its lane topic only
        epochs = self._epochs
        items: list[WorkItem[Message]] = []
        append = items.append
        # Per partition: its offsets in the order taken, and its assignment epoch.
        taken: dict[int, tuple[list[int], int]] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                self._on_consume_error(error, message.topic())
                continue
            partition: int = message.partition()  # type: ignore[assignment]  # never None here
            offset: int = message.offset()  # type: ignore[assignment]
            run = taken.get(partition)
            if run is None:
                run = taken[partition] = ([], epochs.get((topic, partition), 0))
            run[0].append(offset)
            message_key = message.key()
            if isinstance(message_key, str):
                message_key = message_key.encode()
            append(WorkItem(rank, topic, partition, offset, message_key, message, now, run[1]))
        if not items:
            return False
        for partition, (offsets, _) in taken.items():
            self._offsets.taken_run((topic, partition), offsets)
        self._last_taken[rank] = now
        self._broker_down_since = None
        if not self._pool.running():
            self._last_finish = now  # idle until now: the health clock starts with this work
        self._pool.add(items)
        return True

    def _on_work_start(self, batch: list[WorkItem[Message]], now: float) -> None:
        observe_many(
            self.metrics.lanes[self.lanes.all[batch[0].lane_rank].name].queue_wait,
            [now - item.taken_at for item in batch],
        )

    def _wait(self) -> None:
        """Sleep until there is something to do, without holding the GIL.

        While only lower-lane batches run, or a lower-lane turn is queued behind the running
        batches, the loop waits for realtime, not for a slot: a realtime chunk is taken the
        moment it arrives, the running batch yields to it between chunks
        (:class:`~streamproc.consumer.pipeline.Pipeline`), and the pool starts it as soon as the
        slot is free, without waiting for the loop. The loop still wakes in time to queue the
        next lower-lane turn. A lane working ahead (realtime idle) is the exception: there
        the loop waits for the running batch to end, so the slot never idles between turns, and
        the first realtime chunk after the idle spell waits for the running and the queued turn.
        """
        poll_timeout = timeout = self.settings.poll_timeout_s
        sizes = self._pool.sizes()
        room = self.settings.in_flight_limit - sizes[0]
        busy = self._pool.free_slots() <= 0
        if busy:
            running = self._pool.most_urgent_running()
            turn_queued = any(self._pool.ready(rank) for rank in range(1, len(sizes)))
            if (
                room <= 0
                or running is None
                or (not turn_queued and (running == 0 or self._pool.ready(0)))
                or self._planner.stretched(running)
            ):
                # Realtime has the slots or waits for one (a running lower-lane batch yields
                # to it) with no lower-lane turn queued behind, or realtime is idle and a
                # lower lane works ahead: the loop is needed when a batch ends (to queue the
                # next turn at once), not before.
                self._pool.wait_for_slot(poll_timeout)
                return
        for rank in range(1, len(sizes)):
            if sizes[rank]:
                # Lower-lane work in hand: wake in time to give the next turn its slot. With
                # every slot busy and the next turn queued already, the running one ends first.
                queued = busy and self._pool.ready(rank)
                wake = self._planner.turn_s(rank) if queued else self._planner.wake_s(rank)
                timeout = min(timeout, wake)
        top = self._lane_consumers[0]
        if room > 0:
            self._enqueue(top, top.take(min(room, self.settings.max_batch_messages), timeout))
        else:
            self._pool.wait_for_slot(timeout)

    def _keep_alive(self, now: float) -> None:
        """Poll every lane consumer at least once per ``poll_timeout_s`` (step 5).

        A lane holding its in-flight bound takes nothing more, and its consumer is left alone
        for up to ``FULL_LANE_POLL_S`` (a normal batch ends well before). A lane still full then
        has its partitions paused (backpressure) before its consumer is polled, until it is back
        at half: pausing drops what librdkafka prefetched, so it is kept for handlers slower
        than the poll interval by far, never done around the bound.
        """
        limit = self.settings.in_flight_limit
        sizes = self._pool.sizes()
        full_lane_poll_s = min(FULL_LANE_POLL_S, self.settings.max_poll_interval_ms / 10_000)
        held = self._pauses.held_for("backpressure")
        held_before = {topic for topic, _ in held}
        held_topics = set(held_before)
        for lane_consumer in self._lane_consumers:
            topic, size = lane_consumer.lane.topic, sizes[lane_consumer.lane.rank]
            if topic in held_topics and size <= limit // 2:
                held_topics.discard(topic)
            elif size >= limit and now - lane_consumer.last_poll >= full_lane_poll_s:
                held_topics.add(topic)
        if held_topics != held_before:
            self._pauses.hold(
                "backpressure", (key for key in self._lag.assignment if key[0] in held_topics)
            )
            self._apply_pauses()
        for lane_consumer in self._lane_consumers:
            rank, waited = lane_consumer.lane.rank, now - lane_consumer.last_poll
            room = limit - sizes[rank]
            if room > 0 and lane_consumer.lane.topic not in held_topics:
                if waited >= self.settings.poll_timeout_s:
                    # A poll for the membership takes no turn: while a more urgent chunk waits
                    # or every slot is busy, one message at most (it waits its turn).
                    blocked = rank > 0 and self._turn_blocked(rank)
                    wanted = 1 if blocked else self._planner.turn_size(rank)
                    self._enqueue(lane_consumer, lane_consumer.take(min(room, wanted), 0))
            elif waited >= full_lane_poll_s:
                # Paused: for the membership and the rebalance callbacks only.
                self._enqueue(lane_consumer, lane_consumer.take(1, 0))

    # -- finished work --------------------------------------------------------------------------

    def _collect(self) -> None:
        """Take finished work: count it, advance the offset trackers, store what is contiguous.

        Runs on the loop thread (also inside rebalance callbacks); never raises: a stop outcome
        is remembered and acted on by the next tick.
        """
        finished = self._pool.finished()
        if not finished:
            return
        self._last_finish = time.monotonic()
        now = time.time()
        last_timestamp: dict[PartitionKey, int] = {}
        tallies: dict[int, _Tally] = {}
        finished_offsets: dict[PartitionKey, list[int]] = {}
        epochs = self._epochs
        tally = _Tally()
        tally_rank = -1
        # Results come batch by batch, in runs of one partition: its key, epoch and finished
        # run are looked up once per run, not once per chunk.
        key: PartitionKey = ("", -1)
        epoch = -1
        run: list[int] = []
        for item, result in finished:
            if item.partition != key[1] or item.topic != key[0]:
                key = (item.topic, item.partition)
                epoch = epochs.get(key, 0)
                run = finished_offsets.setdefault(key, [])
            if item.epoch != epoch:
                continue  # the partition was revoked or lost meanwhile: someone else redoes it
            outcome = (
                result  # OK, the usual one, is the only outcome not looked into further
                if result is OK or isinstance(result, Outcome)
                else Outcome("stop", detail=f"worker failed: {result!r}")
            )
            if outcome is not OK and not outcome.finished:
                # Not finished: the stored offset of its partition never passes it.
                if outcome.kind == "stop" and self._stop_reason is None:
                    self._stop_reason = outcome.detail
                    self._pool.halt()
                continue
            if item.lane_rank != tally_rank:  # results come batch by batch: one lane at a time
                tally_rank = item.lane_rank
                tally = tallies.setdefault(tally_rank, _Tally())
            if outcome is not OK:
                tally.unusual(outcome)
            _, produced_ms = item.payload.timestamp()
            tally.latencies_s.append(max(0.0, now - produced_ms / 1000.0))
            run.append(item.offset)
            last_timestamp[key] = produced_ms
        for key, offsets in finished_offsets.items():
            if offsets:
                self._offsets.finished_run(key, offsets)
        for rank, tally in tallies.items():
            self._count(self.lanes.all[rank].name, tally)
        sizes = self._pool.sizes()
        for lane in self.lanes:
            self.metrics.lanes[lane.name].in_flight.set(sizes[lane.rank])
        self._store(self._offsets.to_store(), last_timestamp)

    def _count(self, lane: str, tally: _Tally) -> None:
        """Book one collect's finished chunks of a lane: once per lane, not once per chunk."""
        lane_metrics = self.metrics.lanes[lane]
        stats = self.stats.lanes[lane]
        observe_many(lane_metrics.latency, tally.latencies_s)
        stats.latencies_s.extend(tally.latencies_s)
        stats.handled += len(tally.latencies_s)
        dead_lettered = 0
        for reason, count in tally.dead_lettered.items():
            self.metrics.dead_letters.labels(lane=lane, reason=reason).inc(count)
            dead_lettered += count
        if dead_lettered:
            lane_metrics.handled_dead_lettered.inc(dead_lettered)
            stats.dead_lettered += dead_lettered
        if ok := len(tally.latencies_s) - dead_lettered:
            lane_metrics.handled_ok.inc(ok)
        if tally.retried:
            lane_metrics.handled_retried.inc(tally.retried)
            stats.retried += tally.retried

    def _store(
        self, to_store: dict[PartitionKey, int], last_timestamp: dict[PartitionKey, int]
    ) -> None:
        by_consumer: dict[str, dict[PartitionKey, int]] = {}
        for key, offset in to_store.items():
            by_consumer.setdefault(key[0], {})[key] = offset
        for topic, offsets in by_consumer.items():
            try:
                self._consumer_of_topic[topic].store(offsets)
            except KafkaException as exc:
                # A partition gone in the same turn (lost): nothing to store for it any more.
                log.warning("could not store offsets %s: %s", offsets, exc)
                continue
            for (t, p), offset in offsets.items():
                self._lag.handled(t, p, offset - 1, last_timestamp.get((t, p), 0))

    def _stop_on_policy(self) -> None:
        """The error policy said stop: let running work finish, store what is contiguous, stop."""
        self._pool.halt()
        self._pool.wait_idle(self.settings.drain_timeout_s)
        self._collect()
        raise StopConsumer(self._stop_reason or "stopped")

    def _drain(self) -> bool:
        """Shutdown: finish every taken chunk (bounded by ``drain_timeout_s``), store them.

        Finishing the waiting chunks too, not only the running ones, keeps each partition's
        finished run contiguous, so a clean stop leaves nothing to redeliver twice. Chunks still
        unfinished at the deadline are not stored: they come back to the next owner.

        Returns:
            True when every taken chunk finished in time.
        """
        drained = self._pool.drain(None, self.settings.drain_timeout_s)
        if not drained:
            log.warning(
                "chunks still in flight after %.0fs; not committed, they will be redelivered",
                self.settings.drain_timeout_s,
            )
        self._pool.halt()
        self._collect()
        self._pool.close()
        return drained

    # -- rebalance hooks (inside a lane consumer's consume()) -----------------------------------

    def _settle_revoked(self, keys: list[PartitionKey]) -> None:
        """Finish the revoked partitions' taken chunks (bounded by ``revoke_timeout_s``), drop
        what is left for the next owner, store what finished.

        The other lane consumers are members of the group too: while this waits, they are polled
        as usual, so they answer the same rebalance (an eager one revokes them all) in time
        instead of being dropped from the group when this wait outlasts its timeout.
        """
        deadline = time.monotonic() + self.settings.revoke_timeout_s
        revoking = {topic for topic, _ in keys}
        while not self._pool.drain(keys, min(HOLD_POLL_S, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                dropped, abandoned = self._pool.release_partitions(keys)
                log.warning(
                    "revoke: %d chunks still running and %d waiting after %.0fs: not committed",
                    abandoned,
                    len(dropped),
                    self.settings.revoke_timeout_s,
                )
                break
            self._poll_others_while_settling(revoking)
        self._collect()

    def _poll_others_while_settling(self, revoking: set[str]) -> None:
        if self._settling:
            return  # already inside another lane's revoke: that one polls
        self._settling = True
        try:
            for lane_consumer in self._lane_consumers:
                if lane_consumer.lane.topic not in revoking:
                    # One message at most: this poll is for the membership, not for work.
                    self._enqueue(lane_consumer, lane_consumer.take(1, 0))
        finally:
            self._settling = False

    def _drop_lost(self, keys: list[PartitionKey]) -> None:
        self._pool.release_partitions(keys)

    def _forget(self, keys: list[PartitionKey]) -> None:
        for key in keys:
            # Results of this partition's work still running belong to the old epoch: ignored.
            self._epochs[key] = self._epochs.get(key, 0) + 1
        self._offsets.forget(keys)
        self._published_paused -= set(keys)
        self.stats.rebalances = self._rebalancer.count

    def _commit_sync(self, lane_consumer: LaneConsumer, retry_until: float | None = None) -> None:
        """Commit one lane consumer's stored offsets now; until ``retry_until`` (monotonic), a
        commit failing because the group coordinator is away is tried again."""
        if self._closing_clients:
            return  # the consumer's close() commits what is stored
        error = lane_consumer.commit_sync()
        while (
            error is not None
            and error.code() in COORDINATOR_AWAY
            and retry_until is not None
            and time.monotonic() + COMMIT_RETRY_S < retry_until
        ):
            time.sleep(COMMIT_RETRY_S)
            error = lane_consumer.commit_sync()
        if error is not None and error.code() == KafkaError._NO_OFFSET:
            return  # nothing stored since the last commit
        self.metrics.commits.labels(outcome="ok" if error is None else "failed").inc()
        if error is not None:
            self._log_uncommitted(lane_consumer, f"its synchronous commit failed ({error.str()})")

    def _log_uncommitted(self, lane_consumer: LaneConsumer, why: str) -> None:
        """Say which handled offsets of a lane may have missed their commit: from the group's
        last committed offset on, those chunks are redelivered to the next owner."""
        topic = lane_consumer.lane.topic
        handled = [
            f"{t}[{p}] up to offset {offset - 1}"
            for t, p in sorted(self._lag.assignment)
            if t == topic and (offset := self._offsets.store_offset((t, p))) is not None
        ]
        log.warning(
            "lane %s: %s; not committed: %s. Chunks handled after the group's last committed"
            " offset are redelivered (at-least-once)",
            lane_consumer.lane.name,
            why,
            ", ".join(handled) or "nothing handled in this run",
        )

    # -- flow control ---------------------------------------------------------------------------

    def _apply_flow(self, now: float) -> None:
        snapshot = self._lag.snapshot(set(self._pauses.paused))
        decision = self._flow.update(snapshot.lanes, now)
        elapsed = now - self._last_flow_tick if self._last_flow_tick else 0.0
        self._last_flow_tick = now
        paused_until_now = self._paused_lanes  # the interval just ended is booked to these
        slice_ranks = frozenset(
            lane.rank for lane in self.lanes if lane.name in decision.in_starvation_slice
        )
        if slice_ranks != self._slice_ranks:
            self._slice_ranks = slice_ranks
            self._pool.favour_lanes(slice_ranks)
        solo = frozenset(
            rank for rank in range(1, len(self.lanes.all)) if self._planner.cpu_bound(rank)
        )
        if solo != self._solo_ranks:
            self._solo_ranks = solo
            self._pool.solo_lanes(solo)
        serial = frozenset(range(len(self.lanes.all))) if self._planner.serial() else frozenset()
        if serial != self._serial_ranks:
            self._serial_ranks = serial
            self._pool.serial_lanes(serial)
            self.metrics.serial.set(1 if serial else 0)
        if decision.paused != self._paused_lanes:
            # Hold first (nothing of the lane starts from here on), then say so.
            self._pool.hold_lanes(lane.rank for lane in self.lanes if lane.name in decision.paused)
            for name in decision.paused - self._paused_lanes:
                self.metrics.lanes[name].pauses.inc()
                self.metrics.lanes[name].paused.set(1)
                log.info("pausing lane %s: %s", name, decision.reasons.get(name, ""))
            for name in self._paused_lanes - decision.paused:
                self.metrics.lanes[name].resumes.inc()
                self.metrics.lanes[name].paused.set(0)
                log.info("resuming lane %s", name)
            self._paused_lanes = decision.paused
            self._hold_for_priority()
            self._apply_pauses()
        for lane in self.lanes:
            lane_metrics = self.metrics.lanes[lane.name]
            lag = snapshot.lanes[lane.name]
            lane_metrics.lag.set(lag.lag_messages if lag.lag_messages is not None else float("nan"))
            lane_metrics.delay.set(lag.delay_s if lag.delay_s is not None else float("nan"))
            if lane.name in paused_until_now:
                lane_metrics.paused_seconds.inc(elapsed)
        self.metrics.set_partition_lags(
            (p.lane, p.topic, p.partition, p.lag_messages) for p in snapshot.partitions
        )
        self._store_drained()
        self.stats.last_snapshot = snapshot
        self.stats.rebalances = self._rebalancer.count

    def _store_drained(self) -> None:
        """Store the application position of drained partitions: the committed offset moves past
        commit markers and aborted batches (:meth:`~streamproc.lag.LagMonitor.drained_positions`).
        """
        if drained := self._lag.drained_positions():
            self._store(drained, {})

    def _hold_for_priority(self) -> None:
        """The partitions of the lanes the flow policy holds, in the pause book."""
        lane_of_topic = self._lag.lane_of_topic
        self._pauses.hold(
            "priority",
            (key for key in self._lag.assignment if lane_of_topic[key[0]] in self._paused_lanes),
        )

    def _apply_pauses(self) -> None:
        """Make the paused partitions match the pause book, lane consumer by lane consumer, and
        publish priority pauses to the group."""
        to_pause, to_resume = self._pauses.plan()
        for lane_consumer in self._lane_consumers:
            topic = lane_consumer.lane.topic
            lane_consumer.pause(key for key in to_pause if key[0] == topic)
            lane_consumer.resume(key for key in to_resume if key[0] == topic)
        self._pauses.applied(to_pause, to_resume)
        priority = self._pauses.held_for("priority")
        if newly_paused := priority - self._published_paused:
            self._publish_pause_state(newly_paused, paused=True)
        if newly_running := self._published_paused - priority:
            self._publish_pause_state(newly_running, paused=False)
        self._published_paused = priority

    def _publish_pause_state(self, keys: frozenset[PartitionKey], *, paused: bool) -> None:
        """Commit the handled position with metadata saying paused or running.

        ``streamproc lag`` reads it back from the group's offsets, so the pause state of every
        member is visible from anywhere. The position committed is the next offset to handle,
        never past anything unhandled, so this commit is as safe as the regular ones.
        """
        metadata = PAUSED_METADATA if paused else RUNNING_METADATA
        by_topic: dict[str, list[TopicPartition]] = {}
        for topic, partition in keys:
            if (position := self._lag.start_offset(topic, partition)) >= 0:
                by_topic.setdefault(topic, []).append(
                    TopicPartition(topic, partition, position, metadata)
                )
        for topic, offsets in by_topic.items():
            try:
                self._consumer_of_topic[topic].commit_metadata(offsets)
            except KafkaException as exc:
                log.debug("could not publish pause state: %s", exc)

    # -- librdkafka callbacks and signals -------------------------------------------------------

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
            self._query.list_topics(self.lanes.top.topic, timeout=0.5)
        except KafkaException:
            return
        self._broker_down_since = None

    def _on_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._broker_down_since = self._broker_down_since or time.monotonic()
        if is_denied(error):
            self._stop_denied(error)
            return
        log.warning("kafka: %s", error.str())

    def _statistics_of(self, lane: str, topic: str) -> Callable[[str], None]:
        """The ``stats_cb`` of a lane consumer: client metrics, the LSO and its holds, and the
        partitions whose fetching never started."""
        record = self.metrics.librdkafka_statistics(lane)

        def on_statistics(statistics_json: str) -> None:
            # Decoded once for every reader (about 10 KB every 250 ms under read_committed).
            try:
                document = statistics_document(statistics_json)
            except ValueError as exc:
                log.warning("unreadable librdkafka statistics of lane %s: %s", lane, exc)
                return
            record(document)
            self._on_statistics(document)
            self._watch_fetches(topic, document)

        return on_statistics

    def _watch_fetches(self, topic: str, document: Statistics) -> None:
        """Note the lane's stuck partitions; the loop restarts them outside the callback."""
        if self.settings.stuck_fetch_s <= 0:
            return
        try:
            report = fetch_report(document, topic)
        except (ValueError, TypeError, AttributeError):
            return  # logged by the metrics' reader of the same document
        epochs = self._epochs
        assigned = {key: epochs.get(key, 0) for key in self._lag.assignment if key[0] == topic}
        self._stuck.update(self._fetch_watch[topic].report(report, assigned))

    def _restart_stuck(self) -> None:
        """Assign again the stuck partitions still in the assignment they were found stuck in
        (classic group protocol only).

        One a chunk was taken from in this assignment was fetched: whatever librdkafka says of
        it, assigning it again would fetch that chunk again, so it is left alone.
        """
        stuck, self._stuck = self._stuck, {}
        assigned = set(self._lag.assignment)
        by_topic: dict[str, list[PartitionKey]] = {}
        for key, epoch in stuck.items():
            current = key in assigned and self._epochs.get(key, 0) == epoch
            if current and not self._offsets.tracks(key):
                by_topic.setdefault(key[0], []).append(key)
        for topic, keys in by_topic.items():
            named = ", ".join(f"{t}[{p}]" for t, p in sorted(keys))
            if self.settings.group_protocol != "classic":
                # The consumer protocol reconciles the assignment with the coordinator: an
                # unassign outside its callbacks could be taken for giving the partitions up.
                if new := {(key, stuck[key]) for key in keys} - self._reported_stuck:
                    self._reported_stuck |= new
                    log.warning("assigned but never fetched (restart this member): %s", named)
                continue
            lane_consumer = self._consumer_of_topic[topic]
            try:
                self._rebalancer.restart(lane_consumer, sorted(keys))
            except KafkaException as exc:
                retry_s = self.settings.stuck_fetch_s
                log.warning(
                    "could not assign %s again (next try in %.0fs): %s", named, retry_s, exc
                )
                continue
            if not self.settings.incremental_rebalances:
                # The whole assignment was replaced, and librdkafka forgot the offsets stored
                # for the other partitions: store again what was handled of them.
                handled = {
                    key: self._offsets.store_offset(key) for key in assigned if key[0] == topic
                }
                lane_consumer.store(
                    {k: offset for k, offset in handled.items() if offset is not None}
                )

    def _on_statistics(self, statistics_json: Statistics) -> None:
        """librdkafka's statistics of a lane consumer (read_committed): LSO and its holds."""
        self._lag.statistics(statistics_json)
        self.metrics.set_lso_held(self._lag.lso_held_s())

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if error is None:
            self._broker_down_since = None
            self.metrics.commits.labels(outcome="ok").inc()
        elif error.code() != KafkaError._NO_OFFSET:
            self.metrics.commits.labels(outcome="failed").inc()

    def _on_consume_error(self, error: KafkaError, topic: str | None = None) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.fatal():
            raise StopConsumer(f"fatal consumer error: {error.str()}")
        if is_denied(error):
            self._stop_denied(error, topic)
            return
        log.warning("consume error: %s", error.str())

    def _stop_denied(self, error: KafkaError, topic: str | None = None) -> None:
        """A missing ACL or a refused password: librdkafka would retry it forever, so stop the
        way the error policy stops (running work finishes, nothing past it is committed)."""
        if self._stop_reason is None:
            topics = topic or ", ".join(self.lanes.topics)
            self._stop_reason = denial_message(
                error,
                self.settings.sasl_username,
                f"consuming {topics} in group {self.settings.group_id!r}",
            )
            self._pool.halt()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second signal: exiting now without committing")
            os._exit(128 + signum)
        log.info("signal %d: finishing in-flight work, committing, closing", signum)
        self._stop.set()
