"""LagMonitor with librdkafka's application positions and statistics (in-memory clients).

The application position librdkafka reports right after a partition is assigned again may still
be the previous assignment's: it is cleared asynchronously when fetching stops. Storing it could
skip chunks the previous assignment took and never finished, so it is used only once it is known
to be this assignment's.
"""

from __future__ import annotations

import json
from typing import Any

from confluent_kafka import TopicPartition
from fake_kafka import FakeAdmin, FakeBroker, FakeConsumer

from streamproc.lag import LagMonitor
from streamproc.lanes import Lanes

REALTIME, BULK = "chunks.realtime", "chunks.bulk"
KEY = (REALTIME, 0)


def monitor(
    unfinished: dict[tuple[str, int], int] | None = None, **options: Any
) -> tuple[LagMonitor, FakeConsumer, FakeBroker]:
    broker = FakeBroker({REALTIME: 1, BULK: 1})
    for _ in range(10):
        broker.produce(REALTIME, 0, b"x")
    broker.produce_marker(REALTIME, 0)
    config = {"client.id": "c"}
    realtime, bulk, query = (FakeConsumer(broker, config) for _ in range(3))
    counts = unfinished if unfinished is not None else {}
    lag = LagMonitor(
        {REALTIME: realtime, BULK: bulk},
        FakeAdmin(broker),
        query,
        Lanes("chunks"),
        group_id="g",
        scope="local",
        unfinished=lambda key: counts.get(key, 0),
        **options,
    )
    broker.committed[KEY] = 4
    lag.assigned([TopicPartition(REALTIME, 0)])
    return lag, realtime, broker


def statistics(*, high: int, stable: int) -> str:
    """A librdkafka statistics event listing partition 0 of the realtime topic."""
    partition = {"hi_offset": high, "ls_offset": stable}
    return json.dumps({"topics": {REALTIME: {"partitions": {"0": partition}}}})


def test_a_stale_application_position_is_never_stored() -> None:
    lag, realtime, _ = monitor()
    realtime.app_positions[KEY] = 11  # the previous assignment's, not cleared yet
    snapshot = lag.snapshot(set())
    assert lag.drained_positions() == {}
    # Its lag is measured from the committed offset, as before anything is taken.
    assert snapshot.lanes["realtime"].lag_messages == 11 - 4
    # librdkafka clears it (fetching stopped), then this assignment takes up to the marker.
    del realtime.app_positions[KEY]
    lag.snapshot(set())
    realtime.app_positions[KEY] = 11
    snapshot = lag.snapshot(set())
    assert lag.drained_positions() == {KEY: 11}
    assert snapshot.lanes["realtime"].lag_messages == 0


def test_a_chunk_handled_in_this_assignment_makes_the_position_current() -> None:
    unfinished = {KEY: 0}
    lag, realtime, _ = monitor(unfinished)
    realtime.app_positions[KEY] = 11
    lag.handled(REALTIME, 0, 9, timestamp_ms=1)
    lag.snapshot(set())
    assert lag.drained_positions() == {KEY: 11}
    unfinished[KEY] = 1  # one chunk below it still in hand: nothing to store
    assert lag.drained_positions() == {}


def test_revoked_partitions_lose_their_position_and_holds() -> None:
    lag, realtime, _ = monitor()
    realtime.app_positions[KEY] = 11
    lag.handled(REALTIME, 0, 9, timestamp_ms=1)
    lag.statistics(statistics(high=14, stable=11))
    lag.snapshot(set())
    lag.revoked([TopicPartition(REALTIME, 0)])
    assert lag.drained_positions() == {}
    assert lag.lso_held_s() == []
    assert lag.lso_holds.latest(KEY) is None


def test_statistics_give_the_lso_the_lag_ends_at() -> None:
    lag, realtime, broker = monitor()
    for _ in range(3):  # an open transaction: three records past the LSO
        broker.produce(REALTIME, 0, b"open")
    realtime.app_positions[KEY] = 11
    lag.handled(REALTIME, 0, 9, timestamp_ms=1)
    # No statistics event yet: the end offset asked of the broker on assignment (11) stands in.
    assert lag.snapshot(set()).lanes["realtime"].lag_messages == 0
    lag.statistics(statistics(high=14, stable=11))
    assert lag.snapshot(set()).lanes["realtime"].lag_messages == 0
    # Written in transactions: records written since the statistics event are not lag yet (they
    # start past the LSO); the next event says what was committed.
    for _ in range(300):
        broker.produce(REALTIME, 0, b"open")
    assert lag.snapshot(set()).lanes["realtime"].lag_messages == 0
    lag.statistics(statistics(high=314, stable=14))
    assert lag.snapshot(set()).lanes["realtime"].lag_messages == 3
    held = lag.lso_held_s()
    assert [(lane, topic, partition) for lane, topic, partition, _ in held] == [
        ("realtime", REALTIME, 0)
    ]


def test_read_uncommitted_ignores_the_lso() -> None:
    lag, realtime, broker = monitor(isolation_level="read_uncommitted")
    for _ in range(3):
        broker.produce(REALTIME, 0, b"open")
    realtime.app_positions[KEY] = 11
    lag.handled(REALTIME, 0, 9, timestamp_ms=1)
    lag.statistics(statistics(high=14, stable=11))
    assert lag.snapshot(set()).lanes["realtime"].lag_messages == 3
    assert lag.start_offset(REALTIME, 0) == 10
