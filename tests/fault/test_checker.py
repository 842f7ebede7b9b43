"""The checker itself: each invariant is reported when hand-made ledgers or scrapes break it."""

from __future__ import annotations

from pathlib import Path

from tests.fault.checker import Fault, check, commit_safety_violations, contiguous_end
from tests.fault.ledger import ACKED, DEAD_LETTERED, PROCESSED, LedgerFile
from tests.fault.scenario import FlowSample, bulk_started_while_due_paused

TOPIC = "t.realtime"


def write(directory: Path, name: str, rows: list[tuple[object, ...]]) -> None:
    ledger = LedgerFile(directory / name)
    ledger.append(rows)
    ledger.close()


def ledgers(directory: Path, processed: list[tuple[str, int, int]]) -> None:
    """Ids a0..a4 acked at offsets 0..4 of partition 0; ``processed`` as (id, offset, pid)."""
    write(directory, ACKED, [(f"a{i}", TOPIC, 0, i) for i in range(5)])
    write(directory, PROCESSED, [(i, TOPIC, 0, o, pid) for i, o, pid in processed])


def run(directory: Path, committed: int, **options: object) -> dict[str, list[str]]:
    figures = check(
        "test",
        "test",
        directory,
        produced=5,
        committed={(TOPIC, 0): committed},
        high_watermarks={(TOPIC, 0): 5},
        record=False,
        **options,  # type: ignore[arg-type]  # test passes the keyword options through
    )
    return figures.violations


def test_a_clean_run_has_no_violation(tmp_path: Path) -> None:
    ledgers(tmp_path, [(f"a{i}", i, 1) for i in range(5)])
    assert run(tmp_path, 5) == {}


def test_loss_and_gap_are_reported(tmp_path: Path) -> None:
    ledgers(tmp_path, [("a0", 0, 1), ("a1", 1, 1), ("a3", 3, 1), ("a4", 4, 1)])
    found = run(tmp_path, 5)
    assert set(found) == {"I1", "I2", "I3"}


def test_a_dead_letter_counts_as_done(tmp_path: Path) -> None:
    ledgers(tmp_path, [("a0", 0, 1), ("a1", 1, 1), ("a3", 3, 1), ("a4", 4, 1)])
    write(tmp_path, DEAD_LETTERED, [("a2", TOPIC, 0, 2, "undecodable")])
    assert run(tmp_path, 5) == {}


def test_duplicates_only_inside_the_uncommitted_window(tmp_path: Path) -> None:
    handled = [(f"a{i}", i, 1) for i in range(4)] + [("a3", 3, 2), ("a4", 4, 2)]
    ledgers(tmp_path, handled)
    assert set(run(tmp_path, 5)) == {"I4"}  # clean-stop rule: none allowed
    inside = Fault("kill", {(TOPIC, 0): 3})
    assert run(tmp_path, 5, duplicates="uncommitted_window", faults=[inside]) == {}
    before = Fault("kill", {(TOPIC, 0): 4})  # a3 was committed, yet handled again
    assert set(run(tmp_path, 5, duplicates="uncommitted_window", faults=[before])) == {"I4"}


def test_one_offset_with_two_ids_is_reported(tmp_path: Path) -> None:
    ledgers(tmp_path, [(f"a{i}", i, 1) for i in range(4)] + [("x", 4, 1), ("a4", 4, 1)])
    assert set(run(tmp_path, 5)) == {"I5"}


def test_commit_safety_sample_and_contiguous_end(tmp_path: Path) -> None:
    assert contiguous_end([0, 1, 2, 4]) == 3
    assert contiguous_end([]) == 0
    ledgers(tmp_path, [("a0", 0, 1), ("a1", 1, 1)])
    assert commit_safety_violations({(TOPIC, 0): 2}, tmp_path) == []
    assert commit_safety_violations({(TOPIC, 0): 3}, tmp_path) != []


def test_objective_misses_are_reported_like_violations(tmp_path: Path) -> None:
    ledgers(tmp_path, [(f"a{i}", i, 1) for i in range(5)])
    assert run(tmp_path, 5, objectives={"isolation": []}) == {}
    assert run(tmp_path, 5, objectives={"isolation": ["p99 2s > 0.4s"]}) == {
        "isolation": ["p99 2s > 0.4s"]
    }


def flow(at: float, *, paused: bool = False, lag: float | None = 0) -> FlowSample:
    return FlowSample(at=at, bulk_paused=paused, realtime_lag=lag, assigned={})


def test_priority_from_outside_counts_bulk_started_once_due_paused_past_the_grace() -> None:
    # Realtime over pause_lag (10) from the scrape at 1.0 to the one at 2.0; scrapes every 0.1 s.
    samples = [flow(t / 10, lag=50 if 10 <= t < 20 else 3) for t in range(30)]
    starts = [
        (0.95, 5),  # before the run
        (1.05, 7),  # inside the grace
        (1.55, 11),  # well inside the run: counted
        (1.98, 13),  # the scrape after it (2.0) says the run is over: not judged a violation
        (2.5, 17),  # after
    ]
    assert bulk_started_while_due_paused(samples, starts, pause_lag=10) == 11
    assert bulk_started_while_due_paused(samples, starts, pause_lag=100) == 0


def test_priority_from_outside_held_paused_unknown_lag_and_no_scrape_after() -> None:
    held = [flow(t / 10, paused=True, lag=None) for t in range(10)]
    assert bulk_started_while_due_paused(held, [(0.55, 3)], pause_lag=10) == 3
    assert bulk_started_while_due_paused(held, [(0.95, 3)], pause_lag=10) == 0  # killed after
    unknown = [flow(t / 10, lag=None) for t in range(10)]
    assert bulk_started_while_due_paused(unknown, [(0.55, 3)], pause_lag=10) == 0


def test_transaction_markers_are_no_gap_but_a_missing_committed_record_is(tmp_path: Path) -> None:
    """Offsets no consumer gets (markers, aborted records) count as covered, nothing else."""
    write(tmp_path, ACKED, [("a0", TOPIC, 0, 0), ("a1", TOPIC, 0, 1), ("a3", TOPIC, 0, 3)])
    write(tmp_path, PROCESSED, [("a0", TOPIC, 0, 0, 1), ("a1", TOPIC, 0, 1, 1)])
    markers = {(TOPIC, 0): {2, 4}}
    assert set(run(tmp_path, 5, undeliverable=markers)) == {"I1", "I2", "I3"}  # a3 missing
    write(tmp_path, PROCESSED, [("a3", TOPIC, 0, 3, 1)])
    assert run(tmp_path, 5, undeliverable=markers) == {}
    assert set(run(tmp_path, 5)) == {"I2", "I3"}  # without them, the markers are gaps
