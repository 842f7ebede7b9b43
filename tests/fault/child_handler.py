"""The handler of child-process consumers (``streamproc consume --handler``) in fault scenarios.

``STREAMPROC_TEST_LEDGER_DIR`` names the scenario's ledger directory (``processed.tsv`` is
appended to and fsynced before each batch returns); ``STREAMPROC_TEST_HANDLER_SLEEP_S`` slows each
batch down so a test can kill or signal the process mid-stream.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.fault.ledger import LedgerHandler


class ChildLedgerHandler(LedgerHandler):
    def __init__(self) -> None:
        sleep_s = float(os.environ.get("STREAMPROC_TEST_HANDLER_SLEEP_S", "0"))
        super().__init__(
            Path(os.environ["STREAMPROC_TEST_LEDGER_DIR"]),
            after=(lambda _records: time.sleep(sleep_s)) if sleep_s else None,
        )
