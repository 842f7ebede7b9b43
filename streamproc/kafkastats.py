"""The few librdkafka statistics operators ask for, read from its statistics JSON.

librdkafka reports statistics every ``statistics.interval.ms`` as one JSON document
(`STATISTICS.md` of librdkafka). A lane consumer's document answers two questions the other
metrics cannot: how much is prefetched and waiting in the lane's local queue (the queue a realtime
message waits in), and how long the brokers take to answer (a slow broker looks like a slow
handler from outside). Pure: no Kafka client here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Statistics = str | Mapping[str, Any]
"""A librdkafka statistics event: its JSON text, or the document once decoded."""


def statistics_document(statistics: Statistics) -> Any:
    """The decoded document of a statistics event (decoded once, read by every consumer of it).

    Raises:
        ValueError: the text is not JSON.
    """
    return json.loads(statistics) if isinstance(statistics, str) else statistics


@dataclass(frozen=True, slots=True)
class BrokerRtt:
    """Round-trip time of requests to one broker over the last statistics window (seconds)."""

    broker: str
    avg_s: float
    p99_s: float


@dataclass(frozen=True, slots=True)
class ClientStatistics:
    """What streamproc exports of one statistics document."""

    fetch_queue_messages: int
    fetch_queue_bytes: int
    brokers: tuple[BrokerRtt, ...] = field(default=())


def parse_statistics(text: Statistics) -> ClientStatistics:
    """Sum the fetch queues over the partitions the consumer fetches; RTT per real broker.

    Partition ``-1`` (librdkafka's internal unassigned partition) and the bootstrap and internal
    broker entries are left out. A broker with no request in the window reports zeros.

    Raises:
        ValueError: ``text`` is not a statistics document.
    """
    document: Any = statistics_document(text)
    if not isinstance(document, dict):
        raise ValueError("librdkafka statistics must be a JSON object")
    messages = 0
    size = 0
    for topic in (document.get("topics") or {}).values():
        for partition_id, partition in (topic.get("partitions") or {}).items():
            if partition_id == "-1":
                continue
            messages += int(partition.get("fetchq_cnt", 0))
            size += int(partition.get("fetchq_size", 0))
    brokers = []
    for broker in (document.get("brokers") or {}).values():
        if broker.get("nodeid", -1) < 0 or broker.get("source") not in ("learned", "configured"):
            continue
        rtt = broker.get("rtt") or {}
        brokers.append(
            BrokerRtt(
                broker=str(broker.get("nodename", broker.get("name", "?"))),
                avg_s=float(rtt.get("avg", 0)) / 1e6,
                p99_s=float(rtt.get("p99", 0)) / 1e6,
            )
        )
    return ClientStatistics(messages, size, tuple(sorted(brokers, key=lambda b: b.broker)))


# librdkafka's fetch states of a partition whose fetcher is not running: never started, or
# stopped by an unassign. Paused partitions stay "active" (a pause only skips their fetches).
NOT_FETCHING = frozenset({"none", "stopped"})


@dataclass(frozen=True, slots=True)
class FetchReport:
    """What one statistics document says of a lane consumer's fetching.

    Attributes:
        time_s: When librdkafka wrote it (its ``ts``: monotonic seconds of librdkafka's clock).
        in_steady_group: The consumer is in the group and no rebalance is under way (``cgrp``
            state ``up``, join state ``steady``): partitions it was assigned should be fetching.
        not_fetching: Partitions of the topic whose fetcher is not running (``fetch_state``
            ``none`` or ``stopped``), assigned or not: the caller intersects with its assignment.
    """

    time_s: float
    in_steady_group: bool
    not_fetching: frozenset[int]


def fetch_report(statistics: Statistics, topic: str) -> FetchReport:
    """The :class:`FetchReport` of ``topic`` in a statistics document.

    Raises:
        ValueError: not a statistics document.
    """
    document: Any = statistics_document(statistics)
    if not isinstance(document, dict):
        raise ValueError("librdkafka statistics must be a JSON object")
    group = document.get("cgrp") or {}
    partitions = ((document.get("topics") or {}).get(topic) or {}).get("partitions") or {}
    return FetchReport(
        time_s=float(document.get("ts", 0)) / 1e6,
        in_steady_group=group.get("state") == "up" and group.get("join_state") == "steady",
        not_fetching=frozenset(
            int(partition_id)
            for partition_id, partition in partitions.items()
            if partition_id != "-1" and partition.get("fetch_state") in NOT_FETCHING
        ),
    )
