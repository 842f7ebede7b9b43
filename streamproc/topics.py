"""Lane topic administration: create the lane topics and their dead-letter topics, check them.

The lanes must have equal partition counts: a consumer group spreads partitions of every lane over
its members, and equal counts keep each member's share of realtime and bulk work balanced.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # OffsetSpec: not re-exported
    AdminClient,
    OffsetSpec,
)
from confluent_kafka.cimpl import NewTopic

from streamproc.access import is_denied
from streamproc.errors import TopicError
from streamproc.lanes import Lanes, dead_letter_topic

ADMIN_TIMEOUT_S = 30.0

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """What the cluster says about one topic."""

    name: str
    exists: bool
    partitions: int = 0
    replication_factor: int = 0


def await_writable(
    admin: AdminClient, topics: Iterable[str], timeout_s: float = ADMIN_TIMEOUT_S
) -> None:
    """Wait until the leader of every partition of ``topics`` serves it.

    A broker names a new partition's leader in its metadata a moment before that leader takes
    the partition on, and produce requests meanwhile fail with ``NOT_LEADER_OR_FOLLOWER``. An
    idempotent producer that meets this with two requests in flight loses the first one while
    reporting it delivered (without an offset): the broker accepts the second request's sequence
    because it has no state for the producer yet (KAFKA-15591, fixed in Apache Kafka 4.5), and
    librdkafka then takes the failed request as acknowledged by the later one. The leader answers
    a ListOffsets request only once it has the partition, so producing after every partition has
    answered one is safe.

    Raises:
        TopicError: a partition still had no serving leader after ``timeout_s``.
    """
    names = list(topics)
    deadline = time.monotonic() + timeout_s
    latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]  # unannotated upstream
    served: set[tuple[str, int]] = set()
    waiting: list[str] = []
    while True:
        left = max(0.1, deadline - time.monotonic())
        try:
            metadata = admin.list_topics(timeout=left)
        except KafkaException as exc:
            waiting = [f"metadata ({exc.args[0].str()})"]
        else:
            known = {
                name: metadata.topics[name].partitions
                for name in names
                if name in metadata.topics
                and metadata.topics[name].error is None
                and metadata.topics[name].partitions
            }
            pending = [
                TopicPartition(name, partition)
                for name, partitions in known.items()
                for partition in partitions
                if (name, partition) not in served
            ]
            if pending:
                request = dict.fromkeys(pending, latest)
                for tp, future in admin.list_offsets(request, request_timeout=left).items():
                    try:
                        future.result()
                    except KafkaException as exc:
                        if not is_denied(exc.args[0]):
                            continue  # not led yet: asked again
                        # Allowed to create, not to describe: nothing to wait with.
                        log.warning("cannot check the leader of %s: %s", tp.topic, exc)
                    served.add((tp.topic, tp.partition))
            waiting = [name for name in names if name not in known] + [
                f"{tp.topic}[{tp.partition}]"
                for tp in pending
                if (tp.topic, tp.partition) not in served
            ]
            if not waiting:
                return
        if time.monotonic() > deadline:
            waited = ", ".join(sorted(waiting))
            raise TopicError(f"no leader serves {waited} after {timeout_s:.0f}s")
        time.sleep(0.05)


class TopicAdmin:
    """Create and describe the lane topics of one topology.

    Args:
        admin: An AdminClient connected to the cluster.
        lanes: The lanes whose topics (and dead-letter topics) are managed.
    """

    def __init__(self, admin: AdminClient, lanes: Lanes) -> None:
        self._admin = admin
        self._lanes = lanes

    @property
    def topics(self) -> tuple[str, ...]:
        """Every managed topic: the lanes, then their dead-letter topics."""
        return (*self._lanes.topics, *(dead_letter_topic(t) for t in self._lanes.topics))

    def describe(self) -> list[TopicInfo]:
        """Describe every managed topic, existing or not."""
        metadata = self._admin.list_topics(timeout=ADMIN_TIMEOUT_S)
        infos = []
        for name in self.topics:
            topic = metadata.topics.get(name)
            if topic is None or topic.error is not None:
                infos.append(TopicInfo(name, exists=False))
                continue
            partitions = topic.partitions
            replicas = len(next(iter(partitions.values())).replicas) if partitions else 0
            infos.append(TopicInfo(name, True, len(partitions), replicas))
        return infos

    def create(
        self,
        *,
        partitions: int,
        replication_factor: int = 1,
        retention_ms: int | None = None,
        dlq_retention_ms: int | None = None,
    ) -> list[str]:
        """Create whatever managed topic is missing, then check the whole set.

        Args:
            partitions: Partition count of every lane topic (dead-letter topics get the same).
            replication_factor: Replicas per partition.
            retention_ms: ``retention.ms`` of the lane topics; None keeps the broker default.
            dlq_retention_ms: ``retention.ms`` of the dead-letter topics; None keeps the default.

        Returns:
            The names of the topics this call created.

        Raises:
            TopicError: creation failed, or existing topics contradict the topology.
        """
        existing = {info.name for info in self.describe() if info.exists}
        lane_topics = set(self._lanes.topics)
        new_topics = []
        for name in self.topics:
            if name in existing:
                continue
            retention = retention_ms if name in lane_topics else dlq_retention_ms
            config = {"retention.ms": str(retention)} if retention is not None else {}
            new_topics.append(NewTopic(name, partitions, replication_factor, config=config))
        created = self._wait([topic.topic for topic in new_topics], new_topics)
        self._await_visible(created)
        # Also those another client created meanwhile (TOPIC_ALREADY_EXISTS): just as new.
        await_writable(self._admin, [topic.topic for topic in new_topics])
        self._check_answer(self._describe_with_lanes(), expected_partitions=partitions)
        return created

    def _describe_with_lanes(self) -> list[TopicInfo]:
        """describe(), asked again while an answer lacks a lane topic (up to the admin timeout).

        In a cluster of several brokers each learns of a new topic from the metadata log on its
        own, and each metadata request may go to another broker than the last: one that has
        shown the created topics does not make the next answer show them.
        """
        deadline = time.monotonic() + ADMIN_TIMEOUT_S
        while True:
            infos = self.describe()
            lanes_known = all(info.exists for info in infos if info.name in self._lanes.topics)
            if lanes_known or time.monotonic() > deadline:
                return infos
            time.sleep(0.05)

    def _await_visible(self, names: list[str]) -> None:
        """Wait until the broker's metadata shows every created topic.

        CreateTopics answers once the controller has committed the topics; the broker that
        serves metadata learns of them a moment later, so a check right away can miss them.
        """
        deadline = time.monotonic() + ADMIN_TIMEOUT_S
        pending = set(names)
        while pending:
            visible = {info.name for info in self.describe() if info.exists and info.partitions}
            pending -= visible
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TopicError(
                    f"created topics not visible after {ADMIN_TIMEOUT_S:.0f}s: "
                    f"{', '.join(sorted(pending))}"
                )
            time.sleep(0.05)

    def _wait(self, names: list[str], new_topics: list[NewTopic]) -> list[str]:
        if not new_topics:
            return []
        futures = self._admin.create_topics(new_topics, request_timeout=ADMIN_TIMEOUT_S)
        created = []
        for name in names:
            try:
                futures[name].result()
                created.append(name)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise TopicError(f"could not create topic {name}: {exc.args[0].str()}") from exc
        return created

    def check(self, expected_partitions: int | None = None) -> list[TopicInfo]:
        """Verify the lane topics exist and share one partition count.

        Raises:
            TopicError: a lane topic is missing or the partition counts differ.
        """
        return self._check_answer(self.describe(), expected_partitions)

    def _check_answer(
        self, infos: list[TopicInfo], expected_partitions: int | None
    ) -> list[TopicInfo]:
        lanes = [info for info in infos if info.name in self._lanes.topics]
        missing = [info.name for info in lanes if not info.exists]
        if missing:
            raise TopicError(
                f"lane topics missing: {', '.join(missing)} (run `streamproc topics create`)"
            )
        counts = {info.name: info.partitions for info in lanes}
        if len(set(counts.values())) > 1:
            raise TopicError(f"lane topics must have equal partition counts, found {counts}")
        if expected_partitions is not None and lanes[0].partitions != expected_partitions:
            raise TopicError(
                f"lane topics have {lanes[0].partitions} partitions, expected {expected_partitions}"
            )
        return infos

    def delete(self, names: Iterable[str] | None = None) -> None:
        """Delete managed topics (tests and demos); missing ones are ignored."""
        targets = list(names) if names is not None else list(self.topics)
        futures = self._admin.delete_topics(targets, request_timeout=ADMIN_TIMEOUT_S)
        for future in futures.values():
            try:
                future.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise TopicError(f"could not delete topic: {exc.args[0].str()}") from exc
