"""A handler for child-process consumers: appends every handled chunk to a ledger file.

One line per chunk: ``tracking_id<TAB>topic<TAB>partition<TAB>offset<TAB>pid``, written and
fsynced before the handler returns, so the ledger survives SIGKILL (RELIABILITY.md, "the ledger").
The file is named by ``STREAMPROC_TEST_LEDGER``; ``STREAMPROC_TEST_HANDLER_SLEEP_S`` slows each
batch down so a test can signal the process mid-stream.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from streamproc.handlers import ChunkRecord


class LedgerHandler:
    def __init__(self) -> None:
        self._fd = os.open(
            os.environ["STREAMPROC_TEST_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
        )
        self._sleep_s = float(os.environ.get("STREAMPROC_TEST_HANDLER_SLEEP_S", "0"))
        self._pid = os.getpid()

    def handle_batch(self, records: Sequence[ChunkRecord]) -> None:
        lines = "".join(
            f"{r.chunk.tracking_id}\t{r.context.topic}\t{r.context.partition}\t"
            f"{r.context.offset}\t{self._pid}\n"
            for r in records
        )
        os.write(self._fd, lines.encode())
        os.fsync(self._fd)
        if self._sleep_s:
            time.sleep(self._sleep_s)

    def close(self) -> None:
        os.close(self._fd)


@dataclass(frozen=True)
class Processed:
    """One ledger line."""

    tracking_id: str
    topic: str
    partition: int
    offset: int
    pid: int


def read_ledger(path: Path) -> list[Processed]:
    """Every complete ledger line; a line cut by SIGKILL mid-write is not a handled chunk."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) == 5:
            entries.append(
                Processed(fields[0], fields[1], int(fields[2]), int(fields[3]), int(fields[4]))
            )
    return entries
