"""Flow control: when to pause lower lanes so the top lane keeps its latency low.

This module is pure policy. It never talks to Kafka: the consumer measures lag (``lag.py``), hands a
snapshot and a clock reading to :meth:`FlowController.update` on every poll-loop tick, and applies
the returned :class:`FlowDecision` by pausing and resuming the partitions of the named lanes.

The policy in one sentence: a lane is paused while some more urgent lane is *congested*, with
hysteresis between the threshold that starts congestion (``pause_lag``, ``pause_delay_s``) and the
one that ends it (``resume_lag``), because every pause throws away the lane's prefetched messages.
An optional starvation guard lets a paused lane run for a slice now and then.

The module also holds the small pure helpers the Kafka-facing code needs to feed the policy:
:func:`partition_lag` (offset arithmetic with librdkafka's special offsets), :func:`lane_lag` and
:func:`effective_scope`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from streamproc.errors import ConfigError

__all__ = [
    "OFFSET_INVALID",
    "UNKNOWN_LAG",
    "FlowController",
    "FlowDecision",
    "FlowSettings",
    "LaneLag",
    "OffsetReset",
    "Scope",
    "effective_scope",
    "lane_lag",
    "partition_lag",
]

Scope = Literal["local", "group", "auto"]
"""Whose lag drives the policy: this member's partitions, the group's, or picked per member."""

OffsetReset = Literal["earliest", "latest"]
"""Where a consumer without a usable offset starts reading (librdkafka ``auto.offset.reset``)."""

OFFSET_INVALID: Final = -1001
"""librdkafka's ``OFFSET_INVALID``: no position yet, no committed offset, or unknown watermark."""


