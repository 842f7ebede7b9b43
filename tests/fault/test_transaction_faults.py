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
PAUSE_LAG = 200


def samples(port: int, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of series ``name`` a child consumer shows now (none while unreachable)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as response:
            text = response.read().decode()
    except OSError:
        return []
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def bulk_pauses(port: int) -> float:
    """How many times the child consumer paused the bulk lane so far."""
    found = samples(port, "streamproc_lane_pauses_total")
    return next((value for labels, value in found if labels["lane"] == "bulk"), 0.0)


def lso_held_s(port: int) -> float:
    """The longest ``streamproc_lso_held_seconds`` a child consumer shows now (0 if none)."""
    return max((value for _, value in samples(port, "streamproc_lso_held_seconds")), default=0.0)


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
        # 150 committed realtime chunks arrive before the hold, 290 offsets pile up behind it:
        # held records counted as lag would pause bulk, what can be delivered does not.
        extra_env={
            "STREAMPROC_TRANSACTION_HOLD_WARN_S": str(HOLD_WARN_S),
            "STREAMPROC_PAUSE_LAG": str(PAUSE_LAG),
        },
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
    bulk_pauses_while_held = 0.0

    def held_now() -> float:
        nonlocal held_peak, bulk_pauses_while_held
        held = lso_held_s(port)
        held_peak = max(held_peak, held)
        if held > 0:
            bulk_pauses_while_held = max(bulk_pauses_while_held, bulk_pauses(port))
        return held

    wait_until(lambda: held_now() >= HOLD_WARN_S, timeout_s=30, what="the LSO hold on /metrics")
    # The coordinator aborts the killed producer's transaction after transaction.timeout.ms
    # (checked every 10 s): then everything committed behind it is delivered.
    wait_until(lambda: held_now() == 0, timeout_s=60, what="the hold to end")
    hold_ended_after_s = time.monotonic() - killed_at
    wait_drained(tmp_path, acks, timeout_s=120)
    drained_after_s = time.monotonic() - killed_at
    # Held records are not lag: bulk ran on while the transaction held the partitions. (Once it
    # is aborted, what was committed behind it is a real backlog, and may pause bulk.)
    assert bulk_pauses_while_held == 0, "bulk paused for records an open transaction holds"
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
            "hold_ended_after_kill_s": round(hold_ended_after_s, 1),
            "drained_after_kill_s": round(drained_after_s, 1),
            "bulk_pauses_while_held": int(bulk_pauses_while_held),
        },
    )
    figures.assert_ok()
