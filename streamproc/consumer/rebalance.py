"""Rebalance callbacks of the lane consumers: assign, revoke, lost.

Each lane consumer is its own member of the group and gets its own callbacks, inside its own
``consume()``. The order of each protocol:

* assign: ``incremental_assign`` (or ``assign`` for eager assignors), start tracking the
  partitions' lag, then re-apply the pause book: a partition of a lane the flow policy holds is
  paused at once (``pause()`` before the assignment would be a no-op).
* revoke: finish the revoked partitions' taken chunks (for up to ``revoke_timeout_s``; what is
  left goes back to the next owner), store what finished, commit synchronously, resume what we
  paused of them (librdkafka keeps a pause flag across unassign), unassign, forget them.
* lost: drop their taken chunks and forget them without committing (another member may own them
  already).
* restart (not a rebalance): partitions assigned whose fetching never started
  (:mod:`~streamproc.consumer.fetchwatch`) are unassigned and assigned again, which makes
  librdkafka ask for their committed offsets anew. Nothing of theirs was taken, so the loop's
  bookkeeping stays as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_STORED, TopicPartition

from streamproc.consumer.clients import LaneConsumer
from streamproc.consumer.pausebook import PauseBook
from streamproc.lag import LagMonitor
from streamproc.messages import PartitionKey
from streamproc.metrics import ConsumerMetrics

log = logging.getLogger(__name__)


def describe(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"


class Rebalancer:
    """Carries out the rebalance protocols above for every lane consumer.

    Args:
        cooperative: The assignor is incremental (cooperative-sticky).
        lag: Tracks the assignment and its lag.
        pauses: The pause book, re-applied after each assignment.
        metrics: Rebalance counters and assigned-partition gauges.
        settle: Finish (or give up on) the taken chunks of revoked partitions and store what
            finished.
        drop: Drop the taken chunks of lost partitions, storing nothing.
        forget: Forget partitions in the loop's own bookkeeping (offsets, epochs).
        apply_pauses: Make the paused partitions match the pause book.
        hold_for_priority: Put newly assigned partitions of held lanes into the pause book.
        commit: Commit one lane consumer's stored offsets synchronously.
    """

    def __init__(
        self,
        *,
        cooperative: bool,
        lag: LagMonitor,
        pauses: PauseBook,
        metrics: ConsumerMetrics,
        settle: Callable[[list[PartitionKey]], None],
        drop: Callable[[list[PartitionKey]], None],
        forget: Callable[[list[PartitionKey]], None],
        apply_pauses: Callable[[], None],
        hold_for_priority: Callable[[], None],
        commit: Callable[[LaneConsumer], None],
    ) -> None:
        self._cooperative = cooperative
        self._lag = lag
        self._pauses = pauses
        self._metrics = metrics
        self._settle = settle
        self._drop = drop
        self._forget = forget
        self._apply_pauses = apply_pauses
        self._hold_for_priority = hold_for_priority
        self._commit = commit
        self.count = 0

    def subscribe(self, lane_consumer: LaneConsumer) -> None:
        """Subscribe ``lane_consumer`` to its lane topic with these callbacks."""

        def on_assign(consumer: Any, partitions: list[TopicPartition]) -> None:
            self.assigned(lane_consumer, partitions)

        def on_revoke(consumer: Any, partitions: list[TopicPartition]) -> None:
            self.revoked(lane_consumer, partitions)

        def on_lost(consumer: Any, partitions: list[TopicPartition]) -> None:
            self.lost(lane_consumer, partitions)

        lane_consumer.subscribe(on_assign, on_revoke, on_lost)

    def _count(self, kind: str, partitions: list[TopicPartition]) -> None:
        """Count a rebalance callback that moved partitions. An incremental rebalance calls every
        member, most with nothing to assign: those are not counted."""
        if partitions:
            self._metrics.rebalances.labels(kind=kind).inc()
            self.count += 1

    def assigned(self, lane_consumer: LaneConsumer, partitions: list[TopicPartition]) -> None:
        self._count("assign", partitions)
        lane_consumer.joined = True
        consumer = lane_consumer.consumer
        if self._cooperative:
            consumer.incremental_assign(partitions)
        else:
            self._assign_all(lane_consumer, partitions)
        self._lag.assigned(partitions)
        self._hold_for_priority()
        self._apply_pauses()
        self.update_gauges()
        log.info("assigned %s", describe(partitions))

    def revoked(self, lane_consumer: LaneConsumer, partitions: list[TopicPartition]) -> None:
        self._count("revoke", partitions)
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self._settle(keys)
        self._commit(lane_consumer)
        self._release(lane_consumer, partitions, keys)
        log.info("revoked %s", describe(partitions))

    def lost(self, lane_consumer: LaneConsumer, partitions: list[TopicPartition]) -> None:
        self._count("lost", partitions)
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self._drop(keys)
        self._release(lane_consumer, partitions, keys)
        log.warning("lost %s (not committed)", describe(partitions))

    def restart(self, lane_consumer: LaneConsumer, keys: list[PartitionKey]) -> None:
        """Unassign and assign again ``keys`` of ``lane_consumer``: assigned, never fetched.

        Incremental: ``incremental_unassign`` then ``incremental_assign`` of those partitions
        only (their pause flags survive both). Eager: librdkafka allows only a whole
        ``assign()``, so every other partition of the consumer is assigned again from its
        position (the next offset after the last one taken) and what it had prefetched is
        fetched again, never taken twice; the caller stores their handled offsets again
        (librdkafka forgets them). Raises ``KafkaException`` when librdkafka refuses.

        It runs in the tick whose poll delivered a statistics report saying the membership was
        steady. A rebalance starting between that report and this call would be pending in
        librdkafka's queue, and librdkafka takes an application's incremental unassign for its
        answer to a pending revoke; the window is the rest of one tick, and it opens only after a
        partition went unfetched for ``stuck_fetch_s``.
        """
        consumer = lane_consumer.consumer
        partitions = [TopicPartition(topic, partition) for topic, partition in keys]
        if self._cooperative:
            # Those a failed earlier try left unassigned are only assigned.
            held = {(tp.topic, tp.partition) for tp in consumer.assignment()}
            if unassign := [tp for tp in partitions if (tp.topic, tp.partition) in held]:
                consumer.incremental_unassign(unassign)
            consumer.incremental_assign(partitions)
        else:
            restarting = set(keys)
            self._assign_all(
                lane_consumer,
                [
                    tp
                    if (tp.topic, tp.partition) not in restarting
                    else TopicPartition(tp.topic, tp.partition, OFFSET_STORED)
                    for tp in consumer.position(consumer.assignment())
                ],
            )
            self._apply_pauses()
        self._metrics.fetch_restarts.labels(lane=lane_consumer.lane.name).inc(len(keys))
        log.warning(
            "assigned but never fetched, assigned again: %s (librdkafka lost the committed"
            " offset lookup, as when the group coordinator moves)",
            describe(partitions),
        )

    def _assign_all(self, lane_consumer: LaneConsumer, partitions: list[TopicPartition]) -> None:
        """An eager ``assign()``: it replaces the consumer's whole assignment. librdkafka keeps
        a partition's pause flag across it (2.x, checked); the book still counts the lane's
        partitions as not paused, so the next :meth:`PauseBook.plan` pauses again whatever it
        holds, whatever a client version does."""
        lane_consumer.consumer.assign(partitions)
        self._pauses.unapplied(
            key for key in self._pauses.paused if key[0] == lane_consumer.lane.topic
        )

    def _release(
        self,
        lane_consumer: LaneConsumer,
        partitions: list[TopicPartition],
        keys: list[PartitionKey],
    ) -> None:
        """Resume what we paused of ``partitions``, unassign them, forget them."""
        lane_consumer.resume(self._pauses.forget(keys))
        if self._cooperative:
            lane_consumer.consumer.incremental_unassign(partitions)
        else:
            lane_consumer.consumer.unassign()
        self._forget(keys)
        self._lag.revoked(partitions)
        self.update_gauges()

    def update_gauges(self) -> None:
        counts = dict.fromkeys(self._metrics.lanes, 0)
        lane_of_topic = self._lag.lane_of_topic
        for topic, _ in self._lag.assignment:
            counts[lane_of_topic[topic]] += 1
        for name, count in counts.items():
            self._metrics.lanes[name].assigned.set(count)
        self._metrics.partition_lag.clear()
