"""ChunkProducer and TopicAdmin against the real broker.

Every message is read back with a plain confluent-kafka Consumer (assigned to every partition from
the beginning, read up to the high watermarks), so these tests check the wire contract as any
other Kafka client sees it: the topic, the key and the bytes.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from kafka_helpers import high_watermarks, read_topic, wait_until

from streamproc.chunk import Chunk
from streamproc.codec import ChunkCodec
from streamproc.errors import OversizeError, TopicError
from streamproc.lanes import Lanes
from streamproc.producer import ChunkProducer, Delivery
from streamproc.samples import sample_chunks
from streamproc.settings import ProducerSettings
from streamproc.topics import TopicAdmin, await_writable

CHUNK_COUNT = 10_000
LOW_PRIORITY_RATIO = 0.3
PARTITIONS = 3
# The UUIDv5 namespace of derived keys, copied from the wire contract on purpose: if the constant
# in streamproc.chunk ever changes, every keyless chunk changes partition, and this test says so.
WIRE_KEY_NAMESPACE = uuid.UUID("a6624f05-2fa3-4f6c-868d-e1d9182bcea4")


@pytest.fixture
def admin(kafka_bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture
def topic_admin(admin: AdminClient, topic_prefix: str) -> Iterator[TopicAdmin]:
    """A TopicAdmin of this test's lanes; its topics are deleted afterwards."""
    topics = TopicAdmin(admin, Lanes(topic_prefix))
    yield topics
    topics.delete()


@pytest.fixture
def lanes(topic_admin: TopicAdmin, topic_prefix: str) -> Lanes:
    """This test's lanes, with their topics created."""
    topic_admin.create(partitions=PARTITIONS)
    return Lanes(topic_prefix)


def test_ten_thousand_chunks_land_in_their_lane_with_their_key(
    kafka_bootstrap: str, lanes: Lanes
) -> None:
    chunks = list(sample_chunks(CHUNK_COUNT, low_priority_ratio=LOW_PRIORITY_RATIO))
    expected_bulk = sum(chunk.low_priority for chunk in chunks)
    assert 0.25 * CHUNK_COUNT < expected_bulk < 0.35 * CHUNK_COUNT
    by_key = {chunk.key: chunk for chunk in chunks}
    assert len(by_key) == CHUNK_COUNT, "sample keys must be unique for this test to be exact"

    deliveries: list[Delivery] = []
    producer = ChunkProducer(
        ProducerSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=lanes.prefix),
        on_delivery=deliveries.append,
    )
    routed = Counter(producer.produce(chunk).name for chunk in chunks)
    producer.flush()

    assert routed == {"realtime": CHUNK_COUNT - expected_bulk, "bulk": expected_bulk}
    stats = producer.stats
    for lane_name, expected in (
        ("realtime", CHUNK_COUNT - expected_bulk),
        ("bulk", expected_bulk),
    ):
        counts = stats.lanes[lane_name]
        assert (counts.sent, counts.delivered, counts.failed) == (expected, expected, 0), lane_name
    assert stats.in_flight == 0
    assert stats.rejected == 0

    # The delivery callback reported every message, once, with its lane, key and coordinates.
    assert len(deliveries) == CHUNK_COUNT
    assert all(delivery.ok for delivery in deliveries)
    assert Counter(d.lane for d in deliveries) == routed
    assert {d.key for d in deliveries} == {key.encode() for key in by_key}
    delivered_at = {(d.topic, d.partition, d.offset): d for d in deliveries}
    assert len(delivered_at) == CHUNK_COUNT

    codec = ChunkCodec()
    seen: set[str] = set()
    for lane in lanes:
        for message in read_topic(kafka_bootstrap, lane.topic):
            key = message.key().decode()
            chunk = by_key[key]
            expected_topic = lanes.bottom.topic if chunk.low_priority else lanes.top.topic
            assert message.topic() == expected_topic, key
            assert codec.decode(message.value()) == chunk, key
            delivery = delivered_at[(message.topic(), message.partition(), message.offset())]
            assert delivery.key == message.key()
            assert delivery.lane == lane.name
            assert key not in seen, f"{key} read twice"
            seen.add(key)
    assert seen == set(by_key)


def documented_key(chunk: Chunk) -> str:
    """The key DESIGN/Chunk.key document, computed independently of the implementation."""
    if chunk.tracking_id:
        return chunk.tracking_id
    name = json.dumps(
        [
            chunk.dataset_id,
            chunk.chunk_html,
            chunk.link,
            chunk.semantic_content,
            chunk.fulltext_content,
        ],
        separators=(",", ":"),
    )
    return str(uuid.uuid5(WIRE_KEY_NAMESPACE, name))


