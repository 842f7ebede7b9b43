"""Soak run: the demo workload for a long time, memory and FDs of consumer and producer sampled.

    make soak                    # 30 minutes on the local broker, then docs/reliability.md
    SOAK_DURATION=300 make soak  # any duration (seconds)
    .venv/bin/python -m benchmarks.soak --bootstrap-servers 127.0.0.1:PORT --duration 1800

Not a test: it runs far longer than CI allows (``tests/integration/test_soak_run.py`` runs it for
seconds so that it keeps working). What it does:

1. Create fresh lane topics with ``streamproc topics create`` (prefix ``soak-<random>``).
2. Start ``streamproc consume`` as a child process (the demo's SQLite sink and ``pause_lag``),
   wait for ``/readyz``.
3. Start ``streamproc produce -`` as a second, long-lived child process and feed JSON lines to its
   stdin for the whole duration: a bulk backlog (the demo's 100,000 chunks), written again once
   the consumer has handled all bulk chunks written so far and ``--bulk-every-s`` (60 s) have
   passed since the last one, and the demo's realtime stream (200 chunks/s, a burst of 3,000
   every 6 s, each burst over ``pause_lag`` so bulk is paused and resumed). Chunk ids cycle
   through fixed pools, so the sink's table stays bounded (upserts).
4. Every ``--sample-interval`` seconds write one CSV row: RSS, open file descriptors and threads
   of both children (``/proc``), the consumer's ``/metrics`` (handled and lag per lane, bulk
   pauses) and the producer's (delivered per lane).
5. After ``--duration``: close the producer's input (it flushes and exits), wait until the
   consumer has handled every chunk written, stop it with SIGTERM (it commits and exits 0), and
   check with ``streamproc lag -o json`` that the group's committed offsets reach the end of
   every partition and that the end offsets add up to the chunks written.
6. Print the summary (RSS start/end/peak and growth per hour from a least-squares line over the
   samples after the warm-up, FDs and threads start/end/max, chunks per lane) with a verdict, write
   ``summary.json`` beside the CSV and, with ``--docs``, the "Soak" section of that page.

The exit code is 1 when a chunk was lost, a child failed, or the RSS or FD growth after the
warm-up is beyond its tolerance; a run too short to fit a line after the warm-up is not judged on
growth.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from prometheus_client.parser import text_string_to_metric_families

from streamproc.demo import DemoConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT_DIR = REPO / ".streamproc" / "soak"
LANES = ("realtime", "bulk")
PROCESSES = ("consumer", "producer")
MIB = 1024 * 1024
# The section of docs/reliability.md this tool owns (scripts/reliability-report keeps it).
DOCS_BEGIN = "<!-- soak:begin (written by python -m benchmarks.soak --docs; do not edit) -->"
DOCS_END = "<!-- soak:end -->"
# Distinct chunks the bulk backlog and the realtime stream cycle through (ids repeat: upserts).
BULK_POOL = 20_000
REALTIME_POOL = 10_000
# Bulk lines written per feeder turn, so realtime lines are never queued behind a whole backlog.
BULK_SLICE = 2_000
# The workload's sizes and rates default to the demo's (streamproc demo, make demo).
DEMO = DemoConfig(bootstrap_servers="")

CSV_COLUMNS = [
    "elapsed_s",
    "phase",
    *(f"{p}_{m}" for p in PROCESSES for m in ("rss_bytes", "fds", "threads")),
    *(f"written_{lane}" for lane in LANES),
    *(f"delivered_{lane}" for lane in LANES),
    *(f"handled_{lane}" for lane in LANES),
    *(f"lag_{lane}" for lane in LANES),
    "bulk_pauses",
    "bulk_refills",
    "load_average_1m",
]


# -- pure parts: samples, fit, summary, verdict, rendering -----------------------------------


@dataclass(frozen=True, slots=True)
class ProcessSample:
    """One reading of a process from /proc; None when the process had already exited."""

    rss_bytes: int | None
    fds: int | None
    threads: int | None


@dataclass(frozen=True, slots=True)
class Tolerances:
    """What the verdict allows after the warm-up, per process."""

    warmup_s: float = 300.0
    rss_mib_per_hour: float = 20.0
    fd_growth: int = 4
    # Shortest stretch after the warm-up (and fewest samples) a growth line is fitted over.
    min_fit_span_s: float = 300.0
    min_fit_samples: int = 10


def linear_fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares line through ``(x, y)`` points: ``(slope, intercept)``.

    Raises:
        ValueError: fewer than two points, or all at the same x.
    """
    if len(points) < 2:
        raise ValueError("a line needs at least two points")
    mean_x = math.fsum(x for x, _ in points) / len(points)
    mean_y = math.fsum(y for _, y in points) / len(points)
    sxx = math.fsum((x - mean_x) ** 2 for x, _ in points)
    if sxx == 0:
        raise ValueError("all points at the same x")
    sxy = math.fsum((x - mean_x) * (y - mean_y) for x, y in points)
    slope = sxy / sxx
    return slope, mean_y - slope * mean_x


