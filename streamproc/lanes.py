"""Lanes: the ordered priority classes of traffic, their topics, and chunk routing.

A lane is a Kafka topic with a rank; rank 0 is the most urgent. The default topology has two lanes,
``realtime`` (rank 0) and ``bulk`` (rank 1), named ``<prefix>.realtime`` and ``<prefix>.bulk``;
dead letters of a topic go to ``<topic>.dlq``. Routing is by the chunk's ``low_priority`` flag.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from streamproc.errors import ConfigError

REALTIME = "realtime"
BULK = "bulk"
DEFAULT_PREFIX = "chunks"
DLQ_SUFFIX = ".dlq"


class Routable(Protocol):
    """Anything with a ``low_priority`` flag (a :class:`~streamproc.chunk.Chunk`)."""

    @property
    def low_priority(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Lane:
    """One priority class: a name, its rank (0 = most urgent) and its topic."""

    name: str
    rank: int
    topic: str

    @property
    def dlq_topic(self) -> str:
        """Topic where this lane's unprocessable messages are parked."""
        return dead_letter_topic(self.topic)


def dead_letter_topic(topic: str) -> str:
    """Return the dead-letter topic of ``topic``."""
    return f"{topic}{DLQ_SUFFIX}"


@dataclass(frozen=True, slots=True)
class Lanes:
    """The ordered set of lanes a producer writes and a consumer reads.

    Args:
        prefix: Topic prefix; lane ``name`` lives in topic ``<prefix>.<name>``.
        names: Lane names from most to least urgent. Default: realtime, bulk.
    """

    prefix: str = DEFAULT_PREFIX
    names: tuple[str, ...] = (REALTIME, BULK)
    all: tuple[Lane, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.prefix:
            raise ConfigError("topic prefix must not be empty")
        if len(self.names) < 2:
            raise ConfigError(f"at least two lanes are needed, got {list(self.names)}")
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"lane names must be unique, got {list(self.names)}")
        lanes = tuple(
            Lane(name, rank, f"{self.prefix}.{name}") for rank, name in enumerate(self.names)
        )
        object.__setattr__(self, "all", lanes)

    @classmethod
    def from_names(cls, prefix: str, names: Sequence[str] | None = None) -> Lanes:
        return cls(prefix, tuple(names) if names else (REALTIME, BULK))

    def __iter__(self) -> Iterator[Lane]:
        return iter(self.all)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def top(self) -> Lane:
        """The most urgent lane (realtime by default)."""
        return self.all[0]

    @property
    def bottom(self) -> Lane:
        """The least urgent lane (bulk by default)."""
        return self.all[-1]

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(lane.topic for lane in self.all)

    def by_name(self, name: str) -> Lane:
        for lane in self.all:
            if lane.name == name:
                return lane
        raise ConfigError(f"unknown lane {name!r}; lanes are {list(self.names)}")

    def by_topic(self, topic: str) -> Lane:
        for lane in self.all:
            if lane.topic == topic:
                return lane
        raise ConfigError(f"topic {topic!r} belongs to no lane; lane topics are {self.topics}")

    def route(self, chunk: Routable) -> Lane:
        """The lane of ``chunk``: ``low_priority`` goes to the bottom lane, the rest to the top.

        With more than two lanes, producers that want a middle lane name it explicitly with
        :meth:`by_name`; the flag only distinguishes "urgent" from "may wait".
        """
        return self.bottom if chunk.low_priority else self.top
