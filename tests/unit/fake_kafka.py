"""In-memory stand-ins for the Kafka clients, to drive the consumer loop without a broker.

Only what :class:`~streamproc.consumer.PriorityConsumer` calls is modelled, and simply: one
member per consumer, which gets every partition of its subscribed topics on its first
``consume()``; positions start at the group's committed offset; ``consume()`` takes from assigned,
unpaused partitions in turn. A log entry ``None`` is a control record (a transaction marker): never
returned, but taken past like librdkafka does, so ``position()`` (the application position) moves
past it. A partition in ``stuck`` is assigned but never fetched (librdkafka after a lost committed
offset lookup) until it is assigned again; ``report_statistics()`` delivers a statistics event
with each partition's fetch state inside the next ``consume()``. Every call that matters is
recorded in ``calls`` so tests can check
the order of a protocol (store, commit, resume, unassign). The real broker proves the
integration (tests/integration); these prove the loop's decisions in milliseconds.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from confluent_kafka import (
    OFFSET_INVALID,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

Key = tuple[str, int]
Callback = Callable[[Any, list[TopicPartition]], None]


@dataclass
class FakeBroker:
    """Partition logs and the group's committed offsets."""

    partitions: dict[str, int]
    logs: dict[Key, list[Message | None]] = field(default_factory=dict)
    committed: dict[Key, int] = field(default_factory=dict)
    # Notified on every produce: a consume() waiting for its first message wakes at once.
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def produce(
        self, topic: str, partition: int, value: bytes | None, key: bytes | None = None
    ) -> None:
        with self.arrived:
            log = self.logs.setdefault((topic, partition), [])
            log.append(
                Message(
                    topic=topic,
                    partition=partition,
                    offset=len(log),
                    key=key,
                    value=value,
                    timestamp=(1, int(time.time() * 1000)),
                )
            )
            self.arrived.notify_all()

    def produce_marker(self, topic: str, partition: int) -> None:
        """Append a control record (a transaction's commit or abort marker)."""
        self.logs.setdefault((topic, partition), []).append(None)

    def high(self, key: Key) -> int:
        return len(self.logs.get(key, []))