@dataclass(slots=True)
class ProcessSummary:
    """RSS, FDs and threads of one process over the run."""

    samples: int
    rss_start_mib: float
    rss_warm_mib: float | None  # the first sample after the warm-up
    rss_end_mib: float
    rss_peak_mib: float
    rss_growth_mib_per_hour: float | None  # None: too few samples after the warm-up
    fds_start: int
    fds_warm: int | None
    fds_end: int
    fds_max: int
    threads_start: int
    threads_end: int
    threads_max: int
    fit_span_s: float
    verdict: str
    ok: bool


def summarize_process(
    points: Sequence[tuple[float, ProcessSample]], tolerances: Tolerances
) -> ProcessSummary | None:
    """Summarize the ``(elapsed_s, sample)`` readings of one process taken while the load ran.

    The growth line is fitted over the readings from ``tolerances.warmup_s`` on: allocator pools,
    librdkafka's fetch queues and the SQLite page cache fill in the first minutes and stay. The
    process passes when that line rises by at most ``rss_mib_per_hour`` and its open FDs at the
    end are at most ``fd_growth`` over those at the end of the warm-up. Too short a stretch after
    the warm-up is "not judged" (and passes): a line over seconds says nothing about an hour.

    Returns:
        None when the process was never read (it did not run).
    """
    readings = [
        (elapsed, sample)
        for elapsed, sample in points
        if sample.rss_bytes is not None and sample.fds is not None and sample.threads is not None
    ]
    if not readings:
        return None
    rss = [(elapsed, (sample.rss_bytes or 0) / MIB) for elapsed, sample in readings]
    fds = [sample.fds or 0 for _, sample in readings]
    threads = [sample.threads or 0 for _, sample in readings]
    warm = [(elapsed, sample) for elapsed, sample in readings if elapsed >= tolerances.warmup_s]
    span = warm[-1][0] - warm[0][0] if warm else 0.0
    growth: float | None = None
    if len(warm) >= max(2, tolerances.min_fit_samples) and span >= tolerances.min_fit_span_s:
        slope_per_s, _ = linear_fit([(e, (s.rss_bytes or 0) / MIB) for e, s in warm])
        growth = slope_per_s * 3600
    fds_warm = warm[0][1].fds if warm else None
    problems: list[str] = []
    if growth is None:
        verdict = (
            f"growth not judged: {len(warm)} sample(s) over {span:.0f} s after the"
            f" {tolerances.warmup_s:.0f} s warm-up (a line needs"
            f" {tolerances.min_fit_span_s:.0f} s and {tolerances.min_fit_samples} samples)"
        )
    else:
        if growth > tolerances.rss_mib_per_hour:
            problems.append(
                f"RSS grows {growth:.1f} MiB/h (tolerance {tolerances.rss_mib_per_hour:g})"
            )
        assert fds_warm is not None  # noqa: S101  # warm is not empty when growth is set
        if fds[-1] - fds_warm > tolerances.fd_growth:
            problems.append(
                f"open FDs {fds_warm} -> {fds[-1]} after the warm-up"
                f" (tolerance +{tolerances.fd_growth})"
            )
        verdict = (
            "; ".join(problems)
            if problems
            else (
                f"no growth beyond tolerance: RSS {growth:+.1f} MiB/h"
                f" (<= {tolerances.rss_mib_per_hour:g}), open FDs {fds_warm} -> {fds[-1]}"
                f" (<= +{tolerances.fd_growth})"
            )
        )
    return ProcessSummary(
        samples=len(readings),
        rss_start_mib=rss[0][1],
        rss_warm_mib=None if not warm else (warm[0][1].rss_bytes or 0) / MIB,
        rss_end_mib=rss[-1][1],
        rss_peak_mib=max(value for _, value in rss),
        rss_growth_mib_per_hour=growth,
        fds_start=fds[0],
        fds_warm=fds_warm,
        fds_end=fds[-1],
        fds_max=max(fds),
        threads_start=threads[0],
        threads_end=threads[-1],
        threads_max=max(threads),
        fit_span_s=span,
        verdict=verdict,
        ok=not problems,
    )


@dataclass(slots=True)
class LaneCount:
    """What happened to one lane's chunks: written to the producer, on the topic, handled."""

    produced: int
    end_offsets: int | None  # sum of the partitions' end offsets (fresh topics: chunks on them)
    handled: int
    dead_lettered: int
    committed_lag: int | None  # group lag after the consumer's final commit

    @property
    def lost(self) -> int:
        return max(0, self.produced - self.handled - self.dead_lettered)

    @property
    def duplicates(self) -> int:
        return max(0, self.handled + self.dead_lettered - self.produced)

    def problems(self, lane: str) -> list[str]:
        found = []
        if self.lost:
            found.append(f"{lane}: {self.lost} chunk(s) produced but not handled")
        if self.end_offsets is not None and self.end_offsets != self.produced:
            found.append(f"{lane}: {self.end_offsets} on the topic, {self.produced} produced")
        if self.committed_lag is None:
            found.append(f"{lane}: committed offsets unknown")
        elif self.committed_lag:
            found.append(f"{lane}: committed offsets {self.committed_lag} short of the end")
        return found


