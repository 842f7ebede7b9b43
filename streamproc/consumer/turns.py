"""How much a lower lane may take in one turn: a time budget over measured handling time.

No Kafka, no threads of its own (worker threads record into it). Realtime is always taken first
and in whole batches. A lower lane's turn starts only when a worker slot is free and no more
urgent chunk waits, and a turn is sized so it ends within ``budget_s``: a realtime chunk arriving
meanwhile waits for at most that long.

A batch costs a fixed part (a sink's transaction and commit, an fsync) plus a part per chunk
(decode, the handler's own work). :class:`BatchCost` fits both to the measured batches (a moving
least-squares line of seconds over chunks); the turn is what fits in the budget after the fixed
part. When the fixed part alone fills the budget, fewer chunks would not make the turn any
shorter, only bulk slower: the turn then takes as many chunks as the fixed part costs in chunk
time, so the fixed part stays at most half of every turn. At least one chunk per turn.

With one worker slot a turn is one batch (a batch handler gets it at once). With several slots
every chunk is a batch of its own, as the concurrency asks, and a turn holds a budget's worth for
every slot. The planner also measures how much of a lane's handling time is spent on the CPU:
threads share the GIL, so a CPU-bound lower lane gains nothing from running beside a more urgent
one and only slows it down (the loop then runs it alone, :meth:`TurnPlanner.cpu_bound`). Beside
``k - 1`` other batches a CPU-bound batch gets about ``1/k`` of the GIL, so its own share of the
CPU is scaled by the batches it ran beside: eight CPU-bound batches at once are each on the CPU an
eighth of the time, and still CPU-bound. A CPU-bound lane runs one batch at a time while a more
urgent lane is active, so its turn is one slot's budget, not a budget for every slot. A handler
on the CPU nearly all the time, over the batches of every lane, gains nothing from threads at
all: every batch then runs alone (serial), sized as with one slot (a whole turn, or whatever the
top lane has), so several slots cost it no more than one. Whether to run serial is measured, not
guessed from the share (:class:`SerialChoice`): while the GIL is saturated, the share of a
handler that also waits reads as high as one that only computes.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

# Below this variance of batch sizes (chunks squared) the line is not fitted: cost per chunk only.
_MIN_SIZE_VARIANCE = 0.25
# A lane whose batches spend more than this share of their time on the CPU counts as CPU-bound.
CPU_BOUND_SHARE = 0.5
# A serial pool tries threads PROBE_FIRST_S after its last probe (not after its whole hold) when
# its share, measured alone, falls this much below ``serial_share``: the handler now waits more
# than it computes. Alone on a loaded machine a handler computing all the time measures 0.7 to
# 0.9 (its thread is preempted).
SERIAL_HYSTERESIS = 0.3
# Weight of a batch in the pool's moving sums (about the last 40 batches): a thread the shared
# machine preempts for a moment looks idle for a batch, and must not turn the pool over.
POOL_WEIGHT = 0.05
# A mode's rate is the chunks it handled a second over the last RATE_WINDOW_S; a probe of the
# other mode starts only once the mode ran MODE_MIN_S, so that window has left its start behind
# (fetching ramps up as a consumer starts, and the first second side by side reads slow).
RATE_WINDOW_S = 0.5
MODE_MIN_S = 1.5
# A probe of the other mode: the batches still running from the mode it left are not counted
# (one per slot), then it measures for at least PROBE_S and PROBE_BATCHES batches.
PROBE_S = 0.5
PROBE_BATCHES = 20
# Serial is kept unless side by side handles more than this many times as many chunks a second:
# one batch at a time leaves the GIL to the poll loop, so realtime waits less.
PARALLEL_GAIN = 1.1
# After a probe that changed the mode, the pool keeps it this long before trying the other mode
# again; a probe that kept the mode it left doubles the last hold, up to PROBE_MAX_S.
PROBE_FIRST_S = 30.0
PROBE_MAX_S = 600.0


class SerialChoice:
    """Whether batches run one at a time (serial) or side by side, chosen by measuring both.

    The share of handling time spent on the CPU (scaled by the batches beside) says when serial
    is worth a try: above ``serial_share``. It cannot say whether serial is faster: while the GIL
    is saturated, every thread's scaled share reads near 1, whether its handler only computes
    (serial is faster: no hand-overs of the GIL) or also waits on I/O (threads overlap the
    waits: at ``--concurrency 8``, a handler computing 0.2 ms and waiting 0.8 ms a chunk handled
    2,380 chunks/s side by side and 1,330 serial; benchmarks/serial_choice.py). So the pool
    tries: it runs the other mode for a probe (``PROBE_S``) and compares the chunks it handled
    a second with those of the mode it left, just before. Serial is kept unless side by side
    handled more than ``PARALLEL_GAIN`` times as many. The other mode is tried again after a
    hold: ``PROBE_FIRST_S`` after a probe that changed the mode, twice the last hold after one
    that kept it (up to ``PROBE_MAX_S``). A serial pool whose share falls ``SERIAL_HYSTERESIS``
    below the threshold (the handler now waits more than it computes) tries threads
    ``PROBE_FIRST_S`` after its last probe, whatever its hold.

    Rates are chunks over wall time: they compare the modes' capacity while work waits (a bulk
    backlog). When the pool keeps up either way, both rates are the arrival rate, and serial,
    tried only because the GIL was saturated, is kept. A pause between batches longer than half
    the window (the pool idle) starts a mode's rate over: idle time is no mode's.

    Worker threads call :meth:`record` at once: it takes a lock of its own.

    Args:
        slots: Worker slots (with one, never serial: there is nothing to choose).
        serial_share: The share above which serial is tried (above 1: never).
        clock: Monotonic seconds (tests pass their own).
    """

    def __init__(
        self, slots: int, serial_share: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._slots = slots
        self._serial_share = serial_share
        self._clock = clock
        self.serial = False
        # Moving, time-weighted CPU share of every lane's batches.
        self._cpu_s = 0.0
        self._wall_s = 0.0
        self._mode = _Rate(clock(), RATE_WINDOW_S)
        self._probe: _Probe | None = None
        # When the last probe ended, and how long its outcome holds before the next.
        self._last_probe = -math.inf
        self._hold_s = PROBE_FIRST_S
        self._lock = threading.Lock()

    @property
    def share(self) -> float:
        """The moving CPU share of the pool's batches (0 until measured)."""
        return self._cpu_s / self._wall_s if self._wall_s > 0 else 0.0

    def record(self, chunks: int, share: float, wall: float) -> None:
        """A batch of ``chunks`` ended; ``share`` of its ``wall`` seconds (its time without
        other threads' hold of the GIL) were on the CPU."""
        if self._slots <= 1 or self._serial_share > 1 or wall <= 0:
            return
        with self._lock:
            self._record(chunks, share, wall)

    def _record(self, chunks: int, share: float, wall: float) -> None:
        self._cpu_s += POOL_WEIGHT * (share * wall - self._cpu_s)
        self._wall_s += POOL_WEIGHT * (wall - self._wall_s)
        now = self._clock()
        if (probe := self._probe) is not None:
            probe.batches += 1
            if probe.batches <= self._slots:  # still running from the mode the probe left
                probe.rate.restart(now)
            else:
                probe.rate.add(chunks, now)
            if probe.rate.batches >= PROBE_BATCHES and probe.rate.seconds >= PROBE_S:
                self._conclude(probe, now)
            return
        self._mode.add(chunks, now)
        if now - self._mode.since < MODE_MIN_S:
            return
        held = now < self._last_probe + self._hold_s
        if self.serial:
            waits = self.share < self._serial_share - SERIAL_HYSTERESIS
            due = not held or (waits and now >= self._last_probe + PROBE_FIRST_S)
        else:
            due = not held and self.share > self._serial_share
        if due:
            self._probe = _Probe(self._mode, now)
            self.serial = not self.serial

    def _conclude(self, probe: _Probe, now: float) -> None:
        probe_rate, left_rate = probe.rate.per_s(), probe.left.per_s()
        serial_rate, parallel_rate = (
            (probe_rate, left_rate) if self.serial else (left_rate, probe_rate)
        )
        keep_serial = parallel_rate <= serial_rate * PARALLEL_GAIN
        confirmed = keep_serial != self.serial  # the mode the probe left stays
        log.info(
            "worker pool %s: %.0f chunks/s one batch at a time, %.0f side by side (tried %s)",
            "runs one batch at a time" if keep_serial else "runs batches side by side",
            serial_rate,
            parallel_rate,
            "one at a time" if self.serial else "side by side",
        )
        self._hold_s = min(PROBE_MAX_S, 2 * self._hold_s) if confirmed else PROBE_FIRST_S
        self._last_probe = now
        self.serial = keep_serial
        self._mode = _Rate(now, RATE_WINDOW_S)
        self._probe = None


