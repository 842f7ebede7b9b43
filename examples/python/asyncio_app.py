"""The priority consumer inside an asyncio application.

The consumer's poll loop blocks, so it runs on a thread (``run_in_thread``); the handler passes
each chunk to the application's event loop and returns once the application is done with it, so
its offset is stored only then (at least once). Cancelling the consumer's task stops it cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib

from confluent_kafka.admin import AdminClient

from streamproc import (
    Chunk,
    ChunkProducer,
    ChunkRecord,
    ConsumerSettings,
    PriorityConsumer,
    ProducerSettings,
    TopicAdmin,
    run_in_thread,
)

COUNT = 100


def produce_some() -> None:
    settings = ProducerSettings()
    TopicAdmin(AdminClient(settings.admin_config()), settings.topology).create(partitions=3)
    with ChunkProducer(settings) as producer:
        for index in range(COUNT):
            producer.produce(Chunk(chunk_html=f"<p>{index}</p>", tracking_id=f"doc-{index}"))


async def main() -> None:
    await asyncio.to_thread(produce_some)  # blocking client calls stay off the event loop

    loop = asyncio.get_running_loop()
    seen: set[str] = set()
    all_seen = asyncio.Event()

    async def index(record: ChunkRecord) -> None:
        # The application's own async code: an HTTP call, a database write, ...
        await asyncio.sleep(0)
        seen.add(record.chunk.key)
        if len(seen) == COUNT:
            all_seen.set()

    def handle(record: ChunkRecord) -> None:
        # Called on the consumer's thread: run the coroutine on the application's loop and
        # wait for it, so a failure raised there is the handler's failure.
        asyncio.run_coroutine_threadsafe(index(record), loop).result()

    consumer = PriorityConsumer(ConsumerSettings(), handle)
    task = asyncio.create_task(run_in_thread(consumer))
    await all_seen.wait()
    task.cancel()  # shutting down: the consumer stops, finishes what it took, commits
    with contextlib.suppress(asyncio.CancelledError):
        await task
    print(f"handled {len(seen)} chunks; consumer stopped")


if __name__ == "__main__":
    asyncio.run(main())