@dataclass(slots=True)
class SoakSummary:
    """Everything the run reports; ``summary.json`` holds it and the docs section renders it."""

    started_at: str
    ended_at: str
    duration_s: float
    sample_interval_s: float
    command: str
    commit: str
    machine: dict[str, Any]
    workload: dict[str, Any]
    tolerances: dict[str, Any]
    processes: dict[str, ProcessSummary | None]
    lanes: dict[str, LaneCount]
    bulk_refills: int
    bulk_pauses: int
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.verdict_problems()

    def verdict_problems(self) -> list[str]:
        problems = list(self.failures)
        for lane, count in self.lanes.items():
            problems += count.problems(lane)
        for name, process in self.processes.items():
            if process is None:
                problems.append(f"{name}: never sampled")
            elif not process.ok:
                problems.append(f"{name}: {process.verdict}")
        return problems

    def verdict(self) -> str:
        problems = self.verdict_problems()
        if problems:
            return "FAIL: " + "; ".join(problems)
        judged = [p for p in self.processes.values() if p and p.rss_growth_mib_per_hour is not None]
        lost = sum(count.lost for count in self.lanes.values())
        if not judged:
            return f"PASS (nothing lost: {lost}); growth not judged, the run is too short"
        return (
            f"PASS: nothing lost ({lost}); no RSS growth beyond"
            f" {self.tolerances['rss_mib_per_hour']:g} MiB/h and no FD growth beyond"
            f" +{self.tolerances['fd_growth']} after the"
            f" {self.tolerances['warmup_s']:.0f} s warm-up"
        )

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["verdict"] = self.verdict()
        document["ok"] = self.ok
        for lane, count in self.lanes.items():
            document["lanes"][lane]["lost"] = count.lost
            document["lanes"][lane]["duplicates"] = count.duplicates
        return document


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _growth(value: float | None) -> str:
    return "not judged" if value is None else f"{value:+.1f}"


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def summary_lines(summary: SoakSummary) -> list[str]:
    """The summary printed at the end of a run (plain text)."""
    lines = [
        f"soak {summary.duration_s:.0f} s of load, a sample every {summary.sample_interval_s:g} s,"
        f" warm-up {summary.tolerances['warmup_s']:.0f} s",
    ]
    for name, process in summary.processes.items():
        if process is None:
            lines.append(f"{name:9} never sampled")
            continue
        lines.append(
            f"{name:9} RSS MiB start {_mib(process.rss_start_mib)}, after warm-up"
            f" {_mib(process.rss_warm_mib)}, end {_mib(process.rss_end_mib)}, peak"
            f" {_mib(process.rss_peak_mib)}; growth MiB/h"
            f" {_growth(process.rss_growth_mib_per_hour)};"
            f" FDs start {process.fds_start}, end {process.fds_end}, max {process.fds_max};"
            f" threads {process.threads_start} -> {process.threads_end} (max {process.threads_max})"
        )
    for lane, count in summary.lanes.items():
        lines.append(
            f"{lane:9} produced {count.produced:,}, on the topic {_count(count.end_offsets)},"
            f" handled {count.handled:,}, dead-lettered {count.dead_lettered:,}, lost"
            f" {count.lost:,}, duplicates {count.duplicates:,}, committed lag"
            f" {_count(count.committed_lag)}"
        )
    lines.append(
        f"bulk backlog written {summary.bulk_refills} times,"
        f" bulk paused {summary.bulk_pauses} times"
    )
    lines.append(summary.verdict())
    return lines