def test_keyless_chunks_get_the_derived_key_and_lane_override_and_headers_pass(
    kafka_bootstrap: str, lanes: Lanes
) -> None:
    chunks = [
        Chunk(chunk_html=f"<p>caf\u00e9 {index} \U0001f600</p>", link=f"https://e.x/{index}")
        for index in range(10)
    ] + [Chunk(semantic_content="only semantic", dataset_id="ds-1", low_priority=True)]
    producer = ChunkProducer(
        ProducerSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=lanes.prefix)
    )
    for chunk in chunks:
        producer.produce(chunk, headers={"origin": "test"})
    forced = Chunk(chunk_html="forced to bulk", tracking_id="forced")
    assert producer.produce(forced, lane=lanes.bottom) == lanes.bottom
    producer.flush()

    realtime = read_topic(kafka_bootstrap, lanes.top.topic)
    bulk = read_topic(kafka_bootstrap, lanes.bottom.topic)
    assert sorted(m.key().decode() for m in realtime) == sorted(
        documented_key(c) for c in chunks[:10]
    )
    assert sorted(m.key().decode() for m in bulk) == sorted([documented_key(chunks[10]), "forced"])
    for message in realtime + bulk:
        if message.key() != b"forced":
            assert message.headers() == [("origin", b"test")]
    assert producer.stats.lanes["bulk"].delivered == 2


@pytest.mark.parametrize("low_priority", [False, True], ids=["realtime", "bulk"])
def test_oversize_chunk_raises_and_nothing_is_produced(
    kafka_bootstrap: str, lanes: Lanes, low_priority: bool
) -> None:
    deliveries: list[Delivery] = []
    producer = ChunkProducer(
        ProducerSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=lanes.prefix),
        on_delivery=deliveries.append,
    )
    producer.produce(Chunk(chunk_html="fits", tracking_id="small", low_priority=low_priority))
    producer.flush()
    before = {lane.topic: high_watermarks(kafka_bootstrap, lane.topic) for lane in lanes}
    assert sum(sum(highs.values()) for highs in before.values()) == 1

    huge = Chunk(chunk_html="x" * 1_000_000, tracking_id="huge", low_priority=low_priority)
    with pytest.raises(OversizeError) as raised:
        producer.produce(huge)
    assert raised.value.size > raised.value.limit == producer.settings.max_chunk_bytes
    producer.flush()

    after = {lane.topic: high_watermarks(kafka_bootstrap, lane.topic) for lane in lanes}
    assert after == before
    assert producer.stats.rejected == 1
    counts = producer.stats.lanes["bulk" if low_priority else "realtime"]
    assert counts.sent == counts.delivered == 1
    assert [d.key for d in deliveries] == [b"small"]


def test_smaller_configured_limit_is_enforced(kafka_bootstrap: str, lanes: Lanes) -> None:
    producer = ChunkProducer(
        ProducerSettings(
            bootstrap_servers=kafka_bootstrap, topic_prefix=lanes.prefix, max_chunk_bytes=200
        )
    )
    with pytest.raises(OversizeError):
        producer.produce(Chunk(chunk_html="y" * 300, tracking_id="over-200"))
    producer.produce(Chunk(chunk_html="y" * 10, tracking_id="under-200"))
    producer.flush()
    assert [m.key() for m in read_topic(kafka_bootstrap, lanes.top.topic)] == [b"under-200"]


# -- TopicAdmin -------------------------------------------------------------------------------


def test_create_is_idempotent_and_makes_dead_letter_topics(
    topic_admin: TopicAdmin, topic_prefix: str
) -> None:
    expected = {
        f"{topic_prefix}.realtime",
        f"{topic_prefix}.bulk",
        f"{topic_prefix}.realtime.dlq",
        f"{topic_prefix}.bulk.dlq",
    }
    assert all(not info.exists for info in topic_admin.describe())
    with pytest.raises(TopicError, match="missing"):
        topic_admin.check()

    assert set(topic_admin.create(partitions=4)) == expected
    assert topic_admin.create(partitions=4) == []

    infos = {info.name: info for info in topic_admin.describe()}
    assert set(infos) == expected
    for info in infos.values():
        assert (info.exists, info.partitions, info.replication_factor) == (True, 4, 1), info
    checked = topic_admin.check(expected_partitions=4)
    assert {info.name for info in checked} == expected


def create_raw_topic(admin: AdminClient, name: str, partitions: int) -> None:
    """Create a topic behind streamproc's back and wait until metadata shows it (the create
    answer can come before the broker's metadata cache has the topic)."""
    futures = admin.create_topics([NewTopic(name, partitions, 1)], request_timeout=30)
    futures[name].result(timeout=30)

    def visible() -> bool:
        topic = admin.list_topics(timeout=10).topics.get(name)
        return topic is not None and topic.error is None and len(topic.partitions) == partitions

    wait_until(visible, timeout_s=30, what=f"topic {name} in metadata")


def test_existing_lane_topic_with_other_partition_count_is_refused(
    admin: AdminClient, topic_admin: TopicAdmin, topic_prefix: str
) -> None:
    create_raw_topic(admin, f"{topic_prefix}.realtime", partitions=2)

    with pytest.raises(TopicError, match="equal partition counts"):
        topic_admin.create(partitions=3)
    with pytest.raises(TopicError, match="equal partition counts"):
        topic_admin.check()
    infos = {info.name: info.partitions for info in topic_admin.describe()}
    assert infos[f"{topic_prefix}.realtime"] == 2  # never altered behind the operator's back
    assert infos[f"{topic_prefix}.bulk"] == 3


