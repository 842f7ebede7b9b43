"""Produce chunks to their lanes, then consume them, realtime first, from Python.

Settings read the STREAMPROC_* environment variables (STREAMPROC_BOOTSTRAP_SERVERS,
STREAMPROC_TOPIC_PREFIX, STREAMPROC_GROUP_ID, ...); arguments given in code win.
"""

from __future__ import annotations

import threading

from confluent_kafka.admin import AdminClient

from streamproc import (
    Chunk,
    ChunkProducer,
    ChunkRecord,
    ConsumerSettings,
    PriorityConsumer,
    ProducerSettings,
    TopicAdmin,
)

COUNT = 100


def main() -> int:
    producer_settings = ProducerSettings()
    admin = AdminClient(producer_settings.admin_config())
    TopicAdmin(admin, producer_settings.topology).create(partitions=3)  # idempotent

    # Every fourth chunk is low priority: it goes to the bulk lane.
    with ChunkProducer(producer_settings) as producer:
        for index in range(COUNT):
            chunk = Chunk(
                chunk_html=f"<p>chunk {index}</p>",
                tracking_id=f"doc-{index}",
                low_priority=index % 4 == 0,
            )
            producer.produce(chunk)
    # Leaving the block flushed the producer: every chunk is acknowledged.

    handled = {"realtime": 0, "bulk": 0}
    lock = threading.Lock()

    def handle(record: ChunkRecord) -> None:
        # Raise RetriableHandlerError to be retried, anything else to dead-letter the chunk.
        with lock:
            handled[record.context.lane] += 1
            if sum(handled.values()) == COUNT:
                consumer.stop()  # thread-safe: finish what is taken, commit, return

    consumer = PriorityConsumer(ConsumerSettings(), handle)
    exit_code = consumer.run()  # blocks; SIGTERM and SIGINT stop it cleanly too
    realtime, bulk = handled["realtime"], handled["bulk"]
    print(f"handled {realtime + bulk} chunks: {realtime} realtime, {bulk} bulk")
    return exit_code


if __name__ == "__main__":
    raise SystemExit(main())
