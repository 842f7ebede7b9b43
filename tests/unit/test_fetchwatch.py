"""FetchWatchdog and the statistics it reads: which assigned partitions never started fetching."""

from __future__ import annotations

import json

import pytest

from streamproc.consumer.fetchwatch import FetchWatchdog
from streamproc.kafkastats import FetchReport, fetch_report

T = "chunks.realtime"
P0, P1 = (T, 0), (T, 1)


def at(time_s: float, *partitions: int, steady: bool = True) -> FetchReport:
    return FetchReport(time_s=time_s, in_steady_group=steady, not_fetching=frozenset(partitions))


def test_a_partition_not_fetching_for_the_whole_wait_in_one_assignment_is_stuck() -> None:
    watch = FetchWatchdog(T, stuck_after_s=10)
    assert watch.report(at(0.0, 0), {P0: 0, P1: 0}) == {}
    assert watch.report(at(9.9, 0), {P0: 0, P1: 0}) == {}, "not yet: it may still be starting"
    assert watch.report(at(10.0, 0), {P0: 0, P1: 0}) == {P0: 0}


def test_after_a_restart_the_wait_starts_again() -> None:
    watch = FetchWatchdog(T, stuck_after_s=10)
    watch.report(at(0.0, 0), {P0: 3})
    assert watch.report(at(10.0, 0), {P0: 3}) == {P0: 3}
    assert watch.report(at(11.0, 0), {P0: 3}) == {}
    assert watch.report(at(20.9, 0), {P0: 3}) == {}
    assert watch.report(at(21.0, 0), {P0: 3}) == {P0: 3}


def test_fetching_in_between_clears_the_suspicion() -> None:
    watch = FetchWatchdog(T, stuck_after_s=10)
    watch.report(at(0.0, 0), {P0: 0})
    watch.report(at(5.0), {P0: 0})
    assert watch.report(at(12.0, 0), {P0: 0}) == {}
    assert watch.report(at(22.0, 0), {P0: 0}) == {P0: 0}


def test_a_new_assignment_of_the_partition_starts_the_wait_again() -> None:
    watch = FetchWatchdog(T, stuck_after_s=10)
    watch.report(at(0.0, 0), {P0: 0})
    # Revoked and assigned again in between: epoch 1 is a new assignment, just starting.
    assert watch.report(at(10.0, 0), {P0: 1}) == {}
    assert watch.report(at(20.0, 0), {P0: 1}) == {P0: 1}


def test_while_the_membership_is_not_steady_nothing_is_stuck_and_the_wait_starts_again() -> None:
    # Looking for the coordinator, or in a rebalance: partitions wait for it, legitimately.
    watch = FetchWatchdog(T, stuck_after_s=10)
    watch.report(at(0.0, 0), {P0: 0})
    assert watch.report(at(30.0, 0, steady=False), {P0: 0}) == {}
    assert watch.report(at(31.0, 0), {P0: 0}) == {}
    assert watch.report(at(41.0, 0), {P0: 0}) == {P0: 0}


def test_partitions_not_assigned_to_this_consumer_are_never_stuck() -> None:
    watch = FetchWatchdog(T, stuck_after_s=0)
    watch.report(at(0.0, 0, 1), {P0: 0})
    assert watch.report(at(1.0, 0, 1), {P0: 0}) == {P0: 0}


def statistics(states: dict[str, str], *, join_state: str = "steady", topic: str = T) -> str:
    partitions = {
        p: {"partition": int(p), "fetch_state": s, "fetchq_cnt": 0} for p, s in states.items()
    }
    return json.dumps(
        {
            "name": "rdkafka#consumer-1",
            "ts": 5_000_000_123,
            "cgrp": {"state": "up", "join_state": join_state, "rebalance_age": 1200},
            "topics": {topic: {"partitions": partitions}},
        }
    )


def test_a_fetch_report_names_partitions_never_started_or_stopped() -> None:
    document = statistics(
        {"0": "active", "1": "none", "2": "stopped", "3": "offset-query", "4": "offset-wait",
         "-1": "none"}
    )  # fmt: skip
    report = fetch_report(document, T)
    # A paused partition stays "active"; offset-query/-wait are librdkafka's own retries.
    assert report.not_fetching == {1, 2}
    assert report.in_steady_group
    assert report.time_s == pytest.approx(5_000.000123)


def test_a_fetch_report_during_a_rebalance_or_without_a_coordinator_is_not_steady() -> None:
    assert not fetch_report(statistics({}, join_state="wait-unassign-call"), T).in_steady_group
    assert not fetch_report(json.dumps({"cgrp": {"state": "wait-coord"}}), T).in_steady_group
    assert not fetch_report("{}", T).in_steady_group


def test_a_fetch_report_of_a_topic_the_document_does_not_name_names_nothing() -> None:
    assert fetch_report(statistics({"0": "none"}, topic="other"), T).not_fetching == frozenset()
    assert fetch_report({"topics": {}}, T).not_fetching == frozenset()


def test_a_fetch_report_refuses_what_is_not_a_statistics_document() -> None:
    with pytest.raises(ValueError):
        fetch_report("[]", T)
    with pytest.raises(ValueError):
        fetch_report("not json", T)
