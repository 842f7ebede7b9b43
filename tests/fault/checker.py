"""One checker for every fault scenario: invariants I1-I5 of RELIABILITY.md and the figure line.

I6 (priority) is a property of the run, not of the ledgers: the scenarios that check it observe
the members while they run and hand the count of violations in (``priority_violations``).

The figure line of a scenario (produced, acknowledged, handled, dead-lettered, duplicates, lost)
is printed and written as JSON to ``.streamproc/reliability/<scenario>.json``, from which
``scripts/reliability-report`` renders the table of ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
import platform
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from tests.fault.ledger import (
    Acked,
    DeadLettered,
    Processed,
    read_acked,
    read_dead_lettered,
    read_processed,
)

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = Path(
    os.environ.get("STREAMPROC_RELIABILITY_RESULTS", REPO / ".streamproc" / "reliability")
)

PartitionKey = tuple[str, int]
# Figure lines of this test session, printed in the terminal summary (tests/fault/conftest.py).
SESSION_FIGURES: list[str] = []
DuplicateRule = Literal["none", "uncommitted_window", "reported"]


def scenario_id(name: str, concurrency: int) -> str:
    """The results name of a run: ``name`` at concurrency 1, ``name-concurrency-N`` otherwise.

    ``scripts/reliability-report`` lists a scenario's runs without ``concurrency`` in the name
    first.
    """
    return name if concurrency == 1 else f"{name}-concurrency-{concurrency}"


@dataclass(frozen=True)
class Fault:
    """A moment where the contract allows redelivery: a hard kill, a session lost to a cut.

    Attributes:
        committed: The group's committed offsets right after the fault; only offsets at or past
            them may be handled again.
    """

    name: str
    committed: Mapping[PartitionKey, int]


@dataclass
class Figures:
    scenario: str
    title: str
    produced: int
    acknowledged: int
    handled: int
    dead_lettered: int
    duplicates: int
    lost: int
    invariants: list[str]
    violations: dict[str, list[str]] = field(default_factory=dict)
    notes: dict[str, object] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"[{self.scenario}] produced={self.produced} acknowledged={self.acknowledged} "
            f"handled={self.handled} dead-lettered={self.dead_lettered} "
            f"duplicates={self.duplicates} lost={self.lost} "
            f"invariants={','.join(self.invariants)} "
            f"{'OK' if self.ok else 'VIOLATED ' + ','.join(sorted(self.violations))}"
        )

    @property
    def ok(self) -> bool:
        return not self.violations

    def assert_ok(self) -> None:
        details = "\n".join(
            f"  {name}: {'; '.join(found[:5])}" for name, found in sorted(self.violations.items())
        )
        assert self.lost == 0, f"{self.line()}\n{self.lost} acknowledged messages lost\n{details}"
        assert self.ok, f"{self.line()}\n{details}"


def contiguous_end(offsets: Iterable[int], start: int = 0) -> int:
    """1 + the last offset of the gap-free run of ``offsets`` from ``start`` (``start`` if none)."""
    seen = set(offsets)
    end = start
    while end in seen:
        end += 1
    return end


def commit_safety_violations(committed: Mapping[PartitionKey, int], directory: Path) -> list[str]:
    """I3 at one instant: offsets committed *before* this call must be covered by the ledgers now.

    Handled chunks are fsynced before the handler returns, and offsets are stored (then committed)
    only after that, so reading the ledgers after the committed offsets gives a sound check.
    """
    covered: dict[PartitionKey, set[int]] = defaultdict(set)
    for entry in read_processed(directory):
        covered[(entry.topic, entry.partition)].add(entry.offset)
    return [
        f"{topic}[{partition}] committed {offset} past the handled run ending at {end}"
        for (topic, partition), offset in committed.items()
        if offset > (end := contiguous_end(covered[(topic, partition)]))
    ]


def check(
    scenario: str,
    title: str,
    directory: Path,
    *,
    produced: int,
    committed: Mapping[PartitionKey, int],
    high_watermarks: Mapping[PartitionKey, int],
    duplicates: DuplicateRule = "none",
    faults: Iterable[Fault] = (),
    commit_samples: Iterable[list[str]] = (),
    priority_violations: int | None = None,
    objectives: Mapping[str, list[str]] | None = None,
    invariants: Iterable[str] = ("I1", "I2", "I3", "I4", "I5"),
    notes: Mapping[str, object] | None = None,
    record: bool = True,
    undeliverable: Mapping[PartitionKey, Iterable[int]] | None = None,
) -> Figures:
    """Evaluate the invariants over the scenario's ledgers, print and record the figure line.

    Args:
        scenario: Short id (``01-broker-restart``), also the results file name.
        title: What the scenario does, for the report.
        directory: The scenario's ledger directory.
        produced: How many messages the scenario tried to produce.
        committed: The group's committed offsets after the drain (every lane partition).
        high_watermarks: The lane partitions' high watermarks after the drain.
        duplicates: ``none`` after clean stops, ``uncommitted_window`` after ``faults``,
            ``reported`` where the scenario names no duplicate rule.
        faults: Hard kills or lost sessions, with the offsets committed right after each.
        commit_samples: Violations of I3 found while the scenario ran.
        priority_violations: I6: bulk chunks handled while bulk had to be paused.
        objectives: Misses of the scenario's own objectives (a latency bound...), by name;
            reported like violated invariants, so the results file says the run failed.
        invariants: Which invariants the scenario claims (reported in the figure line).
        notes: Extra figures of the scenario (rebalances, pauses, latency...).
        record: Print the figure line and write the results file (off for the checker's tests).
        undeliverable: Offsets no consumer gets, per partition: transaction markers, and under
            read_committed the records of aborted transactions. They count as covered for I2.
    """
    checked = list(invariants)
    acked = read_acked(directory)
    processed = read_processed(directory)
    dead = read_dead_lettered(directory)
    violations: dict[str, list[str]] = defaultdict(list)

    # I1 no loss: every acked id is in processed or dlq.
    done_ids = {e.id for e in processed} | {e.id for e in dead}
    lost_ids = sorted({a.id for a in acked} - done_ids)
    if lost_ids:
        violations["I1"].append(f"{len(lost_ids)} acknowledged never handled: {lost_ids[:5]}")

    # I2 no skip, I3 commit safety: handled offsets cover [0, committed) without gaps.
    covered: dict[PartitionKey, set[int]] = defaultdict(set)
    handled_or_parked: list[Processed | DeadLettered] = [*processed, *dead]
    for entry in handled_or_parked:
        covered[(entry.topic, entry.partition)].add(entry.offset)
    for key, offsets in (undeliverable or {}).items():
        covered[key].update(offsets)
    for key, offset in sorted(committed.items()):
        end = contiguous_end(covered[key])
        if offset > end:
            violations["I2"].append(f"{key[0]}[{key[1]}]: gap at {end}, committed {offset}")
            violations["I3"].append(f"{key[0]}[{key[1]}]: committed {offset} > {end}")
        high = high_watermarks.get(key)
        if high is not None and offset != high:
            violations["I2"].append(f"{key[0]}[{key[1]}]: committed {offset}, high {high}")
    for sample in commit_samples:
        violations["I3"].extend(sample)

    # I4 duplicates.
    counts = Counter(e.id for e in processed)
    duplicate_count = sum(n - 1 for n in counts.values() if n > 1)
    if duplicates == "none" and duplicate_count:
        violations["I4"].append(f"{duplicate_count} duplicates after a clean stop")
    elif duplicates == "uncommitted_window":
        fault_list = list(faults)
        repeated = {e.id for e in processed if counts[e.id] > 1}
        for entry in processed:
            if entry.id not in repeated:
                continue
            if counts[entry.id] > 1 + len(fault_list):
                violations["I4"].append(f"{entry.id} handled {counts[entry.id]} times")
            key = (entry.topic, entry.partition)
            floor = min((f.committed.get(key, 0) for f in fault_list), default=None)
            if floor is None or entry.offset < floor:
                violations["I4"].append(
                    f"{entry.id} at {key[0]}[{key[1]}]@{entry.offset} handled again although "
                    f"committed before the fault ({floor})"
                )

    # I5 consistency: one (topic, partition, offset) never maps to two ids (ledgers agree).
    ids_at: dict[tuple[str, int, int], set[str]] = defaultdict(set)
    every_entry: list[Acked | Processed | DeadLettered] = [*acked, *processed, *dead]
    for any_entry in every_entry:
        if any_entry.offset is not None:  # an ack without its offset says nothing of where
            ids_at[(any_entry.topic, any_entry.partition, any_entry.offset)].add(any_entry.id)
    for where, ids in ids_at.items():
        if len(ids) > 1:
            violations["I5"].append(f"{where} maps to {sorted(ids)}")

    if priority_violations:
        violations["I6"].append(
            f"{priority_violations} bulk chunks handled while bulk was due paused"
        )

    for name, misses in (objectives or {}).items():
        violations[name].extend(misses)

    figures = Figures(
        scenario=scenario,
        title=title,
        produced=produced,
        acknowledged=len({a.id for a in acked}),
        handled=len({e.id for e in processed}),
        dead_lettered=len({e.id for e in dead}),
        duplicates=duplicate_count,
        lost=len(lost_ids),
        invariants=checked,
        violations={name: found for name, found in violations.items() if found},
        notes=dict(notes or {}),
    )
    if record:
        print(figures.line())
        SESSION_FIGURES.append(figures.line())
        write_result(figures)
    return figures


def write_result(figures: Figures) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{figures.scenario}.json"
    payload = {
        **asdict(figures),
        "ok": figures.ok,
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path