class _Rate:
    """Chunks handled a second: over the last ``window_s`` (a sliding window), or since the start
    when None (a probe: it always ends). A pause between batches of over half the window starts
    a windowed rate over: the pool was idle, and that time is no mode's."""

    __slots__ = ("batches", "chunks", "ends", "last", "since", "window_s")

    def __init__(self, since: float, window_s: float | None = None) -> None:
        self.window_s = window_s
        # Within the window: when each batch ended and its chunks.
        self.ends: deque[tuple[float, int]] = deque()
        self.restart(since)

    def restart(self, now: float) -> None:
        self.since = self.last = now
        self.batches = 0
        self.chunks = 0
        self.ends.clear()

    @property
    def seconds(self) -> float:
        """How long the rate has measured (at most the window)."""
        elapsed = self.last - self.since
        return elapsed if self.window_s is None else min(elapsed, self.window_s)

    def add(self, chunks: int, now: float) -> None:
        if self.window_s is not None and now - self.last > self.window_s / 2:
            self.restart(now)
            return
        self.last = now
        self.batches += 1
        self.chunks += chunks
        if self.window_s is not None:
            self.ends.append((now, chunks))
            while self.ends[0][0] <= now - self.window_s:
                self.chunks -= self.ends.popleft()[1]

    def per_s(self) -> float:
        seconds = self.seconds
        return self.chunks / seconds if seconds > 0 else 0.0


