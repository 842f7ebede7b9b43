"""Scenarios 2 and 8: ``streamproc consume`` as a child process, killed or signalled mid-stream."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from streamproc.samples import sample_chunks
from tests.fault.checker import Fault, check, scenario_id
from tests.fault.ledger import AckLedger, read_processed, record_dead_letters
from tests.fault.scenario import (
    PacedProducer,
    committed,
    high_watermarks,
    produce,
    producer_for,
    signal_and_wait,
    spawn_consumer,
    wait_drained,
)
from tests.integration.kafka_helpers import Cluster, wait_until

# How long a signalled consumer may take to finish its batch, commit and leave the group.
GRACE_PERIOD_S = 30


@pytest.mark.parametrize("concurrency", [1, 8], ids=["concurrency-1", "concurrency-8"])
def test_02_sigkill_mid_batch_then_restart(
    cluster: Cluster, tmp_path: Path, concurrency: int
) -> None:
    cluster.create_topics(partitions=3)
    group = f"kill-{concurrency}"
    # The killed member stays in the group until its session times out: keep that short.
    env = {"STREAMPROC_CONCURRENCY": str(concurrency), "STREAMPROC_SESSION_TIMEOUT_MS": "6000"}
    acks = AckLedger(tmp_path)
    producer = producer_for(cluster.bootstrap, cluster.prefix, acks)
    produce(producer, acks, sample_chunks(2_000, low_priority_ratio=0.5, prefix="k2"))
    producer.flush()
    # Each batch sleeps after it is recorded: a kill lands between "handled" and "stored".
    first = spawn_consumer(
        cluster.bootstrap, cluster.prefix, group, tmp_path, sleep_s=0.05, extra_env=env
    )
    wait_until(lambda: len(read_processed(tmp_path)) >= 500, what="the first consumer to progress")
    # Kill once something is committed, so the uncommitted-window bound has a floor to check.
    wait_until(lambda: sum(committed(cluster, group).values()) > 0, what="a first commit")
    first.kill()
    first.wait(10)
    committed_at_kill = committed(cluster, group)
    handled_by_first = len(read_processed(tmp_path))

    second = spawn_consumer(cluster.bootstrap, cluster.prefix, group, tmp_path, extra_env=env)
    wait_drained(tmp_path, acks)
    assert signal_and_wait(second) == 0
    record_dead_letters(tmp_path, cluster)
    figures = check(
        scenario_id("02-consumer-sigkill", concurrency),
        f"Consumer SIGKILLed mid-batch, then restarted (concurrency {concurrency})",
        tmp_path,
        produced=acks.produced,
        committed=committed(cluster, group),
        high_watermarks=high_watermarks(cluster),
        duplicates="uncommitted_window",
        faults=[Fault("SIGKILL", committed_at_kill)],
        notes={"handled_before_kill": handled_by_first},
    )
    figures.assert_ok()
    assert first.pid != second.pid
    redone_by = {e.pid for e in read_processed(tmp_path)[handled_by_first:]}
    assert redone_by == {second.pid}


@pytest.mark.parametrize(
    ("sig", "concurrency"),
    [(signal.SIGTERM, 1), (signal.SIGINT, 1), (signal.SIGTERM, 8)],
    ids=["SIGTERM", "SIGINT", "SIGTERM-concurrency-8"],
)
def test_08_signal_while_both_lanes_flow_then_restart(
    cluster: Cluster, tmp_path: Path, sig: int, concurrency: int
) -> None:
    cluster.create_topics(partitions=3)
    name = signal.Signals(sig).name
    group = f"signal-{name}-{concurrency}"
    env = {"STREAMPROC_CONCURRENCY": str(concurrency)}
    acks = AckLedger(tmp_path)
    chunks = sample_chunks(3_000, low_priority_ratio=0.5, prefix=f"s8{name}")
    paced = PacedProducer(producer_for(cluster.bootstrap, cluster.prefix, acks), acks, chunks, 400)
    first = spawn_consumer(
        cluster.bootstrap, cluster.prefix, group, tmp_path, sleep_s=0.02, extra_env=env
    )
    paced.start()
    try:
        # Each lane consumer is a member of its own: one lane may be assigned a moment before
        # the other, so wait until both flow (the signal must land while both lanes do).
        wait_until(
            lambda: (
                len(read_processed(tmp_path)) >= 600
                and {e.topic for e in read_processed(tmp_path)} == set(cluster.lanes.topics)
            ),
            what="the first consumer to progress on both lanes",
        )
    except AssertionError:
        first.kill()
        first.wait(10)
        paced.join()
        raise
    assert signal_and_wait(first, sig, timeout_s=GRACE_PERIOD_S) == 0

    second = spawn_consumer(cluster.bootstrap, cluster.prefix, group, tmp_path, extra_env=env)
    paced.join()
    wait_drained(tmp_path, acks)
    assert signal_and_wait(second, sig, timeout_s=GRACE_PERIOD_S) == 0
    record_dead_letters(tmp_path, cluster)
    figures = check(
        scenario_id(f"08-{name.lower()}", concurrency),
        f"{name} while both lanes flow, then restart (concurrency {concurrency})",
        tmp_path,
        produced=acks.produced,
        committed=committed(cluster, group),
        high_watermarks=high_watermarks(cluster),
        duplicates="none",
    )
    figures.assert_ok()


def test_08_second_signal_forces_exit(cluster: Cluster, tmp_path: Path) -> None:
    cluster.create_topics(partitions=1)
    acks = AckLedger(tmp_path)
    producer = producer_for(cluster.bootstrap, cluster.prefix, acks)
    produce(producer, acks, sample_chunks(100, prefix="s8force"))
    producer.flush()
    process = spawn_consumer(
        cluster.bootstrap, cluster.prefix, "force", tmp_path, sleep_s=60.0, batch=10
    )
    wait_until(lambda: len(read_processed(tmp_path)) >= 1, what="the first (slow) batch")
    process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert process.poll() is None, "the first signal waits for the batch in hand"
    process.send_signal(signal.SIGTERM)
    assert process.wait(GRACE_PERIOD_S) == 128 + signal.SIGTERM
