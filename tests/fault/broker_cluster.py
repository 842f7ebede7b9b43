"""A three-broker KRaft cluster to break node by node (``scripts/kafka-local --brokers 3``).

Every node is broker and controller at once (three JVMs of a small heap), with a TCP proxy of
ours in front of an EXTERNAL listener of each node that advertises the proxy's port: clients that
bootstrap through :attr:`BrokerCluster.proxied_bootstrap` talk to every node through its own
proxy, so cutting one proxy cuts that node off from them while the nodes still reach each other.
"""

from __future__ import annotations

import json
import time
from functools import cached_property
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streamproc.settings import KafkaSettings
from streamproc.topics import TopicAdmin
from tests.conftest import kafka_local
from tests.fault.proxy import TcpProxy
from tests.integration.kafka_helpers import Cluster

NODES = 3
REPLICATION_FACTOR = 3


class BrokerCluster:
    """The cluster kept in ``home``: start, stop, kill and restart nodes, find leaders.

    ``bootstrap`` lists every node directly (producers, admin, read-back);
    ``proxied_bootstrap`` goes through :attr:`proxies`, one per node id.
    """

    def __init__(self, home: Path, *, proxy_ports: dict[int, int]) -> None:
        self.home = home
        self.proxy_ports = proxy_ports
        self.bootstrap = ""
        self.proxies: dict[int, TcpProxy] = {}

    @property
    def proxied_bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.proxy_ports[n]}" for n in sorted(self.proxy_ports))

    def run(self, command: str, *extra: str) -> str:
        return kafka_local(command, self.home, "--brokers", str(NODES), *extra)

    def start(self) -> None:
        """Start the whole cluster (a fresh one the first time), then its proxies."""
        if (self.home / "state.json").exists():
            self.bootstrap = self.run("start", "--keep-data")
        else:
            ports = ",".join(str(self.proxy_ports[n]) for n in sorted(self.proxy_ports))
            self.bootstrap = self.run("start", "--external-advertised-ports", ports)
        nodes = json.loads((self.home / "state.json").read_text())["nodes"]
        for node_id, port in self.proxy_ports.items():
            if node_id not in self.proxies:
                target = nodes[str(node_id)]["external_port"]
                self.proxies[node_id] = TcpProxy(port, target).start()
            self.proxies[node_id].restore()

    def kill(self, node: int) -> None:
        """SIGKILL one node (its data and ports are kept)."""
        self.run("kill", "--node", str(node))

    def stop(self, node: int) -> None:
        """SIGTERM one node (controlled shutdown) and wait for it to exit."""
        self.run("stop", "--node", str(node))

    def start_node(self, node: int) -> None:
        """Start a stopped or killed node; returns once it answers with every node registered."""
        self.run("start", "--node", str(node))

    def running(self) -> bool:
        try:
            self.run("status")
        except RuntimeError:
            return False
        return True

    def ensure_running(self) -> None:
        """Every node up and every proxy listening (a failed test may have left one down)."""
        if not self.running():
            for node in self.proxy_ports:
                try:
                    self.run("status", "--node", str(node))
                except RuntimeError:
                    self.start_node(node)
        for proxy in self.proxies.values():
            proxy.restore()

    def close(self) -> None:
        for proxy in self.proxies.values():
            proxy.close()
        self.run("stop")

    @cached_property
    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap})

    def active_controller(self) -> int:
        """The node id of the active controller: the metadata quorum's leader."""
        return int(self.run("controller"))

    def leader(self, topic: str, partition: int) -> int:
        """The node id leading ``topic``'s ``partition``, as the cluster's metadata says; -1 while
        no node answers the metadata request (a node was just killed)."""
        try:
            metadata = self.admin.list_topics(topic, timeout=10)
        except KafkaException:
            return -1
        return int(metadata.topics[topic].partitions[partition].leader)

    def leaders(self, topics: list[str]) -> dict[tuple[str, int], int]:
        found: dict[tuple[str, int], int] = {}
        for topic in topics:
            metadata = self.admin.list_topics(topic, timeout=10)
            for partition, info in metadata.topics[topic].partitions.items():
                found[(topic, partition)] = int(info.leader)
        return found

    def under_replicated(self, topics: list[str]) -> list[str]:
        """Partitions of ``topics`` whose in-sync replicas are fewer than their replicas."""
        found: list[str] = []
        for topic in topics:
            metadata = self.admin.list_topics(topic, timeout=10)
            for partition, info in metadata.topics[topic].partitions.items():
                if sorted(info.isrs) != sorted(info.replicas):
                    found.append(f"{topic}[{partition}] isr {info.isrs} of {info.replicas}")
        return found

    def wait_fully_replicated(self, topics: list[str], timeout_s: float = 90) -> None:
        """Wait until every partition of ``topics`` has all its replicas in sync again."""
        deadline = time.monotonic() + timeout_s
        while lagging := self.under_replicated(topics):
            assert time.monotonic() < deadline, f"not back in sync: {lagging}"
            time.sleep(0.5)


def create_replicated_topics(cluster: Cluster, partitions: int = 3) -> None:
    """The lane topics and their dead-letter topics, each partition on all three nodes
    (``min.insync.replicas`` is 2 on the cluster, so acks=all survives one node down)."""
    settings = KafkaSettings(bootstrap_servers=cluster.bootstrap, topic_prefix=cluster.prefix)
    admin = TopicAdmin(cluster.admin, settings.topology)
    admin.create(partitions=partitions, replication_factor=REPLICATION_FACTOR)
    # The node that answered CreateTopics knows them; the others learn them from the metadata log
    # a moment later, and a client may ask any node: wait until answers agree several times over.
    topics = list(admin.topics)
    agreeing = 0
    deadline = time.monotonic() + 30
    while agreeing < 10:
        assert time.monotonic() < deadline, f"{topics} not visible on every node"
        metadata = cluster.admin.list_topics(timeout=10)
        visible = all(
            name in metadata.topics
            and len(metadata.topics[name].partitions) == partitions
            and all(p.leader >= 0 for p in metadata.topics[name].partitions.values())
            for name in topics
        )
        agreeing = agreeing + 1 if visible else 0
        time.sleep(0.05)
