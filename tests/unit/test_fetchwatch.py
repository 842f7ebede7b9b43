"""FetchWatchdog and the statistics it reads: which assigned partitions never started fetching."""

from __future__ import annotations

import json

import pytest

from streamproc.consumer.fetchwatch import FetchWatchdog
from streamproc.kafkastats import unstarted_partitions

T = "chunks.realtime"
P0, P1 = (T, 0), (T, 1)


def test_a_partition_not_fetching_for_the_whole_wait_in_one_assignment_is_stuck() -> None:
    watch = FetchWatchdog(stuck_after_s=10)
    assert watch.report(0.0, [P0], {P0: 0, P1: 0}) == []
    assert watch.report(9.9, [P0], {P0: 0, P1: 0}) == [], "not yet: it may still be starting"
    assert watch.report(10.0, [P0], {P0: 0, P1: 0}) == [P0]


def test_after_a_restart_the_wait_starts_again() -> None:
    watch = FetchWatchdog(stuck_after_s=10)
    watch.report(0.0, [P0], {P0: 0})
    assert watch.report(10.0, [P0], {P0: 0}) == [P0]
    assert watch.report(11.0, [P0], {P0: 0}) == []
    assert watch.report(20.9, [P0], {P0: 0}) == []
    assert watch.report(21.0, [P0], {P0: 0}) == [P0]


def test_fetching_in_between_clears_the_suspicion() -> None:
    watch = FetchWatchdog(stuck_after_s=10)
    watch.report(0.0, [P0], {P0: 0})
    watch.report(5.0, [], {P0: 0})
    assert watch.report(12.0, [P0], {P0: 0}) == []
    assert watch.report(22.0, [P0], {P0: 0}) == [P0]


def test_a_new_assignment_of_the_partition_starts_the_wait_again() -> None:
    watch = FetchWatchdog(stuck_after_s=10)
    watch.report(0.0, [P0], {P0: 0})
    # Revoked and assigned again in between: epoch 1 is a new assignment, just starting.
    assert watch.report(10.0, [P0], {P0: 1}) == []
    assert watch.report(20.0, [P0], {P0: 1}) == [P0]


def test_partitions_not_assigned_to_this_consumer_are_never_stuck() -> None:
    watch = FetchWatchdog(stuck_after_s=0)
    watch.report(0.0, [P0, P1], {P0: 0})
    assert watch.report(1.0, [P0, P1], {P0: 0}) == [P0]


def statistics(states: dict[str, str], topic: str = T) -> str:
    partitions = {
        p: {"partition": int(p), "fetch_state": s, "fetchq_cnt": 0} for p, s in states.items()
    }
    return json.dumps({"name": "rdkafka#consumer-1", "topics": {topic: {"partitions": partitions}}})


def test_unstarted_partitions_are_those_never_started_or_stopped() -> None:
    document = statistics(
        {"0": "active", "1": "none", "2": "stopped", "3": "offset-query", "4": "offset-wait",
         "-1": "none"}
    )  # fmt: skip
    # A paused partition stays "active"; offset-query/-wait are librdkafka's own retries.
    assert unstarted_partitions(document, T) == {1, 2}


def test_unstarted_partitions_of_a_topic_the_document_does_not_name_are_none() -> None:
    assert unstarted_partitions(statistics({"0": "none"}, topic="other"), T) == frozenset()
    assert unstarted_partitions({"topics": {}}, T) == frozenset()


def test_unstarted_partitions_refuses_what_is_not_a_statistics_document() -> None:
    with pytest.raises(ValueError):
        unstarted_partitions("[]", T)
    with pytest.raises(ValueError):
        unstarted_partitions("not json", T)
