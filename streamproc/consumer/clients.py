"""The Kafka clients of a priority consumer: one consumer per lane, an admin client, the DLQ.

Each lane has its own :class:`confluent_kafka.Consumer` in the one consumer group, subscribed to
its lane topic only. librdkafka keeps one FIFO queue, and one set of fetch thresholds, for all of
a consumer's partitions: with both lanes in one consumer, a bulk backlog fills that queue and a
realtime message is neither fetched early nor handed out before the bulk queued ahead of it. With
a consumer per lane, each lane has its own queue, so realtime is never behind bulk in librdkafka.

The clients come from a :class:`ClientFactory`, so the loop can be driven in tests by fakes; the
default :class:`KafkaClients` builds the real ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from streamproc.deadletter import DeadLetterQueue
from streamproc.lanes import Lane
from streamproc.messages import PartitionKey

RebalanceCallback = Callable[[Any, list[TopicPartition]], None]

# Commit errors that mean the group coordinator is away for now (a broker restarting, the
# coordinator moving or loading the group's offsets): the same commit succeeds once it is back.
COORDINATOR_AWAY = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
        KafkaError._WAIT_COORD,
    }
)


class ClientFactory(Protocol):
    """Builds the Kafka clients a :class:`~streamproc.consumer.PriorityConsumer` uses."""

    def consumer(self, config: dict[str, Any]) -> Consumer: ...

    def admin(self, config: dict[str, Any]) -> AdminClient: ...

    def dead_letters(self, config: dict[str, Any], flush_timeout_s: float) -> DeadLetterQueue: ...


class KafkaClients:
    """The real clients (confluent-kafka)."""

    def consumer(self, config: dict[str, Any]) -> Consumer:
        return Consumer(config)

    def admin(self, config: dict[str, Any]) -> AdminClient:
        return AdminClient(config)

    def dead_letters(self, config: dict[str, Any], flush_timeout_s: float) -> DeadLetterQueue:
        return DeadLetterQueue(config, flush_timeout_s=flush_timeout_s)


class LaneConsumer:
    """One lane's consumer: a thin layer over a ``confluent_kafka.Consumer``.

    Args:
        lane: The lane it reads.
        consumer: A consumer configured for the shared group
            (``ConsumerSettings.to_librdkafka(lane=...)``).
    """

    def __init__(self, lane: Lane, consumer: Consumer) -> None:
        self.lane = lane
        self.consumer = consumer
        self.last_poll = time.monotonic()
        # Set by the first assignment (possibly empty): the consumer has joined the group.
        self.joined = False

    def subscribe(
        self,
        on_assign: RebalanceCallback,
        on_revoke: RebalanceCallback,
        on_lost: RebalanceCallback,
    ) -> None:
        self.consumer.subscribe(
            [self.lane.topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost
        )

    def take(self, most: int, timeout_s: float) -> list[Message]:
        """Up to ``most`` messages, waiting up to ``timeout_s`` for the first one only.

        ``consume(n, timeout)`` waits for n messages or the timeout: at a trickle that would add
        a whole timeout of latency. Rebalance callbacks of this consumer run inside this call.
        """
        messages = self.consumer.consume(1, timeout_s)
        if messages and most > 1:
            messages += self.consumer.consume(most - 1, 0)
        self.last_poll = time.monotonic()
        return messages

    def pause(self, partitions: Iterable[PartitionKey]) -> None:
        if tps := [TopicPartition(t, p) for t, p in partitions]:
            self.consumer.pause(tps)

    def resume(self, partitions: Iterable[PartitionKey]) -> None:
        if tps := [TopicPartition(t, p) for t, p in partitions]:
            self.consumer.resume(tps)

    def store(self, offsets: dict[PartitionKey, int]) -> None:
        """Store next offsets to commit (librdkafka commits stored offsets on an interval)."""
        if offsets:
            self.consumer.store_offsets(
                offsets=[TopicPartition(t, p, offset) for (t, p), offset in offsets.items()]
            )

    def seek(self, topic: str, partition: int, offset: int) -> None:
        self.consumer.seek(TopicPartition(topic, partition, offset))

    def commit_sync(self) -> KafkaError | None:
        """Commit stored offsets now; raises nothing.

        Returns:
            None when committed; else librdkafka's error (``_NO_OFFSET``: nothing was stored
            since the last commit).
        """
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            return error
        return None

    def commit_metadata(self, offsets: list[TopicPartition]) -> None:
        """Commit positions with metadata asynchronously (the published pause state)."""
        self.consumer.commit(offsets=offsets, asynchronous=True)

    def close(self) -> None:
        self.consumer.close()
