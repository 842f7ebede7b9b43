"""The progress display of ``streamproc produce``: bytes read, rate, counts per lane, rejects."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from streamproc.cli import ProduceProgress, file_size
from streamproc.producer import LaneCounts, ProducerStats


class Producer:
    """What the display reads of a ChunkProducer: its per-lane counts."""

    def __init__(self) -> None:
        self.stats = ProducerStats({"realtime": LaneCounts(), "bulk": LaneCounts()})


def terminal() -> tuple[Console, io.StringIO]:
    screen = io.StringIO()
    return Console(file=screen, force_terminal=True, width=200, color_system=None), screen


def test_terminal_shows_bytes_rate_lanes_and_rejects(tmp_path: Path) -> None:
    source = tmp_path / "input.jsonl"
    source.write_bytes(b"x" * 10_000)
    producer = Producer()
    console, screen = terminal()
    with source.open("rb") as stream:
        stream.read(5_000)
        with ProduceProgress(producer, stream, enabled=True, console=console) as progress:
            producer.stats.lanes["realtime"].sent = 1_234
            producer.stats.lanes["bulk"].sent = 56
            progress.advance(3, force=True)
    shown = screen.getvalue()
    assert "producing" in shown
    assert "realtime 1,234" in shown
    assert "bulk 56" in shown
    assert "3 rejected" in shown
    assert "5.0/10.0 kB" in shown
    assert "chunks/s" in shown


def test_not_a_terminal_prints_nothing(tmp_path: Path) -> None:
    source = tmp_path / "input.jsonl"
    source.write_bytes(b"{}\n")
    console, screen = terminal()
    with (
        source.open("rb") as stream,
        ProduceProgress(Producer(), stream, enabled=False, console=console) as progress,
    ):
        for _ in range(1_000):
            progress.advance(0)
        progress.advance(0, force=True)
    assert screen.getvalue() == ""


def test_file_size_only_for_regular_files(tmp_path: Path) -> None:
    source = tmp_path / "input.jsonl"
    source.write_bytes(b"12345")
    with source.open("rb") as stream:
        assert file_size(stream) == 5
    assert file_size(io.BytesIO(b"12345")) is None
