"""The producer examples in other languages against the real broker and streamproc's consumer.

Each example (Java, Go, Node, kcat) reads ``examples/chunks.jsonl``, encodes every chunk with its
own Avro library in single-object encoding and produces it to the lane its ``low_priority`` flag
names, keyed by the chunk's stable id. streamproc's ``PriorityConsumer`` must then hand the handler
exactly those chunks: each once, in the right lane, under the documented key, on the partition
Kafka's murmur2 partitioner gives that key, with content equal to the input, and nothing
dead-lettered.

Builds go to ``$STREAMPROC_EXAMPLES_CACHE`` (default ``~/.cache/streamproc/examples``, shared by
every checkout, as the broker's jars are), in a directory per example and digest of its sources,
so an example is rebuilt only when its sources change. The toolchains keep their own download
caches (``~/.m2``, the Go module and build caches, ``~/.npm``), so only a first build downloads
anything. A missing toolchain skips the test that needs it; a failing build fails it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
from kafka_helpers import Cluster, ThreadedConsumer, read_topic, wait_until

from streamproc.chunk import Chunk, parse_chunk
from streamproc.codec import SINGLE_OBJECT_MARKER, ChunkCodec
from streamproc.consumer import PriorityConsumer
from streamproc.handlers import ChunkRecord

REPO: Final = Path(__file__).resolve().parents[2]
EXAMPLES_DIR: Final = REPO / "examples"
CHUNKS_FILE: Final = EXAMPLES_DIR / "chunks.jsonl"
SCHEMA_FILE: Final = REPO / "avro" / "chunk.avsc"
KCAT_SCRIPT: Final = EXAMPLES_DIR / "kcat" / "produce.sh"
GOLDEN_DIR: Final = REPO / "tests" / "golden"
PARTITIONS: Final = 3
CACHE_DIR: Final = Path(
    os.environ.get("STREAMPROC_EXAMPLES_CACHE")
    or Path.home() / ".cache" / "streamproc" / "examples"
)
BUILD_TIMEOUT_S: Final = 900
RUN_TIMEOUT_S: Final = 120
# Build output and installed dependencies, never sources.
IGNORED_PARTS: Final = frozenset({"target", "node_modules"})


def require_tools(example: str, *tools: str) -> None:
    """Skip the calling test unless every tool is on ``PATH``."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{example} example: toolchain absent ({', '.join(missing)} not on PATH)")


