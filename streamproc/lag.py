"""Measuring lag: this member's partitions (local) and the whole group's top lane (group).

Local lag of a partition is what it can still deliver and this member has not handled
(:mod:`streamproc.deliverable`): the deliverable end (the last stable offset under
``read_committed``, the high watermark under ``read_uncommitted``) minus librdkafka's application
position, which moves past commit markers and aborted batches, plus the chunks taken and not
finished. Watermarks come from librdkafka's cache, which is refreshed by fetch responses; the LSO
from its statistics events. On a paused partition there are no fetches, so its cached watermark
freezes. Paused partitions (and any whose cache is still empty) are therefore refreshed from the
broker with ``ListOffsets`` (at the consumer's isolation level, so the answer is the LSO under
``read_committed``) on a slow timer.

A drained partition (nothing taken from it unfinished) has its application position stored
(:meth:`LagMonitor.drained_positions`), so committed offsets reach the log end past markers.

Group lag of the top lane sums, over every partition of the top lane, the high watermark minus the
group's committed offset (``OffsetFetch`` by the member's own consumer). It is what a member that
owns no realtime partition must look at to yield to realtime traffic it cannot see. Committed
offsets trail the owners' positions by up to one auto-commit interval, so ``group_lag_slack``
messages are forgiven before the figure reaches the flow policy.

Watermark queries are asynchronous: a request is issued on one tick and harvested on a later one.
The group's committed offsets are the exception: they are fetched with the consumer's
``committed()``, one bounded round trip to the group coordinator per ``group_refresh_s``. The
AdminClient's ``list_consumer_group_offsets`` would be asynchronous, but librdkafka (up to at least
2.16) aborts the whole process when such a coordinator request fails while the coordinator is
moving or loading, which is exactly what a broker restart does (librdkafka issues 3663 and 4605).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from concurrent.futures import wait as wait_for
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka import IsolationLevel as KafkaIsolationLevel
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # OffsetSpec: public, untyped
    AdminClient,
    OffsetSpec,
)

from streamproc.access import denial_message, is_denied
from streamproc.deliverable import (
    IsolationLevel,
    LsoHolds,
    deliverable_end,
    deliverable_lag,
    drained_position,
    stable_offsets,
)
from streamproc.errors import NotAuthorizedError
from streamproc.flow import LaneLag, OffsetReset, Scope, effective_scope, lane_lag, partition_lag
from streamproc.kafkastats import Statistics
from streamproc.lanes import Lanes
from streamproc.messages import PartitionKey

log = logging.getLogger(__name__)

_ADMIN_TIMEOUT_S = 10.0
# Longest the poll loop waits for the group's committed offsets (group scope only); while the
# coordinator is unreachable the loop slows down by at most this much per group_refresh_s.
_GROUP_OFFSETS_TIMEOUT_S = 1.0
_LATEST = OffsetSpec.latest()  # type: ignore[no-untyped-call]  # unannotated upstream
# Commit metadata the consumer writes on pause and resume, read back by ``streamproc lag``.
PAUSED_METADATA = "streamproc:paused"
RUNNING_METADATA = "streamproc:running"


def _kafka_isolation(isolation_level: IsolationLevel) -> KafkaIsolationLevel:
    if isolation_level == "read_committed":
        return KafkaIsolationLevel.READ_COMMITTED
    return KafkaIsolationLevel.READ_UNCOMMITTED


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """Lag of one assigned partition, as last measured.

    ``high_watermark`` is the deliverable end (the last stable offset under read_committed) and
    ``position`` the next offset to take (librdkafka's application position once known).
    """

    lane: str
    topic: str
    partition: int
    high_watermark: int
    position: int
    lag_messages: int | None
    paused: bool


@dataclass(frozen=True, slots=True)
class LagSnapshot:
    """One measurement: per-lane lag for the flow policy, per-partition detail for metrics."""

    lanes: Mapping[str, LaneLag]
    partitions: tuple[PartitionLag, ...]


class _Pending:
    """An in-flight admin request (librdkafka ends it within its ``request_timeout``)."""

    def __init__(self, futures: Mapping[Any, Future[Any]]) -> None:
        self.futures = futures

    def done(self) -> bool:
        return all(future.done() for future in self.futures.values())


class LagMonitor:
    """Tracks positions, watermarks and timestamps of one member's partitions.

    Args:
        consumers: Each lane topic's consumer (cached watermarks live in the consumer that
            fetches the partition).
        admin: An AdminClient on the same cluster (watermark refresh).
        query: A consumer in the same group that never subscribes or polls: committed offsets,
            metadata and broker watermarks are asked through it.
        lanes: The lane topology.
        group_id: The consumer group, for group-scope lag.
        scope: ``local``, ``group`` or ``auto`` (group when this member owns no top-lane partition).
        watermark_refresh_s: How often paused partitions' watermarks are asked of the broker.
        group_refresh_s: How often the group's committed offsets are asked of the broker.
        group_lag_slack: Messages of group lag forgiven for committed offsets trailing positions.
        offset_reset: The consumer's ``auto.offset.reset`` (where a partition with no committed
            offset starts).
        isolation_level: The consumer's ``isolation.level`` (what the deliverable end is).
        unfinished: How many chunks taken from a partition are not finished yet.
        lso_warn_after_s: An LSO held this long by an open transaction is logged (and again
            every as long while it lasts).
    """

    def __init__(
        self,
        consumers: Mapping[str, Consumer],
        admin: AdminClient,
        query: Consumer,
        lanes: Lanes,
        *,
        group_id: str,
        scope: Scope = "auto",
        watermark_refresh_s: float = 5.0,
        group_refresh_s: float = 1.0,
        group_lag_slack: int = 0,
        offset_reset: str = "earliest",
        isolation_level: IsolationLevel = "read_committed",
        unfinished: Callable[[PartitionKey], int] = lambda key: 0,
        lso_warn_after_s: float = 60.0,
    ) -> None:
        self._consumers = dict(consumers)
        # Blocking questions (committed offsets, metadata, broker watermarks) go through a
        # consumer of their own that never polls: asked from inside a lane consumer's rebalance
        # callback on that same consumer, they would clear confluent-kafka's per-call state of
        # the consume() serving the callback, and its next callback aborts the process.
        self._consumer = query
        self._admin = admin
        self._lanes = lanes
        self._lane_of_topic = {lane.topic: lane.name for lane in lanes}
        self._group_id = group_id
        self._scope: Scope = scope
        self._watermark_refresh_s = watermark_refresh_s
        self._group_refresh_s = group_refresh_s
        self._group_lag_slack = group_lag_slack
        self._reset: OffsetReset = "latest" if offset_reset == "latest" else "earliest"
        self.isolation_level: IsolationLevel = isolation_level
        self._isolation = _kafka_isolation(isolation_level)
        self._unfinished = unfinished
        # librdkafka's application position per partition, once it is known to belong to the
        # current assignment (see _read_app_positions).
        self._app_positions: dict[PartitionKey, int] = {}
        self._app_position_current: set[PartitionKey] = set()
        # Partitions seen written in transactions: their end is the LSO of the statistics.
        self._transactional: set[PartitionKey] = set()
        self.lso_holds = LsoHolds(lso_warn_after_s)
        # Next offset to handle per assigned partition (the committed one until one is handled).
        self._positions: dict[PartitionKey, int] = {}
        # Watermarks asked of the broker: (low, high, when).
        self._refreshed: dict[PartitionKey, tuple[int, int, float]] = {}
        self._last_timestamp_ms: dict[str, int] = {}
        self._watermark_request: _Pending | None = None
        # The group's committed offsets, fetched with the top lane's watermarks still in flight.
        self._group_request: tuple[dict[PartitionKey, int], _Pending] | None = None
        self._group_committed: dict[PartitionKey, int] = {}
        self._group_high: dict[PartitionKey, int] = {}
        self._group_measured_at = 0.0
        self._last_watermark_refresh = 0.0
        self.top_partitions: tuple[PartitionKey, ...] = ()
        # Monotonic time of the last broker answer to one of our queries (readiness evidence).
        self.last_broker_answer = 0.0

    # -- assignment -------------------------------------------------------------------------

    def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """Start tracking newly assigned partitions at their committed offsets.

        Runs inside the rebalance callback; ``committed()`` is one blocking round trip there, so
        the first lag figure of a fresh partition is exact instead of a guess.
        """
        new = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        if not new:
            return
        try:
            committed = self._consumer.committed(new, timeout=_ADMIN_TIMEOUT_S)
        except KafkaException:
            committed = [TopicPartition(tp.topic, tp.partition, OFFSET_INVALID) for tp in new]
        for tp in committed:
            key = (tp.topic, tp.partition)
            self._positions[key] = tp.offset
            # Until librdkafka shows it reset, its application position may be the previous
            # assignment's (it is cleared asynchronously when fetching stops).
            self._app_position_current.discard(key)
            self._app_positions.pop(key, None)
        self._measure_now()

    def _measure_now(self) -> None:
        """Ask the broker for watermarks (and group offsets in group scope) and wait for them.

        A member that just got partitions must not take lower-lane work before it knows the top
        lane's lag: without this, the first snapshot after an assignment would see unknown lag,
        which keeps the policy's previous state — "running" for a member that just joined.
        """
        monotonic = time.monotonic()
        self._watermark_request = None
        self._request_watermarks(list(self._positions), monotonic)
        owns_top = any(topic == self._lanes.top.topic for topic, _ in self._positions)
        if effective_scope(self._scope, owns_top) == "group":
            self._group_request = None
            self._group_measured_at = 0.0
            self._refresh_group(monotonic)
        pending = [
            request
            for request in (
                self._watermark_request,
                self._group_request[1] if self._group_request is not None else None,
            )
            if request is not None
        ]
        futures = [future for request in pending for future in request.futures.values()]
        wait_for(futures, timeout=_ADMIN_TIMEOUT_S)
        self._harvest_watermarks()
        self._refresh_group(time.monotonic())

    def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop tracking revoked or lost partitions."""
        keys = [(tp.topic, tp.partition) for tp in partitions]
        for key in keys:
            self._positions.pop(key, None)
            self._refreshed.pop(key, None)
            self._app_positions.pop(key, None)
            self._app_position_current.discard(key)
            self._transactional.discard(key)
        self.lso_holds.forget(keys)

    def handled(self, topic: str, partition: int, offset: int, timestamp_ms: int) -> None:
        """Record that ``offset`` was handled (or parked): the position moves past it.

        Ignored for a partition not assigned (any more).
        """
        key = (topic, partition)
        if key not in self._positions:
            return
        self._positions[key] = offset + 1
        # A chunk of this assignment was taken: the application position is this assignment's.
        self._app_position_current.add(key)
        lane = self._lane_of_topic.get(topic)
        if lane is not None and timestamp_ms > 0:
            self._last_timestamp_ms[lane] = timestamp_ms

    def drained_positions(self) -> dict[PartitionKey, int]:
        """Application positions to store for drained partitions (nothing taken unfinished).

        Read on the loop thread between two polls, so every record below a position was taken and
        counted by ``unfinished`` (see :func:`~streamproc.deliverable.drained_position`).
        """
        drained = {}
        for key, app_position in self._app_positions.items():
            offset = drained_position(
                app_position=app_position,
                position=self._positions.get(key, OFFSET_INVALID),
                unfinished=self._unfinished(key),
            )
            if offset is not None:
                drained[key] = offset
                self._transactional.add(key)  # it passed records no consumer gets
        return drained

    def statistics(self, statistics_json: Statistics) -> None:
        """A librdkafka statistics event of a lane consumer: the LSO of each fetched partition.

        Logs a partition whose LSO an open transaction has held for ``lso_warn_after_s``.
        """
        if self.isolation_level != "read_committed":
            return
        measured = {
            key: offsets
            for key, offsets in stable_offsets(statistics_json).items()
            if key in self._positions
        }
        self._transactional.update(key for key, offsets in measured.items() if offsets.held)
        to_report, released = self.lso_holds.update(measured, time.monotonic())
        for hold in to_report:
            log.warning(
                "%s[%d]: last stable offset held at %d for %.0fs by an open transaction"
                " (%d offsets past it are not delivered until it commits or aborts)",
                hold.topic,
                hold.partition,
                hold.last_stable,
                hold.held_s,
                hold.held_offsets,
            )
        for topic, partition in released:
            log.info("%s[%d]: last stable offset moves again", topic, partition)

    def lso_held_s(self) -> list[tuple[str, str, int, float]]:
        """``(lane, topic, partition, seconds)`` of every assigned partition: how long an open
        transaction has held its LSO (0 when none does)."""
        now = time.monotonic()
        return [
            (
                self._lane_of_topic[topic],
                topic,
                partition,
                self.lso_holds.held_s((topic, partition), now),
            )
            for topic, partition in self._positions
        ]

    def _read_app_positions(self) -> None:
        """Ask each lane consumer for its application positions (local, no broker round trip).

        A position is used once it belongs to the current assignment: librdkafka showed it unset
        (it clears it when fetching stops and on seeks), or a chunk of this assignment was taken.
        """
        by_topic: dict[str, list[TopicPartition]] = {}
        for topic, partition in self._positions:
            by_topic.setdefault(topic, []).append(TopicPartition(topic, partition))
        for topic, partitions in by_topic.items():
            consumer = self._consumers.get(topic)
            if consumer is None:
                continue
            try:
                positions = consumer.position(partitions)
            except KafkaException:
                continue
            for tp in positions:
                key = (tp.topic, tp.partition)
                if tp.offset < 0:
                    self._app_position_current.add(key)
                    self._app_positions.pop(key, None)
                elif key in self._app_position_current:
                    self._app_positions[key] = tp.offset

    def rewound(self, topic: str, partition: int, offset: int) -> None:
        """Record a seek back to ``offset`` (messages dropped from a batch for redelivery)."""
        if (topic, partition) in self._positions:
            self._positions[(topic, partition)] = offset

    def start_offset(self, topic: str, partition: int) -> int:
        """Next offset to handle in a partition; negative when not known yet.

        Before anything is handled or committed, that is where ``auto.offset.reset`` starts:
        the low watermark for ``earliest``, when it is known.
        """
        position = self._positions.get((topic, partition), OFFSET_INVALID)
        if position >= 0 or self._reset != "earliest":
            return position
        tp = TopicPartition(topic, partition)
        low, _ = self._consumers[topic].get_watermark_offsets(tp, cached=True)
        if low < 0:  # never fetched (paused at once): ask the broker, rare and only on transitions
            try:
                low, _ = self._consumer.get_watermark_offsets(tp, timeout=_ADMIN_TIMEOUT_S)
            except KafkaException:
                return OFFSET_INVALID
        return int(low) if low >= 0 else OFFSET_INVALID

    @property
    def assignment(self) -> tuple[PartitionKey, ...]:
        return tuple(self._positions)

    @property
    def lane_of_topic(self) -> Mapping[str, str]:
        """Lane name of each lane topic."""
        return self._lane_of_topic

    def owns(self, topic: str, partition: int) -> bool:
        """The partition is assigned (tracked) now."""
        return (topic, partition) in self._positions

    # -- measuring ------------------------------------------------------------------------------

    def snapshot(self, paused: set[PartitionKey], now: float | None = None) -> LagSnapshot:
        """Measure lag now. Cheap: local calls only; broker queries are harvested when ready.

        Args:
            paused: The partitions currently paused (their cached watermarks are stale).
            now: Wall-clock seconds (``time.time()``), injectable for tests.
        """
        now = time.time() if now is None else now
        monotonic = time.monotonic()
        self._harvest_watermarks()
        # All assigned partitions are refreshed (one cheap ListOffsets); only paused or never
        # fetched ones use the answer, the rest have fresher cached watermarks.
        if (
            self._positions
            and monotonic - self._last_watermark_refresh >= self._watermark_refresh_s
        ):
            self._request_watermarks(list(self._positions), monotonic)

        top = self._lanes.top
        owns_top = any(topic == top.topic for topic, _ in self._positions)
        scope = effective_scope(self._scope, owns_top)
        if scope == "group":
            self._refresh_group(monotonic)

        self._read_app_positions()
        per_lane: dict[str, list[int | None]] = {lane.name: [] for lane in self._lanes}
        details = []
        for (topic, partition), position in self._positions.items():
            key = (topic, partition)
            lane_name = self._lane_of_topic[topic]
            is_paused = key in paused
            low, high, cached = self._watermarks(topic, partition, is_paused)
            # A cached high watermark is the real one, past records of open transactions too.
            end = self._end(key, high) if cached else high
            app_position = self._app_positions.get(key, OFFSET_INVALID)
            lag = deliverable_lag(
                low=low,
                end=end,
                app_position=app_position,
                position=position,
                unfinished=self._unfinished(key),
                reset_to_low=self._reset == "earliest",
            )
            per_lane[lane_name].append(lag)
            details.append(
                PartitionLag(
                    lane_name, topic, partition, end, max(position, app_position), lag, is_paused
                )
            )

        group_top = self._group_top_lag()
        lanes: dict[str, LaneLag] = {}
        for lane in self._lanes:
            lag_messages = lane_lag(per_lane[lane.name])
            if lane.rank == 0 and scope == "group":
                lag_messages = group_top
            lanes[lane.name] = LaneLag(lag_messages, self._delay(lane.name, lag_messages, now))
        return LagSnapshot(lanes, tuple(details))

    def _delay(self, lane: str, lag_messages: int | None, now: float) -> float | None:
        """How far behind the lane is in time: 0 when drained, else age of the last handled."""
        if lag_messages is None:
            return None
        if lag_messages == 0:
            return 0.0
        last = self._last_timestamp_ms.get(lane)
        return None if last is None else max(0.0, now - last / 1000.0)

    def _end(self, key: PartitionKey, high: int) -> int:
        """The deliverable end of a partition being fetched, from its cached high watermark."""
        measured = self.lso_holds.latest(key)
        if measured is None and self.isolation_level == "read_committed":
            # No statistics event yet (just assigned): the LSO asked of the broker on assignment
            # stands in, so records an open transaction holds are not lag for a new member either.
            refreshed = self._refreshed.get(key)
            if refreshed is not None and high >= 0:
                return min(high, refreshed[1])
        return deliverable_end(high, measured, transactional=key in self._transactional)

    def _watermarks(self, topic: str, partition: int, paused: bool) -> tuple[int, int, bool]:
        """``(low, end, cached)``: from librdkafka's cache (end = high watermark, cached True) or
        asked of the broker at the isolation level (end = LSO under read_committed)."""
        refreshed = self._refreshed.get((topic, partition))
        if paused and refreshed is not None:
            return refreshed[0], refreshed[1], False
        low, high = self._consumers[topic].get_watermark_offsets(
            TopicPartition(topic, partition), cached=True
        )
        if high < 0 and refreshed is not None:
            return refreshed[0], refreshed[1], False
        return int(low), int(high), True

    def _request_watermarks(self, keys: list[PartitionKey], monotonic: float) -> None:
        if self._watermark_request is not None:
            return
        request: dict[TopicPartition, OffsetSpec] = {}
        for topic, partition in keys:
            request[TopicPartition(topic, partition)] = _LATEST
        try:
            futures = self._admin.list_offsets(
                request, request_timeout=_ADMIN_TIMEOUT_S, isolation_level=self._isolation
            )
        except KafkaException:
            return
        self._watermark_request = _Pending(futures)
        self._last_watermark_refresh = monotonic

    def _harvest_watermarks(self) -> None:
        pending = self._watermark_request
        if pending is None or not pending.done():
            return
        self._watermark_request = None
        now = time.monotonic()
        for tp, future in pending.futures.items():
            try:
                high = future.result().offset
            except KafkaException:
                continue
            self.last_broker_answer = now
            key = (tp.topic, tp.partition)
            if key in self._positions:
                low = self._refreshed.get(key, (0, 0, 0.0))[0]
                self._refreshed[key] = (low, high, now)

    # -- group scope --------------------------------------------------------------------------

    def _refresh_group(self, monotonic: float) -> None:
        if self._group_request is not None:
            committed, watermarks = self._group_request
            if not watermarks.done():
                return
            self._harvest_group(committed, watermarks)
            self._group_request = None
        if monotonic - self._group_measured_at < self._group_refresh_s:
            return
        if not self._positions:
            return  # nothing assigned, nothing to hold back: no need to measure the group
        top_partitions = self._top_lane_partitions()
        if not top_partitions:
            return
        try:
            watermark_futures = self._admin.list_offsets(
                {TopicPartition(t, p): _LATEST for t, p in top_partitions},
                request_timeout=_ADMIN_TIMEOUT_S,
                isolation_level=self._isolation,
            )
        except KafkaException:
            return
        self._group_measured_at = monotonic
        try:
            offsets = self._consumer.committed(
                [TopicPartition(t, p) for t, p in top_partitions], timeout=_GROUP_OFFSETS_TIMEOUT_S
            )
        except KafkaException:
            return  # no group figure this round: the watermarks alone are of no use
        self._group_request = (
            {(tp.topic, tp.partition): tp.offset for tp in offsets},
            _Pending(watermark_futures),
        )

    def _top_lane_partitions(self) -> tuple[PartitionKey, ...]:
        if not self.top_partitions:
            topic = self._lanes.top.topic
            try:
                metadata = self._consumer.list_topics(topic, timeout=_ADMIN_TIMEOUT_S)
            except KafkaException:
                return ()
            described = metadata.topics.get(topic)
            if described is None or described.error is not None:
                return ()
            self.top_partitions = tuple((topic, p) for p in sorted(described.partitions))
        return self.top_partitions

    def _harvest_group(self, committed: dict[PartitionKey, int], watermarks: _Pending) -> None:
        try:
            highs = {
                (tp.topic, tp.partition): f.result().offset for tp, f in watermarks.futures.items()
            }
        except KafkaException:
            return
        self._group_committed = committed
        self._group_high = highs
        self.last_broker_answer = time.monotonic()

    def _group_top_lag(self) -> int | None:
        if not self._group_high:
            return None
        lags = []
        for key, high in self._group_high.items():
            committed = self._group_committed.get(key, OFFSET_INVALID)
            # The owner's live position beats a trailing committed offset when we own it.
            position = self._positions.get(key, committed)
            lags.append(
                partition_lag(
                    low=0, high=high, position=position, committed=committed, reset=self._reset
                )
            )
        total = lane_lag(lags)
        return None if total is None else max(0, total - self._group_lag_slack)


