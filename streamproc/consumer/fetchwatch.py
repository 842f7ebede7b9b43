"""Finds assigned partitions whose fetching never started, so the loop can restart them.

When a lane consumer is assigned a partition, librdkafka asks the group coordinator for the
partition's committed offset and starts fetching when the answer comes. If that request fails as
a whole (``NOT_COORDINATOR`` while the coordinator moves, as in a broker restart), librdkafka
reports "Failed to fetch committed offsets for 0 partition(s)" and keeps the partitions waiting
for an answer that never comes: they stay assigned and are never fetched until the application
unassigns and assigns them again (librdkafka issue #5586; a partition-level failure of the same
request is documented to need the same). A stuck realtime partition looks like growing realtime
lag, so the flow policy also holds bulk back: the whole member stops.

:class:`FetchWatchdog` reads what librdkafka reports in its statistics
(:class:`~streamproc.kafkastats.FetchReport`): a partition assigned to the lane consumer and not
fetching in every report for ``stuck_after_s`` of librdkafka's clock, within one assignment and
while the consumer's group membership is steady (no coordinator search, no rebalance under way),
is stuck. A partition just assigned starts within milliseconds; one waiting for a coordinator is
not counted; a paused one stays "active". Pure: no Kafka client here.
"""

from __future__ import annotations

from collections.abc import Mapping

from streamproc.kafkastats import FetchReport
from streamproc.messages import PartitionKey


class FetchWatchdog:
    """Stuck partitions of one lane consumer (one topic), from its statistics reports.

    Args:
        topic: The lane consumer's topic.
        stuck_after_s: How long an assigned partition may go unfetched.
    """

    def __init__(self, topic: str, stuck_after_s: float) -> None:
        self.topic = topic
        self.stuck_after_s = stuck_after_s
        # Partitions not fetching in every report since the first that said so: the assignment
        # epoch and the time of that first report.
        self._suspects: dict[PartitionKey, tuple[int, float]] = {}

    def report(
        self, report: FetchReport, epochs: Mapping[PartitionKey, int]
    ) -> dict[PartitionKey, int]:
        """One statistics report of the lane consumer.

        Args:
            report: What the report says.
            epochs: The consumer's assigned partitions, each with its assignment epoch (a new
                epoch starts at each revoke or loss).

        Returns:
            The assigned partitions not fetching since a report at least ``stuck_after_s``
            earlier, in the same assignment epoch, each with that epoch: to restart. Their clock
            starts again at the next report that finds them not fetching.
        """
        if not report.in_steady_group:
            self._suspects = {}  # a rebalance or a coordinator search: not fetching is expected
            return {}
        stuck: dict[PartitionKey, int] = {}
        suspects: dict[PartitionKey, tuple[int, float]] = {}
        for partition in report.not_fetching:
            key = (self.topic, partition)
            epoch = epochs.get(key)
            if epoch is None:
                continue  # not ours
            seen = self._suspects.get(key)
            if seen is None or seen[0] != epoch:
                suspects[key] = (epoch, report.time_s)
            elif report.time_s - seen[1] >= self.stuck_after_s:
                stuck[key] = epoch
            else:
                suspects[key] = seen
        self._suspects = suspects
        return stuck
