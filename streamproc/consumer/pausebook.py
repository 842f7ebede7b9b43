"""Why each partition is held: one book for every kind of pause, applied as a diff.

Pure bookkeeping, no Kafka. A partition is paused while at least one reason holds it:

* ``priority``: the flow policy holds its lane back for a more urgent one;
* ``backpressure``: its lane has as many chunks taken and unfinished as it may hold.

:meth:`PauseBook.plan` answers what to pause and resume so the partitions actually paused match
the reasons; :meth:`PauseBook.applied` records that the plan was carried out. Only the consumer
that owns a partition can pause it, so the book is keyed by partition and the caller groups by
lane.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from streamproc.messages import PartitionKey

PauseReason = Literal["priority", "backpressure"]
PAUSE_REASONS: tuple[PauseReason, ...] = ("priority", "backpressure")


class PauseBook:
    """The desired and the applied pause state of every assigned partition."""

    def __init__(self) -> None:
        self._held: dict[PauseReason, frozenset[PartitionKey]] = dict.fromkeys(
            PAUSE_REASONS, frozenset()
        )
        self._applied: set[PartitionKey] = set()

    def hold(self, reason: PauseReason, partitions: Iterable[PartitionKey]) -> None:
        """Replace the set of partitions held for ``reason``."""
        self._held[reason] = frozenset(partitions)

    def held_for(self, reason: PauseReason) -> frozenset[PartitionKey]:
        return self._held[reason]

    @property
    def desired(self) -> frozenset[PartitionKey]:
        """Partitions that should be paused: held for at least one reason."""
        return frozenset().union(*self._held.values())

    @property
    def paused(self) -> frozenset[PartitionKey]:
        """Partitions actually paused (as far as :meth:`applied` was told)."""
        return frozenset(self._applied)

    def plan(self) -> tuple[set[PartitionKey], set[PartitionKey]]:
        """What to pause and what to resume now, as ``(to_pause, to_resume)``."""
        desired = self.desired
        return set(desired - self._applied), set(self._applied - desired)

    def applied(self, paused: Iterable[PartitionKey], resumed: Iterable[PartitionKey]) -> None:
        """Record that ``paused`` were paused and ``resumed`` were resumed."""
        self._applied.update(paused)
        self._applied.difference_update(resumed)

    def forget(self, partitions: Iterable[PartitionKey]) -> set[PartitionKey]:
        """Drop revoked or lost partitions from every reason.

        Returns:
            Those of them that were actually paused: librdkafka keeps a pause flag across
            unassign and a later assign, so the caller resumes them before giving them back.
        """
        gone = set(partitions)
        for reason, held in self._held.items():
            self._held[reason] = held - gone
        was_paused = self._applied & gone
        self._applied -= gone
        return was_paused

    def unapplied(self, partitions: Iterable[PartitionKey]) -> None:
        """Partitions newly assigned by an eager ``assign()``: not paused, whatever they were."""
        self._applied.difference_update(partitions)