def render_docs_section(summary: SoakSummary, csv_name: str) -> str:
    """The "Soak" section of docs/reliability.md, between its markers."""
    workload = summary.workload
    machine = summary.machine
    rows = []
    for name, process in summary.processes.items():
        if process is None:
            rows.append(f"| {name} | never sampled | | | | | | | | |")
            continue
        rows.append(
            f"| {name} | {_mib(process.rss_start_mib)} | {_mib(process.rss_warm_mib)}"
            f" | {_mib(process.rss_end_mib)} | {_mib(process.rss_peak_mib)}"
            f" | {_growth(process.rss_growth_mib_per_hour)}"
            f" | {process.fds_start} / {_count(process.fds_warm)} / {process.fds_end}"
            f" | {process.fds_max}"
            f" | {process.threads_start} / {process.threads_end} | {process.samples} |"
        )
    lane_rows = [
        f"| {lane} | {count.produced:,} | {_count(count.end_offsets)} | {count.handled:,}"
        f" | {count.dead_lettered:,} | {count.lost:,} | {count.duplicates:,}"
        f" | {_count(count.committed_lag)} |"
        for lane, count in summary.lanes.items()
    ]
    tolerances = summary.tolerances
    lines = [
        DOCS_BEGIN,
        "## Soak",
        "",
        "The demo workload run for a long time against the local broker, the consumer and the"
        " producer each a real `streamproc` process, their resident memory (RSS), open file"
        " descriptors and threads read from `/proc` at a fixed interval. A leak shows as a line"
        " that keeps rising after the warm-up (allocator pools, librdkafka's fetch queues and the"
        " SQLite page cache fill in the first minutes, then stay). Reproduce with `make soak`"
        " (30 minutes; `SOAK_DURATION=SECONDS make soak` for another length), which runs"
        " `python -m benchmarks.soak` and rewrites this section from the run; see its `--help`.",
        "",
        f"- **Run**: {summary.started_at} to {summary.ended_at} (UTC), commit `{summary.commit}`,"
        f" command `{summary.command}`.",
        f"- **Machine**: {machine.get('cpus')} cores shared with other work (1-minute load"
        f" average {machine.get('load_average_start')} at the start,"
        f" {machine.get('load_average_mean')} on average over the samples,"
        f" {machine.get('load_average_end')} at the end), broker {machine.get('kafka')} on the"
        f" same machine, Python {machine.get('python')}.",
        f"- **Load**: {summary.duration_s:,.0f} s. Bulk: a backlog of"
        f" {workload['bulk_count']:,} chunks, written again once the consumer had handled all"
        f" of it and {workload['bulk_every_s']:g} s had passed ({summary.bulk_refills} backlogs"
        f" in all). Realtime: {workload['realtime_rate']:g}"
        f" chunks/s with a burst of {workload['burst_size']:,} every"
        f" {workload['burst_every_s']:g} s (over `pause_lag` {workload['pause_lag']:,}: bulk"
        f" paused {summary.bulk_pauses} times). {workload['partitions']} partitions per lane,"
        f" sink `{workload['sink']}`.",
        f"- **Sampling**: every {summary.sample_interval_s:g} s into `{csv_name}`; growth is the"
        f" slope of a least-squares line through the RSS samples after a"
        f" {tolerances['warmup_s']:.0f} s warm-up, in MiB per hour.",
        "",
        "| process | RSS start MiB | after warm-up | end | peak | growth MiB/h"
        " | FDs start / after warm-up / end | FDs max | threads start / end | samples |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        *rows,
        "",
        "| lane | produced | on the topic | handled | dead-lettered | lost | duplicates"
        " | committed lag at the end |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
        *lane_rows,
        "",
        f"Tolerances: RSS growth at most {tolerances['rss_mib_per_hour']:g} MiB/h and open FDs at"
        f" most +{tolerances['fd_growth']} after the warm-up, per process; nothing lost and the"
        " committed offsets at the end of every partition.",
        "",
        f"**Verdict**: {summary.verdict()}",
        DOCS_END,
    ]
    return "\n".join(lines) + "\n"


def replace_docs_section(text: str, section: str) -> str:
    """``text`` with its soak section replaced by ``section`` (appended if it has none)."""
    begin = text.find(DOCS_BEGIN)
    end = text.find(DOCS_END, begin if begin >= 0 else 0)
    if begin >= 0 and end >= 0:
        return text[:begin] + section + text[end + len(DOCS_END) :].lstrip("\n")
    return text.rstrip("\n") + "\n\n" + section


# -- reading the children ---------------------------------------------------------------------


