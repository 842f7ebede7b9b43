"""The handler of child-process consumers (``streamproc consume --handler``) in fault scenarios.

``STREAMPROC_TEST_LEDGER_DIR`` names the scenario's ledger directory (``processed.tsv`` is
appended to and fsynced before each batch returns); ``STREAMPROC_TEST_HANDLER_SLEEP_S`` slows each
batch down so a test can kill or signal the process mid-stream.

Two more knobs, off unless set: ``STREAMPROC_TEST_HANDLER_CHUNK_S`` is the handling cost of one
chunk (slept before the batch is recorded, every lane alike), and ``STREAMPROC_TEST_TIMED=1``
writes ``started.tsv`` (:class:`StartLedger`) so a scenario can measure latency and priority.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from streamproc.handlers import ChunkRecord
from tests.fault.ledger import LedgerHandler, StartLedger


class ChildLedgerHandler(LedgerHandler):
    def __init__(self) -> None:
        directory = Path(os.environ["STREAMPROC_TEST_LEDGER_DIR"])
        sleep_s = float(os.environ.get("STREAMPROC_TEST_HANDLER_SLEEP_S", "0"))
        chunk_s = float(os.environ.get("STREAMPROC_TEST_HANDLER_CHUNK_S", "0"))
        self._started = StartLedger(directory) if os.environ.get("STREAMPROC_TEST_TIMED") else None
        steps: list[Callable[[Sequence[ChunkRecord]], None]] = []
        if self._started is not None:
            steps.append(self._started)
        if chunk_s:
            steps.append(lambda records: time.sleep(chunk_s * len(records)))

        def before(records: Sequence[ChunkRecord]) -> None:
            for step in steps:
                step(records)

        super().__init__(
            directory,
            before=before if steps else None,
            after=(lambda _records: time.sleep(sleep_s)) if sleep_s else None,
        )

    def close(self) -> None:
        super().close()
        if self._started is not None:
            self._started.close()
