"""Produce throughput: streamproc's encode+route+produce next to raw confluent-kafka produce.

Run against a broker (``scripts/kafka-local start`` prints one)::

    python benchmarks/produce.py --bootstrap-servers 127.0.0.1:PORT [--count N]

Both sides run in one process against fresh topics with the same producer configuration
(``ProducerSettings().to_librdkafka()``: idempotent, acks=all, lz4, linger 5 ms):

* ``streamproc``: ``ChunkProducer.produce`` over pre-generated ``Chunk`` models, so every chunk is
  routed by lane, Avro-encoded (single-object framing), keyed and produced; flush included.
* ``raw``: ``confluent_kafka.Producer.produce`` of the very same pre-encoded bytes and keys to the
  same lanes, with a delivery callback that counts outcomes (as any real producer needs); flush
  included.
* ``Quix Streams``: a Quix Streams producer (``quix_producer.py``, ``quixstreams`` from PyPI in its
  own virtualenv, as for ``consume``) sending the same chunks, given as their Avro records with
  their keys and lanes: per chunk the lane topic's ``serialize`` (an Avro single-object
  ``Serializer`` with fastavro) and ``Producer.produce`` with a counting delivery callback; flush
  included; same librdkafka configuration. ``--no-quix`` skips it.

Before each timed run the client is warmed up (one message per lane, flushed) so the figures are
throughput rather than connection setup. A third, Kafka-free row ``encode-only`` times routing,
keying and Avro encoding alone: the CPU streamproc adds per chunk.

Each side runs ``--repeats`` times (default 3), interleaved, each run on its own fresh lane topics
and with a new client, and the median run is reported. The ratio ``streamproc / raw`` is the share
of raw produce throughput that streamproc keeps. Results go to ``benchmarks/results/produce.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient
from fastavro import parse_schema, schemaless_writer

from benchmarks.consume import QUIX_VERSION, quix_python
from benchmarks.harness import (
    QUEUE_FULL_POLL_S,
    Result,
    Table,
    Target,
    base_parser,
    parse,
    spread,
)
from streamproc.chunk import Chunk
from streamproc.codec import (
    CURRENT_SCHEMA_FILE,
    ChunkCodec,
    bundled_schema_dir,
    chunk_to_record,
    load_schema_file,
)
from streamproc.lanes import Lane, Lanes
from streamproc.producer import POLL_EVERY, ChunkProducer
from streamproc.samples import sample_chunks
from streamproc.settings import ProducerSettings
from streamproc.topics import TopicAdmin

LOW_PRIORITY_RATIO = 0.3
QUIX = "Quix Streams"
QUIX_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class Run:
    """One timed run of one side."""

    side: str
    repeat: int
    chunks: int
    seconds: float
    delivered: int
    failed: int

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds


@dataclass(frozen=True, slots=True)
class Workload:
    """The same chunks in both shapes: models for streamproc, encoded messages for raw."""

    chunks: list[Chunk]
    messages: list[tuple[str, bytes, bytes]]  # (lane name, key, value)
    value_bytes: int


def build_workload(count: int, seed: int) -> Workload:
    chunks = list(sample_chunks(count, low_priority_ratio=LOW_PRIORITY_RATIO, seed=seed))
    codec = ChunkCodec()
    lanes = Lanes()
    messages = [
        (lanes.route(chunk).name, chunk.key.encode(), codec.encode(chunk)) for chunk in chunks
    ]
    return Workload(chunks, messages, sum(len(value) for _, _, value in messages))


WARM_UP_MESSAGES = 2  # one per lane


def warm_up_chunks(workload: Workload) -> list[Chunk]:
    """The first realtime and the first bulk chunk of the workload."""
    realtime = next(chunk for chunk in workload.chunks if not chunk.low_priority)
    bulk = next(chunk for chunk in workload.chunks if chunk.low_priority)
    return [realtime, bulk]


def warm_up_messages(workload: Workload) -> list[tuple[str, bytes, bytes]]:
    """The encoded twins of :func:`warm_up_chunks`."""
    realtime = next(message for message in workload.messages if message[0] == "realtime")
    bulk = next(message for message in workload.messages if message[0] == "bulk")
    return [realtime, bulk]


def run_encode_only(settings: ProducerSettings, workload: Workload, repeat: int) -> Run:
    """Route, key and encode without Kafka: the CPU streamproc adds on top of raw produce."""
    codec = ChunkCodec()
    lanes = settings.topology
    started = time.perf_counter()
    for chunk in workload.chunks:
        lanes.route(chunk)
        chunk.key.encode()
        codec.encode(chunk)
    seconds = time.perf_counter() - started
    count = len(workload.chunks)
    return Run("encode-only", repeat, count, seconds, count, 0)


def run_encode_fastavro(settings: ProducerSettings, workload: Workload, repeat: int) -> Run:
    """The generic encode path (record dict + fastavro ``schemaless_writer``), for comparison.

    What ``ChunkCodec.encode`` does for a schema its hand-written encoder does not know, and what
    it did for every schema before that encoder existed: the "before" of the encode hot path.
    """
    schema = parse_schema(load_schema_file(bundled_schema_dir().joinpath(CURRENT_SCHEMA_FILE)))
    header = ChunkCodec().encode(workload.chunks[0])[:10]
    lanes = settings.topology
    started = time.perf_counter()
    for chunk in workload.chunks:
        lanes.route(chunk)
        chunk.key.encode()
        buffer = BytesIO()
        buffer.write(header)
        schemaless_writer(buffer, schema, chunk_to_record(chunk))
        buffer.getvalue()
    seconds = time.perf_counter() - started
    count = len(workload.chunks)
    return Run("encode-only, fastavro", repeat, count, seconds, count, 0)


def fresh_topics(admin: AdminClient, partitions: int) -> tuple[Lanes, TopicAdmin]:
    lanes = Lanes(f"bench-{uuid.uuid4().hex[:10]}")
    topics = TopicAdmin(admin, lanes)
    topics.create(partitions=partitions)
    return lanes, topics


def run_streamproc(settings: ProducerSettings, workload: Workload, repeat: int) -> Run:
    producer = ChunkProducer(settings)
    # Warm-up outside the timer: connection, metadata and idempotent producer id, one per lane.
    for warm_up in warm_up_chunks(workload):
        producer.produce(warm_up)
    producer.flush()
    produce = producer.produce
    started = time.perf_counter()
    for chunk in workload.chunks:
        produce(chunk)
    producer.flush()
    seconds = time.perf_counter() - started
    stats = producer.stats
    delivered = sum(counts.delivered for counts in stats.lanes.values()) - WARM_UP_MESSAGES
    return Run("streamproc", repeat, len(workload.chunks), seconds, delivered, stats.failed)


def run_raw(settings: ProducerSettings, workload: Workload, repeat: int) -> Run:
    producer = Producer(settings.to_librdkafka())
    topics = {lane.name: lane.topic for lane in settings.topology}
    outcome = {"delivered": 0, "failed": 0}

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        outcome["failed" if err is not None else "delivered"] += 1

    for lane, key, value in warm_up_messages(workload):
        producer.produce(topics[lane], value, key)
    producer.flush(60)
    produce: Callable[..., None] = producer.produce
    poll = producer.poll
    started = time.perf_counter()
    unpolled = 0
    for lane, key, value in workload.messages:
        topic = topics[lane]
        while True:
            try:
                produce(topic, value, key, on_delivery=delivered)
                break
            except BufferError:
                poll(QUEUE_FULL_POLL_S)
        unpolled += 1
        if unpolled >= POLL_EVERY:  # the product's cadence, like for like
            unpolled = 0
            poll(0)
    remaining = producer.flush(120)
    seconds = time.perf_counter() - started
    if remaining:
        raise SystemExit(f"raw producer: {remaining} messages undelivered after flush")
    return Run(
        "raw", repeat, len(workload.messages), seconds, outcome["delivered"], outcome["failed"]
    )


def write_quix_workload(workload: Workload, directory: Path) -> Path:
    """The chunks as Quix Streams gets them: JSON lines of lane, key and Avro record."""
    path = directory / "quix-workload.jsonl"
    lanes = Lanes()
    with path.open("w", encoding="utf-8") as out:
        for chunk in workload.chunks:
            item = {
                "lane": lanes.route(chunk).name,
                "key": chunk.key,
                "record": chunk_to_record(chunk),
            }
            out.write(json.dumps(item, ensure_ascii=False) + "\n")
    return path


def lane_topic(lane: Lane) -> str:
    return f"{lane.name}={lane.topic}"


def run_quix(settings: ProducerSettings, workload_file: Path, count: int, repeat: int) -> Run:
    config = {
        key: value
        for key, value in settings.to_librdkafka().items()
        # The password stays here; the logger is this process's Python object.
        if key not in ("bootstrap.servers", "sasl.password", "logger")
    }
    completed = subprocess.run(
        [
            str(quix_python()),
            str(Path(__file__).resolve().parent / "quix_producer.py"),
            *("--bootstrap-servers", settings.bootstrap_servers),
            *(arg for lane in settings.topology for arg in ("--topic", lane_topic(lane))),
            *("--workload", str(workload_file)),
            *("--schema", str(bundled_schema_dir().joinpath(CURRENT_SCHEMA_FILE))),
            *("--config", json.dumps(config)),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=QUIX_TIMEOUT_S,
    )
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    if report["count"] != count:
        raise SystemExit(f"Quix Streams sent {report['count']} of {count}")
    return Run(QUIX, repeat, count, float(report["seconds"]), report["delivered"], report["failed"])


def per_run_ratios(runs: dict[str, list[Run]], side: str) -> list[float]:
    """streamproc over ``side`` within each repeat (the runs of one repeat ran back to back)."""
    return [
        mine.chunks_per_s / other.chunks_per_s
        for mine, other in zip(runs["streamproc"], runs[side], strict=True)
    ]


def median_rate(runs: Sequence[Run]) -> float:
    return statistics.median(run.chunks_per_s for run in runs)


def build_result(
    args: argparse.Namespace, workload: Workload, runs: dict[str, list[Run]], ratio: float
) -> Result:
    """The shared result shape: the runs table, the target, the configuration."""
    settings = ProducerSettings(bootstrap_servers=args.bootstrap_servers)
    mean_value = workload.value_bytes / len(workload.messages)
    result = Result("produce")
    result.parameters = {
        "chunks": len(workload.messages),
        "low_priority_ratio": LOW_PRIORITY_RATIO,
        "mean_value_bytes": round(mean_value, 1),
        "partitions": args.partitions,
        "repeats": args.repeats,
        "producer_config": {
            key: value
            for key, value in settings.to_librdkafka().items()
            if key not in ("bootstrap.servers", "sasl.password", "logger")
        },
    }
    repeats = max(len(side_runs) for side_runs in runs.values())
    table = Table(
        f"Producer throughput, {len(workload.messages):,} chunks, "
        f"{LOW_PRIORITY_RATIO:.0%} low_priority, mean value {mean_value:,.0f} B (chunks/s)",
        ["side", *(f"run {i + 1}" for i in range(repeats)), "median", "MB/s", "vs raw"],
    )
    raw = median_rate(runs["raw"])
    for side, side_runs in runs.items():
        rate = median_rate(side_runs)
        table.rows.append(
            [
                side,
                *(round(run.chunks_per_s) for run in side_runs),
                round(rate),
                round(rate * mean_value / 1e6, 1),
                round(rate / raw, 3),
            ]
        )
    result.tables.append(table)
    result.targets.append(
        Target(
            "streamproc / raw produce",
            ratio,
            ">= 0.6",
            ratio >= 0.6,
            spread(per_run_ratios(runs, "raw")),
        )
    )
    if QUIX in runs:
        over_quix = median_rate(runs["streamproc"]) / median_rate(runs[QUIX])
        result.targets.append(
            Target(
                "streamproc / Quix Streams producer",
                over_quix,
                ">= 1.5",
                over_quix >= 1.5,
                spread(per_run_ratios(runs, QUIX)),
            )
        )
        result.parameters["quixstreams"] = QUIX_VERSION
    encode_rate = median_rate(runs["encode-only"])
    result.notes.append(
        "Kafka runs: client warmed up, flush included; encode-only: route + key + Avro encode, "
        f"no Kafka, {1e6 / encode_rate:.1f} us per chunk, so the product side cannot exceed "
        f"{encode_rate / raw:.2f} x raw produce on this machine before any Kafka work."
    )
    streamproc_rate = median_rate(runs["streamproc"])
    if streamproc_rate < 0.6 * raw:
        result.notes.append(
            f"Why 0.6 x raw is out of reach here: it allows {1e6 / (0.6 * raw):.1f} us per chunk "
            f"all in, while raw produce alone takes {1e6 / raw:.1f} us and route + key + Avro "
            f"encode {1e6 / encode_rate:.1f} us before any Kafka work; streamproc takes "
            f"{1e6 / streamproc_rate:.1f} us per chunk, so the Kafka side costs it "
            f"{1e6 / streamproc_rate - 1e6 / encode_rate:.1f} us against raw's {1e6 / raw:.1f}. "
            "Encoding a chunk in Python (its strings, metadata JSON text, group ids as text) "
            "costs more than librdkafka takes to queue the bytes."
        )
    fastavro_rate = median_rate(runs["encode-only, fastavro"])
    result.notes.append(
        f"Encode hot path before/after, same run: the generic record + fastavro path takes "
        f"{1e6 / fastavro_rate:.1f} us per chunk, the writer generated from chunk.avsc "
        f"{1e6 / encode_rate:.1f} us ({encode_rate / fastavro_rate:.1f} x faster)."
    )
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = base_parser(__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=100_000, help="Chunks per run.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per side (interleaved).")
    parser.add_argument("--seed", type=int, default=7, help="Seed of the sample chunks.")
    parser.add_argument(
        "--keep-topics", action="store_true", help="Do not delete the benchmark topics."
    )
    parser.add_argument("--no-quix", action="store_true", help="Skip the Quix Streams side.")
    args = parse(parser, argv)
    if args.count < 1 or args.repeats < 1 or args.partitions < 1:
        parser.error("--count, --repeats and --partitions must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"generating and encoding {args.count:,} chunks ...", file=sys.stderr)
    workload = build_workload(args.count, args.seed)
    admin = AdminClient({"bootstrap.servers": args.bootstrap_servers})
    runners: dict[str, Callable[[ProducerSettings, Workload, int], Run]] = {
        "streamproc": run_streamproc,
        "raw": run_raw,
        "encode-only": run_encode_only,
        "encode-only, fastavro": run_encode_fastavro,
    }
    workload_dir = Path(tempfile.mkdtemp(prefix="bench-produce-"))
    if not args.no_quix:
        try:
            quix_python()  # builds the Quix Streams virtualenv once
            quix_file = write_quix_workload(workload, workload_dir)
            runners[QUIX] = lambda settings, load, repeat: run_quix(
                settings, quix_file, len(load.chunks), repeat
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"Quix Streams side skipped: {exc}", file=sys.stderr)
    runs: dict[str, list[Run]] = {side: [] for side in runners}
    created: list[TopicAdmin] = []
    try:
        for repeat in range(1, args.repeats + 1):
            for side, runner in runners.items():
                if runner in (run_encode_only, run_encode_fastavro):
                    lanes = Lanes()
                else:
                    lanes, topics = fresh_topics(admin, args.partitions)
                    created.append(topics)
                settings = ProducerSettings(
                    bootstrap_servers=args.bootstrap_servers, topic_prefix=lanes.prefix
                )
                run = runner(settings, workload, repeat)
                if run.delivered != run.chunks or run.failed:
                    raise SystemExit(f"{side} run {repeat}: {run.failed} failed, {run}")
                runs[side].append(run)
                print(
                    f"{side:<21} run {repeat}: {run.chunks_per_s:>10,.0f} chunks/s", file=sys.stderr
                )
    finally:
        if not args.keep_topics:
            for topics in created:
                topics.delete()
        for leftover in workload_dir.iterdir():
            leftover.unlink()
        workload_dir.rmdir()

    ratio = median_rate(runs["streamproc"]) / median_rate(runs["raw"])
    result = build_result(args, workload, runs, ratio)
    result.print()
    print(f"wrote {result.write(args.output_dir)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