# -- the group as seen from outside (``streamproc lag``) ------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupPartitionLag:
    """One row of ``streamproc lag``; ``high_watermark`` is the end offset at the isolation level
    asked (the last stable offset under read_committed)."""

    lane: str
    topic: str
    partition: int
    high_watermark: int
    committed: int | None
    lag_messages: int | None
    paused: bool
    owner: str | None


def group_exists(
    admin: AdminClient,
    group_id: str,
    principal: str | None = None,
    *,
    client_config: Mapping[str, Any],
    topics: Iterable[str] = (),
) -> bool:
    """True when the broker knows ``group_id`` (it has members or committed offsets).

    A group with no member is looked for by its committed offsets on ``topics`` (asked through a
    consumer built from ``client_config``, see :func:`committed_offsets`).

    Raises:
        NotAuthorizedError: the principal may not describe the group (it may well exist).
    """
    future = admin.describe_consumer_groups([group_id], request_timeout=_ADMIN_TIMEOUT_S)[group_id]
    try:
        description = future.result()
    except KafkaException as exc:
        error = exc.args[0]
        if isinstance(error, KafkaError) and is_denied(error):
            raise NotAuthorizedError(
                denial_message(error, principal, f"describing group {group_id!r}")
            ) from exc
        return False
    state = str(getattr(description.state, "name", description.state)).upper()
    if state not in ("DEAD", "UNKNOWN"):
        return True
    # An empty group with committed offsets still exists (state EMPTY); DEAD means none at all.
    metadata = admin.list_topics(timeout=_ADMIN_TIMEOUT_S)
    partitions = [
        TopicPartition(topic, p)
        for topic in topics
        if topic in metadata.topics
        for p in metadata.topics[topic].partitions
    ]
    committed = committed_offsets(client_config, group_id, partitions)
    return any(offset >= 0 for offset, _ in committed.values())


