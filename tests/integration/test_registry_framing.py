"""Schema Registry framing end to end: a real registry, the real broker, producer to consumer."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from fastavro import parse_schema, schemaless_writer
from kafka_helpers import Cluster, ThreadedConsumer, read_topic, wait_until
from typer.testing import CliRunner

from streamproc.chunk import Chunk
from streamproc.cli import app
from streamproc.codec import (
    REGISTRY_MAGIC_BYTE,
    ChunkCodec,
    Framing,
    chunk_to_record,
    schema_fingerprint,
)
from streamproc.consumer import PriorityConsumer
from streamproc.deadletter import HEADER_ERROR_REASON
from streamproc.errors import ConfigError
from streamproc.handlers import ChunkRecord
from streamproc.producer import ChunkProducer
from streamproc.registry import RegistrySchemaIds, SchemaRegistrySettings, value_subject
from streamproc.samples import sample_chunks
from streamproc.settings import ProducerSettings

RunConsumer = Callable[[PriorityConsumer], ThreadedConsumer]


OPEN_RESOLVERS: list[RegistrySchemaIds] = []


@pytest.fixture(autouse=True)
def close_resolvers() -> Iterator[None]:
    """Every registry client a test opened is closed (unclosed sockets warn, warnings fail)."""
    yield
    while OPEN_RESOLVERS:
        OPEN_RESOLVERS.pop().close()


def registry_codec(url: str, cluster: Cluster, *, auto_register: bool) -> ChunkCodec:
    settings = SchemaRegistrySettings(url=url, auto_register=auto_register)
    resolver = RegistrySchemaIds.from_settings(settings, cluster.lanes.topics)
    OPEN_RESOLVERS.append(resolver)
    return ChunkCodec(schema_ids=resolver)


def registry_producer(url: str, cluster: Cluster, *, auto_register: bool) -> ChunkProducer:
    """A producer configured the way users do: settings only, the codec is built from them."""
    settings = ProducerSettings(
        bootstrap_servers=cluster.bootstrap,
        topic_prefix=cluster.prefix,
        framing="schema-registry",
        schema_registry_url=url,
        schema_registry_auto_register=auto_register,
    )
    return ChunkProducer(settings)


def test_registry_framed_chunks_are_routed_handled_and_equal(
    cluster: Cluster, run_consumer: RunConsumer, schema_registry_url: str
) -> None:
    cluster.create_topics(partitions=2)
    chunks = list(sample_chunks(300, low_priority_ratio=0.3, prefix="sr"))
    with registry_producer(schema_registry_url, cluster, auto_register=True) as producer:
        producer.produce_many(chunks)
    assert producer.stats.failed == 0

    current = Schema(ChunkCodec().schema_json, schema_type="AVRO")
    with SchemaRegistryClient({"url": schema_registry_url}) as client:
        ids = {
            client.lookup_schema(value_subject(topic), current).schema_id
            for topic in cluster.lanes.topics
        }
    assert len(ids) == 1, "one schema, one id under both lane subjects"
    (schema_id,) = ids
    assert schema_id is not None
    header = REGISTRY_MAGIC_BYTE + schema_id.to_bytes(4, "big")
    for topic in cluster.lanes.topics:
        assert all(m.value().startswith(header) for m in read_topic(cluster.bootstrap, topic))

    handled: dict[str, tuple[str, Chunk]] = {}

    def record(item: ChunkRecord) -> None:
        handled[str(item.chunk.tracking_id)] = (item.context.lane, item.chunk)

    consumer = PriorityConsumer(
        cluster.consumer_settings("registry", schema_registry_url=schema_registry_url), record
    )
    threaded = run_consumer(consumer)
    wait_until(lambda: len(handled) == len(chunks), what="every registry-framed chunk")
    threaded.stop()
    for chunk in chunks:
        lane, got = handled[str(chunk.tracking_id)]
        assert lane == ("bulk" if chunk.low_priority else "realtime")
        assert got == chunk
    assert sum(consumer.stats.lanes[lane].dead_lettered for lane in ("realtime", "bulk")) == 0


def test_producer_without_auto_register_needs_the_schema_registered(
    cluster: Cluster, schema_registry_url: str
) -> None:
    cluster.create_topics(partitions=1)
    with (
        registry_producer(schema_registry_url, cluster, auto_register=False) as producer,
        pytest.raises(ConfigError, match="not found in the schema registry"),
    ):
        producer.produce(Chunk(chunk_html="<p>x</p>", tracking_id="unregistered"))


def test_schema_registry_framing_without_a_registry_is_a_config_error(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STREAMPROC_SCHEMA_REGISTRY_URL", raising=False)
    settings = ProducerSettings(
        bootstrap_servers=cluster.bootstrap, topic_prefix=cluster.prefix, framing="schema-registry"
    )
    with pytest.raises(ConfigError, match="schema_registry_url"):
        ChunkProducer(settings)


def test_newer_writer_schema_and_unknown_id_through_the_registry(
    cluster: Cluster, run_consumer: RunConsumer, schema_registry_url: str
) -> None:
    """A writer schema this reader never shipped decodes through the registry (schema resolution);
    an id the registry does not know is dead-lettered as unknown_schema."""
    cluster.create_topics(partitions=1)
    topic = cluster.lanes.top.topic
    newer = json.loads(ChunkCodec().schema_json)
    newer["fields"] = [
        *newer["fields"],
        {"name": "embedding_model", "type": ["null", "string"], "default": None},
    ]
    with SchemaRegistryClient({"url": schema_registry_url}) as client:
        newer_id = client.register_schema(
            value_subject(topic), Schema(json.dumps(newer), schema_type="AVRO")
        )
    chunk = Chunk(chunk_html="<p>newer writer</p>", tracking_id="newer-writer", tag_set=["a"])
    record = {**chunk_to_record(chunk), "embedding_model": "e5-large"}
    body = BytesIO()
    schemaless_writer(body, parse_schema(newer), record)
    unused_id = 2**31 - 1 - uuid.uuid4().int % 1000
    newer_value = REGISTRY_MAGIC_BYTE + newer_id.to_bytes(4, "big") + body.getvalue()
    unknown_value = REGISTRY_MAGIC_BYTE + unused_id.to_bytes(4, "big") + body.getvalue()
    raw = Producer({"bootstrap.servers": cluster.bootstrap})
    raw.produce(topic, unknown_value, key=b"unknown")
    raw.produce(topic, newer_value, key=b"newer-writer")
    raw.flush()

    seen: list[Chunk] = []
    consumer = PriorityConsumer(
        cluster.consumer_settings("registry-newer"),
        lambda item: seen.append(item.chunk),
        codec=registry_codec(schema_registry_url, cluster, auto_register=False),
    )
    threaded = run_consumer(consumer)
    wait_until(lambda: len(seen) == 1, what="the newer writer's chunk")
    wait_until(lambda: cluster.committed("registry-newer", topic) == {0: 2}, what="the commit")
    threaded.stop()
    assert seen == [chunk]
    parked = read_topic(cluster.bootstrap, f"{topic}.dlq")
    assert [m.value() for m in parked] == [unknown_value]
    assert dict(parked[0].headers())[HEADER_ERROR_REASON] == b"unknown_schema"


def test_schema_registry_framing_is_what_a_registry_client_expects(
    cluster: Cluster, schema_registry_url: str
) -> None:
    """Our header is the Confluent one: the id in it resolves to our schema in the registry."""
    cluster.create_topics(partitions=1)
    codec = registry_codec(schema_registry_url, cluster, auto_register=True)
    value = codec.encode(Chunk(chunk_html="<p>hi</p>", tracking_id="doc"), Framing.SCHEMA_REGISTRY)
    assert value[:1] == REGISTRY_MAGIC_BYTE
    schema_id = int.from_bytes(value[1:5], "big")
    with SchemaRegistryClient({"url": schema_registry_url}) as client:
        fetched = client.get_schema(schema_id)
    assert fetched.schema_str is not None
    assert schema_fingerprint(fetched.schema_str) == ChunkCodec().fingerprint


def test_cli_produces_registry_framing_that_the_cli_settings_consumer_reads(
    cluster: Cluster, run_consumer: RunConsumer, schema_registry_url: str, tmp_path: Path
) -> None:
    """`streamproc produce --framing schema-registry` end to end, as a user runs it."""
    cluster.create_topics(partitions=1)
    chunks = list(sample_chunks(20, low_priority_ratio=0.5, prefix="cli"))
    source = tmp_path / "chunks.jsonl"
    source.write_text("".join(c.model_dump_json() + "\n" for c in chunks), encoding="utf-8")
    result = CliRunner().invoke(
        app,
        [
            "produce",
            str(source),
            "--bootstrap-servers",
            cluster.bootstrap,
            "--topic-prefix",
            cluster.prefix,
            "--framing",
            "schema-registry",
            "--schema-registry-url",
            schema_registry_url,
            "--auto-register-schema",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    values = [
        m.value() for topic in cluster.lanes.topics for m in read_topic(cluster.bootstrap, topic)
    ]
    assert len(values) == len(chunks)
    assert all(value[:1] == REGISTRY_MAGIC_BYTE for value in values)

    seen: dict[str, Chunk] = {}

    def record(item: ChunkRecord) -> None:
        seen[str(item.chunk.tracking_id)] = item.chunk

    consumer = PriorityConsumer(
        cluster.consumer_settings("registry-cli", schema_registry_url=schema_registry_url), record
    )
    threaded = run_consumer(consumer)
    wait_until(lambda: len(seen) == len(chunks), what="every chunk produced by the CLI")
    threaded.stop()
    assert seen == {str(c.tracking_id): c for c in chunks}
