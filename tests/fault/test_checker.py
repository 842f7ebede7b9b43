"""The checker itself: each invariant is reported when hand-made ledgers break it."""

from __future__ import annotations

from pathlib import Path

from tests.fault.checker import Fault, check, commit_safety_violations, contiguous_end
from tests.fault.ledger import ACKED, DEAD_LETTERED, PROCESSED, LedgerFile

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
