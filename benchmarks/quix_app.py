"""A Quix Streams application that reads N chunks and reports how fast (run by ``consume.py``).

Runs in its own virtualenv (``quixstreams`` pins an older confluent-kafka than streamproc), so it
imports nothing from streamproc. It decodes each value the way the raw fastavro loop of
``consume.py`` does (skip the 10-byte single-object header, ``schemaless_reader`` with the parsed
schema), counts messages in a ``StreamingDataFrame.update`` step and stops after the Nth; it
prints one JSON line: ``{"count", "first", "last"}`` (``time.perf_counter`` seconds of the first
and the Nth message).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from io import BytesIO
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader
from quixstreams import Application  # type: ignore[import-not-found]  # the benchmark's own venv
from quixstreams.models.serializers import (  # type: ignore[import-not-found]  # same venv
    Deserializer,
)

SINGLE_OBJECT_HEADER_BYTES = 10


class SingleObjectAvro(Deserializer):  # type: ignore[misc]  # untyped base from quixstreams
    """Avro single-object framing: skip ``C3 01`` and the fingerprint, read the body."""

    def __init__(self, schema_path: Path) -> None:
        super().__init__()
        self._schema = parse_schema(json.loads(schema_path.read_text(encoding="utf-8")))

    def __call__(self, value: bytes, ctx: Any) -> Any:
        stream = BytesIO(value)
        stream.seek(SINGLE_OBJECT_HEADER_BYTES)
        return schemaless_reader(stream, self._schema, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--schema", type=Path, required=True)
    args = parser.parse_args()

    app = Application(
        broker_address=args.bootstrap_servers,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        auto_create_topics=False,
        use_changelog_topics=False,
        loglevel=logging.WARNING,
    )
    topic = app.topic(
        args.topic, value_deserializer=SingleObjectAvro(args.schema), key_deserializer="bytes"
    )
    progress: dict[str, float] = {"count": 0, "first": 0.0, "last": 0.0}

    def count(_value: Any) -> None:
        progress["count"] += 1
        if progress["count"] == 1:
            progress["first"] = time.perf_counter()
        if progress["count"] == args.count:
            progress["last"] = time.perf_counter()
            app.stop()

    app.dataframe(topic).update(count)
    app.run()
    print(json.dumps(progress))


if __name__ == "__main__":
    main()