def run(
    command: Sequence[str], *, cwd: Path, timeout_s: float = RUN_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run ``command``; fail the test with its output when it exits non-zero."""
    result = subprocess.run(
        list(command),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} exited {result.returncode} in {cwd}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
    return result


def sources_digest(source_dir: Path) -> str:
    """SHA-256 over the relative paths and contents of every source file of an example."""
    digest = hashlib.sha256()
    for path in sorted(source_dir.rglob("*")):
        relative = path.relative_to(source_dir)
        if path.is_file() and not IGNORED_PARTS.intersection(relative.parts):
            digest.update(relative.as_posix().encode())
            digest.update(b"\0")
            digest.update(path.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()


def cached_build(name: str, source_dir: Path, build: Callable[[Path], None]) -> Path:
    """Return the build directory of example ``name`` for its current sources, built if missing.

    Each build lives in a directory named by the digest of its sources and is built in a
    temporary sibling, then renamed into place, so test sessions running at the same time (two
    checkouts, or two sessions in one) never see a half-built or replaced build.
    """
    output = CACHE_DIR / name / sources_digest(source_dir)[:16]
    if output.is_dir():
        return output
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{output.name}.", dir=output.parent))
    try:
        build(staging)
        staging.rename(output)
    except OSError:
        if not output.is_dir():  # not another session's finished build: a real failure
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return output


def java_producer() -> list[str]:
    """Command running the Java example (a shaded jar built with Maven)."""
    require_tools("Java", "java", "mvn")
    source = EXAMPLES_DIR / "java"

    def build(output: Path) -> None:
        run(
            ["mvn", "-B", "-q", "package", f"-DbuildDir={output / 'target'}"],
            cwd=source,
            timeout_s=BUILD_TIMEOUT_S,
        )

    output = cached_build("java", source, build)
    return ["java", "-jar", str(output / "target" / "chunk-producer.jar")]


def go_producer() -> list[str]:
    """Command running the Go example (a binary built with ``go build``)."""
    require_tools("Go", "go")
    source = EXAMPLES_DIR / "go"

    def build(output: Path) -> None:
        run(
            ["go", "build", "-o", str(output / "chunk-producer"), "."],
            cwd=source,
            timeout_s=BUILD_TIMEOUT_S,
        )

    output = cached_build("go", source, build)
    return [str(output / "chunk-producer")]


def node_producer() -> list[str]:
    """Command running the Node example, its dependencies installed by ``npm ci`` in the cache."""
    require_tools("Node", "node", "npm")
    source = EXAMPLES_DIR / "node"

    def build(output: Path) -> None:
        for name in ("package.json", "package-lock.json", "producer.js"):
            shutil.copy2(source / name, output / name)
        run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=output,
            timeout_s=BUILD_TIMEOUT_S,
        )

    output = cached_build("node", source, build)
    return ["node", str(output / "producer.js")]


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's Java client (and its default partitioner's peers) gives ``key``.

    Kafka's ``Utils.murmur2`` (seed ``0x9747b28c``) of the key bytes, made positive with
    ``& 0x7fffffff``, modulo the partition count.
    """
    mask = 0xFFFFFFFF
    multiplier, shift = 0x5BD1E995, 24
    length = len(key)
    state = (0x9747B28C ^ length) & mask
    for offset in range(0, length - length % 4, 4):
        word = int.from_bytes(key[offset : offset + 4], "little")
        word = (word * multiplier) & mask
        word ^= word >> shift
        word = (word * multiplier) & mask
        state = ((state * multiplier) & mask) ^ word
    tail = key[length - length % 4 :]
    if len(tail) == 3:
        state ^= tail[2] << 16
    if len(tail) >= 2:
        state ^= tail[1] << 8
    if tail:
        state ^= tail[0]
        state = (state * multiplier) & mask
    state ^= state >> 13
    state = (state * multiplier) & mask
    state ^= state >> 15
    return (state & 0x7FFFFFFF) % partitions


RunConsumer = Callable[[PriorityConsumer], ThreadedConsumer]


@dataclass(frozen=True)
class Delivery:
    """One chunk as the handler saw it: where it came from, under which key, with what content."""

    lane: str
    topic: str
    key: bytes | None
    chunk: Chunk

    def sort_key(self) -> tuple[str, bytes, str]:
        return (self.topic, self.key or b"", self.chunk.model_dump_json())


def input_chunks() -> list[Chunk]:
    lines = CHUNKS_FILE.read_text(encoding="utf-8").splitlines()
    return [parse_chunk(line) for line in lines if line.strip()]


def expected_deliveries(prefix: str) -> list[Delivery]:
    """The wire contract applied to the input: bulk lane for low_priority, key from Chunk.key."""
    deliveries = []
    for chunk in input_chunks():
        lane = "bulk" if chunk.low_priority else "realtime"
        deliveries.append(Delivery(lane, f"{prefix}.{lane}", chunk.key.encode(), chunk))
    return sorted(deliveries, key=Delivery.sort_key)


def test_input_covers_both_lanes_and_both_kinds_of_key() -> None:
    chunks = input_chunks()
    assert {chunk.low_priority for chunk in chunks} == {True, False}
    assert any(chunk.tracking_id for chunk in chunks)
    assert any(not chunk.tracking_id for chunk in chunks), "derived keys must be exercised too"


def assert_consumer_handles_exactly_the_input(
    cluster: Cluster, run_consumer: RunConsumer, produced_output: str
) -> None:
    """Consume both lanes with streamproc and compare what the handler got with the input."""
    expected = expected_deliveries(cluster.prefix)
    records: list[ChunkRecord] = []
    consumer = PriorityConsumer(
        cluster.consumer_settings(f"examples-{cluster.prefix}"), records.append
    )
    threaded = run_consumer(consumer)
    wait_until(lambda: len(records) >= len(expected), what=f"{len(expected)} handled chunks")
    threaded.stop()

    delivered = sorted(
        (
            Delivery(record.context.lane, record.context.topic, record.context.key, record.chunk)
            for record in records
        ),
        key=Delivery.sort_key,
    )
    assert delivered == expected, f"producer said: {produced_output}"
    for record in records:
        assert record.context.key is not None
        assert record.context.partition == murmur2_partition(record.context.key, PARTITIONS), (
            f"{record.context.key!r} is not on Kafka's murmur2 partition"
        )
    header = SINGLE_OBJECT_MARKER + ChunkCodec().fingerprint.to_bytes(8, "little")
    for lane in ("realtime", "bulk"):
        assert consumer.stats.lanes[lane].dead_lettered == 0
        topic = f"{cluster.prefix}.{lane}"
        lane_count = sum(1 for delivery in expected if delivery.lane == lane)
        # Exactly the input on the topics: no duplicate or stray message was produced either.
        assert sum(cluster.high_watermarks(topic).values()) == lane_count
        assert sum(cluster.high_watermarks(f"{topic}.dlq").values()) == 0
        for message in read_topic(cluster.bootstrap, topic):
            assert message.value().startswith(header), "not single-object encoded"


def produce_with(command: Sequence[str], cluster: Cluster) -> str:
    cluster.create_topics(partitions=PARTITIONS)
    result = run(
        [
            *command,
            "--bootstrap-servers",
            cluster.bootstrap,
            "--topic-prefix",
            cluster.prefix,
            "--input",
            str(CHUNKS_FILE),
            "--schema",
            str(SCHEMA_FILE),
        ],
        cwd=REPO,
    )
    return result.stdout.strip()


def test_streamproc_producer_keys_land_where_the_other_clients_put_them(
    cluster: Cluster, run_consumer: RunConsumer
) -> None:
    """The same chunks from streamproc's own producer: same lanes, keys, content and the same
    murmur2 partitions as the Java, Go and Node examples, so one chunk's updates stay in one
    partition whichever client produced them."""
    cluster.create_topics(partitions=PARTITIONS)
    with cluster.producer() as producer:
        produced = producer.produce_many(input_chunks())
        producer.flush()
    assert producer.stats.failed == 0
    assert_consumer_handles_exactly_the_input(cluster, run_consumer, f"{produced} produced")


def test_java_example(cluster: Cluster, run_consumer: RunConsumer) -> None:
    output = produce_with(java_producer(), cluster)
    assert_consumer_handles_exactly_the_input(cluster, run_consumer, output)


def test_go_example(cluster: Cluster, run_consumer: RunConsumer) -> None:
    output = produce_with(go_producer(), cluster)
    assert_consumer_handles_exactly_the_input(cluster, run_consumer, output)


def test_node_example(cluster: Cluster, run_consumer: RunConsumer) -> None:
    output = produce_with(node_producer(), cluster)
    assert_consumer_handles_exactly_the_input(cluster, run_consumer, output)


def encode_to(command: Sequence[str], source: Path, output: Path) -> list[tuple[str, str, bytes]]:
    """Run an example's encode-only mode; return (lane, key, value) per chunk, in input order."""
    run(
        [
            *command,
            "--encode-to",
            str(output),
            "--input",
            str(source),
            "--schema",
            str(SCHEMA_FILE),
        ],
        cwd=REPO,
    )
    encoded = []
    for line in (output / "manifest.tsv").read_text(encoding="utf-8").splitlines():
        lane, key, file = line.split("\t")
        encoded.append((lane, key, (output / file).read_bytes()))
    return encoded


def test_kcat_example(cluster: Cluster, run_consumer: RunConsumer, tmp_path: Path) -> None:
    require_tools("kcat", "kcat", "bash")
    # kcat sends bytes another example encoded: the Go one, else the Java one (same files).
    if shutil.which("go"):
        encoder = go_producer()
    elif shutil.which("java") and shutil.which("mvn"):
        encoder = java_producer()
    else:
        pytest.skip("kcat example: no encoder (needs go, or java and mvn, on PATH)")
    encoded = tmp_path / "encoded"
    encode_to(encoder, CHUNKS_FILE, encoded)
    cluster.create_topics(partitions=PARTITIONS)
    result = run(
        ["bash", str(KCAT_SCRIPT), cluster.bootstrap, cluster.prefix, str(encoded)], cwd=REPO
    )
    assert_consumer_handles_exactly_the_input(cluster, run_consumer, result.stdout.strip())


ENCODERS: Final = {"go": go_producer, "java": java_producer}


@pytest.mark.parametrize(
    ("encoder", "name"),
    [
        ("go", "minimal"),
        ("go", "every_field"),
        ("go", "low_priority_unicode"),
        ("java", "minimal"),
        ("java", "every_field"),
        # Not ("java", "low_priority_unicode"): Jackson writes the metadata number 1e-09 as
        # 1.0E-9, the same number in other text, so only the decoded chunks are equal.
    ],
)
def test_encoder_writes_the_golden_vectors(encoder: str, name: str, tmp_path: Path) -> None:
    """Java's BinaryMessageEncoder and the Go encoder (kcat's bytes) write the golden vectors."""
    payload = json.loads((GOLDEN_DIR / f"{name}.input.json").read_text(encoding="utf-8"))
    expected = json.loads((GOLDEN_DIR / f"{name}.expected.json").read_text(encoding="utf-8"))
    # high_priority is Trieve's, accepted by streamproc but not a field of the schema.
    payload.pop("high_priority", None)
    source = tmp_path / "input.jsonl"
    source.write_text(json.dumps(payload, ensure_ascii=False) + "\n", encoding="utf-8")
    [(lane, key, value)] = encode_to(ENCODERS[encoder](), source, tmp_path / "encoded")
    assert key == expected["key"]
    assert lane == ("bulk" if payload.get("low_priority") else "realtime")
    assert value.hex() == expected["single-object"]