class FakeConsumer:
    """One member: see the module docstring."""

    def __init__(self, broker: FakeBroker, config: dict[str, Any]) -> None:
        self.broker = broker
        self.config = config
        self.client_id: str = config["client.id"]
        self.topics: list[str] = []
        self.callbacks: dict[str, Callback] = {}
        self.assigned: set[Key] = set()
        self.paused: set[Key] = set()
        self.positions: dict[Key, int] = {}
        # librdkafka's application position: past the last message or marker taken; unset
        # until something is taken after an assignment or a seek.
        self.app_positions: dict[Key, int] = {}
        self.stored: dict[Key, int] = {}
        self.stored_since_commit = False
        self.calls: list[tuple[str, Any]] = []
        self.polls: list[float] = []
        self.pending: list[tuple[str, list[TopicPartition]]] = []
        self.stuck: set[Key] = set()
        self.statistics_due = 0
        # Error codes the next synchronous commits fail with, one per commit.
        self.commit_errors: list[int] = []
        self.closed = False

    # -- what the consumer calls ------------------------------------------------------------

    def subscribe(self, topics: list[str], **callbacks: Callback) -> None:
        self.topics = topics
        self.callbacks = callbacks
        everything = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in range(self.broker.partitions[topic])
        ]
        self.pending.append(("on_assign", everything))

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        self.polls.append(time.monotonic())
        while self.pending:
            name, partitions = self.pending.pop(0)
            self.callbacks[name](self, partitions)
        while self.statistics_due:
            self.statistics_due -= 1
            self.config["stats_cb"](json.dumps(self.statistics()))
        taken = self._take(num_messages)
        if not taken and timeout and timeout > 0:
            # Like librdkafka: wait up to the timeout for a message to arrive.
            with self.broker.arrived:
                self.broker.arrived.wait(timeout)
            taken = self._take(num_messages)
        return taken

    def _take(self, num_messages: int) -> list[Message]:
        taken: list[Message] = []
        runnable = sorted(self.assigned - self.paused - self.stuck)
        progress = True
        while len(taken) < num_messages and progress:
            progress = False
            for key in runnable:
                position = self.positions[key]
                log = self.broker.logs.get(key, [])
                if position < len(log) and len(taken) < num_messages:
                    message = log[position]
                    if message is not None:
                        taken.append(message)
                    self.positions[key] = position + 1
                    self.app_positions[key] = position + 1
                    progress = True
        return taken

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("assign", _keys(partitions)))
        for tp in partitions:
            key = (tp.topic, tp.partition)
            assert key not in self.assigned, f"{key} is already part of the current assignment"
            self.assigned.add(key)
            start = tp.offset if tp.offset >= 0 else self.broker.committed.get(key, 0)
            self.positions[key] = max(0, start)
            self.app_positions.pop(key, None)

    def assign(self, partitions: list[TopicPartition]) -> None:
        """Eager: the whole assignment replaced (pause flags kept, as librdkafka does)."""
        self.calls.append(("assign_all", _keys(partitions)))
        self.stuck.clear()
        self.assigned.clear()
        self.positions.clear()
        self.app_positions.clear()
        self.stored.clear()
        self.incremental_assign(partitions)
        self.calls.pop()

    def incremental_unassign(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("unassign", _keys(partitions)))
        for key in _keys(partitions):
            self.assigned.discard(key)
            self.stuck.discard(key)
            self.positions.pop(key, None)
            self.app_positions.pop(key, None)
            self.stored.pop(key, None)

    def unassign(self) -> None:
        self.incremental_unassign([TopicPartition(t, p) for t, p in self.assigned])

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("pause", _keys(partitions)))
        self.paused.update(_keys(partitions))

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("resume", _keys(partitions)))
        self.paused.difference_update(_keys(partitions))

    def seek(self, partition: TopicPartition) -> None:
        self.positions[(partition.topic, partition.partition)] = partition.offset
        self.app_positions.pop((partition.topic, partition.partition), None)

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(
                tp.topic,
                tp.partition,
                self.app_positions.get((tp.topic, tp.partition), OFFSET_INVALID),
            )
            for tp in partitions
        ]

    def store_offsets(self, offsets: list[TopicPartition]) -> None:
        for tp in offsets:
            key = (tp.topic, tp.partition)
            if key not in self.assigned:
                raise KafkaException(KafkaError(KafkaError._STATE))
            self.stored[key] = tp.offset
            self.stored_since_commit = True
        self.calls.append(("store", {(tp.topic, tp.partition): tp.offset for tp in offsets}))

    def commit(
        self, offsets: list[TopicPartition] | None = None, asynchronous: bool = True
    ) -> None:
        if offsets is not None:
            self.calls.append(("commit_metadata", _keys(offsets)))
            for tp in offsets:
                self.broker.committed[(tp.topic, tp.partition)] = tp.offset
            return
        if not self.stored_since_commit:
            raise KafkaException(KafkaError(KafkaError._NO_OFFSET))
        if self.commit_errors:
            code = self.commit_errors.pop(0)
            self.calls.append(("commit_failed", code))
            raise KafkaException(KafkaError(code))
        self.calls.append(("commit", dict(self.stored)))
        self.broker.committed.update(self.stored)
        self.stored_since_commit = False

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[Any]:
        return [
            TopicPartition(
                tp.topic,
                tp.partition,
                self.broker.committed.get((tp.topic, tp.partition), OFFSET_INVALID),
            )
            for tp in partitions
        ]

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float | None = None, cached: bool = False
    ) -> tuple[int, int]:
        return 0, self.broker.high((partition.topic, partition.partition))

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        assert topic is not None
        partitions = dict.fromkeys(range(self.broker.partitions[topic]))
        return SimpleNamespace(topics={topic: SimpleNamespace(partitions=partitions, error=None)})

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in sorted(self.assigned)]

    def statistics(self) -> dict[str, Any]:
        """A statistics document with each partition's fetch state, like librdkafka's."""
        topics: dict[str, Any] = {}
        for topic in self.topics:
            partitions: dict[str, Any] = {"-1": {"fetch_state": "none"}}
            for partition in range(self.broker.partitions[topic]):
                key = (topic, partition)
                fetching = key in self.assigned and key not in self.stuck
                partitions[str(partition)] = {"fetch_state": "active" if fetching else "none"}
            topics[topic] = {"partitions": partitions}
        return {
            "ts": time.monotonic_ns() // 1000,
            "cgrp": {"state": "up", "join_state": "steady"},
            "topics": topics,
        }

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closed = True

    # -- what tests do --------------------------------------------------------------------------

    def report_statistics(self) -> None:
        """Deliver a statistics event inside the next ``consume()``."""
        self.statistics_due += 1

    def revoke(self, keys: list[Key], *, lost: bool = False) -> None:
        """Deliver a revoke (or lost) of ``keys`` inside the next ``consume()``."""
        self.pending.append(
            ("on_lost" if lost else "on_revoke", [TopicPartition(t, p) for t, p in keys])
        )


class FakeAdmin:
    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker

    def list_offsets(self, request: dict[TopicPartition, Any], **_: Any) -> dict[Any, Future[Any]]:
        answers: dict[Any, Future[Any]] = {}
        for tp in request:
            future: Future[Any] = Future()
            future.set_result(SimpleNamespace(offset=self.broker.high((tp.topic, tp.partition))))
            answers[tp] = future
        return answers


class FakeDeadLetters:
    def __init__(self) -> None:
        self.parked: list[tuple[Message, str]] = []

    def park(self, message: Message, error: BaseException, *, lane: str, attempts: int = 1) -> None:
        self.parked.append((message, lane))

    def close(self) -> None:
        pass


class FakeClients:
    """A :class:`~streamproc.consumer.ClientFactory` of fakes on one :class:`FakeBroker`."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.consumers: dict[str, FakeConsumer] = {}
        self.dlq = FakeDeadLetters()

    def consumer(self, config: dict[str, Any]) -> Any:
        consumer = FakeConsumer(self.broker, config)
        self.consumers[consumer.client_id] = consumer
        return consumer

    def admin(self, config: dict[str, Any]) -> Any:
        return FakeAdmin(self.broker)

    def dead_letters(self, config: dict[str, Any], flush_timeout_s: float) -> Any:
        return self.dlq


def _keys(partitions: list[TopicPartition]) -> list[Key]:
    return [(tp.topic, tp.partition) for tp in partitions]