class FlowSettings(BaseModel):
    """Thresholds of the flow-control policy.

    The defaults give strict priority (no starvation guard) and pause on message lag only. The
    application's pydantic-settings layer wraps this model; every field carries a description so the
    configuration reference can be generated from it.

    Raises:
        pydantic.ValidationError: A value is out of range, an unknown field is given, or
            ``resume_lag >= pause_lag`` (the error names both fields).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    pause_lag: int = Field(
        default=1000,
        ge=1,
        description=(
            "Pause every lower lane when a lane's lag exceeds this many messages. The default of "
            "1000 is far above the handful of messages a healthy lane has in flight between two "
            "polls, so ordinary bursts pause nothing, yet at typical handler rates of a few "
            "hundred to a few thousand chunks per second it is only seconds of backlog."
        ),
    )
    resume_lag: int = Field(
        default=0,
        ge=0,
        description=(
            "A congested lane stops holding lower lanes back once its lag is at most this many "
            "messages; 0 means fully drained. Must be lower than pause_lag: the gap between the "
            "two is the hysteresis that keeps lower lanes from flapping."
        ),
    )
    pause_delay_s: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Also pause lower lanes when a lane has messages waiting (lag above resume_lag) and "
            "its delay, the age of the last message taken from it, exceeds this many seconds. Off "
            "(None) by default because that delay overstates the backlog of a sparse lane: after "
            "an idle minute, the first new message makes the delay a minute, which would pause "
            "lower lanes for nothing. Enable it for lanes with steady traffic."
        ),
    )
    max_pause_s: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Starvation guard: a lane paused continuously for this many seconds is let run for "
            "starvation_slice_s even though a more urgent lane is still congested. None (the "
            "default) gives strict priority: lower lanes wait as long as needed."
        ),
    )
    starvation_slice_s: float = Field(
        default=5.0,
        gt=0,
        allow_inf_nan=False,
        description=(
            "How long a lane released by max_pause_s runs before it may be paused again. Five "
            "seconds is long enough to make progress on a prefetched batch and short enough not to "
            "hurt the urgent lane much."
        ),
    )
    min_bulk_share: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        allow_inf_nan=False,
        description=(
            "Starvation guard: every lower lane runs at least this fraction of each window of "
            "min_bulk_share_window_s seconds. A lane that has not yet run its share runs for the "
            "rest of the window once the time left equals the time owed, so it is paused and "
            "resumed at most once per window. None (the default) disables it."
        ),
    )
    min_bulk_share_window_s: float = Field(
        default=60.0,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Length of the consecutive windows min_bulk_share is measured over, in seconds; the "
            "first window starts at the controller's first update."
        ),
    )

    @model_validator(mode="after")
    def _hysteresis_needs_a_gap(self) -> FlowSettings:
        if self.resume_lag >= self.pause_lag:
            # ValueError, not ConfigError: pydantic turns it into a ValidationError like every other
            # settings mistake, so the settings layer reports all of them the same way.
            raise ValueError(
                f"resume_lag ({self.resume_lag}) must be lower than pause_lag ({self.pause_lag}): "
                "without a gap between them lower lanes would flap"
            )
        return self


@dataclass(frozen=True, slots=True)
class LaneLag:
    """One lane's backlog as measured by the consumer.

    Args:
        lag_messages: Messages waiting in the lane (summed over the partitions in scope), or None
            when unknown. Unknown never changes the lane's congestion state.
        delay_s: Seconds between now and the timestamp of the last message taken from the lane, or
            None when no message was taken yet or the delay is not measured.
    """

    lag_messages: int | None = None
    delay_s: float | None = None


UNKNOWN_LAG: Final = LaneLag()
"""What a lane missing from a snapshot counts as."""


@dataclass(frozen=True, slots=True)
class FlowDecision:
    """The outcome of one :meth:`FlowController.update`.

    Args:
        paused: Every lane that should be paused after this tick (the full desired set; the
            consumer re-applies it after each assignment).
        to_pause: Lanes paused by this tick: pause their partitions now.
        to_resume: Lanes resumed by this tick: resume their partitions now.
        congested: Lanes currently holding the lanes below them back (for metrics and logs).
        in_starvation_slice: Lanes running only because a starvation guard released them although a
            more urgent lane is congested.
        reasons: Why each lane in ``paused`` or ``in_starvation_slice`` is in it, e.g.
            ``"realtime lag 5000 > pause_lag 1000"`` or a starvation-slice explanation. A
            congestion reason describes what started the congestion.
    """

    paused: frozenset[str]
    to_pause: frozenset[str] = frozenset()
    to_resume: frozenset[str] = frozenset()
    congested: frozenset[str] = frozenset()
    in_starvation_slice: frozenset[str] = frozenset()
    reasons: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    @property
    def changed(self) -> bool:
        """True when this tick pauses or resumes at least one lane."""
        return bool(self.to_pause or self.to_resume)


class FlowController:
    """The flow-control state machine over an ordered list of lanes.

    Lanes are given most urgent first. On each :meth:`update` the controller walks them in that
    order and applies these rules:

    1. Time accounting: the interval since the previous update is booked to each lane's state in
       that interval (paused seconds; run time for ``min_bulk_share``). A clock that goes backwards
       counts as no time passing.
    2. A lane's *blocker* is the most urgent lane above it that is congested. The top lane has none
       and is therefore never paused.
    3. Without a blocker, a lane runs: a paused lane is resumed and any starvation slice ends.
    4. With a blocker, a lane inside an unexpired starvation slice keeps running.
    5. Otherwise a paused lane stays paused, unless it has been paused continuously for
       ``max_pause_s`` or ``min_bulk_share`` says it is owed the rest of the window; either grants
       it a starvation slice and resumes it. A running lane is paused, unless ``min_bulk_share``
       grants it a slice right away; a lane whose slice just expired is paused again this way.
    6. Only after its own pause state is decided does a lane's congestion get updated from the
       snapshot, because it only matters to the lanes below it:

       a. unknown lag (``lag_messages is None``, or the lane is missing from the snapshot) leaves
          the congestion state as it was, so a measurement gap can neither pause nor resume;
       b. a congested lane stops being congested when its lag is at most ``resume_lag``;
       c. an uncongested lane becomes congested when its lag exceeds ``pause_lag``, or when
          ``pause_delay_s`` is set, its lag exceeds ``resume_lag`` and its delay exceeds
          ``pause_delay_s``. Lag between the thresholds keeps either state (hysteresis).

    Congestion is tracked for a lane whatever its own pause state: a middle lane paused by the top
    lane keeps accumulating a backlog, and when the top lane drains that backlog must still hold
    the lanes below it back. Ignoring it would resume them and pause them again on the next tick.

    The starvation guard is per lane: each lower lane's continuous pause is measured on its own.
    Before the first update no lane is congested, so every lane starts running.

    Args:
        lanes: Lane names, most urgent first; at least two, unique.
        settings: The thresholds.

    Raises:
        ConfigError: Fewer than two lanes, or duplicate names.
    """

    def __init__(self, lanes: Sequence[str], settings: FlowSettings | None = None) -> None:
        names = tuple(lanes)
        if len(names) < 2:
            raise ConfigError(f"flow control needs at least two lanes, got {list(names)}")
        if len(set(names)) != len(names):
            raise ConfigError(f"lane names must be unique, got {list(names)}")
        self._lanes = names
        self._settings = settings if settings is not None else FlowSettings()
        lane_count = len(names)
        self._congested = [False] * lane_count
        self._congestion_reason = [""] * lane_count
        self._is_paused = [False] * lane_count
        self._paused_since = [0.0] * lane_count
        # Absolute clock time a lane's starvation slice ends; None when it is not in one.
        self._slice_until: list[float | None] = [None] * lane_count
        self._slice_reason = [""] * lane_count
        self._ran_in_window_s = [0.0] * lane_count
        self._window_start: float | None = None
        self._last_now: float | None = None
        self._pause_counts = dict.fromkeys(names, 0)
        self._resume_counts = dict.fromkeys(names, 0)
        self._slice_counts = dict.fromkeys(names, 0)
        self._paused_seconds = dict.fromkeys(names, 0.0)
        self._decision = FlowDecision(paused=frozenset())

    @property
    def lanes(self) -> tuple[str, ...]:
        """Lane names, most urgent first."""
        return self._lanes

    @property
    def settings(self) -> FlowSettings:
        """The thresholds in force."""
        return self._settings

    @property
    def decision(self) -> FlowDecision:
        """The decision of the latest update (everything running before the first one)."""
        return self._decision

    @property
    def paused(self) -> frozenset[str]:
        """Lanes that should be paused now."""
        return self._decision.paused

    @property
    def congested(self) -> frozenset[str]:
        """Lanes currently holding the lanes below them back."""
        return self._decision.congested

    @property
    def pause_counts(self) -> Mapping[str, int]:
        """How many times each lane was paused (read-only live view)."""
        return MappingProxyType(self._pause_counts)

    @property
    def resume_counts(self) -> Mapping[str, int]:
        """How many times each lane was resumed (read-only live view)."""
        return MappingProxyType(self._resume_counts)

    @property
    def slice_counts(self) -> Mapping[str, int]:
        """How many starvation slices each lane was granted (read-only live view)."""
        return MappingProxyType(self._slice_counts)

    @property
    def paused_seconds(self) -> Mapping[str, float]:
        """Seconds each lane spent paused, up to the latest update (read-only live view)."""
        return MappingProxyType(self._paused_seconds)

    def update(self, snapshot: Mapping[str, LaneLag], now: float) -> FlowDecision:
        """Feed one lag snapshot and clock reading; get the lanes to pause and resume.

        Args:
            snapshot: Lag per lane name. Missing lanes count as unknown; unknown names are ignored.
            now: A monotonic clock reading in seconds (``time.monotonic()``).

        Returns:
            The desired paused set and this tick's transitions. When nothing changed, the same
            decision object as the previous steady tick is returned, so this costs almost nothing.
        """
        self._account_time(now)
        changed = False
        to_pause: list[str] = []
        to_resume: list[str] = []
        blocker: int | None = None  # rank of the most urgent congested lane seen so far
        for rank, lane in enumerate(self._lanes):
            if rank > 0:
                if blocker is None:
                    if self._slice_until[rank] is not None:
                        self._slice_until[rank] = None
                        changed = True
                    if self._is_paused[rank]:
                        self._resume(rank, to_resume)
                else:
                    changed |= self._hold_back(rank, now, to_pause, to_resume)
            changed |= self._update_congestion(rank, snapshot.get(lane, UNKNOWN_LAG))
            if blocker is None and self._congested[rank]:
                blocker = rank
        if changed or to_pause or to_resume:
            self._decision = self._build_decision(frozenset(to_pause), frozenset(to_resume))
        elif self._decision.changed:
            # The previous tick had transitions; this one repeats its state without them.
            self._decision = dataclasses.replace(
                self._decision, to_pause=frozenset(), to_resume=frozenset()
            )
        return self._decision

    def _account_time(self, now: float) -> None:
        """Book the time since the previous update to the state each lane was in (rule 1)."""
        last_now = self._last_now
        self._last_now = now if last_now is None else max(now, last_now)
        elapsed = 0.0 if last_now is None else max(0.0, now - last_now)
        if elapsed:
            for rank, lane in enumerate(self._lanes):
                if self._is_paused[rank]:
                    self._paused_seconds[lane] += elapsed
        if self._settings.min_bulk_share is None:
            return
        window_s = self._settings.min_bulk_share_window_s
        if self._window_start is None or last_now is None:
            self._window_start = now
            return
        window_start = self._window_start
        if now >= window_start + window_s:
            # Jump to the window containing now; only the part of the interval inside it counts.
            window_start += math.floor((now - window_start) / window_s) * window_s
            self._window_start = window_start
            counted_from = max(last_now, window_start)
            for rank in range(len(self._lanes)):
                ran = 0.0 if self._is_paused[rank] else max(0.0, now - counted_from)
                self._ran_in_window_s[rank] = ran
        elif elapsed:
            for rank in range(len(self._lanes)):
                if not self._is_paused[rank]:
                    self._ran_in_window_s[rank] += elapsed

    def _hold_back(self, rank: int, now: float, to_pause: list[str], to_resume: list[str]) -> bool:
        """Apply rules 4 and 5 to a lane that has a blocker; return whether its state changed."""
        slice_until = self._slice_until[rank]
        if slice_until is not None:
            if now < slice_until:
                return False
            self._slice_until[rank] = None
        settings = self._settings
        if self._is_paused[rank]:
            paused_for_s = now - self._paused_since[rank]
            if settings.max_pause_s is not None and paused_for_s >= settings.max_pause_s:
                self._grant_slice(
                    rank,
                    now + settings.starvation_slice_s,
                    f"starvation slice: paused {paused_for_s:.1f} s >= max_pause_s "
                    f"{settings.max_pause_s:g}",
                )
            elif not self._grant_share_slice(rank, now):
                return slice_until is not None
            self._resume(rank, to_resume)
            return True
        if self._grant_share_slice(rank, now):
            return True
        self._pause(rank, now, to_pause)
        return True

    def _grant_share_slice(self, rank: int, now: float) -> bool:
        """Grant the rest of the window when the lane's owed run time no longer fits otherwise."""
        share = self._settings.min_bulk_share
        if share is None or self._window_start is None:
            return False
        window_s = self._settings.min_bulk_share_window_s
        window_end = self._window_start + window_s
        owed_s = share * window_s - self._ran_in_window_s[rank]
        if owed_s <= 0 or window_end - now > owed_s:
            return False
        self._grant_slice(
            rank,
            window_end,
            f"minimum share: ran {self._ran_in_window_s[rank]:.1f} s of "
            f"{share * window_s:g} s owed in this {window_s:g} s window",
        )
        return True

    def _grant_slice(self, rank: int, until: float, reason: str) -> None:
        self._slice_until[rank] = until
        self._slice_reason[rank] = reason
        self._slice_counts[self._lanes[rank]] += 1

    def _pause(self, rank: int, now: float, to_pause: list[str]) -> None:
        lane = self._lanes[rank]
        self._is_paused[rank] = True
        self._paused_since[rank] = now
        self._pause_counts[lane] += 1
        to_pause.append(lane)

    def _resume(self, rank: int, to_resume: list[str]) -> None:
        lane = self._lanes[rank]
        self._is_paused[rank] = False
        self._resume_counts[lane] += 1
        to_resume.append(lane)

    def _update_congestion(self, rank: int, lane_lag: LaneLag) -> bool:
        """Apply rule 6 to one lane; return whether its congestion state changed."""
        lag_messages = lane_lag.lag_messages
        if lag_messages is None:
            return False
        settings = self._settings
        if self._congested[rank]:
            if lag_messages <= settings.resume_lag:
                self._congested[rank] = False
                return True
            return False
        lane = self._lanes[rank]
        if lag_messages > settings.pause_lag:
            reason = f"{lane} lag {lag_messages} > pause_lag {settings.pause_lag}"
        elif (
            settings.pause_delay_s is not None
            and lane_lag.delay_s is not None
            and lane_lag.delay_s > settings.pause_delay_s
            and lag_messages > settings.resume_lag
        ):
            reason = (
                f"{lane} delay {lane_lag.delay_s:.1f} s > pause_delay_s "
                f"{settings.pause_delay_s:g} with {lag_messages} messages waiting"
            )
        else:
            return False
        self._congested[rank] = True
        self._congestion_reason[rank] = reason
        return True

    def _build_decision(self, to_pause: frozenset[str], to_resume: frozenset[str]) -> FlowDecision:
        reasons: dict[str, str] = {}
        paused: list[str] = []
        in_slice: list[str] = []
        blocker: int | None = None
        for rank, lane in enumerate(self._lanes):
            if self._is_paused[rank]:
                paused.append(lane)
                if blocker is not None:  # always true: a lane is only paused while blocked
                    reasons[lane] = self._congestion_reason[blocker]
            elif self._slice_until[rank] is not None:
                in_slice.append(lane)
                reasons[lane] = self._slice_reason[rank]
            if blocker is None and self._congested[rank]:
                blocker = rank
        congested = frozenset(
            lane for rank, lane in enumerate(self._lanes) if self._congested[rank]
        )
        return FlowDecision(
            paused=frozenset(paused),
            to_pause=to_pause,
            to_resume=to_resume,
            congested=congested,
            in_starvation_slice=frozenset(in_slice),
            reasons=MappingProxyType(reasons),
        )


