"""The pure parts of the soak run (benchmarks/soak.py): growth line, verdicts, metrics, docs."""

from __future__ import annotations

import os
import random
import sys
import threading
from pathlib import Path

import pytest
from prometheus_client import generate_latest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # benchmarks/ is run from the repository root, not installed
    sys.path.insert(0, str(REPO))

from benchmarks.soak import (  # noqa: E402
    DOCS_BEGIN,
    DOCS_END,
    MIB,
    LaneCount,
    ProcessSample,
    SoakSummary,
    Tolerances,
    build_parser,
    by_lane,
    linear_fit,
    parse_metrics,
    read_process,
    render_docs_section,
    replace_docs_section,
    summarize_process,
    summary_lines,
)
from streamproc.demo import DemoConfig  # noqa: E402
from streamproc.metrics import ConsumerMetrics, ProducerMetrics  # noqa: E402

TOLERANCES = Tolerances(warmup_s=300, rss_mib_per_hour=20, fd_growth=4)


def readings(
    seconds: float,
    *,
    rss_mib: float = 100.0,
    mib_per_hour: float = 0.0,
    fds: int = 40,
    fds_per_hour: float = 0.0,
    noise_mib: float = 0.0,
    every_s: float = 10.0,
    seed: int = 3,
) -> list[tuple[float, ProcessSample]]:
    """Samples of a process whose RSS (and FDs) rise linearly, with optional noise."""
    rng = random.Random(seed)
    found = []
    for step in range(int(seconds / every_s) + 1):
        elapsed = step * every_s
        rss = rss_mib + mib_per_hour * elapsed / 3600 + rng.uniform(-noise_mib, noise_mib)
        found.append(
            (
                elapsed,
                ProcessSample(int(rss * MIB), fds + int(fds_per_hour * elapsed / 3600), 20),
            )
        )
    return found


def test_linear_fit_recovers_a_line() -> None:
    slope, intercept = linear_fit([(x, 3.0 * x - 7.0) for x in range(10)])
    assert slope == pytest.approx(3.0)
    assert intercept == pytest.approx(-7.0)


@pytest.mark.parametrize("points", [[], [(1.0, 2.0)], [(1.0, 2.0), (1.0, 5.0)]])
def test_linear_fit_needs_two_distinct_x(points: list[tuple[float, float]]) -> None:
    with pytest.raises(ValueError, match=r"at least two points|same x"):
        linear_fit(points)


def test_a_flat_noisy_process_passes() -> None:
    summary = summarize_process(readings(1800, noise_mib=3.0), TOLERANCES)
    assert summary is not None
    assert summary.rss_growth_mib_per_hour is not None
    assert abs(summary.rss_growth_mib_per_hour) < 5
    assert summary.ok
    assert summary.verdict.startswith("no growth beyond tolerance")
    assert summary.samples == 181


def test_a_leak_over_the_tolerance_fails() -> None:
    summary = summarize_process(readings(1800, mib_per_hour=30.0, noise_mib=1.0), TOLERANCES)
    assert summary is not None
    assert summary.rss_growth_mib_per_hour == pytest.approx(30.0, abs=1.5)
    assert not summary.ok
    assert "RSS grows" in summary.verdict


def test_the_warm_up_is_left_out_of_the_line() -> None:
    """A steep fill in the first minutes, then flat: the line after the warm-up is flat."""
    ramp = [
        (elapsed, ProcessSample(int((50 + min(elapsed, 240) / 4) * MIB), 40, 20))
        for elapsed in range(0, 1810, 10)
    ]
    summary = summarize_process(ramp, TOLERANCES)
    assert summary is not None
    assert summary.rss_start_mib == pytest.approx(50)
    assert summary.rss_warm_mib == pytest.approx(110)
    assert summary.rss_peak_mib == pytest.approx(110)
    assert summary.rss_growth_mib_per_hour == pytest.approx(0.0)
    assert summary.ok
    # The same samples judged with no warm-up rise steeply.
    unwarmed = summarize_process(ramp, Tolerances(warmup_s=0))
    assert unwarmed is not None
    assert not unwarmed.ok


