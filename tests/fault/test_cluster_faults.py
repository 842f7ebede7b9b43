"""Scenarios 15-18 on a three-broker cluster: a realtime partition's leader killed mid-flood, one
broker cut off from the clients, a rolling restart under load, the active controller killed.

Each node is broker and controller (``scripts/kafka-local --brokers 3``); the lane and dead-letter
topics have three replicas and ``min.insync.replicas`` 2, the producers acks=all (streamproc's
producer cannot be configured otherwise), so one node down refuses no write.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException

from streamproc.chunk import Chunk
from streamproc.consumer import PriorityConsumer
from streamproc.handlers import ChunkRecord
from streamproc.samples import sample_chunks
from tests.fault.broker_cluster import BrokerCluster, create_replicated_topics
from tests.fault.checker import Fault, PartitionKey, check
from tests.fault.ledger import AckLedger, LedgerHandler, read_processed, record_dead_letters
from tests.fault.scenario import (
    CommitSampler,
    PacedProducer,
    committed_via,
    high_watermarks,
    lane_partitions,
    producer_for,
    wait_drained,
)
from tests.fault.test_flow_faults import PriorityProbe, member
from tests.integration.kafka_helpers import Cluster, ThreadedConsumer, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

OFFSETS_TOPIC = "__consumer_offsets"


def until(stop: threading.Event, chunks: Iterable[Chunk]) -> Iterator[Chunk]:
    """``chunks`` until ``stop`` is set: load that lasts exactly as long as the fault does."""
    for chunk in chunks:
        if stop.is_set():
            return
        yield chunk


def handled_on(directory: Path, keys: set[PartitionKey]) -> int:
    return sum(1 for entry in read_processed(directory) if (entry.topic, entry.partition) in keys)


def committed_offsets(
    cluster: Cluster, group: str, timeout_s: float = 60
) -> dict[PartitionKey, int]:
    """The group's committed offsets of every lane partition, asked with an OffsetFetch of a
    consumer that never joins (not the AdminClient: librdkafka's admin coordinator lookup can
    crash the process while a coordinator moves, which these scenarios make it do), retried
    while the coordinator is moving or loading."""
    keys = lane_partitions(cluster)
    reader = Consumer(
        {"bootstrap.servers": cluster.bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                return committed_via(reader, keys)
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        reader.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class TimedPriorityProbe(PriorityProbe):
    """:class:`PriorityProbe` that also keeps when each realtime chunk was produced (Unix s), to
    split its latencies into before, during and after a fault."""

    realtime_produced_at: list[float] = field(default_factory=list)

    def __call__(self, records: Sequence[ChunkRecord]) -> None:
        if records[0].context.lane != "bulk":
            self.realtime_produced_at.extend(r.context.timestamp_ms / 1000 for r in records)
        super().__call__(records)

    def latencies_between(self, start: float, end: float) -> list[float]:
        return [
            latency
            for produced_at, latency in zip(
                self.realtime_produced_at, self.realtime_latencies_s, strict=True
            )
            if start <= produced_at < end
        ]


def latency_notes(name: str, latencies: list[float]) -> dict[str, object]:
    if not latencies:
        return {f"realtime_{name}_count": 0}
    return {
        f"realtime_{name}_count": len(latencies),
        f"realtime_{name}_p50_s": round(statistics.median(latencies), 3),
        f"realtime_{name}_p99_s": round(percentile(latencies, 0.99), 3),
    }


def test_15_realtime_leader_killed_mid_flood(
    broker_cluster: BrokerCluster, topic_prefix: str, tmp_path: Path
) -> None:
    cluster = Cluster(broker_cluster.bootstrap, topic_prefix)
    create_replicated_topics(cluster)
    realtime = cluster.lanes.top.topic
    group = "leader-kill"
    trickle, per_s = 300, 10.0
    acks = AckLedger(tmp_path)
    probe = TimedPriorityProbe(pause_lag=1_000)
    # The product's default session timeout (the other scenarios use the tests' 10 s): a member
    # whose coordinator was the killed node finds the new one before its session ends.
    consumer, handler = member(
        cluster, tmp_path, group, "leader-kill", probe, session_timeout_ms=45_000
    )
    threaded = ThreadedConsumer(consumer).start()
    sampler = CommitSampler(cluster.bootstrap, group, lane_partitions(cluster), tmp_path).start()
    # Bulk at 50 times the realtime rate, both for the same 30 s.
    flood = PacedProducer(
        producer_for(cluster.bootstrap, topic_prefix, acks),
        acks,
        sample_chunks(50 * trickle, low_priority_ratio=1.0, prefix="c15"),
        50 * per_s,
    )
    live = PacedProducer(
        producer_for(cluster.bootstrap, topic_prefix, acks),
        acks,
        sample_chunks(trickle, prefix="c15live", seed=15),
        per_s,
    )
    victim = broker_cluster.leader(realtime, 0)
    try:
        # Load only once the member has its partitions: realtime latencies then show the fault,
        # not the first join.
        wait_until(lambda: len(consumer.assignment) == 6, what="both lanes assigned")
        flood.start()
        live.start()
        wait_until(
            lambda: (
                handler.handled_by_lane.get("realtime", 0) >= 30
                and handler.handled_by_lane.get("bulk", 0) >= 1_000
            ),
            what="both lanes mid-flood",
        )
        committed_before_kill = committed_offsets(cluster, group)
        bulk_at_kill = handler.handled_by_lane.get("bulk", 0)
        broker_cluster.kill(victim)
        killed_at, killed_at_wall = time.monotonic(), time.time()
        wait_until(
            lambda: broker_cluster.leader(realtime, 0) not in (victim, -1),
            timeout_s=60,
            what=f"a new leader of {realtime}[0]",
        )
        leader_moved_s = time.monotonic() - killed_at
        moved_at_wall = time.time()
        new_leader = broker_cluster.leader(realtime, 0)
        broker_cluster.start_node(victim)
        back_after_s = time.monotonic() - killed_at
        broker_cluster.wait_fully_replicated([*cluster.lanes.topics, OFFSETS_TOPIC])
        live.join()
        flood.join()
        wait_drained(tmp_path, acks, timeout_s=180)
    finally:
        exit_code = threaded.stop()
        probe.stop_watching()
    commit_violations = sampler.stop()
    assert exit_code == 0
    record_dead_letters(tmp_path, cluster)
    latencies = probe.realtime_latencies_s
    phases = {
        "before_kill": probe.latencies_between(0, killed_at_wall),
        "until_new_leader": probe.latencies_between(killed_at_wall, moved_at_wall),
        "after_new_leader": probe.latencies_between(moved_at_wall, float("inf")),
    }
    phase_notes = {
        k: v for name, found in phases.items() for k, v in latency_notes(name, found).items()
    }
    pauses = consumer.metrics.lanes["bulk"].pauses._value.get()
    figures = check(
        "15-cluster-leader-killed",
        f"Leader of a realtime partition (node {victim} of 3) SIGKILLed mid-flood"
        f" ({50 * trickle} bulk, realtime {per_s:.0f}/s), restarted once a new leader was elected"
        " (session timeout 45 s)",
        tmp_path,
        produced=acks.produced,
        committed=committed_offsets(cluster, group),
        high_watermarks=high_watermarks(cluster),
        duplicates="uncommitted_window",
        faults=[Fault("leader SIGKILLed", committed_before_kill)],
        commit_samples=commit_violations,
        priority_violations=probe.violations,
        invariants=("I1", "I2", "I3", "I4", "I5", "I6"),
        notes={
            "killed_node": victim,
            "new_leader": new_leader,
            "leader_moved_after_s": round(leader_moved_s, 1),
            "node_back_after_s": round(back_after_s, 1),
            "bulk_handled_at_kill": bulk_at_kill,
            "realtime_p50_s": round(statistics.median(latencies), 3),
            "realtime_p99_s": round(percentile(latencies, 0.99), 3),
            "realtime_max_s": round(max(latencies), 3),
            **phase_notes,
            "bulk_pauses": pauses,
            "producer_failures": len(acks.failures),
            "commit_samples": sampler.samples,
        },
    )
    figures.assert_ok()
    assert acks.failures == [], "acks=all with min.insync.replicas 2 rides out one node down"
    assert acks.acknowledged == acks.produced
    assert 0 < bulk_at_kill < 50 * trickle, "the kill must fall inside the flood"
    assert len(latencies) >= trickle


def test_16_one_broker_cut_off_from_the_clients(
    broker_cluster: BrokerCluster, topic_prefix: str, tmp_path: Path
) -> None:
    cluster = Cluster(broker_cluster.bootstrap, topic_prefix)
    create_replicated_topics(cluster)
    group = "broker-cut"
    session_timeout_ms = 6_000
    acks = AckLedger(tmp_path)
    load_done = threading.Event()
    # The producer talks to the nodes directly; only the consumer goes through the proxies.
    paced = PacedProducer(
        producer_for(cluster.bootstrap, topic_prefix, acks),
        acks,
        until(load_done, sample_chunks(20_000, low_priority_ratio=0.5, prefix="c16")),
        150,
    )
    handler = LedgerHandler(tmp_path)
    consumer = PriorityConsumer(
        cluster.consumer_settings(
            group,
            bootstrap_servers=broker_cluster.proxied_bootstrap,
            session_timeout_ms=session_timeout_ms,
        ),
        handler,
    )
    threaded = ThreadedConsumer(consumer).start()
    sampler = CommitSampler(cluster.bootstrap, group, lane_partitions(cluster), tmp_path).start()
    paced.start()
    try:
        wait_until(lambda: handler.handled >= 500, what="the consumer to be mid-stream")
        wait_until(lambda: consumer.ready()[0], what="the consumer to be ready")
        description = cluster.admin.describe_consumer_groups([group])[group].result(timeout=10)
        coordinator = int(description.coordinator.id)
        leaders = broker_cluster.leaders(list(cluster.lanes.topics))
        # A node leading lane partitions, not the group's coordinator: the member keeps its
        # session, loses those partitions' leader only, and must keep handling the others.
        candidates = sorted({n for n in leaders.values() if n != coordinator}) or sorted(
            set(range(1, 4)) - {coordinator}
        )
        victim = candidates[0]
        cut_off = {key for key, leader in leaders.items() if leader == victim}
        reachable = set(leaders) - cut_off
        committed_at_cut = committed_offsets(cluster, group)
        broker_cluster.proxies[victim].cut()
        elsewhere_at_cut = handled_on(tmp_path, reachable)
        time.sleep(2 * session_timeout_ms / 1000)
        elsewhere_during_cut = handled_on(tmp_path, reachable) - elsewhere_at_cut
        cut_off_at_restore = handled_on(tmp_path, cut_off)
        broker_cluster.proxies[victim].restore()
        restored_at = time.monotonic()
        wait_until(
            lambda: handled_on(tmp_path, cut_off) > cut_off_at_restore,
            timeout_s=90,
            what="the partitions of the cut-off node to flow again",
        )
        resumed_s = time.monotonic() - restored_at
        load_done.set()
        paced.join()
        wait_drained(tmp_path, acks)
    finally:
        load_done.set()
        for proxy in broker_cluster.proxies.values():
            proxy.restore()
        exit_code = threaded.stop()
    commit_violations = sampler.stop()
    assert exit_code == 0
    record_dead_letters(tmp_path, cluster)
    figures = check(
        "16-cluster-broker-cut-off",
        f"One broker (node {victim} of 3, leading {len(cut_off)} of {len(leaders)} lane"
        f" partitions) cut off from the consumer (a TCP proxy per node) for"
        f" {2 * session_timeout_ms // 1000} s",
        tmp_path,
        produced=acks.produced,
        committed=committed_offsets(cluster, group),
        high_watermarks=high_watermarks(cluster),
        duplicates="uncommitted_window",
        faults=[Fault("broker cut off", committed_at_cut)],
        commit_samples=commit_violations,
        invariants=("I1", "I2", "I3", "I4", "I5"),
        notes={
            "cut_node": victim,
            "coordinator": coordinator,
            "partitions_cut_off": len(cut_off),
            "handled_elsewhere_during_cut": elsewhere_during_cut,
            "flowing_again_after_restore_s": round(resumed_s, 1),
            "rebalances": consumer.stats.rebalances,
            "producer_failures": len(acks.failures),
            "commit_samples": sampler.samples,
        },
    )
    figures.assert_ok()
    assert acks.failures == []
    if reachable:
        assert elsewhere_during_cut > 0, "partitions led by the other nodes must keep flowing"


@dataclass
class SteadyLoad:
    """Both lanes produced at a steady rate through the cluster and consumed by one member, with
    its committed offsets sampled: what scenarios 17 and 18 run their fault under."""

    cluster: Cluster
    group: str
    acks: AckLedger
    handler: LedgerHandler
    consumer: PriorityConsumer
    load_done: threading.Event
    paced: PacedProducer
    threaded: ThreadedConsumer
    sampler: CommitSampler
    exit_code: int | None = None
    commit_violations: list[list[str]] = field(default_factory=list)

    def drain(self, directory: Path) -> None:
        """Stop producing and wait until the consumer handled everything acknowledged."""
        self.load_done.set()
        self.paced.join()
        wait_drained(directory, self.acks)

    def check(
        self,
        scenario: str,
        title: str,
        directory: Path,
        faults: list[Fault],
        notes: dict[str, object],
    ) -> None:
        """Record what was parked and check I1-I5 with the committed-offset samples."""
        assert self.exit_code == 0
        record_dead_letters(directory, self.cluster)
        figures = check(
            scenario,
            title,
            directory,
            produced=self.acks.produced,
            committed=committed_offsets(self.cluster, self.group),
            high_watermarks=high_watermarks(self.cluster),
            duplicates="uncommitted_window",
            faults=faults,
            commit_samples=self.commit_violations,
            invariants=("I1", "I2", "I3", "I4", "I5"),
            notes={
                **notes,
                "rebalances": self.consumer.stats.rebalances,
                "producer_failures": len(self.acks.failures),
                "commit_samples": self.sampler.samples,
            },
        )
        figures.assert_ok()


@contextmanager
def steady_load(
    broker_cluster: BrokerCluster, topic_prefix: str, directory: Path, group: str, prefix: str
) -> Iterator[SteadyLoad]:
    """Replicated lane topics, 150 chunks/s on both lanes, one consumer mid-stream (500 handled)
    on entry; the producer stopped and the consumer shut down cleanly on exit."""
    cluster = Cluster(broker_cluster.bootstrap, topic_prefix)
    create_replicated_topics(cluster)
    acks = AckLedger(directory)
    load_done = threading.Event()
    paced = PacedProducer(
        producer_for(cluster.bootstrap, topic_prefix, acks),
        acks,
        until(load_done, sample_chunks(50_000, low_priority_ratio=0.5, prefix=prefix)),
        150,
    )
    handler = LedgerHandler(directory)
    consumer = PriorityConsumer(cluster.consumer_settings(group), handler)
    load = SteadyLoad(
        cluster,
        group,
        acks,
        handler,
        consumer,
        load_done,
        paced,
        ThreadedConsumer(consumer).start(),
        CommitSampler(cluster.bootstrap, group, lane_partitions(cluster), directory).start(),
    )
    paced.start()
    try:
        wait_until(lambda: handler.handled >= 500, what="the consumer to be mid-stream")
        yield load
    finally:
        load_done.set()
        load.exit_code = load.threaded.stop()
        load.commit_violations = load.sampler.stop()


def test_17_rolling_restart_of_all_three_under_load(
    broker_cluster: BrokerCluster, topic_prefix: str, tmp_path: Path
) -> None:
    faults: list[Fault] = []
    restart_s: list[float] = []
    with steady_load(broker_cluster, topic_prefix, tmp_path, "rolling", "c17") as load:
        for node in (1, 2, 3):
            faults.append(
                Fault(f"node {node} restarted", committed_offsets(load.cluster, "rolling"))
            )
            began = time.monotonic()
            broker_cluster.stop(node)  # SIGTERM: controlled shutdown moves its leaders first
            broker_cluster.start_node(node)
            broker_cluster.wait_fully_replicated([*load.cluster.lanes.topics, OFFSETS_TOPIC])
            restart_s.append(time.monotonic() - began)
        handled_during_roll = load.handler.handled
        load.drain(tmp_path)
    load.check(
        "17-cluster-rolling-restart",
        "Rolling restart of all three nodes (SIGTERM, start, wait for every replica in sync)"
        " under steady load (150/s, both lanes)",
        tmp_path,
        faults,
        {
            "restart_s": " / ".join(f"{s:.1f}" for s in restart_s),
            "handled_by_end_of_roll": handled_during_roll,
        },
    )
    assert load.acks.failures == [], "a controlled rolling restart must not fail a single produce"
    assert load.acks.acknowledged == load.acks.produced


def test_18_active_controller_killed(
    broker_cluster: BrokerCluster, topic_prefix: str, tmp_path: Path
) -> None:
    with steady_load(broker_cluster, topic_prefix, tmp_path, "controller-kill", "c18") as load:
        controller = broker_cluster.active_controller()
        committed_before_kill = committed_offsets(load.cluster, "controller-kill")
        broker_cluster.kill(controller)
        killed_at = time.monotonic()
        new_controller = broker_cluster.active_controller()  # waits for the election
        elected_s = time.monotonic() - killed_at
        # The new controller serves metadata writes: a topic created while the old one is down.
        probe_cluster = Cluster(broker_cluster.bootstrap, f"{topic_prefix}probe")
        create_replicated_topics(probe_cluster, partitions=1)
        created_s = time.monotonic() - killed_at
        handled_at_restart = load.handler.handled
        broker_cluster.start_node(controller)
        broker_cluster.wait_fully_replicated([*load.cluster.lanes.topics, OFFSETS_TOPIC])
        load.drain(tmp_path)
    load.check(
        "18-cluster-controller-killed",
        f"Active controller (node {controller} of 3, also a broker) SIGKILLed under load,"
        " a topic created meanwhile, then restarted",
        tmp_path,
        [Fault("controller SIGKILLed", committed_before_kill)],
        {
            "killed_controller": controller,
            "new_controller": new_controller,
            "new_controller_after_s": round(elected_s, 1),
            "topic_created_after_s": round(created_s, 1),
            "handled_before_restart": handled_at_restart,
        },
    )
    assert new_controller != controller, "a surviving node must take over as controller"
    assert load.acks.failures == []
    assert load.acks.acknowledged == load.acks.produced
