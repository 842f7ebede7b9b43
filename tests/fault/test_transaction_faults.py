"""Scenario 14: a transactional producer killed in the middle of a transaction.

The killed producer's transaction stays open until the transaction coordinator aborts it
(``transaction.timeout.ms``, short here, plus the coordinator's check interval). Meanwhile it holds
the realtime partitions' last stable offset: a ``read_committed`` consumer gets nothing past it,
not even what another producer commits in the meantime. streamproc must show the hold (metric
and log line), must not hold bulk back for it, and once the abort lands must handle everything
committed after it: nothing lost, nothing of the killed or the aborted transactions handled,
committed offsets at the log end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamproc.samples import sample_chunks
from tests.fault.checker import check
from tests.fault.ledger import AckLedger, read_processed, record_dead_letters
from tests.fault.scenario import (
    REPO,
    committed,
    free_port,
    high_watermarks,
    produce,
    producer_for,
    signal_and_wait,
    spawn_consumer,
    undeliverable_offsets,
    wait_drained,
)
from tests.fault.txn_producer import HUNG, TransactionalWriter, read_hung
from tests.integration.kafka_helpers import Cluster, wait_until

pytestmark = pytest.mark.slow

TRANSACTION_TIMEOUT_MS = 5_000
HOLD_WARN_S = 2


def lso_held_s(port: int) -> float:
    """The longest ``streamproc_lso_held_seconds`` a child consumer shows now (0 if none)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    return max(
        (
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "streamproc_lso_held_seconds"
            for sample in family.samples
        ),
        default=0.0,
    )


def test_14_transactional_producer_killed_mid_transaction(cluster: Cluster, tmp_path: Path) -> None:
    cluster.create_topics(partitions=3)
    realtime = cluster.lanes.top.topic
    group = "txn-kill"
    acks = AckLedger(tmp_path)
    producer = producer_for(cluster.bootstrap, cluster.prefix, acks)
    produce(producer, acks, sample_chunks(600, low_priority_ratio=1.0, prefix="b14"))
    producer.flush()
    port = free_port()
    consumer = spawn_consumer(
        cluster.bootstrap,
        cluster.prefix,
        group,
        tmp_path,
        metrics_port=port,
        extra_env={"STREAMPROC_TRANSACTION_HOLD_WARN_S": str(HOLD_WARN_S)},
    )
    killed = subprocess.Popen(
        [
            sys.executable, "-m", "tests.fault.txn_producer", cluster.bootstrap, realtime,
            str(tmp_path), f"{cluster.prefix}-killed", "--commit", "3", "--size", "50",
            "--prefix", "k14", "--transaction-timeout-ms", str(TRANSACTION_TIMEOUT_MS),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        wait_until(lambda: (tmp_path / HUNG).exists(), what="the producer to hang mid-transaction")
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
    killed_at = time.monotonic()
    hung_ids = set(read_hung(tmp_path))
    assert len(hung_ids) == 50

    # Another producer commits (and aborts) while the killed one's transaction is still open.
    writer = TransactionalWriter(cluster.bootstrap, f"{cluster.prefix}-after", tmp_path)
    for number in range(6):
        chunks = sample_chunks(40, prefix=f"a14-{number}", seed=number)
        writer.transaction(realtime, chunks, commit=number != 3)
    held_peak = 0.0

    def hold_shown() -> bool:
        nonlocal held_peak
        held_peak = max(held_peak, lso_held_s(port))
        return held_peak >= HOLD_WARN_S

    wait_until(hold_shown, timeout_s=30, what="the LSO hold on /metrics")
    # While the hold lasts, bulk is not held back for it: the backlog drains.
    wait_drained(tmp_path, acks, timeout_s=120)
    released_after_s = time.monotonic() - killed_at
    wait_until(lambda: lso_held_s(port) == 0, timeout_s=30, what="the hold to end")
    assert signal_and_wait(consumer) == 0
    record_dead_letters(tmp_path, cluster)

    processed = {entry.id for entry in read_processed(tmp_path)}
    assert not processed & hung_ids, "a chunk of the killed transaction was handled"
    assert not processed & set(writer.aborted), "a chunk of an aborted transaction was handled"
    log_text = "".join(path.read_text() for path in tmp_path.glob(f"{group}-*.log"))
    assert "last stable offset held" in log_text
    figures = check(
        "14-transactional-producer-killed",
        "Transactional producer SIGKILLed mid-transaction (transaction.timeout.ms 5 s), "
        "more transactions committed and aborted meanwhile",
        tmp_path,
        produced=acks.produced + writer.produced + 3 * 50 + 50,
        committed=committed(cluster, group),
        high_watermarks=high_watermarks(cluster),
        duplicates="none",
        undeliverable=undeliverable_offsets(cluster),
        notes={
            "killed_transaction": len(hung_ids),
            "aborted": len(writer.aborted),
            "lso_held_peak_s": round(held_peak, 1),
            "drained_after_kill_s": round(released_after_s, 1),
        },
    )
    figures.assert_ok()
