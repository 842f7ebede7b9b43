"""Load for the compose stack: a bulk backlog, then a steady realtime stream with bursts, forever.

Bursts push the realtime lag over the consumer's pause threshold, so the dashboard shows the bulk
lane pausing and resuming. Settings come from the STREAMPROC_* environment like every client.
"""

from __future__ import annotations

import itertools
import os
import random
import time

from streamproc.producer import ChunkProducer
from streamproc.samples import sample_chunk
from streamproc.settings import ProducerSettings

BULK_BACKLOG = int(os.environ.get("LOADGEN_BULK_BACKLOG", "200000"))
REALTIME_RATE = float(os.environ.get("LOADGEN_REALTIME_RATE", "50"))
BURST_SIZE = int(os.environ.get("LOADGEN_BURST_SIZE", "3000"))
BURST_EVERY_S = float(os.environ.get("LOADGEN_BURST_EVERY_S", "60"))


def main() -> None:
    producer = ChunkProducer(ProducerSettings())
    rng = random.Random(7)  # noqa: S311  # sample data, not security
    for index in range(BULK_BACKLOG):
        producer.produce(sample_chunk(index, rng=rng, low_priority=True, prefix="backlog"))
    producer.flush()
    next_burst = time.monotonic() + BURST_EVERY_S
    for index in itertools.count():
        producer.produce(sample_chunk(index, rng=rng, prefix="edit"))
        if time.monotonic() >= next_burst:
            for burst_index in range(BURST_SIZE):
                producer.produce(sample_chunk(burst_index, rng=rng, prefix=f"burst{index}"))
            next_burst += BURST_EVERY_S
        producer.poll(0)
        time.sleep(1 / REALTIME_RATE)
        if index % 1000 == 0:
            producer.flush()


if __name__ == "__main__":
    main()
