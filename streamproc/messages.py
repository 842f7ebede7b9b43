"""Typed access to confluent-kafka messages.

librdkafka's ``Message`` getters are typed optional because an error event is also a ``Message``;
for a real message (``error() is None``) topic, partition and offset are always set. These helpers
say so once instead of at every call site.
"""

from __future__ import annotations

from typing import cast

from confluent_kafka import Message

Header = tuple[str, bytes]
# A partition: (topic, partition number).
PartitionKey = tuple[str, int]


def coordinates(message: Message) -> tuple[str, int, int]:
    """Topic, partition and offset of a real (non-error) message."""
    return cast(str, message.topic()), cast(int, message.partition()), cast(int, message.offset())


def timestamp_ms(message: Message) -> int:
    """The message timestamp in milliseconds (producer create time, or log append time)."""
    _, value = message.timestamp()
    return value


def headers(message: Message) -> list[Header]:
    """The message headers as (name, bytes) pairs, in order; empty values become b""."""
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    result: list[Header] = []
    for name, value in pairs:
        if isinstance(value, str):
            result.append((name, value.encode()))
        else:
            result.append((name, value or b""))
    return result
