"""Parking messages that cannot be handled in ``<topic>.dlq``, with the reason in headers.

The original key and value bytes are written untouched, the original headers are kept, and
``streamproc.*`` headers say why and where from. :meth:`DeadLetterQueue.park` returns only once
the broker has acknowledged the write: the consumer stores the message's offset after that, so a
message is never both un-handled and committed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from streamproc.errors import ProduceError, StreamprocError
from streamproc.lanes import dead_letter_topic
from streamproc.messages import coordinates, timestamp_ms
from streamproc.messages import headers as original_headers

# Header names: the documented part of the wire contract.
HEADER_ERROR_CLASS = "streamproc.error.class"
HEADER_ERROR_REASON = "streamproc.error.reason"
HEADER_ERROR_MESSAGE = "streamproc.error.message"
HEADER_TOPIC = "streamproc.original.topic"
HEADER_PARTITION = "streamproc.original.partition"
HEADER_OFFSET = "streamproc.original.offset"
HEADER_TIMESTAMP = "streamproc.original.timestamp"
HEADER_LANE = "streamproc.lane"
HEADER_ATTEMPTS = "streamproc.attempts"

_MAX_MESSAGE_CHARS = 1000
# Longest single wait for delivery reports inside park().
_POLL_SLICE_S = 0.1


@dataclass(frozen=True, slots=True)
class ParkedMessage:
    """Where a dead letter went."""

    topic: str
    partition: int
    offset: int
    reason: str


def error_reason(error: BaseException) -> str:
    """The bounded reason label of ``error`` (its class attribute; ``handler_error`` for others)."""
    if isinstance(error, StreamprocError):
        return error.reason
    return "handler_error"


class DeadLetterQueue:
    """A producer dedicated to dead letters (idempotent, acks=all).

    Args:
        config: librdkafka producer configuration (connection keys and safety keys included).
        flush_timeout_s: How long :meth:`park` waits for the broker's acknowledgement.
    """

    def __init__(self, config: dict[str, Any], *, flush_timeout_s: float = 30.0) -> None:
        self._producer = Producer(config)
        self._flush_timeout_s = flush_timeout_s

    def park(
        self, message: Message, error: BaseException, *, lane: str, attempts: int = 1
    ) -> ParkedMessage:
        """Write ``message`` to its dead-letter topic and wait for the acknowledgement.

        Not thread-safe: callers serialize parks (one dead letter in flight at a time).

        Args:
            message: The original message; key, value and headers are copied untouched.
            error: Why it is parked.
            lane: The lane it came from.
            attempts: How many times handling was tried.

        Returns:
            Where the dead letter landed.

        Raises:
            ProduceError: the write was not acknowledged in time (the offset must not be stored).
        """
        topic, partition, offset = coordinates(message)
        reason = error_reason(error)
        headers: list[tuple[str, str | bytes | None]] = list(original_headers(message))
        headers += [
            (HEADER_ERROR_CLASS, type(error).__name__),
            (HEADER_ERROR_REASON, reason),
            (HEADER_ERROR_MESSAGE, str(error)[:_MAX_MESSAGE_CHARS]),
            (HEADER_TOPIC, topic),
            (HEADER_PARTITION, str(partition)),
            (HEADER_OFFSET, str(offset)),
            (HEADER_TIMESTAMP, str(timestamp_ms(message))),
            (HEADER_LANE, lane),
            (HEADER_ATTEMPTS, str(attempts)),
        ]
        outcome: list[ParkedMessage | str] = []

        def delivered(err: KafkaError | None, parked: Message) -> None:
            if err is not None:
                outcome.append(err.str())
            else:
                outcome.append(ParkedMessage(*coordinates(parked), reason))

        target = dead_letter_topic(topic)
        try:
            self._producer.produce(
                target, message.value(), message.key(), headers=headers, on_delivery=delivered
            )
        except (BufferError, Exception) as exc:  # any refusal means "not parked"
            raise ProduceError(f"could not dead-letter to {target}: {exc}") from exc
        # Wait for this message's own report, not for the whole queue (flush): a dead letter that
        # can never be delivered (its topic is gone) must not make later ones, delivered in
        # time, look unacknowledged; they would be parked again after a restart.
        deadline = time.monotonic() + self._flush_timeout_s
        while not outcome and (remaining := deadline - time.monotonic()) > 0:
            self._producer.poll(min(remaining, _POLL_SLICE_S))
        if not outcome:
            # Given up: drop it so it does not hold the queue; its offset is not stored, so the
            # original message comes back and is parked again (at least once).
            self._producer.purge()
            self._producer.poll(0)
            raise ProduceError(
                f"dead letter to {target} not acknowledged in {self._flush_timeout_s}s"
            )
        result = outcome[0]
        if isinstance(result, str):
            raise ProduceError(f"dead letter to {target} failed: {result}")
        return result

    def close(self) -> None:
        """Drop whatever was never acknowledged: its offset was not stored, so it comes back."""
        self._producer.purge()
        self._producer.flush(0)
