"""Run every benchmark against one broker, then leave the results for ``benchmarks/report.py``.

    python -m benchmarks.run_all --bootstrap-servers 127.0.0.1:PORT [--quick]

Each benchmark runs as its own process (``python -m benchmarks.<name>``) and writes
``<output-dir>/<name>.json``. The consumer capacity calibrated by ``latency`` is handed to
``flood_shapes`` so it is measured once. ``benchmarks/concurrency.py`` runs too when it exists;
``sinks`` starts ``scripts/postgres-local`` unless ``STREAMPROC_BENCH_POSTGRES_URL`` is set.
``--quick`` shrinks every run to a smoke test (its figures mean little); ``--isolation`` runs only
the lane-isolation targets (``latency``, ``work_conservation``, ``consume``), and ``--quick
--isolation`` smoke-tests them in about two minutes.
A failing benchmark does not stop the others; the exit code says whether all succeeded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.harness import base_parser, parse, say

HERE = Path(__file__).resolve().parent

# (name, full-size arguments, --quick arguments)
BENCHMARKS: tuple[tuple[str, list[str], list[str]], ...] = (
    ("produce", [], ["--count", "20000", "--repeats", "1", "--no-quix"]),
    ("produce_memory", [], ["--size-mb", "20"]),
    ("codec", [], ["--count", "5000", "--repeats", "1"]),
    ("consume", [], ["--count", "20000", "--repeats", "1", "--no-quix"]),
    ("work_conservation", [], ["--count", "3000", "--repeats", "1"]),
    (
        "latency",
        [],
        [
            *("--bulk-count", "20000", "--calibration-count", "2000", "--repeats", "1"),
            *("--seconds", "3", "--tail", "1", "--warm-up", "0.5"),
        ],
    ),
    ("flood_shapes", [], ["--bulk-count", "20000", "--seconds", "6", "--tail", "1"]),
    ("pause_reaction", [], ["--trials", "6", "--bulk-count", "40000"]),
    ("concurrency", [], ["--window", "2", "--latency-s", "3", "--latency-repeats", "1"]),
    ("serial_choice", [], ["--window", "1", "--repeats", "1"]),
    ("sinks", [], ["--count", "3000", "--repeats", "1"]),
)
# The targets of lane isolation (latency, bulk share and yield, work conservation, throughput).
ISOLATION = ("latency", "work_conservation", "consume")


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="Tiny runs: a smoke test.")
    parser.add_argument("--only", nargs="*", default=None, help="Run only these benchmarks.")
    parser.add_argument(
        "--isolation",
        action="store_true",
        help=f"Run only the lane-isolation targets: {', '.join(ISOLATION)}.",
    )
    parser.add_argument(
        "--before-src",
        type=Path,
        default=None,
        help=(
            "Source tree of an earlier streamproc version (holding streamproc/): consume runs it"
            " beside this one and compares their throughput."
        ),
    )
    args = parse(parser, argv)
    started = time.monotonic()
    failed: list[str] = []
    durations: dict[str, float] = {}
    for name, full, quick in BENCHMARKS:
        if args.only is not None and name not in args.only:
            continue
        if args.isolation and name not in ISOLATION:
            continue
        if not (HERE / f"{name}.py").is_file():
            say(f"{name}: no benchmarks/{name}.py, skipped")
            continue
        command = [
            sys.executable,
            "-m",
            f"benchmarks.{name}",
            "--bootstrap-servers",
            args.bootstrap_servers,
            "--output-dir",
            str(args.output_dir),
            *(quick if args.quick else full),
        ]
        if name == "consume" and args.before_src is not None:
            command += ["--before-src", str(args.before_src)]
        if name == "flood_shapes" and "latency" in durations and "latency" not in failed:
            capacity = calibrated_capacity(args.output_dir)
            if capacity:
                command += ["--capacity", str(capacity)]
        say(f"{name}: {' '.join(command[2:])}")
        begun = time.monotonic()
        code = subprocess.run(command, check=False).returncode
        durations[name] = time.monotonic() - begun
        if code != 0:
            say(f"{name}: FAILED (exit {code})")
            failed.append(name)
    total = time.monotonic() - started
    for name, seconds in durations.items():
        say(f"{name:<18} {seconds:6.0f}s")
    say(f"all benchmarks: {total / 60:.1f} min" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


def calibrated_capacity(output_dir: Path) -> float | None:
    """The capacity the latency run just calibrated for the product defaults, if it ran."""
    path = output_dir / "latency.json"
    try:
        parameters = json.loads(path.read_text(encoding="utf-8"))["parameters"]
        return float(parameters["capacity_chunks_per_s"]["cpu:1"])  # median over rounds
    except (OSError, ValueError, KeyError, TypeError):
        return None


if __name__ == "__main__":
    sys.exit(main())