def test_leaking_file_descriptors_fail() -> None:
    summary = summarize_process(readings(1800, fds=40, fds_per_hour=20), TOLERANCES)
    assert summary is not None
    assert (summary.fds_start, summary.fds_warm, summary.fds_end) == (40, 41, 50)
    assert summary.fds_max == 50
    assert not summary.ok
    assert "open FDs 41 -> 50" in summary.verdict


def test_a_short_run_is_not_judged_on_growth() -> None:
    summary = summarize_process(readings(25, mib_per_hour=10_000, every_s=2), TOLERANCES)
    assert summary is not None
    assert summary.rss_growth_mib_per_hour is None
    assert summary.ok
    assert summary.verdict.startswith("growth not judged")


def test_readings_of_an_exited_process_are_skipped() -> None:
    points = [*readings(60), (70.0, ProcessSample(None, None, None))]
    summary = summarize_process(points, TOLERANCES)
    assert summary is not None
    assert summary.samples == 7
    assert summarize_process([(0.0, ProcessSample(None, None, None))], TOLERANCES) is None


def test_lane_counts_say_what_is_missing() -> None:
    complete = LaneCount(produced=10, end_offsets=10, handled=9, dead_lettered=1, committed_lag=0)
    assert (complete.lost, complete.duplicates, complete.problems("bulk")) == (0, 0, [])
    short = LaneCount(produced=10, end_offsets=10, handled=7, dead_lettered=0, committed_lag=3)
    assert short.lost == 3
    assert short.problems("bulk") == [
        "bulk: 3 chunk(s) produced but not handled",
        "bulk: committed offsets 3 short of the end",
    ]
    twice = LaneCount(produced=10, end_offsets=12, handled=12, dead_lettered=0, committed_lag=None)
    assert (twice.lost, twice.duplicates) == (0, 2)
    assert twice.problems("realtime") == [
        "realtime: 12 on the topic, 10 produced",
        "realtime: committed offsets unknown",
    ]


def soak_summary(**changes: object) -> SoakSummary:
    fields: dict[str, object] = {
        "started_at": "2026-12-06T19:00:00+00:00",
        "ended_at": "2026-12-06T19:31:00+00:00",
        "duration_s": 1800.0,
        "sample_interval_s": 10.0,
        "command": "python -m benchmarks.soak --duration 1800",
        "commit": "0123456789ab",
        "machine": {"cpus": 2, "kafka": "Apache Kafka 4.1.1", "python": "3.11.7"},
        "workload": {
            "bulk_count": 100_000,
            "bulk_every_s": 60.0,
            "realtime_rate": 200.0,
            "burst_size": 3000,
            "burst_every_s": 6.0,
            "pause_lag": 1000,
            "partitions": 3,
            "sink": "sqlite",
        },
        "tolerances": {"warmup_s": 300.0, "rss_mib_per_hour": 20.0, "fd_growth": 4},
        "processes": {
            "consumer": summarize_process(readings(1800, noise_mib=2.0), TOLERANCES),
            "producer": summarize_process(readings(1800, rss_mib=60, noise_mib=2.0), TOLERANCES),
        },
        "lanes": {
            "realtime": LaneCount(1_260_000, 1_260_000, 1_260_000, 0, 0),
            "bulk": LaneCount(3_000_000, 3_000_000, 3_000_000, 0, 0),
        },
        "bulk_refills": 30,
        "bulk_pauses": 290,
    }
    fields.update(changes)
    return SoakSummary(**fields)  # type: ignore[arg-type]  # the test's own field values


def test_the_verdict_passes_a_clean_run_and_names_every_problem() -> None:
    assert soak_summary().ok
    assert soak_summary().verdict().startswith("PASS: nothing lost (0)")
    leaking = soak_summary(
        processes={
            "consumer": summarize_process(readings(1800, mib_per_hour=50), TOLERANCES),
            "producer": None,
        },
        lanes={"realtime": LaneCount(10, 10, 8, 0, 2), "bulk": LaneCount(5, 5, 5, 0, 0)},
        failures=["the consumer exited 1"],
    )
    assert not leaking.ok
    verdict = leaking.verdict()
    assert verdict.startswith("FAIL: the consumer exited 1")
    for expected in ("realtime: 2 chunk(s)", "consumer: RSS grows", "producer: never sampled"):
        assert expected in verdict
    short = soak_summary(
        processes={"consumer": summarize_process(readings(25, every_s=2), TOLERANCES)}
    )
    assert short.ok
    assert "growth not judged" in short.verdict()
    assert summary_lines(short)[-1] == short.verdict()


