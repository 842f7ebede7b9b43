"""Codec cost per message, Kafka-free: decode + Chunk construction and encode, before and after.

    python -m benchmarks.codec [--count N] [--repeats R]

On ``streamproc.samples`` chunks (30% low_priority, the produce workload), in one process:

* decode rows: the whole of ``ChunkCodec.decode`` from the framed value to the ``Chunk``, with each
  half switched: fastavro's ``schemaless_reader`` or the reader generated from ``chunk.avsc``;
  full pydantic validation of the record or the trusted construction
  (``streamproc.chunk.chunk_from_record``). "fastavro + validation" is the path before the
  generated codec; "generated + trusted" is ``ChunkCodec.decode`` now. The read-only rows time
  the Avro read alone.
* encode rows: ``ChunkCodec.encode`` (the generated writer) and the generic path it replaces for
  the current schema (record dict + fastavro ``schemaless_writer``).

Each row is timed ``--repeats`` times (interleaved); the table shows microseconds per message
per run and the median. Needs no broker; ``--bootstrap-servers`` is accepted and ignored so
``run_all`` can run it like the others. Results go to ``benchmarks/results/codec.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path

from fastavro import parse_schema, schemaless_writer

from benchmarks.harness import RESULTS_DIR, Result, Table
from streamproc.chunk import Chunk
from streamproc.codec import (
    CURRENT_SCHEMA_FILE,
    SINGLE_OBJECT_HEADER_BYTES,
    ChunkCodec,
    WriterSchema,
    bundled_schema_dir,
    chunk_to_record,
    generated_codec,
    load_schema_file,
    read_body,
    record_to_chunk,
)
from streamproc.samples import sample_chunks

LOW_PRIORITY_RATIO = 0.3


def sides(chunks: Sequence[Chunk]) -> dict[str, Callable[[], None]]:
    """Row name -> a function doing the row's work once over every message."""
    codec = ChunkCodec()
    values = [codec.encode(chunk) for chunk in chunks]
    raw_schema = load_schema_file(bundled_schema_dir().joinpath(CURRENT_SCHEMA_FILE))
    schema = parse_schema(raw_schema)
    generated_functions = generated_codec(raw_schema)
    if generated_functions is None:
        raise SystemExit("the bundled schema has no generated codec")
    fastavro = WriterSchema(schema, None, codec.fingerprint, CURRENT_SCHEMA_FILE)
    generated = WriterSchema(
        schema, None, codec.fingerprint, CURRENT_SCHEMA_FILE, generated_functions.read
    )
    limits = codec.limits
    offset = SINGLE_OBJECT_HEADER_BYTES
    header = values[0][:offset]

    def decode(writer: WriterSchema, trusted: bool) -> Callable[[], None]:
        def run() -> None:
            for value in values:
                record_to_chunk(read_body(value, offset, writer), limits, trusted=trusted)

        return run

    def read_only(writer: WriterSchema) -> Callable[[], None]:
        def run() -> None:
            for value in values:
                read_body(value, offset, writer)

        return run

    def decode_now() -> None:
        decode = codec.decode
        for value in values:
            decode(value)

    def encode_generated() -> None:
        encode = codec.encode
        for chunk in chunks:
            encode(chunk)

    def encode_fastavro() -> None:
        for chunk in chunks:
            buffer = BytesIO()
            buffer.write(header)
            schemaless_writer(buffer, schema, chunk_to_record(chunk))
            buffer.getvalue()

    return {
        "decode: fastavro + validation (before)": decode(fastavro, trusted=False),
        "decode: generated + validation": decode(generated, trusted=False),
        "decode: fastavro + trusted": decode(fastavro, trusted=True),
        "decode: generated + trusted (ChunkCodec.decode)": decode_now,
        "read only: fastavro": read_only(fastavro),
        "read only: generated": read_only(generated),
        "encode: record + fastavro (generic path)": encode_fastavro,
        "encode: generated (ChunkCodec.encode)": encode_generated,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=20_000, help="Messages per timed run.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per row (interleaved).")
    parser.add_argument("--seed", type=int, default=7, help="Seed of the sample chunks.")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--bootstrap-servers", "-b", help="Ignored: no broker needed.")
    parser.add_argument("--partitions", type=int, help="Ignored: no broker needed.")
    args = parser.parse_args(argv)
    if args.count < 1 or args.repeats < 1:
        parser.error("--count and --repeats must be positive")
    chunks = list(sample_chunks(args.count, low_priority_ratio=LOW_PRIORITY_RATIO, seed=args.seed))
    rows = sides(chunks)
    for run in rows.values():  # warm-up: caches, lazily built tables
        run()
    per_message: dict[str, list[float]] = {name: [] for name in rows}
    for repeat in range(args.repeats):
        for name, run in rows.items():
            started = time.perf_counter()
            run()
            seconds = time.perf_counter() - started
            per_message[name].append(seconds / args.count * 1e6)
            print(f"{name:<48} run {repeat + 1}: {per_message[name][-1]:6.2f} us", file=sys.stderr)

    result = Result("codec")
    result.parameters = {
        "messages": args.count,
        "low_priority_ratio": LOW_PRIORITY_RATIO,
        "mean_value_bytes": round(
            sum(len(ChunkCodec().encode(chunk)) for chunk in chunks[:1000])
            / min(1000, len(chunks)),
            1,
        ),
        "repeats": args.repeats,
    }
    table = Table(
        "Codec cost per message (us, lower is better)",
        ["row", *(f"run {i + 1}" for i in range(args.repeats)), "median", "vs before"],
    )
    before = statistics.median(per_message["decode: fastavro + validation (before)"])
    encode_before = statistics.median(per_message["encode: record + fastavro (generic path)"])
    for name, times in per_message.items():
        median = statistics.median(times)
        reference = encode_before if name.startswith("encode") else before
        table.rows.append(
            [name, *(round(t, 2) for t in times), round(median, 2), round(median / reference, 3)]
        )
    result.tables.append(table)
    after = statistics.median(per_message["decode: generated + trusted (ChunkCodec.decode)"])
    ratios = [
        b / a
        for b, a in zip(
            per_message["decode: fastavro + validation (before)"],
            per_message["decode: generated + trusted (ChunkCodec.decode)"],
            strict=True,
        )
    ]
    low, high = min(ratios), max(ratios)
    result.notes.append(
        f"decode + Chunk construction: {before:.2f} us per message before (fastavro + "
        f"validation), {after:.2f} us now (generated reader + trusted construction): "
        f"{before / after:.2f} x faster (per run {low:.2f} to {high:.2f} x)."
    )
    result.print()
    print(f"wrote {result.write(args.output_dir)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
