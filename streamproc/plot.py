"""A picture of a run: lag per lane, pause state and realtime latency over time, as a PNG.

Built from samples of the exported metrics (``streamproc_lag_messages``, ``streamproc_lane_paused``,
``streamproc_end_to_end_latency_seconds``, ``streamproc_messages_handled_total``), so the picture
shows exactly what the dashboard would. Needs the optional extra ``plot`` (matplotlib).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class RunSample:
    """The state of a run at one instant.

    Attributes:
        t_s: Seconds since the start of the run.
        lag_by_lane: Messages behind, per lane.
        paused_by_lane: Whether flow control holds the lane paused.
        realtime_p50_s: Median realtime end-to-end latency (None when nothing was handled).
        realtime_p99_s: 99th percentile of the same.
        handled_per_s_by_lane: Messages finished per second, per lane.
    """

    t_s: float
    lag_by_lane: dict[str, int]
    paused_by_lane: dict[str, bool]
    realtime_p50_s: float | None = None
    realtime_p99_s: float | None = None
    handled_per_s_by_lane: dict[str, float] = field(default_factory=dict)


def _lanes(samples: Sequence[RunSample]) -> list[str]:
    """Lane names in first-seen order (realtime first when the samples list it first)."""
    seen: dict[str, None] = {}
    for sample in samples:
        for mapping in (sample.lag_by_lane, sample.paused_by_lane, sample.handled_per_s_by_lane):
            seen.update(dict.fromkeys(mapping))
    return list(seen)


def plot_run(samples: Sequence[RunSample], path: str | Path, *, title: str | None = None) -> Path:
    """Render ``samples`` to a PNG at ``path`` and return the path.

    Four stacked panels sharing the time axis: lag per lane, paused lanes (shaded bands),
    realtime latency p50/p99 (log scale), throughput per lane.

    Raises:
        ValueError: ``samples`` is empty.
        ImportError: matplotlib is not installed (``pip install 'streamproc[plot]'``).
    """
    if not samples:
        raise ValueError("no samples to plot")
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: never needs a display
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib: pip install 'streamproc[plot]'") from exc

    lanes = _lanes(samples)
    times = [sample.t_s for sample in samples]
    colors = {lane: f"C{index}" for index, lane in enumerate(lanes)}
    figure, axes = plt.subplots(
        4, 1, figsize=(10, 9), sharex=True, gridspec_kw={"height_ratios": [3, 1, 2, 2]}
    )
    lag_axis, pause_axis, latency_axis, rate_axis = axes

    for lane in lanes:
        lag = [_or_nan(sample.lag_by_lane.get(lane)) for sample in samples]
        lag_axis.plot(times, lag, label=lane, color=colors[lane])
    # A bulk backlog is orders of magnitude above realtime lag: symlog shows both (0 stays 0).
    lag_axis.set_yscale("symlog", linthresh=10)
    lag_axis.set_ylabel("lag (messages)")
    lag_axis.legend(loc="upper right")

    for row, lane in enumerate(lanes):
        paused = [bool(sample.paused_by_lane.get(lane, False)) for sample in samples]
        pause_axis.fill_between(
            times, row + 0.1, row + 0.9, where=paused, step="post", color=colors[lane], alpha=0.6
        )
    pause_axis.set_yticks([row + 0.5 for row in range(len(lanes))], labels=lanes)
    pause_axis.set_ylim(0, max(1, len(lanes)))
    pause_axis.set_ylabel("paused")

    for label, values, style in (
        ("p50", [_or_nan(s.realtime_p50_s) for s in samples], "-"),
        ("p99", [_or_nan(s.realtime_p99_s) for s in samples], "--"),
    ):
        latency_axis.plot(times, values, style, label=f"realtime {label}", color=colors[lanes[0]])
    if any(s.realtime_p99_s for s in samples):
        latency_axis.set_yscale("log")
    latency_axis.set_ylabel("latency (s)")
    latency_axis.legend(loc="upper right")

    for lane in lanes:
        rate = [_or_nan(sample.handled_per_s_by_lane.get(lane)) for sample in samples]
        rate_axis.plot(times, rate, label=lane, color=colors[lane])
    rate_axis.set_ylabel("handled / s")
    rate_axis.set_xlabel("time (s)")
    rate_axis.legend(loc="upper right")

    for axis in axes:
        axis.grid(alpha=0.3)
    figure.suptitle(title or "streamproc: lag, flow control and realtime latency")
    figure.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=100)
    plt.close(figure)
    return target


def _or_nan(value: Any) -> float:
    return float("nan") if value is None else float(value)
