"""The chart against the real broker: KEDA's arithmetic on a live group, and the `helm test` pod.

No cluster: what the chart renders is run where it can be. The ScaledObject's triggers go through
KEDA's own scaler arithmetic (``keda_scaler.py``) on committed and log-end offsets read from the
broker while the real consumer runs with the chart's settings; the `helm test` pod's script runs
against the broker and a real ``streamproc consume`` serving its metrics.
"""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # OffsetSpec: public, untyped
    AdminClient,
    OffsetSpec,
)
from helmchart import Rendered, render
from keda_scaler import ScaledObjectModel

from streamproc.consumer import PriorityConsumer
from streamproc.handlers import ChunkRecord
from streamproc.lag import committed_offsets
from streamproc.lanes import Lanes
from streamproc.producer import ChunkProducer
from streamproc.samples import sample_chunks
from streamproc.settings import ConsumerSettings, KafkaSettings, ProducerSettings
from streamproc.topics import TopicAdmin

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("helm")]

SCALE_TO_ZERO = "keda-scale-to-zero-values.yaml"
DEFAULTS = "defaults-values.yaml"
PARTITIONS = 6  # the chart's topics.create.partitions default
Offsets = dict[str, tuple[dict[int, int], dict[int, int]]]


def chart_env(rendered: Rendered) -> dict[str, str]:
    data: dict[str, str] = rendered.one("ConfigMap", "sp-streamproc")["data"]
    return data


def chart_consumer_settings(
    rendered: Rendered, monkeypatch: pytest.MonkeyPatch, **overrides: Any
) -> ConsumerSettings:
    """ConsumerSettings read from the chart's ConfigMap, as a pod would, plus ``overrides``."""
    for name, value in chart_env(rendered).items():
        monkeypatch.setenv(name, value)
    return ConsumerSettings(**overrides)