def test_existing_lane_topics_with_unexpected_partition_count_are_refused(
    admin: AdminClient, topic_admin: TopicAdmin, topic_prefix: str
) -> None:
    create_raw_topic(admin, f"{topic_prefix}.realtime", partitions=2)
    create_raw_topic(admin, f"{topic_prefix}.bulk", partitions=2)

    topic_admin.check()  # equal counts: consistent on its own
    with pytest.raises(TopicError, match="expected 3"):
        topic_admin.create(partitions=3)
    with pytest.raises(TopicError, match="expected 3"):
        topic_admin.check(expected_partitions=3)


# -- partitions a leader has not taken on yet (KAFKA-15591) ----------------------------------------

FRESH_LANES = tuple(f"l{index:02d}" for index in range(25))
FRESH_CHUNKS = 300


def produce_at_once(
    producer: ChunkProducer, lane_index: int, deliveries: list[Delivery]
) -> list[str]:
    """Produce FRESH_CHUNKS to one lane in many small batches; returns the tracking ids sent.

    Sleeping every 20 chunks (with ``linger_ms`` 0) puts several batches of one partition in
    flight at once, which is what the race needs.
    """
    lane = producer.lanes.all[lane_index]
    ids = [f"{lane.name}-{index}" for index in range(FRESH_CHUNKS)]
    for index, tracking_id in enumerate(ids):
        producer.produce(Chunk(chunk_html="<p>fresh</p>", tracking_id=tracking_id), lane=lane)
        if index % 20 == 0:
            producer.poll(0)
            time.sleep(0.002)
    producer.flush(30)
    return ids


def create_at_once(admin: AdminClient, topic: str, *, wait_writable: bool) -> None:
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result()
    if wait_writable:
        await_writable(admin, [topic])


@pytest.fixture
def fresh_producer(
    kafka_bootstrap: str, admin: AdminClient, topic_prefix: str
) -> Iterator[ChunkProducer]:
    """A producer of 25 lanes whose producer id is already known: only the first lane's topic
    exists; a test creates each further lane's topic right before producing to it."""
    settings = ProducerSettings(
        bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix, lanes=FRESH_LANES,
        linger_ms=0,
    )  # fmt: skip
    create_at_once(admin, settings.topology.top.topic, wait_writable=True)
    producer = ChunkProducer(settings)
    producer.produce(Chunk(chunk_html="<p>warm</p>", tracking_id="warm"), lane=producer.lanes.top)
    producer.flush(30)
    yield producer
    admin.delete_topics(list(settings.topology.topics))


def test_a_chunk_acknowledged_without_an_offset_is_resent_and_lands(
    kafka_bootstrap: str, admin: AdminClient, fresh_producer: ChunkProducer
) -> None:
    """Producing at once to a partition its leader has not taken on yet loses the first batch
    while librdkafka reports it delivered, without an offset (KAFKA-15591). The producer sends
    such chunks once more: every chunk lands and every report carries an offset."""
    deliveries: list[Delivery] = []
    fresh_producer._on_delivery = deliveries.append
    sent: dict[str, list[str]] = {}
    for lane_index in range(1, len(FRESH_LANES)):
        topic = fresh_producer.lanes.all[lane_index].topic
        create_at_once(admin, topic, wait_writable=False)
        sent[topic] = produce_at_once(fresh_producer, lane_index, deliveries)
        if sum(c.resent for c in fresh_producer.stats.lanes.values()) and len(sent) >= 3:
            break
    resent = sum(counts.resent for counts in fresh_producer.stats.lanes.values())
    if not resent:
        pytest.skip(f"no ack without an offset in {len(sent)} fresh topics: the race never ran")
    assert all(d.ok and d.offset is not None for d in deliveries)
    assert len(deliveries) == sum(len(ids) for ids in sent.values())
    for topic, ids in sent.items():
        landed = {message.key().decode() for message in read_topic(kafka_bootstrap, topic)}
        assert set(ids) <= landed, f"{topic}: {sorted(set(ids) - landed)[:5]} lost"


def test_produce_right_after_await_writable_gets_an_offset_for_every_chunk(
    kafka_bootstrap: str, admin: AdminClient, fresh_producer: ChunkProducer
) -> None:
    """Waiting until each new partition's leader serves it (what TopicAdmin.create does) keeps
    the race from happening at all: no report without an offset, though resends are off."""
    fresh_producer._resend_unconfirmed = False
    deliveries: list[Delivery] = []
    fresh_producer._on_delivery = deliveries.append
    sent: dict[str, list[str]] = {}
    for lane_index in range(1, 11):
        topic = fresh_producer.lanes.all[lane_index].topic
        create_at_once(admin, topic, wait_writable=True)
        sent[topic] = produce_at_once(fresh_producer, lane_index, deliveries)
    assert [d for d in deliveries if not d.ok or d.offset is None] == []
    for topic, ids in sent.items():
        landed = {message.key().decode() for message in read_topic(kafka_bootstrap, topic)}
        assert set(ids) <= landed
