"""A Quix Streams producer that sends N chunks and reports how fast (run by ``produce.py``).

Runs in the Quix Streams virtualenv (see ``quix_app.py``), so it imports nothing from streamproc.
It reads the workload first (JSON lines of ``{"lane", "key", "record"}``: the very chunks of the
streamproc side, as the Avro records of ``chunk.avsc``), then, timed: for every chunk, the lane's
``Topic.serialize`` (a Quix ``Serializer`` writing Avro single-object framing with fastavro's
``schemaless_writer``, the key as UTF-8 text) and the producer of ``Application.get_producer()``
with a delivery callback that counts outcomes; flush included. The producer gets the same
librdkafka configuration as the streamproc side. Before the timed run one message per lane is
produced and flushed (connection, metadata, producer id). Prints one JSON line:
``{"count", "seconds", "delivered", "failed"}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from io import BytesIO
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form
from quixstreams import Application  # type: ignore[import-not-found]  # the benchmark's own venv
from quixstreams.models.serializers import (  # type: ignore[import-not-found]  # same venv
    Serializer,
)


class SingleObjectAvro(Serializer):  # type: ignore[misc]  # untyped base from quixstreams
    """Avro single-object framing: ``C3 01``, the schema's CRC-64-AVRO fingerprint, the body."""

    def __init__(self, schema: dict[str, Any]) -> None:
        super().__init__()
        self._header = b"\xc3\x01" + bytes.fromhex(
            fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO")
        )
        self._schema = parse_schema(schema)

    def __call__(self, value: Any, ctx: Any) -> bytes:
        buffer = BytesIO()
        buffer.write(self._header)
        schemaless_writer(buffer, self._schema, value)
        return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic", action="append", required=True, help="lane=topic, repeated")
    parser.add_argument("--workload", type=Path, required=True)
    parser.add_argument("--schema", type=Path, required=True)
    parser.add_argument("--config", required=True, help="librdkafka configuration as JSON")
    args = parser.parse_args()

    schema = json.loads(args.schema.read_text(encoding="utf-8"))
    workload = [json.loads(line) for line in args.workload.read_text(encoding="utf-8").splitlines()]
    app = Application(
        broker_address=args.bootstrap_servers,
        auto_create_topics=False,
        use_changelog_topics=False,
        producer_extra_config=json.loads(args.config),
        loglevel=logging.WARNING,
    )
    topics = {}
    for spec in args.topic:
        lane, name = spec.split("=", 1)
        topics[lane] = app.topic(
            name, value_serializer=SingleObjectAvro(schema), key_serializer="str"
        )
    outcome = {"delivered": 0, "failed": 0}

    def delivered(err: Any, _msg: Any) -> None:
        outcome["failed" if err is not None else "delivered"] += 1

    with app.get_producer() as producer:
        for lane, topic in topics.items():  # warm-up, one message per lane
            first = next(item for item in workload if item["lane"] == lane)
            message = topic.serialize(key=first["key"], value=first["record"])
            producer.produce(topic=topic.name, key=message.key, value=message.value)
        producer.flush(60)
        started = time.perf_counter()
        for item in workload:
            topic = topics[item["lane"]]
            message = topic.serialize(key=item["key"], value=item["record"])
            producer.produce(
                topic=topic.name, key=message.key, value=message.value, on_delivery=delivered
            )
        remaining = producer.flush(120)
        seconds = time.perf_counter() - started
    if remaining:
        raise SystemExit(f"Quix Streams producer: {remaining} messages undelivered after flush")
    print(json.dumps({"count": len(workload), "seconds": seconds, **outcome}))


if __name__ == "__main__":
    main()