class Broker:
    """The test's lane topics and the offsets KEDA reads: committed and log end per partition."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.lanes = Lanes(prefix)
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        settings = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix)
        TopicAdmin(self.admin, settings.topology).create(partitions=PARTITIONS)
        self.producer = ChunkProducer(
            ProducerSettings(bootstrap_servers=bootstrap, topic_prefix=prefix, linger_ms=1)
        )

    def close(self) -> None:
        """Release the clients while the broker is still up (collected at interpreter exit,
        after the session stopped the broker, librdkafka handles have crashed the process)."""
        self.producer.close()
        del self.producer, self.admin
        gc.collect()

    def produce(self, count: int, *, bulk: bool, prefix: str) -> None:
        self.producer.produce_many(
            sample_chunks(count, low_priority_ratio=1.0 if bulk else 0.0, prefix=prefix)
        )
        self.producer.flush()

    def offsets(self, group: str) -> Offsets:
        """Committed and log-end offsets of both lanes, as KEDA reads them at one poll.

        Committed offsets through a consumer's OffsetFetch (as KEDA's own client does), not
        the AdminClient's: librdkafka 2.16's can crash on a coordinator that moves or loads.
        """
        readings: Offsets = {}
        for topic in self.lanes.topics:
            partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            fetched = committed_offsets({"bootstrap.servers": self.bootstrap}, group, partitions)
            committed = {partition: offset for (_, partition), (offset, _) in fetched.items()}
            latest_spec = OffsetSpec.latest()  # type: ignore[no-untyped-call]  # unannotated upstream
            latest_futures = self.admin.list_offsets(dict.fromkeys(partitions, latest_spec))
            latest = {tp.partition: f.result(timeout=30).offset for tp, f in latest_futures.items()}
            readings[topic] = (committed, latest)
        return readings


@pytest.fixture
def broker(kafka_bootstrap: str) -> Iterator[Broker]:
    broker = Broker(kafka_bootstrap, f"k{uuid.uuid4().hex[:10]}")
    yield broker
    broker.close()


class GatedHandler:
    """Handles realtime at once and bulk at about 500 chunks/s; realtime can be held at a gate."""

    def __init__(self) -> None:
        self.handled: Counter[str] = Counter()
        self.hold_realtime = threading.Event()
        self.release = threading.Event()

    def handle_batch(self, records: Sequence[ChunkRecord]) -> None:
        lane = records[0].context.lane
        if lane == "realtime" and self.hold_realtime.is_set():
            self.release.wait(timeout=60)
        if lane == "bulk":
            time.sleep(0.002 * len(records))
        self.handled[lane] += len(records)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def realtime_lag(offsets: Offsets, topic: str) -> int:
    committed, latest = offsets[topic]
    return sum(latest[p] - max(committed[p], 0) for p in latest)


def test_keda_replicas_on_live_offsets_with_a_paused_bulk_lane(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chart defaults on real offsets: no scale-out on steady traffic, out on a realtime backlog,
    bulk held paused counts for activity only, and never zero while bulk has work."""
    group = f"keda-{uuid.uuid4().hex[:8]}"
    sets = ["consumer.groupId=" + group, "kafka.topicPrefix=" + broker.prefix]
    rendered = render(SCALE_TO_ZERO, sets=sets)
    scaled_object = rendered.one("ScaledObject")
    model = ScaledObjectModel.from_manifest(scaled_object)
    realtime_topic, bulk_topic = broker.lanes.topics
    assert {t.topic for t in model.triggers.values()} == {realtime_topic, bulk_topic}
    threshold = model.triggers["realtime-lag"].lag_threshold
    assert threshold == 2000  # max(pauseLag 1000, 2 x (500 batch + 500/s x 1 s commit interval))
    # The same offsets through the previous default threshold, for contrast.
    old_default = ScaledObjectModel.from_manifest(
        render(SCALE_TO_ZERO, sets=[*sets, "autoscaling.keda.lagThreshold=100"]).one("ScaledObject")
    )
    settings = chart_consumer_settings(
        rendered, monkeypatch, bootstrap_servers=broker.bootstrap, group_id=group
    )
    assert settings.topic_prefix == broker.prefix
    handler = GatedHandler()
    consumer = PriorityConsumer(settings, handler)
    runner = threading.Thread(target=consumer.run, kwargs={"install_signal_handlers": False})
    runner.start()
    try:
        wait_until(lambda: bool(consumer.assignment), "the consumer to join the group")
        # 1. Steady realtime, 400 chunks/s (below ratePerReplica), no bulk: one replica stays one.
        steady_total = 2_400
        producing = threading.Thread(target=_produce_steadily, args=(broker, steady_total, 400))
        producing.start()
        steady_lags: list[int] = []
        old_replicas: list[int] = []
        while producing.is_alive():
            offsets = broker.offsets(group)
            steady_lags.append(realtime_lag(offsets, realtime_topic))
            replicas, _ = model.replicas(1, offsets, time.monotonic())
            assert replicas == 1, f"steady traffic scaled to {replicas} (lag {steady_lags[-1]})"
            old_replicas.append(old_default.replicas(1, offsets, time.monotonic())[0])
            time.sleep(0.25)
        producing.join()
        wait_until(
            lambda: realtime_lag(broker.offsets(group), realtime_topic) == 0,
            "the steady stream to be committed",
        )
        assert handler.handled["realtime"] >= steady_total
        assert max(steady_lags) > 0, "the samples never saw committed lag: the test proves nothing"
        assert max(old_replicas) > 1, "the old threshold of 100 would not have scaled out"

        # 2. A realtime backlog while bulk has a backlog: the consumer pauses bulk (realtime lag
        # over pauseLag); realtime asks for replicas, bulk held paused asks for none.
        broker.produce(6_000, bulk=True, prefix="bulk")
        wait_until(lambda: handler.handled["bulk"] > 0, "bulk to start")
        handler.hold_realtime.set()
        burst = 5_000
        broker.produce(burst, bulk=False, prefix="burst")
        wait_until(lambda: "bulk" in consumer.paused_lanes, "the consumer to pause bulk")
        bulk_metric, bulk_active = 1, False
        for _ in range(8):  # KEDA polls until the paused lane's offsets stand still
            offsets = broker.offsets(group)
            replicas, readings = model.replicas(1, offsets, time.monotonic())
            bulk_metric, bulk_active = readings["bulk-lag"]
            if bulk_metric == 0:
                break
            time.sleep(1.2)
        assert bulk_metric == 0 and bulk_active, "bulk held paused must count for activity only"
        assert realtime_lag(offsets, realtime_topic) == burst
        # ceil(5000 / 2000) = 3, a divisor of the 6 partitions: 2 partitions per replica.
        assert replicas == 3
        assert readings["realtime-lag"] == (3 * threshold, True)

        # 3. Realtime idle, bulk backlog left, no replica consuming (scaled to zero, or stopped):
        # the bulk trigger keeps the ScaledObject active, so KEDA runs one replica.
        handler.release.set()
        wait_until(
            lambda: realtime_lag(broker.offsets(group), realtime_topic) == 0,
            "the burst to be committed",
        )
    finally:
        handler.release.set()
        consumer.stop()
        runner.join(60)
    assert not runner.is_alive()
    first, second = broker.offsets(group), broker.offsets(group)
    bulk_left = realtime_lag(second, bulk_topic)
    assert bulk_left > 0, "bulk drained before the idle phase: the test proves nothing"
    # Past every cooldown: what KEDA does once realtime has been idle long enough.
    later = time.monotonic() + model.initial_cooldown_s + model.cooldown_s
    model.replicas(0, first, later)
    replicas_from_zero, readings = model.replicas(0, second, later)
    assert readings["bulk-lag"] == (0, True)
    assert readings["realtime-lag"][1] is False
    assert replicas_from_zero == 1
    assert model.replicas(1, second, later)[0] == 1
    # Without the bulk trigger (the old realtime-only ScaledObject), KEDA would go to zero and
    # strand the bulk backlog.
    realtime_only = ScaledObjectModel.from_manifest(scaled_object)
    del realtime_only.triggers["bulk-lag"]
    realtime_only.replicas(1, first, later - realtime_only.initial_cooldown_s)
    assert realtime_only.replicas(1, second, later)[0] == 0


