"""TopicAdmin.create against brokers that learn of new topics one after another."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from streamproc.errors import TopicError
from streamproc.lanes import Lanes
from streamproc.topics import TopicAdmin, await_writable


@dataclass
class PartitionMetadata:
    replicas: list[int] = field(default_factory=lambda: [1, 2, 3])


@dataclass
class TopicMetadata:
    partitions: dict[int, PartitionMetadata]
    error: object = None


@dataclass
class ClusterMetadata:
    topics: dict[str, TopicMetadata]


class LaggingBrokers:
    """An admin client whose metadata answers come from brokers in turn; the first
    ``lagging_answers`` answers after a creation come from one that does not know it yet
    (every other answer, as when requests alternate between an up-to-date and a lagging broker).
    """

    def __init__(self, lagging_answers: int, unled_answers: int = 0) -> None:
        self.created: dict[str, int] = {}
        self.lagging_answers = lagging_answers
        self.answers = 0
        # ListOffsets answers "not leader" for every partition this many times first.
        self.unled_answers = unled_answers
        self.offset_requests: list[list[tuple[str, int]]] = []

    def list_offsets(
        self, request: dict[Any, Any], request_timeout: float
    ) -> dict[Any, Future[object]]:
        self.offset_requests.append(sorted((tp.topic, tp.partition) for tp in request))
        futures: dict[Any, Future[object]] = {}
        for tp in request:
            futures[tp] = Future()
            if self.unled_answers > 0 and tp.partition == 0:
                futures[tp].set_exception(
                    KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))
                )
            else:
                futures[tp].set_result(object())
        self.unled_answers -= 1
        return futures

    def create_topics(
        self, new_topics: list[Any], request_timeout: float
    ) -> dict[str, Future[None]]:
        futures: dict[str, Future[None]] = {}
        for topic in new_topics:
            self.created[topic.topic] = topic.num_partitions
            futures[topic.topic] = Future()
            futures[topic.topic].set_result(None)
        return futures

    def list_topics(self, timeout: float) -> ClusterMetadata:
        self.answers += 1
        lagging = self.answers % 2 == 0 and self.lagging_answers > 0
        if lagging:
            self.lagging_answers -= 1
            return ClusterMetadata({})
        return ClusterMetadata(
            {
                name: TopicMetadata({p: PartitionMetadata() for p in range(count)})
                for name, count in self.created.items()
            }
        )


def test_create_asks_again_when_the_answer_comes_from_a_broker_that_lags() -> None:
    brokers = LaggingBrokers(lagging_answers=2)
    admin = TopicAdmin(brokers, Lanes("chunks"))  # type: ignore[arg-type]  # a fake admin client

    created = admin.create(partitions=3, replication_factor=3)

    assert sorted(created) == sorted(admin.topics)
    assert brokers.lagging_answers == 0, "every lagging answer was asked past"


def test_check_still_reports_missing_lane_topics() -> None:
    admin = TopicAdmin(LaggingBrokers(lagging_answers=0), Lanes("chunks"))  # type: ignore[arg-type]

    with pytest.raises(TopicError, match="lane topics missing"):
        admin.check()


def test_create_returns_once_every_new_partition_is_served_by_its_leader() -> None:
    brokers = LaggingBrokers(lagging_answers=0, unled_answers=2)
    admin = TopicAdmin(brokers, Lanes("chunks"))  # type: ignore[arg-type]  # a fake admin client

    admin.create(partitions=3)

    every = sorted((topic, p) for topic in admin.topics for p in range(3))
    assert brokers.offset_requests[0] == every
    # Partition 0 of each topic was not served twice; only those were asked again.
    again = sorted((topic, 0) for topic in admin.topics)
    assert brokers.offset_requests[1:] == [again, again]


def test_await_writable_names_the_partitions_no_leader_serves() -> None:
    brokers = LaggingBrokers(lagging_answers=0, unled_answers=1_000)
    brokers.created["chunks.realtime"] = 2

    with pytest.raises(TopicError, match=r"no leader serves chunks\.realtime\[0\] after"):
        await_writable(brokers, ["chunks.realtime"], timeout_s=0.2)  # type: ignore[arg-type]


def test_await_writable_waits_for_a_topic_the_metadata_does_not_show_yet() -> None:
    brokers = LaggingBrokers(lagging_answers=0)

    with pytest.raises(TopicError, match=r"no leader serves chunks\.bulk after"):
        await_writable(brokers, ["chunks.bulk"], timeout_s=0.2)  # type: ignore[arg-type]


def test_await_writable_waits_for_a_topic_listed_without_partitions() -> None:
    brokers = LaggingBrokers(lagging_answers=0)
    brokers.created["chunks.bulk"] = 0

    with pytest.raises(TopicError, match=r"no leader serves chunks\.bulk after"):
        await_writable(brokers, ["chunks.bulk"], timeout_s=0.2)  # type: ignore[arg-type]


class FlakyMetadata(LaggingBrokers):
    """Its first metadata request fails (a broker restarting), the next ones answer."""

    def list_topics(self, timeout: float) -> ClusterMetadata:
        if self.answers == 0:
            self.answers += 1
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        return super().list_topics(timeout)


def test_await_writable_asks_again_after_a_failed_metadata_request() -> None:
    brokers = FlakyMetadata(lagging_answers=0)
    brokers.created["chunks.bulk"] = 2

    await_writable(brokers, ["chunks.bulk"], timeout_s=5)  # type: ignore[arg-type]

    assert brokers.offset_requests == [[("chunks.bulk", 0), ("chunks.bulk", 1)]]


class DescribeDenied(LaggingBrokers):
    """A principal allowed to create topics but not to describe them: ListOffsets is refused."""

    def list_offsets(
        self, request: dict[Any, Any], request_timeout: float
    ) -> dict[Any, Future[object]]:
        futures: dict[Any, Future[object]] = {}
        for tp in request:
            futures[tp] = Future()
            futures[tp].set_exception(
                KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
            )
        return futures


def test_create_does_not_wait_for_leaders_it_may_not_ask_about() -> None:
    admin = TopicAdmin(DescribeDenied(lagging_answers=0), Lanes("chunks"))  # type: ignore[arg-type]

    assert sorted(admin.create(partitions=3)) == sorted(admin.topics)
