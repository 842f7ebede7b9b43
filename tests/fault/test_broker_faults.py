"""Scenarios 1, 9 and 12: the broker goes away (restart) or out of reach (network cut); and a
``streamproc consume`` child signalled while its broker is gone (bounded shutdown).

Each runs on the session's private broker, never on the broker the other tests share.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from streamproc.consumer import PriorityConsumer
from streamproc.messages import coordinates
from streamproc.samples import sample_chunks
from tests.fault.checker import Fault, check, scenario_id
from tests.fault.ledger import (
    PROCESSED,
    AckLedger,
    LedgerFile,
    LedgerHandler,
    read_acked,
    read_processed,
    record_dead_letters,
)
from tests.fault.scenario import (
    CommitSampler,
    PacedProducer,
    PrivateBroker,
    committed,
    committed_to_the_end,
    high_watermarks,
    lane_partitions,
    produce,
    producer_for,
    signal_and_wait,
    spawn_consumer,
    wait_drained,
)
from tests.integration.kafka_helpers import Cluster, ThreadedConsumer, read_topic, wait_until

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("concurrency", [1, 8], ids=["concurrency-1", "concurrency-8"])
def test_01_broker_restart_mid_stream_loses_nothing(
    private_broker: PrivateBroker, topic_prefix: str, tmp_path: Path, concurrency: int
) -> None:
    cluster = Cluster(private_broker.bootstrap, topic_prefix)
    cluster.create_topics(partitions=3)
    group = f"restart-{concurrency}"
    acks = AckLedger(tmp_path)
    chunks = sample_chunks(3_000, low_priority_ratio=0.5, prefix="r1")
    paced = PacedProducer(producer_for(cluster.bootstrap, topic_prefix, acks), acks, chunks, 300)
    handler = LedgerHandler(tmp_path)
    # The product's session timeout (45 s), not the tier's 10 s for killed members: the group
    # coordinator is away for seconds while the broker restarts (more on a loaded machine), and
    # a member keeps its partitions through that, as in production.
    settings = cluster.consumer_settings(group, concurrency=concurrency, session_timeout_ms=45_000)
    consumer = PriorityConsumer(settings, handler)
    threaded = ThreadedConsumer(consumer).start()
    sampler = CommitSampler(cluster.bootstrap, group, lane_partitions(cluster), tmp_path).start()
    paced.start()
    try:
        wait_until(lambda: handler.handled >= 500, what="the consumer to be mid-stream")
        private_broker.restart()  # same port, same data dir
        handled_at_restart = handler.handled
        paced.join()
        wait_drained(tmp_path, acks, consumer=consumer)
        # With the coordinator back, the running consumer's commits catch up on their own.
        wait_until(
            lambda: committed_to_the_end(cluster, group),
            what="the commits to reach the end of every lane",
        )
    finally:
        exit_code = threaded.stop()
    commit_violations = sampler.stop()
    assert exit_code == 0
    record_dead_letters(tmp_path, cluster)
    figures = check(
        scenario_id("01-broker-restart", concurrency),
        f"Broker stopped and restarted mid-stream (concurrency {concurrency})",
        tmp_path,
        produced=acks.produced,
        committed=committed(cluster, group),
        high_watermarks=high_watermarks(cluster),
        duplicates="reported",
        commit_samples=commit_violations,
        invariants=("I1", "I2", "I3", "I5"),
        notes={
            "producer_failures": len(acks.failures),
            "handled_before_restart": handled_at_restart,
            "commit_samples": sampler.samples,
        },
    )
    figures.assert_ok()
    assert acks.failures == [], "the producer must ride out a broker restart without failures"
    assert acks.acknowledged == acks.produced


def test_12_routing_holds_across_a_broker_restart(
    private_broker: PrivateBroker, topic_prefix: str, tmp_path: Path
) -> None:
    cluster = Cluster(private_broker.bootstrap, topic_prefix)
    cluster.create_topics(partitions=3)
    acks = AckLedger(tmp_path)
    chunks = list(sample_chunks(2_000, low_priority_ratio=0.5, prefix="r12"))
    low_priority = {chunk.key for chunk in chunks if chunk.low_priority}
    paced = PacedProducer(producer_for(cluster.bootstrap, topic_prefix, acks), acks, chunks, 250)
    paced.start()
    wait_until(lambda: acks.acknowledged >= 500, what="deliveries before the restart")
    private_broker.restart()
    paced.join()

    messages = {lane.name: read_topic(cluster.bootstrap, lane.topic) for lane in cluster.lanes}
    on_lane = {name: Counter(m.key().decode() for m in found) for name, found in messages.items()}
    misrouted = [key for key in on_lane["bulk"] if key not in low_priority] + [
        key for key in on_lane["realtime"] if key in low_priority
    ]
    twice = [key for counts in on_lane.values() for key, n in counts.items() if n > 1]
    acked_ids = {a.id for a in read_acked(tmp_path)}
    missing = acked_ids - set(on_lane["bulk"]) - set(on_lane["realtime"])
    print(
        f"[12-routing-restart] produced={acks.produced} acknowledged={len(acked_ids)} "
        f"bulk={sum(on_lane['bulk'].values())} realtime={sum(on_lane['realtime'].values())} "
        f"misrouted={len(misrouted)} written-twice={len(twice)} missing={len(missing)}"
    )
    # The ledger side of the scenario: every acked chunk is on its lane exactly once.
    ledger = LedgerFile(tmp_path / PROCESSED)
    ledger.append(
        (m.key().decode(), *coordinates(m), 0) for found in messages.values() for m in found
    )
    ledger.close()
    figures = check(
        "12-routing-restart",
        "Routing by priority while the broker restarts (read back from both lanes)",
        tmp_path,
        produced=acks.produced,
        committed={},
        high_watermarks={},
        invariants=("I1", "I4", "I5", "routing"),
        notes={"misrouted": len(misrouted), "written_twice": len(twice)},
    )
    figures.assert_ok()
    assert acks.failures == []
    assert misrouted == [], "every low-priority chunk only on bulk, every other only on realtime"
    assert twice == [], "the idempotent producer writes each chunk once, restart or not"
    assert len(acked_ids) == len(chunks)


@pytest.mark.parametrize("concurrency", [1, 8], ids=["concurrency-1", "concurrency-8"])
def test_09_network_cut_longer_than_the_session_timeout(
    private_broker: PrivateBroker, topic_prefix: str, tmp_path: Path, concurrency: int
) -> None:
    proxy = private_broker.proxy
    assert proxy is not None
    cluster = Cluster(private_broker.bootstrap, topic_prefix)
    cluster.create_topics(partitions=3)
    group = f"cut-{concurrency}"
    session_timeout_ms = 6_000
    acks = AckLedger(tmp_path)
    producer = producer_for(cluster.bootstrap, topic_prefix, acks)
    paced = PacedProducer(
        producer, acks, sample_chunks(3_000, low_priority_ratio=0.5, prefix="r9"), 200
    )
    handler = LedgerHandler(tmp_path)
    consumer = PriorityConsumer(
        cluster.consumer_settings(
            group,
            bootstrap_servers=private_broker.proxied_bootstrap,
            session_timeout_ms=session_timeout_ms,
            concurrency=concurrency,
        ),
        handler,
    )
    threaded = ThreadedConsumer(consumer).start()
    sampler = CommitSampler(cluster.bootstrap, group, lane_partitions(cluster), tmp_path).start()
    paced.start()
    try:
        wait_until(lambda: handler.handled >= 400, what="the consumer to be mid-stream")
        wait_until(lambda: consumer.ready()[0], what="the consumer to be ready")
        proxy.cut()
        cut_at = time.monotonic()
        committed_at_cut = committed(cluster, group)
        wait_until(lambda: not consumer.ready()[0], timeout_s=30, what="not-ready while cut")
        not_ready_seen = True
        rebalances_before = consumer.stats.rebalances
        # Keep the cut well past the session timeout: the group must evict the member.
        time.sleep(max(0.0, cut_at + 2 * session_timeout_ms / 1000 - time.monotonic()))
        proxy.restore()
        wait_until(
            lambda: consumer.ready()[0] and consumer.stats.rebalances > rebalances_before,
            timeout_s=60,
            what="the consumer to rejoin and be ready again",
        )
        paced.join()
        wait_drained(tmp_path, acks, consumer=consumer)
    finally:
        proxy.restore()
        exit_code = threaded.stop()
    commit_violations = sampler.stop()
    assert exit_code == 0
    record_dead_letters(tmp_path, cluster)
    figures = check(
        scenario_id("09-network-cut", concurrency),
        f"Network cut (TCP proxy) for twice the session timeout ({session_timeout_ms // 1000} s),"
        f" concurrency {concurrency}",
        tmp_path,
        produced=acks.produced,
        committed=committed(cluster, group),
        high_watermarks=high_watermarks(cluster),
        duplicates="uncommitted_window",
        faults=[Fault("network cut", committed_at_cut)],
        commit_samples=commit_violations,
        invariants=("I1", "I2", "I3", "I4", "I5"),
        notes={
            "not_ready_while_cut": not_ready_seen,
            "rebalances": consumer.stats.rebalances,
            "commit_samples": sampler.samples,
        },
    )
    figures.assert_ok()
    assert acks.failures == []


# The children below give their commits and closes this long (close_timeout_s) ...
CLOSE_TIMEOUT_S = 3.0
# ... and may take this much longer to exit: a small batch to finish, the interpreter's exit.
# Without the bound, a commit waits for the session timeout (45 s) and the close about 40 s more.
EXIT_SLACK_S = 4.0


def _stop_the_broker_under(child: subprocess.Popen[bytes], broker: PrivateBroker) -> None:
    """Stop ``broker`` while ``child`` consumes (its lane consumers notice it gone at once)."""
    assert child.poll() is None, "the consumer must be running when the broker goes"
    broker.stop()


def _kill(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.kill()
        child.wait(10)


def test_sigterm_with_the_broker_gone_exits_within_close_timeout_then_a_restart_redelivers(
    private_broker: PrivateBroker, topic_prefix: str, tmp_path: Path
) -> None:
    cluster = Cluster(private_broker.bootstrap, topic_prefix)
    cluster.create_topics(partitions=3)
    group = "broker-gone"
    acks = AckLedger(tmp_path)
    producer = producer_for(cluster.bootstrap, topic_prefix, acks)
    produce(producer, acks, sample_chunks(600, low_priority_ratio=0.5, prefix="gone"))
    producer.flush()
    # No auto-commit within the test: every chunk the first process handles is uncommitted when
    # the broker goes, so all of them must come back after the restart. The first process cannot
    # leave the group: the restarted broker keeps it a member until its session times out, and
    # the second process waits for that, so keep it short.
    env = {
        "STREAMPROC_CLOSE_TIMEOUT_S": str(CLOSE_TIMEOUT_S),
        "STREAMPROC_AUTO_COMMIT_INTERVAL_MS": "600000",
        "STREAMPROC_SESSION_TIMEOUT_MS": "6000",
    }
    first = spawn_consumer(
        cluster.bootstrap, topic_prefix, group, tmp_path, sleep_s=0.1, batch=20, extra_env=env
    )
    try:
        wait_until(lambda: len(read_processed(tmp_path)) >= 100, what="the consumer to progress")
        _stop_the_broker_under(first, private_broker)
        signalled = time.monotonic()
        first.send_signal(signal.SIGTERM)
        exit_code = first.wait(CLOSE_TIMEOUT_S + EXIT_SLACK_S)
        took_s = time.monotonic() - signalled
    finally:
        _kill(first)
    print(f"[broker-gone] SIGTERM to exit {took_s:.1f}s, exit code {exit_code}")
    assert exit_code == 0, "a signalled consumer exits 0 even when it could not commit"
    handled_by_first = {(e.topic, e.partition, e.offset) for e in read_processed(tmp_path)}
    output = "\n".join(path.read_text() for path in tmp_path.glob(f"{group}-*.log"))
    # Given up at the deadline, or failed at the end of its retries: either way, logged.
    lost_commit = (
        r"lane \w+: its (commit was given up|synchronous commit failed \(.*\)); not committed"
    )
    assert re.search(lost_commit, output), "the lost commit must be logged"

    private_broker.start()  # same data and port
    second = spawn_consumer(private_broker.bootstrap, topic_prefix, group, tmp_path, extra_env=env)
    try:
        wait_drained(tmp_path, acks, timeout_s=60)
        second_code = signal_and_wait(second)
    finally:
        _kill(second)
    assert second_code == 0
    processed = read_processed(tmp_path)
    assert {a.id for a in read_acked(tmp_path)} <= {e.id for e in processed}, "I1: nothing lost"
    redelivered = {(e.topic, e.partition, e.offset) for e in processed if e.pid == second.pid}
    assert handled_by_first <= redelivered, "what was never committed comes back"


def test_second_signal_with_the_broker_gone_exits_at_once(
    private_broker: PrivateBroker, topic_prefix: str, tmp_path: Path
) -> None:
    cluster = Cluster(private_broker.bootstrap, topic_prefix)
    cluster.create_topics(partitions=1)
    acks = AckLedger(tmp_path)
    producer = producer_for(cluster.bootstrap, topic_prefix, acks)
    produce(producer, acks, sample_chunks(100, prefix="gone2"))
    producer.flush()
    # A long close budget: only the second signal can end the wait for the coordinator early.
    env = {"STREAMPROC_CLOSE_TIMEOUT_S": "120"}
    process = spawn_consumer(
        cluster.bootstrap, topic_prefix, "broker-gone-twice", tmp_path, extra_env=env
    )
    try:
        wait_until(lambda: len(read_processed(tmp_path)) >= 1, what="the first batch")
        _stop_the_broker_under(process, private_broker)
        process.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert process.poll() is None, "the first signal waits (bounded) for the commit"
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(EXIT_SLACK_S) == 128 + signal.SIGTERM
        print(f"[broker-gone-twice] second SIGTERM to exit {time.monotonic() - signalled:.1f}s")
    finally:
        _kill(process)