class _Probe:
    """A trial of the other mode: what it measured, and the rate of the mode it left."""

    __slots__ = ("batches", "left", "rate")

    def __init__(self, left: _Rate, now: float) -> None:
        self.left = left
        self.batches = 0
        self.rate = _Rate(now)


class BatchCost:
    """Exponentially weighted least-squares fit of batch seconds = fixed + per_chunk x chunks.

    Args:
        first_guess_s: Per-chunk cost assumed before anything was measured.
        weight: Weight of a new measurement (0 < weight <= 1).
    """

    def __init__(self, first_guess_s: float, weight: float) -> None:
        self._weight = weight
        self._n = 1.0
        self._t = first_guess_s
        self._nn = 1.0
        self._nt = first_guess_s

    def record(self, chunks: int, seconds: float) -> None:
        w = self._weight
        self._n += w * (chunks - self._n)
        self._t += w * (seconds - self._t)
        self._nn += w * (chunks * chunks - self._nn)
        self._nt += w * (chunks * seconds - self._nt)

    def mean_per_chunk(self) -> float:
        """Average seconds per chunk over the recent batches, fixed part included."""
        return max(self._t / max(self._n, 1e-9), 1e-9)

    def fit(self) -> tuple[float, float]:
        """``(fixed_s, per_chunk_s)``: both at least 0, ``per_chunk_s`` above 0."""
        variance = self._nn - self._n * self._n
        if variance > _MIN_SIZE_VARIANCE:
            per_chunk = (self._nt - self._n * self._t) / variance
            if per_chunk > 0:
                return max(0.0, self._t - per_chunk * self._n), per_chunk
        return 0.0, max(self._t / max(self._n, 1e-9), 1e-9)


