"""The soak run (``python -m benchmarks.soak``, ``make soak``) for seconds against the real broker.

Not the soak itself (30 minutes, ``make soak``): this keeps the tool working, with both children
real ``streamproc`` processes, the bulk backlog written again once drained, and the final count.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_a_short_soak_run_samples_both_processes_and_loses_nothing(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    page = tmp_path / "reliability.md"
    page.write_text("# Reliability\n\nfault figures\n")
    output = tmp_path / "soak"
    bulk_count = 3_000
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.soak",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--duration",
            "20",
            "--sample-interval",
            "2",
            "--bulk-count",
            str(bulk_count),
            "--bulk-every-s",
            "4",
            "--realtime-rate",
            "100",
            "--burst-size",
            "600",
            "--burst-every-s",
            "4",
            "--pause-lag",
            "300",
            "--output-dir",
            str(output),
            "--docs",
            str(page),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((output / "summary.json").read_text())
    assert summary["ok"]
    assert summary["failures"] == []
    # Too short to fit a growth line after the warm-up: said so, not passed off as judged.
    assert "growth not judged" in summary["verdict"]
    assert summary["bulk_refills"] >= 2
    lanes = summary["lanes"]
    assert lanes["bulk"]["produced"] == summary["bulk_refills"] * bulk_count
    assert lanes["realtime"]["produced"] >= 20 * 100
    for lane in ("realtime", "bulk"):
        count = lanes[lane]
        assert count["handled"] == count["end_offsets"] == count["produced"], lane
        assert (count["lost"], count["duplicates"], count["committed_lag"]) == (0, 0, 0), lane
    for name in ("consumer", "producer"):
        process = summary["processes"][name]
        assert process["samples"] >= 8, name
        assert process["rss_peak_mib"] >= process["rss_start_mib"] > 10, name
        assert process["fds_start"] > 0, name
        assert process["rss_growth_mib_per_hour"] is None, name

    with Path(summary["workload"]["csv"]).open(newline="") as samples:
        rows = list(csv.DictReader(samples))
    load = [row for row in rows if row["phase"] == "load"]
    assert len(load) >= 8
    assert all(int(row["consumer_rss_bytes"]) > 0 and int(row["consumer_fds"]) > 0 for row in load)
    assert all(int(row["producer_rss_bytes"]) > 0 and int(row["producer_fds"]) > 0 for row in load)
    assert int(load[-1]["handled_realtime"]) > 0
    assert int(load[-1]["delivered_bulk"]) > 0
    assert rows[-1]["phase"] == "drain"
    assert rows[-1]["producer_rss_bytes"] == ""  # the producer has exited by then

    text = page.read_text()
    assert text.startswith("# Reliability\n\nfault figures\n")
    assert "## Soak" in text
    assert summary["verdict"] in text
    assert "PASS" in result.stdout