def _produce_steadily(broker: Broker, total: int, rate_per_s: int) -> None:
    """``total`` realtime chunks at about ``rate_per_s``, in 50 ms slices."""
    settings = ProducerSettings(
        bootstrap_servers=broker.bootstrap, topic_prefix=broker.prefix, linger_ms=1
    )
    chunks = iter(sample_chunks(total, prefix="steady"))
    per_slice = max(rate_per_s // 20, 1)
    start = time.monotonic()
    sent = 0
    with ChunkProducer(settings) as producer:
        while sent < total:
            for chunk in [c for _, c in zip(range(per_slice), chunks, strict=False)]:
                producer.produce(chunk)
                sent += 1
            producer.poll(0)
            time.sleep(max(0.0, start + sent / rate_per_s - time.monotonic()))


# -- helm test ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def helm_test_script(rendered: Rendered, metrics_url: str) -> str:
    """The `helm test` pod's script, with the Service address replaced by ``metrics_url``."""
    pod = rendered.one("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    command: list[str] = pod["spec"]["containers"][0]["command"]
    assert command[:4] == ["/usr/bin/tini", "--", "python", "-c"]
    service = rendered.one("Service")
    in_cluster = f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    assert in_cluster in command[4]
    return command[4].replace(in_cluster, metrics_url)


@pytest.fixture
def release_env(broker: Broker) -> Iterator[dict[str, str]]:
    """The chart's ConfigMap environment, pointed at the test broker and topics."""
    rendered = render(DEFAULTS, sets=["kafka.topicPrefix=" + broker.prefix])
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    env.update(chart_env(rendered))
    env["STREAMPROC_BOOTSTRAP_SERVERS"] = broker.bootstrap
    env["STREAMPROC_METRICS_PORT"] = str(_free_port())
    env["STREAMPROC_SINK"] = "jsonl:-"
    env["PATH"] = f"{os.path.dirname(sys.executable)}:{env.get('PATH', '')}"
    yield env


def test_helm_test_pod_passes_against_a_running_release(
    broker: Broker, release_env: Mapping[str, str], tmp_path: Path
) -> None:
    rendered = render(DEFAULTS, sets=["kafka.topicPrefix=" + broker.prefix])
    port = release_env["STREAMPROC_METRICS_PORT"]
    script = helm_test_script(rendered, f"http://127.0.0.1:{port}")
    log = tmp_path / "consume.log"
    with log.open("wb") as output:
        consume = subprocess.Popen(
            [sys.executable, "-m", "streamproc", "consume"],
            env=dict(release_env),
            stdout=subprocess.DEVNULL,
            stderr=output,
        )
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), f"metrics (log: {log})")
        result = subprocess.run(
            [sys.executable, "-c", script],
            env=dict(release_env),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert f"http://127.0.0.1:{port}/metrics:" in result.stdout
    finally:
        consume.terminate()
        consume.wait(60)
    # Without the lane topics the same pod fails: it does check the brokers and topics.
    missing = dict(release_env, STREAMPROC_TOPIC_PREFIX=f"missing{uuid.uuid4().hex[:8]}")
    failed = subprocess.run(
        [sys.executable, "-c", script], env=missing, capture_output=True, text=True, timeout=120
    )
    assert failed.returncode != 0


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310  # local test URL
            return bool(response.status == 200)
    except OSError:
        return False