class TurnPlanner:
    """Batch sizes per lane rank.

    Args:
        lanes: How many lanes (ranks ``0..lanes-1``).
        budget_s: Longest a lower-lane turn should take.
        most: Largest batch of any lane (``max_batch_messages``).
        slots: Worker slots (``concurrency``).
        first_guess_s: Per-chunk handling time assumed before anything was measured.
        weight: Weight of a new measurement in the moving fit (0 < weight <= 1).
        serial_share: With several slots, running batches one at a time is tried once the
            handler's share of time on the CPU is above this (above 1: never), and kept when
            measured faster (:class:`SerialChoice`).
        clock: Monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        lanes: int,
        *,
        budget_s: float,
        most: int,
        slots: int = 1,
        first_guess_s: float = 0.001,
        weight: float = 0.2,
        serial_share: float = 0.8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if budget_s <= 0 or most < 1 or not 0 < weight <= 1:
            raise ValueError("budget_s > 0, most >= 1 and 0 < weight <= 1 are required")
        self.budget_s = budget_s
        self.most = most
        self.slots = max(1, slots)
        self._costs = [BatchCost(first_guess_s, weight) for _ in range(lanes)]
        self._weight = weight
        # Moving share of handling time spent on the CPU (0 until measured: I/O-bound).
        self._cpu_share = [0.0] * lanes
        # Whether batches of every lane run one at a time (a decision for the whole pool).
        self._serial = SerialChoice(self.slots, serial_share, clock)
        self._stretch = [1.0] * lanes

    def record(
        self,
        rank: int,
        chunks: int,
        seconds: float,
        cpu_seconds: float | None = None,
        *,
        beside: float = 1.0,
        handling_seconds: float | None = None,
    ) -> None:
        """A batch of ``chunks`` of lane ``rank`` took ``seconds`` to handle, ``cpu_seconds`` of
        them on the CPU of the handling thread (None when not measured), running among
        ``beside`` batches on average (itself included). ``handling_seconds``: ``seconds``
        without the time the GIL was held by threads other than the handlers' (the CPU
        share is measured against it)."""
        if chunks >= 1 and seconds >= 0:
            self._costs[rank].record(chunks, seconds)
            wall = seconds if handling_seconds is None else handling_seconds
            if cpu_seconds is not None and wall > 0:
                share = min(1.0, max(0.0, cpu_seconds * max(1.0, beside) / wall))
                self._cpu_share[rank] += self._weight * (share - self._cpu_share[rank])
                self._serial.record(chunks, share, wall)

    def stretch(self, rank: int, factor: float) -> None:
        """Plan lane ``rank``'s turns for ``factor`` times the budget (1: the budget itself)."""
        self._stretch[rank] = factor

    def stretched(self, rank: int) -> bool:
        """Lane ``rank``'s turns are planned longer than the budget (it works ahead)."""
        return self._stretch[rank] > 1.0

    def turn_s(self, rank: int) -> float:
        """How long a turn of lane ``rank`` is planned to take (the budget, stretched)."""
        return self.budget_s * self._stretch[rank]

    def wake_s(self, rank: int) -> float:
        """How soon the loop should look again while lane ``rank`` has work in hand: within one
        turn, to queue the next. A stretched lane (working ahead) has its next turn queued
        behind the running one already: half its longer turn is soon enough."""
        return self.budget_s * max(1.0, self._stretch[rank] / 2)

    def cpu_bound(self, rank: int) -> bool:
        """Lane ``rank``'s batches mostly compute (more than half their time on the CPU of the
        handling thread): running them beside each other gains nothing under the GIL."""
        return self._cpu_share[rank] > CPU_BOUND_SHARE

    def serial(self) -> bool:
        """With several slots, batches run one at a time, sized as with one: the handler is on
        the CPU nearly all the time and measured faster so (:class:`SerialChoice`), or a probe
        of serial runs."""
        return self.slots > 1 and self._serial.serial

    def cost(self, rank: int) -> tuple[float, float]:
        """The fitted ``(fixed_s, per_chunk_s)`` of a batch of lane ``rank``."""
        return self._costs[rank].fit()

    def turn_size(self, rank: int) -> int:
        """Chunks of lane ``rank`` to take at once: all of ``most`` for the top lane; for a lower
        lane, what every slot handles within the budget (see the module docstring), at least one
        and at most ``most``."""
        if rank == 0:
            return self.most
        fixed, per_chunk = self.cost(rank)
        slots = 1 if self.cpu_bound(rank) or self.serial() else self.slots
        if slots > 1:
            fixed = 0.0  # one chunk a batch: the fixed part is part of every chunk's cost
            per_chunk = sum(self.cost(rank))
        budget = self.budget_s * self._stretch[rank]
        room = budget - fixed
        chunks = room / per_chunk if room > fixed else fixed / per_chunk
        # A fit is only as good as its batches: noise can show a fixed part where there is none.
        # Never plan a turn the plain average says takes over twice the budget (or the fixed
        # part, when that is longer).
        chunks = min(chunks, 2 * max(budget, fixed) / self._costs[rank].mean_per_chunk())
        # The tolerance keeps a measurement a hair above an exact fit from losing a whole chunk.
        return max(1, min(self.most, math.floor(chunks * slots + 1e-6)))

    def batch_limit(self, rank: int) -> int:
        """Most chunks of lane ``rank`` one slot runs at once: a whole turn with one slot or
        a serial handler, one chunk otherwise (they run side by side)."""
        return self.turn_size(rank) if self.slots == 1 or self.serial() else 1