def committed_offsets(
    client_config: Mapping[str, Any], group_id: str, partitions: list[TopicPartition]
) -> dict[PartitionKey, tuple[int, str]]:
    """The committed offset and commit metadata of ``group_id`` on each of ``partitions``.

    Asked with a consumer's ``committed()`` (``OffsetFetch`` through the consumer's group
    coordinator handling), never joining the group. Not the AdminClient's
    ``list_consumer_group_offsets``: librdkafka (up to at least 2.16) dereferences a null group
    handle when that request meets ``NOT_COORDINATOR``, which kills the process whenever the
    group's coordinator moves (librdkafka issue 5040), as it does in every broker restart.
    """
    if not partitions:
        return {}
    consumer = Consumer(
        {
            **client_config,
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
        }
    )
    try:
        offsets = consumer.committed(partitions, timeout=_ADMIN_TIMEOUT_S)
    finally:
        consumer.close()
    return {(tp.topic, tp.partition): (tp.offset, tp.metadata or "") for tp in offsets}


def describe_group_lag(
    admin: AdminClient,
    lanes: Lanes,
    group_id: str,
    isolation_level: IsolationLevel = "read_committed",
    *,
    client_config: Mapping[str, Any],
) -> list[GroupPartitionLag]:
    """Per-lane, per-partition lag of ``group_id`` from the broker's point of view.

    Committed offsets come from :func:`committed_offsets` (a consumer built from
    ``client_config``, the connection keys); the rest from ``admin``.

    The end is asked at ``isolation_level``: under ``read_committed`` it is the last stable
    offset, so records of a transaction still open are not counted as lag yet (the group's
    consumers cannot read them either). ``paused`` comes from the commit metadata the consumer
    writes when it pauses or resumes a partition, so it is visible from any machine.
    """
    metadata = admin.list_topics(timeout=_ADMIN_TIMEOUT_S)
    partitions = [
        TopicPartition(lane.topic, p)
        for lane in lanes
        if lane.topic in metadata.topics
        for p in sorted(metadata.topics[lane.topic].partitions)
    ]
    if not partitions:
        return []
    highs = {
        (tp.topic, tp.partition): future.result().offset
        for tp, future in admin.list_offsets(
            dict.fromkeys(partitions, _LATEST),
            request_timeout=_ADMIN_TIMEOUT_S,
            isolation_level=_kafka_isolation(isolation_level),
        ).items()
    }
    committed = committed_offsets(client_config, group_id, partitions)
    owners: dict[PartitionKey, str] = {}
    description = admin.describe_consumer_groups([group_id], request_timeout=_ADMIN_TIMEOUT_S)[
        group_id
    ].result()
    for member in description.members or ():
        assignment = member.assignment.topic_partitions if member.assignment else []
        for tp in assignment:
            owners[(tp.topic, tp.partition)] = f"{member.client_id}@{member.host}"

    rows = []
    lane_of_topic = {lane.topic: lane.name for lane in lanes}
    for tp in partitions:
        key = (tp.topic, tp.partition)
        offset, meta = committed.get(key, (OFFSET_INVALID, ""))
        high = highs[key]
        lag = partition_lag(low=0, high=high, position=offset, committed=offset)
        rows.append(
            GroupPartitionLag(
                lane=lane_of_topic[tp.topic],
                topic=tp.topic,
                partition=tp.partition,
                high_watermark=high,
                committed=offset if offset >= 0 else None,
                lag_messages=lag,
                paused=meta == PAUSED_METADATA,
                owner=owners.get(key),
            )
        )
    return rows