def effective_scope(scope: Scope, owns_top_lane_partition: bool) -> Literal["local", "group"]:
    """Resolve ``auto`` to the scope this member should measure lag in.

    A member that owns no partition of the top lane would never see that lane's lag locally, so
    ``auto`` makes it watch the whole group's lag and still yield to urgent traffic.

    Args:
        scope: The configured scope.
        owns_top_lane_partition: Whether this member is currently assigned any top-lane partition.

    Returns:
        ``"group"`` or ``"local"``.

    Raises:
        ConfigError: ``scope`` is not one of ``local``, ``group``, ``auto``.
    """
    if scope == "local" or scope == "group":
        return scope
    if scope == "auto":
        return "local" if owns_top_lane_partition else "group"
    raise ConfigError(f"unknown flow scope {scope!r}; expected 'local', 'group' or 'auto'")


def partition_lag(
    *, low: int, high: int, position: int, committed: int, reset: OffsetReset = "earliest"
) -> int | None:
    """Messages waiting in one partition for this consumer.

    The consumer's next offset is its ``position``; when that is not known yet (``OFFSET_INVALID``,
    or any other negative logical offset) the ``committed`` offset is used, because that is where
    the consumer will start. Without either, the consumer will start where ``auto.offset.reset``
    puts it: ``reset="earliest"`` (the default, matching the consumer's configuration) counts the
    whole retained log ``high - low``; ``"latest"`` counts nothing. An offset below ``low``
    (retention deleted it) is out of range and resets the same way.

    Args:
        low: Low watermark (first retained offset).
        high: High watermark (offset the next produced message will get).
        position: The consumer's position, or a negative special offset.
        committed: The group's committed offset, or a negative special offset.
        reset: The consumer's ``auto.offset.reset``.

    Returns:
        The lag, never negative (a position past ``high`` counts as 0), or None when either
        watermark is unknown (negative) or they contradict each other (``high < low``).
    """
    if low < 0 or high < 0 or high < low:
        return None
    next_offset = position if position >= 0 else committed
    if next_offset < low:  # negative (no offset) or deleted by retention: auto.offset.reset applies
        next_offset = low if reset == "earliest" else high
    return max(0, high - next_offset)


def lane_lag(partition_lags: Iterable[int | None]) -> int | None:
    """Sum a lane's per-partition lags.

    Partitions whose lag is unknown are left out, so a partial sum is a lower bound: one partition
    with unknown watermarks (a leader moving, say) must not hide a backlog the other partitions
    show. Only when no partition is known is the lane's lag unknown, which leaves the lane's
    congestion state as it was.

    Args:
        partition_lags: Lag of each partition of the lane in scope; None for unknown.

    Returns:
        The sum of the known lags, or None when there are none.
    """
    total: int | None = None
    for lag in partition_lags:
        if lag is not None:
            total = lag if total is None else total + lag
    return total