def read_process(pid: int) -> ProcessSample:
    """RSS, open FDs and threads of ``pid`` from /proc; Nones once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return ProcessSample(None, None, None)
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if fields.get("State", "").strip().startswith("Z"):  # exited, not yet reaped
        return ProcessSample(None, None, None)
    rss_kib = int(fields["VmRSS"].split()[0])
    return ProcessSample(rss_kib * 1024, fds, int(fields["Threads"]))


Metrics = dict[str, dict[tuple[tuple[str, str], ...], float]]
"""Samples of a /metrics page by sample name, then by their sorted labels."""


def parse_metrics(text: str) -> Metrics:
    """The samples of a Prometheus text exposition (counters keep their ``_total`` name)."""
    found: Metrics = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            found.setdefault(sample.name, {})[labels] = sample.value
    return found


def scrape(port: int, timeout_s: float = 5.0) -> Metrics:
    """The samples of the /metrics endpoint on ``port``; {} if it does not answer."""
    try:
        with urllib.request.urlopen(  # a fixed http URL on localhost
            f"http://127.0.0.1:{port}/metrics", timeout=timeout_s
        ) as response:
            return parse_metrics(response.read().decode("utf-8"))
    except (OSError, urllib.error.URLError):
        return {}


def by_lane(
    metrics: Metrics,
    name: str,
    **match: str,
) -> dict[str, int]:
    """Sum of a metric's samples per ``lane`` label, over samples whose labels include ``match``."""
    totals = dict.fromkeys(LANES, 0)
    for labels, value in metrics.get(name, {}).items():
        found = dict(labels)
        if all(found.get(key) == wanted for key, wanted in match.items()) and "lane" in found:
            totals[found["lane"]] = totals.get(found["lane"], 0) + int(value)
    return totals


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(port: int, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the consumer exited with {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(  # a fixed http URL on localhost
                f"http://127.0.0.1:{port}/readyz", timeout=2
            ) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the consumer was not ready within {timeout_s:.0f} s")


# -- the workload -----------------------------------------------------------------------------


def chunk_lines(count: int, *, low_priority: bool, prefix: str, seed: int) -> list[bytes]:
    """``count`` distinct sample chunks as JSON lines for ``streamproc produce``."""
    from streamproc.samples import sample_chunks

    ratio = 1.0 if low_priority else 0.0
    return [
        chunk.model_dump_json(exclude_none=True).encode() + b"\n"
        for chunk in sample_chunks(count, low_priority_ratio=ratio, prefix=prefix, seed=seed)
    ]


class Feeder(threading.Thread):
    """Writes the workload to the producer's stdin: realtime on a schedule, bulk on request."""

    def __init__(
        self,
        stdin: IO[bytes],
        *,
        realtime_rate: float,
        burst_size: int,
        burst_every_s: float,
    ) -> None:
        super().__init__(name="feeder", daemon=True)
        self.stdin = stdin
        self.realtime_rate = realtime_rate
        self.burst_size = burst_size
        self.burst_every_s = burst_every_s
        self.realtime: Iterator[bytes] = itertools.cycle(
            chunk_lines(REALTIME_POOL, low_priority=False, prefix="live", seed=2)
        )
        self.bulk: Iterator[bytes] = itertools.cycle(
            chunk_lines(BULK_POOL, low_priority=True, prefix="bulk", seed=1)
        )
        self.written = dict.fromkeys(LANES, 0)
        self._bulk_pending = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.error: BaseException | None = None

    def request_bulk(self, count: int) -> None:
        with self._lock:
            self._bulk_pending += count

    @property
    def bulk_pending(self) -> int:
        with self._lock:
            return self._bulk_pending

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        started = time.monotonic()
        next_burst = started + 2.0
        steady_sent = 0
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                due = int((now - started) * self.realtime_rate) - steady_sent
                steady_sent += due
                if now >= next_burst:
                    due += self.burst_size
                    next_burst += self.burst_every_s
                with self._lock:
                    bulk_due = min(self._bulk_pending, BULK_SLICE)
                    self._bulk_pending -= bulk_due
                lines = [next(self.realtime) for _ in range(due)]
                lines += [next(self.bulk) for _ in range(bulk_due)]
                if lines:
                    self.stdin.write(b"".join(lines))
                    self.stdin.flush()
                    self.written["realtime"] += due
                    self.written["bulk"] += bulk_due
                if not bulk_due:
                    time.sleep(0.01)
        except BaseException as exc:  # noqa: BLE001  # reported by the main thread
            self.error = exc


# -- the run ----------------------------------------------------------------------------------


def streamproc_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamproc", *args]


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes" if status else "")


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(slots=True)
class Run:
    """One soak run's children, counters and samples."""

    args: argparse.Namespace
    prefix: str
    output_dir: Path
    consumer_port: int = field(default_factory=free_port)
    producer_port: int = field(default_factory=free_port)
    samples: dict[str, list[tuple[float, ProcessSample]]] = field(
        default_factory=lambda: {name: [] for name in PROCESSES}
    )
    refills: int = 0
    bulk_pauses: int = 0
    handled: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LANES, 0))
    dead_lettered: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LANES, 0))
    failures: list[str] = field(default_factory=list)
    load_averages: list[float] = field(default_factory=list)

    @property
    def group(self) -> str:
        return f"{self.prefix}-group"


def sample_row(
    run: Run,
    writer: Any,
    elapsed: float,
    phase: str,
    pids: dict[str, int | None],
    feeder: Feeder,
) -> dict[str, Any]:
    """Read both children and both endpoints; record and return the row."""
    row: dict[str, Any] = {"elapsed_s": round(elapsed, 1), "phase": phase}
    for name in PROCESSES:
        pid = pids[name]
        reading = read_process(pid) if pid is not None else ProcessSample(None, None, None)
        if phase == "load":
            run.samples[name].append((elapsed, reading))
        row[f"{name}_rss_bytes"] = reading.rss_bytes
        row[f"{name}_fds"] = reading.fds
        row[f"{name}_threads"] = reading.threads
    consumer = scrape(run.consumer_port)
    producer = scrape(run.producer_port) if pids["producer"] is not None else {}
    if consumer:
        update_consumer_counts(run, consumer)
    delivered = by_lane(producer, "streamproc_produced_messages_total", outcome="delivered")
    lag = by_lane(consumer, "streamproc_lane_lag_messages")
    for lane in LANES:
        row[f"written_{lane}"] = feeder.written[lane]
        row[f"delivered_{lane}"] = delivered[lane] if producer else None
        row[f"handled_{lane}"] = run.handled[lane]
        row[f"lag_{lane}"] = lag[lane] if consumer else None
    row["bulk_pauses"] = run.bulk_pauses
    row["bulk_refills"] = run.refills
    row["load_average_1m"] = round(os.getloadavg()[0], 2)
    if phase == "load":
        run.load_averages.append(row["load_average_1m"])
    writer.writerow(row)
    return row