def test_the_docs_section_replaces_itself_and_keeps_the_page() -> None:
    page = "# Reliability\n\nthe fault tier's figures\n"
    first = replace_docs_section(page, render_docs_section(soak_summary(), "soak-x.csv"))
    assert first.startswith(page)
    assert first.count(DOCS_BEGIN) == 1
    assert "## Soak" in first
    assert "`soak-x.csv`" in first
    assert "| consumer | " in first
    assert "| bulk | 3,000,000 | 3,000,000 | 3,000,000 | 0 | 0 | 0 | 0 |" in first
    again = replace_docs_section(
        first + "\n## After\n", render_docs_section(soak_summary(bulk_refills=7), "soak-y.csv")
    )
    assert again.count(DOCS_BEGIN) == again.count(DOCS_END) == 1
    assert "soak-x.csv" not in again
    assert "(7 backlogs in all)" in again
    assert again.startswith(page)
    assert again.endswith("## After\n")


def test_metrics_by_lane_from_the_real_expositions() -> None:
    consumer = ConsumerMetrics(["realtime", "bulk"])
    consumer.handled.labels(lane="bulk", outcome="ok").inc(7)
    consumer.handled.labels(lane="bulk", outcome="dead_lettered").inc(2)
    consumer.handled.labels(lane="realtime", outcome="ok").inc(5)
    consumer.lane_lag.labels(lane="bulk").set(1234)
    consumer.pauses.labels(lane="bulk").inc(3)
    parsed = parse_metrics(generate_latest(consumer.registry).decode())
    assert by_lane(parsed, "streamproc_messages_handled_total") == {"realtime": 5, "bulk": 9}
    assert by_lane(parsed, "streamproc_messages_handled_total", outcome="dead_lettered") == {
        "realtime": 0,
        "bulk": 2,
    }
    assert by_lane(parsed, "streamproc_lane_lag_messages")["bulk"] == 1234
    assert by_lane(parsed, "streamproc_lane_pauses_total")["bulk"] == 3
    producer = ProducerMetrics(lanes=["realtime", "bulk"])
    producer.delivered("realtime", ok=True)
    producer.delivered("bulk", ok=False)
    parsed = parse_metrics(generate_latest(producer.registry).decode())
    delivered = by_lane(parsed, "streamproc_produced_messages_total", outcome="delivered")
    assert delivered == {"realtime": 1, "bulk": 0}


def test_read_process_from_proc() -> None:
    started = threading.Event()
    release = threading.Event()

    def hold() -> None:
        started.set()
        release.wait(10)

    before = read_process(os.getpid())
    thread = threading.Thread(target=hold)
    thread.start()
    started.wait(10)
    with Path(os.devnull).open() as _held:
        during = read_process(os.getpid())
    release.set()
    thread.join()
    assert before.rss_bytes is not None
    assert before.rss_bytes > 10 * MIB
    assert before.fds is not None
    assert during.fds is not None
    assert during.fds >= before.fds + 1
    assert before.threads is not None
    assert during.threads is not None
    assert during.threads >= before.threads + 1


def test_read_process_of_no_process() -> None:
    assert read_process(2**22 + 12345) == ProcessSample(None, None, None)


def test_defaults_are_the_demo_workload_for_thirty_minutes() -> None:
    args = build_parser().parse_args(["--bootstrap-servers", "127.0.0.1:9092"])
    demo = DemoConfig(bootstrap_servers="127.0.0.1:9092")
    assert args.duration == 30 * 60
    for name in ("bulk_count", "realtime_rate", "burst_size", "burst_every_s", "pause_lag"):
        assert getattr(args, name) == getattr(demo, name), name
    assert args.partitions == demo.partitions
