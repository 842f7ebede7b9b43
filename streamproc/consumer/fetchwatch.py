"""Finds assigned partitions whose fetching never started, so the loop can restart them.

When a lane consumer is assigned a partition, librdkafka asks the group coordinator for the
partition's committed offset and starts fetching when the answer comes. If that request fails as
a whole (``NOT_COORDINATOR`` while the coordinator moves, as in a broker restart), librdkafka
reports "Failed to fetch committed offsets for 0 partition(s)" and keeps the partitions waiting
for an answer that never comes: they stay assigned and are never fetched until the application
unassigns and assigns them again (librdkafka issue #5586; a partition-level failure of the same
request is documented to need the same). A stuck realtime partition looks like growing realtime
lag, so the flow policy also holds bulk back: the whole member stops.

:class:`FetchWatchdog` reads the fetch state librdkafka reports in its statistics: a partition
assigned to the lane consumer and not fetching for ``STUCK_AFTER_S`` (from the first report that
said so to a later one, within one assignment) is stuck. A partition just assigned starts within
milliseconds, or seconds while the coordinator loads; a paused one stays "active". Pure: no Kafka
client here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from streamproc.messages import PartitionKey

STUCK_AFTER_S = 10.0


class FetchWatchdog:
    """Stuck partitions of one lane consumer, from its statistics reports."""

    def __init__(self, stuck_after_s: float | None = None) -> None:
        self.stuck_after_s = STUCK_AFTER_S if stuck_after_s is None else stuck_after_s
        # Partitions not fetching in every report since the first that said so: the assignment
        # epoch and the time of that first report.
        self._suspects: dict[PartitionKey, tuple[int, float]] = {}

    def report(
        self, now: float, not_fetching: Iterable[PartitionKey], epochs: Mapping[PartitionKey, int]
    ) -> list[PartitionKey]:
        """One statistics report of the lane consumer, at ``now`` (monotonic seconds).

        Args:
            not_fetching: Partitions the report says are not fetching (assigned or not).
            epochs: The consumer's assigned partitions, each with its assignment epoch (a new
                epoch starts at each revoke or loss).

        Returns:
            The assigned partitions not fetching since a report at least ``stuck_after_s`` ago,
            in the same assignment epoch: to restart. Their clock starts again at the next
            report that finds them not fetching.
        """
        stuck: list[PartitionKey] = []
        suspects: dict[PartitionKey, tuple[int, float]] = {}
        for key in not_fetching:
            epoch = epochs.get(key)
            if epoch is None:
                continue  # not ours
            seen = self._suspects.get(key)
            if seen is None or seen[0] != epoch:
                suspects[key] = (epoch, now)
            elif now - seen[1] >= self.stuck_after_s:
                stuck.append(key)
            else:
                suspects[key] = seen
        self._suspects = suspects
        return sorted(stuck)
