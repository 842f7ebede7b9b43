"""Running the priority consumer inside an asyncio application.

:class:`~streamproc.consumer.PriorityConsumer` owns a blocking poll loop (librdkafka's calls
block), so it never runs on the application's event loop. :func:`run_in_thread` runs it on a
worker thread and ties its life to an asyncio task:

1. ``consumer.run()`` starts on a thread (``asyncio.to_thread``), without installing signal
   handlers: the application owns SIGTERM and SIGINT.
2. Awaiting the task waits for the consumer to end and returns its exit code.
3. Cancelling the task asks the consumer to stop, then waits for it to finish the chunks it has
   taken, commit and close, and only then lets the cancellation through: a cancelled consumer
   leaves nothing half-handled.

Handlers still run where the consumer runs them (its worker threads, or its own event loop for an
``async def`` handler), not on the application's loop. To hand a chunk to the application, use
``loop.call_soon_threadsafe`` (or ``asyncio.run_coroutine_threadsafe``) from the handler.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Runnable(Protocol):
    """What :func:`run_in_thread` needs of a consumer (a
    :class:`~streamproc.consumer.PriorityConsumer`)."""

    def run(self, *, install_signal_handlers: bool = True) -> int: ...

    def stop(self) -> None: ...


async def run_in_thread(consumer: Runnable) -> int:
    """Run ``consumer`` on a worker thread until it ends or this coroutine is cancelled.

    Args:
        consumer: A consumer not yet running.

    Returns:
        The consumer's exit code: 0 after a clean stop, 1 when its error policy stopped it.

    Raises:
        asyncio.CancelledError: when cancelled, after the consumer has stopped cleanly.

    Example:
        >>> async def main() -> None:  # doctest: +SKIP
        ...     consumer = PriorityConsumer(ConsumerSettings(), handler)
        ...     task = asyncio.create_task(run_in_thread(consumer))
        ...     ...  # the application's own work
        ...     task.cancel()  # on shutdown: stops, drains, commits
        ...     with contextlib.suppress(asyncio.CancelledError):
        ...         await task
    """
    running = asyncio.ensure_future(asyncio.to_thread(consumer.run, install_signal_handlers=False))
    try:
        # Shielded: a cancellation reaches this coroutine, not the thread's future.
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        consumer.stop()
        # Wait for the drain and the commit even if cancelled again meanwhile.
        while not running.done():
            try:
                await asyncio.shield(running)
            except asyncio.CancelledError:
                continue
        raise