def update_consumer_counts(run: Run, metrics: Metrics) -> None:
    handled = by_lane(metrics, "streamproc_messages_handled_total")
    dead = by_lane(metrics, "streamproc_messages_handled_total", outcome="dead_lettered")
    for lane in LANES:
        run.dead_lettered[lane] = dead[lane]
        run.handled[lane] = handled[lane] - dead[lane]
    run.bulk_pauses = by_lane(metrics, "streamproc_lane_pauses_total").get("bulk", 0)


def committed_lag(run: Run) -> dict[str, tuple[int | None, int | None]]:
    """Per lane: (sum of end offsets, group lag) from ``streamproc lag -o json``."""
    result = subprocess.run(  # our own CLI, fixed arguments
        streamproc_command(
            "lag",
            "--bootstrap-servers",
            run.args.bootstrap_servers,
            "--topic-prefix",
            run.prefix,
            "--group",
            run.group,
            "--output",
            "json",
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        run.failures.append(f"streamproc lag exited {result.returncode}: {result.stderr.strip()}")
        return dict.fromkeys(LANES, (None, None))
    document = json.loads(result.stdout)
    found: dict[str, tuple[int | None, int | None]] = {}
    for lane in LANES:
        rows = [row for row in document["partitions"] if row["lane"] == lane]
        unknown = document["lanes"][lane]["partitions_unknown"]
        end = sum(row["high_watermark"] or 0 for row in rows)
        found[lane] = (end, None if unknown else document["lanes"][lane]["lag_messages"])
    return found


def execute(args: argparse.Namespace) -> SoakSummary:
    """Steps 1-6 of the module docstring; the summary of what was measured."""
    from confluent_kafka.admin import AdminClient

    from streamproc.settings import KafkaSettings
    from streamproc.topics import TopicAdmin

    prefix = f"soak-{uuid.uuid4().hex[:8]}"
    output_dir: Path = args.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    run = Run(args=args, prefix=prefix, output_dir=output_dir)
    started_at = datetime.now(UTC)
    commit = git_commit()  # of the code that runs, before anything is written
    load_start = os.getloadavg()[0]
    csv_path = output_dir / f"{prefix}.csv"
    sqlite_path = output_dir / f"{prefix}.sqlite"
    kafka = KafkaSettings(bootstrap_servers=args.bootstrap_servers, topic_prefix=prefix)

    say(f"topics {prefix}.realtime / {prefix}.bulk, {args.partitions} partitions each")
    subprocess.run(  # our own CLI, fixed arguments
        streamproc_command(
            "topics",
            "create",
            "--bootstrap-servers",
            args.bootstrap_servers,
            "--topic-prefix",
            prefix,
            "--partitions",
            str(args.partitions),
            "--retention-ms",
            str(args.retention_ms),
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )
    consumer_log = (output_dir / f"{prefix}-consumer.log").open("wb")
    producer_log = (output_dir / f"{prefix}-producer.log").open("wb")
    consumer = subprocess.Popen(  # our own CLI, fixed arguments
        streamproc_command(
            "consume",
            "--bootstrap-servers",
            args.bootstrap_servers,
            "--topic-prefix",
            prefix,
            "--group",
            run.group,
            "--sink",
            f"sqlite:{sqlite_path}",
            "--pause-lag",
            str(args.pause_lag),
            "--metrics-port",
            str(run.consumer_port),
            "--log-level",
            "WARNING",
        ),
        stdout=consumer_log,
        stderr=subprocess.STDOUT,
    )
    producer: subprocess.Popen[bytes] | None = None
    feeder: Feeder | None = None
    csv_file = csv_path.open("w", newline="")
    writer = csv.DictWriter(csv_file, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    load_s = 0.0
    try:
        wait_ready(run.consumer_port, consumer, timeout_s=120)
        say(f"consumer pid {consumer.pid} ready (metrics on port {run.consumer_port})")
        producer = subprocess.Popen(  # our own CLI, fixed arguments
            streamproc_command(
                "produce",
                "-",
                "--bootstrap-servers",
                args.bootstrap_servers,
                "--topic-prefix",
                prefix,
                "--no-progress",
                "--metrics-port",
                str(run.producer_port),
                "--log-level",
                "WARNING",
            ),
            stdin=subprocess.PIPE,
            stdout=producer_log,
            stderr=subprocess.STDOUT,
        )
        assert producer.stdin is not None  # noqa: S101  # stdin=PIPE
        feeder = Feeder(
            producer.stdin,
            realtime_rate=args.realtime_rate,
            burst_size=args.burst_size,
            burst_every_s=args.burst_every_s,
        )
        say(f"producer pid {producer.pid}; load for {args.duration:.0f} s")
        pids: dict[str, int | None] = {"consumer": consumer.pid, "producer": producer.pid}
        feeder.request_bulk(args.bulk_count)
        run.refills = 1
        started = time.monotonic()
        last_refill = started
        feeder.start()
        next_sample = started
        next_report = started + 60
        while (elapsed := time.monotonic() - started) < args.duration:
            if consumer.poll() is not None or producer.poll() is not None:
                run.failures.append(
                    f"a child exited during the load (consumer {consumer.returncode},"
                    f" producer {producer.returncode})"
                )
                break
            if feeder.error is not None:
                run.failures.append(f"writing to the producer failed: {feeder.error!r}")
                break
            if time.monotonic() >= next_sample:
                row = sample_row(run, writer, elapsed, "load", pids, feeder)
                csv_file.flush()
                next_sample += args.sample_interval
                if time.monotonic() >= next_report:
                    next_report += 60
                    say(
                        f"{elapsed:5.0f} s consumer RSS"
                        f" {(row['consumer_rss_bytes'] or 0) / MIB:.1f} MiB,"
                        f" {row['consumer_fds']} FDs; handled realtime"
                        f" {run.handled['realtime']:,} bulk {run.handled['bulk']:,}"
                    )
            metrics = scrape(run.consumer_port)
            if metrics:
                update_consumer_counts(run, metrics)
                if (
                    feeder.bulk_pending == 0
                    and run.handled["bulk"] + run.dead_lettered["bulk"] >= feeder.written["bulk"]
                    and time.monotonic() - last_refill >= args.bulk_every_s
                ):
                    feeder.request_bulk(args.bulk_count)
                    run.refills += 1
                    last_refill = time.monotonic()
            time.sleep(min(0.5, max(0.0, next_sample - time.monotonic())))
        load_s = time.monotonic() - started
        sample_row(run, writer, load_s, "load", pids, feeder)

        say("load over: closing the producer's input")
        feeder.stop()
        feeder.join(timeout=60)
        producer.stdin.close()
        try:
            producer.wait(timeout=180)
        except subprocess.TimeoutExpired:
            run.failures.append("the producer did not exit within 180 s of its input closing")
            producer.kill()
            producer.wait()
        if producer.returncode != 0:
            run.failures.append(f"the producer exited {producer.returncode}")
        pids["producer"] = None

        say("draining: waiting for the consumer to handle every chunk written")
        deadline = time.monotonic() + args.drain_timeout
        next_sample = time.monotonic()
        while time.monotonic() < deadline and consumer.poll() is None:
            metrics = scrape(run.consumer_port)
            if metrics:
                update_consumer_counts(run, metrics)
            if all(
                run.handled[lane] + run.dead_lettered[lane] >= feeder.written[lane]
                for lane in LANES
            ):
                break
            if time.monotonic() >= next_sample:
                sample_row(run, writer, time.monotonic() - started, "drain", pids, feeder)
                next_sample += args.sample_interval
            time.sleep(0.5)
        sample_row(run, writer, time.monotonic() - started, "drain", pids, feeder)
    finally:
        if feeder is not None:
            feeder.stop()
        if producer is not None and producer.poll() is None:
            producer.kill()
            producer.wait()
        if consumer.poll() is None:
            consumer.send_signal(signal.SIGTERM)
            try:
                consumer.wait(timeout=120)
            except subprocess.TimeoutExpired:
                consumer.kill()
                consumer.wait()
                run.failures.append("the consumer did not exit within 120 s of SIGTERM")
        if consumer.returncode != 0:
            run.failures.append(f"the consumer exited {consumer.returncode}")
        csv_file.close()
        consumer_log.close()
        producer_log.close()

    written = feeder.written if feeder is not None else dict.fromkeys(LANES, 0)
    ends = committed_lag(run)
    if not args.keep_topics:
        lanes = kafka.topology
        TopicAdmin(AdminClient(kafka.admin_config()), lanes).delete()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{sqlite_path}{suffix}").unlink(missing_ok=True)
    tolerances = Tolerances(
        warmup_s=args.warmup,
        rss_mib_per_hour=args.rss_tolerance,
        fd_growth=args.fd_tolerance,
    )
    from benchmarks.harness import machine

    return SoakSummary(
        started_at=started_at.isoformat(timespec="seconds"),
        ended_at=datetime.now(UTC).isoformat(timespec="seconds"),
        duration_s=load_s,
        sample_interval_s=args.sample_interval,
        command=args.command_line,
        commit=commit,
        machine={
            **machine(),
            "load_average_start": round(load_start, 2),
            "load_average_end": round(os.getloadavg()[0], 2),
            "load_average_mean": round(sum(run.load_averages) / len(run.load_averages), 2)
            if run.load_averages
            else None,
        },
        workload={
            "bulk_count": args.bulk_count,
            "bulk_every_s": args.bulk_every_s,
            "realtime_rate": args.realtime_rate,
            "burst_size": args.burst_size,
            "burst_every_s": args.burst_every_s,
            "pause_lag": args.pause_lag,
            "partitions": args.partitions,
            "sink": "sqlite",
            "csv": str(csv_path),
        },
        tolerances=asdict(tolerances),
        processes={name: summarize_process(run.samples[name], tolerances) for name in PROCESSES},
        lanes={
            lane: LaneCount(
                produced=written[lane],
                end_offsets=ends[lane][0],
                handled=run.handled[lane],
                dead_lettered=run.dead_lettered[lane],
                committed_lag=ends[lane][1],
            )
            for lane in LANES
        },
        bulk_refills=run.refills,
        bulk_pauses=run.bulk_pauses,
        failures=run.failures,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--bootstrap-servers",
        "-b",
        default=os.environ.get("STREAMPROC_BOOTSTRAP_SERVERS"),
        help="Kafka bootstrap servers (default: $STREAMPROC_BOOTSTRAP_SERVERS).",
    )
    parser.add_argument(
        "--duration", type=float, default=1800.0, help="Seconds of load (default 1800)."
    )
    parser.add_argument(
        "--sample-interval", type=float, default=10.0, help="Seconds between samples (10)."
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=300.0,
        help="Seconds after which the growth line is fitted (300).",
    )
    parser.add_argument(
        "--rss-tolerance",
        type=float,
        default=20.0,
        help="Largest RSS growth after the warm-up that passes, MiB per hour (20).",
    )
    parser.add_argument(
        "--fd-tolerance",
        type=int,
        default=4,
        help="Most open FDs gained between the end of the warm-up and the end that pass (4).",
    )
    parser.add_argument(
        "--bulk-count",
        type=int,
        default=DEMO.bulk_count,
        help=f"Bulk backlog, chunks ({DEMO.bulk_count}, the demo's).",
    )
    parser.add_argument(
        "--bulk-every-s",
        type=float,
        default=60.0,
        help="A new bulk backlog once the last is drained, at most this often, seconds (60).",
    )
    parser.add_argument(
        "--realtime-rate",
        type=float,
        default=DEMO.realtime_rate,
        help=f"Steady realtime chunks/s ({DEMO.realtime_rate:g}, the demo's).",
    )
    parser.add_argument(
        "--burst-size",
        type=int,
        default=DEMO.burst_size,
        help=f"Realtime chunks per burst ({DEMO.burst_size}, the demo's).",
    )
    parser.add_argument(
        "--burst-every-s",
        type=float,
        default=DEMO.burst_every_s,
        help=f"Seconds between bursts ({DEMO.burst_every_s:g}, the demo's).",
    )
    parser.add_argument(
        "--pause-lag",
        type=int,
        default=DEMO.pause_lag,
        help=f"The consumer's pause_lag ({DEMO.pause_lag}, the demo's).",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=DEMO.partitions,
        help=f"Partitions per lane ({DEMO.partitions}, the demo's).",
    )
    parser.add_argument(
        "--retention-ms",
        type=int,
        default=600_000,
        help="retention.ms of the run's topics, so the broker's disk stays bounded (600000).",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=600.0,
        help="Seconds the consumer gets to handle the rest after the load (600).",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=DEFAULT_OUTPUT_DIR,
        help="Where the CSV, summary.json and the children's logs go (.streamproc/soak).",
    )
    parser.add_argument(
        "--docs",
        type=Path,
        default=None,
        help="Write the Soak section of this page (docs/reliability.md) from the run.",
    )
    parser.add_argument(
        "--keep-topics", action="store_true", help="Keep the run's topics (default: deleted)."
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.bootstrap_servers:
        parser.error("--bootstrap-servers is required (or set STREAMPROC_BOOTSTRAP_SERVERS)")
    if args.duration <= 0 or args.sample_interval <= 0:
        parser.error("--duration and --sample-interval must be positive")
    args.command_line = "python -m benchmarks.soak " + " ".join(
        _shown(argv if argv is not None else sys.argv[1:])
    )
    summary = execute(args)
    (args.output_dir / "summary.json").write_text(json.dumps(summary.to_json(), indent=2) + "\n")
    for line in summary_lines(summary):
        print(line)
    if args.docs is not None:
        page: Path = args.docs
        csv_name = Path(summary.workload["csv"]).name
        section = render_docs_section(summary, csv_name)
        page.write_text(replace_docs_section(page.read_text(encoding="utf-8"), section))
        say(f"wrote the Soak section of {page}")
    return 0 if summary.ok else 1


def _shown(argv: Iterable[str]) -> Iterator[str]:
    """The arguments as given, with the broker's address (a local port) left out."""
    skip = False
    for item in argv:
        if skip:
            skip = False
            continue
        if item in ("--bootstrap-servers", "-b"):
            skip = True
            continue
        if item.startswith("--bootstrap-servers="):
            continue
        yield item


if __name__ == "__main__":
    sys.exit(main())
