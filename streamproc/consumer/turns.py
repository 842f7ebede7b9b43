"""How much a lower lane may take in one turn: a time budget over measured handling time.

Pure, no Kafka, no threads. Realtime is always taken first and in whole batches. A lower lane's
turn starts only when a worker slot is free and no more urgent chunk waits, and a turn is sized so
it ends within ``budget_s``: a realtime chunk arriving meanwhile waits for at most that long.

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
urgent lane is active, so its turn is one slot's budget, not a budget for every slot.
"""

from __future__ import annotations

import math

# Below this variance of batch sizes (chunks squared) the line is not fitted: cost per chunk only.
_MIN_SIZE_VARIANCE = 0.25
# A lane whose batches spend more than this share of their time on the CPU counts as CPU-bound.
CPU_BOUND_SHARE = 0.5


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
        self._stretch = [1.0] * lanes

    def record(
        self,
        rank: int,
        chunks: int,
        seconds: float,
        cpu_seconds: float | None = None,
        *,
        beside: float = 1.0,
    ) -> None:
        """A batch of ``chunks`` of lane ``rank`` took ``seconds`` to handle, ``cpu_seconds`` of
        them on the CPU of the handling thread (None when not measured), running among
        ``beside`` batches on average (itself included)."""
        if chunks >= 1 and seconds >= 0:
            self._costs[rank].record(chunks, seconds)
            if cpu_seconds is not None and seconds > 0:
                share = min(1.0, max(0.0, cpu_seconds * max(1.0, beside) / seconds))
                self._cpu_share[rank] += self._weight * (share - self._cpu_share[rank])

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
        slots = 1 if self.cpu_bound(rank) else self.slots
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
        """Most chunks of lane ``rank`` one slot runs at once: a whole turn with one slot, one
        chunk with several (they run side by side)."""
        return self.turn_size(rank) if self.slots == 1 else 1
