"""Delivery reports as ChunkProducer passes them on (no broker: the reports are built here)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import (
    OFFSET_INVALID,
    TIMESTAMP_CREATE_TIME,
    KafkaError,
    KafkaException,
    Message,
)

from streamproc.errors import ProduceError
from streamproc.producer import ChunkProducer, Delivery
from streamproc.settings import ProducerSettings


class Sent:
    """Stands in for librdkafka's produce(): records what was queued, refuses while full."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.callbacks: list[Callable[[KafkaError | None, Message], None]] = []
        self.full = False
        self.refuse: KafkaException | None = None

    def __call__(self, topic: str, value: bytes, key: bytes, **kwargs: Any) -> None:
        if self.full:
            raise BufferError("Local: Queue full")
        if self.refuse is not None:
            raise self.refuse
        self.calls.append(
            (topic, kwargs.get("partition"), key, value, kwargs.get("headers"), kwargs["timestamp"])
        )
        self.callbacks.append(kwargs["on_delivery"])


RESENT_LANES: list[str] = []


def producer_with(resend: bool) -> tuple[ChunkProducer, list[Delivery], Sent]:
    deliveries: list[Delivery] = []
    RESENT_LANES.clear()
    producer = ChunkProducer(
        ProducerSettings(resend_unconfirmed=resend),
        on_delivery=deliveries.append,
        on_resend=RESENT_LANES.append,
    )
    sent = Sent()
    producer._produce = sent  # type: ignore[assignment]  # records instead of producing
    return producer, deliveries, sent


SENT_MS = 1_700_000_000_123


def message(producer: ChunkProducer, offset: int, key: bytes = b"k") -> Message:
    headers: list[tuple[str, str | bytes | None]] = [("h", b"1")]
    return Message(
        topic=producer.settings.topology.top.topic,
        partition=1,
        offset=offset,
        key=key,
        value=b"v",
        headers=headers,
        timestamp=(TIMESTAMP_CREATE_TIME, SENT_MS),
    )


def report(producer: ChunkProducer, offset: int, key: bytes = b"k") -> None:
    producer._delivered(None, message(producer, offset, key))


def test_without_resends_an_ack_without_an_offset_is_delivered_with_offset_none() -> None:
    producer, deliveries, sent = producer_with(resend=False)
    for offset in (OFFSET_INVALID, 7):
        report(producer, offset)
    assert [(d.ok, d.partition, d.offset) for d in deliveries] == [(True, 1, None), (True, 1, 7)]
    assert producer.stats.lanes["realtime"].delivered == 2
    assert sent.calls == [] and RESENT_LANES == []


def test_an_ack_without_an_offset_is_sent_once_more_as_it_was_and_not_reported() -> None:
    producer, deliveries, sent = producer_with(resend=True)
    report(producer, OFFSET_INVALID)
    topic = producer.settings.topology.top.topic
    # Same partition, key, value, headers, and the original timestamp (the chunk's version).
    assert sent.calls == [(topic, 1, b"k", b"v", [("h", b"1")], SENT_MS)]
    assert deliveries == []
    assert RESENT_LANES == ["realtime"]
    counts = producer.stats.lanes["realtime"]
    counts.sent = 1
    assert (counts.delivered, counts.resent, producer.stats.in_flight) == (0, 1, 1)
    sent.callbacks[0](None, message(producer, 12))  # the resend's report
    assert [(d.ok, d.offset) for d in deliveries] == [(True, 12)]
    assert (counts.delivered, counts.resent, producer.stats.in_flight) == (1, 1, 0)


def test_a_resend_acknowledged_without_an_offset_again_is_reported_not_resent() -> None:
    producer, deliveries, sent = producer_with(resend=True)
    report(producer, OFFSET_INVALID)
    sent.callbacks[0](None, message(producer, OFFSET_INVALID))
    assert len(sent.calls) == 1
    assert [(d.ok, d.offset) for d in deliveries] == [(True, None)]
    # The same chunk produced twice (a repeated input line): each copy is resent once.
    report(producer, OFFSET_INVALID)
    assert len(sent.calls) == 2


def test_a_resend_that_fails_is_a_failed_delivery() -> None:
    producer, deliveries, sent = producer_with(resend=True)
    report(producer, OFFSET_INVALID)
    sent.callbacks[0](KafkaError(KafkaError._MSG_TIMED_OUT), message(producer, OFFSET_INVALID))
    assert [d.ok for d in deliveries] == [False]
    assert producer.stats.lanes["realtime"].failed == 1


def test_a_resend_librdkafka_refuses_is_a_failed_delivery_and_the_producer_goes_on() -> None:
    producer, deliveries, sent = producer_with(resend=True)
    sent.refuse = KafkaException(KafkaError(KafkaError._FATAL))
    report(producer, OFFSET_INVALID)
    assert [(d.ok, d.error is not None and "resend refused" in d.error) for d in deliveries] == [
        (False, True)
    ]
    assert producer.stats.lanes["realtime"].failed == 1
    assert producer._resend_backlog == []


def test_a_resend_refused_by_a_full_queue_is_produced_by_the_next_poll_or_flush() -> None:
    producer, deliveries, sent = producer_with(resend=True)
    producer._poll = lambda timeout_s=0.0: 0  # type: ignore[assignment]
    producer._producer = type(
        "P", (), {"poll": staticmethod(lambda timeout=0.0: 0), "flush": lambda self, t=0: 0}
    )()
    sent.full = True
    report(producer, OFFSET_INVALID)
    assert sent.calls == [] and deliveries == []
    sent.full = False
    producer.poll(0)
    assert len(sent.calls) == 1
    sent.full = True
    report(producer, OFFSET_INVALID, key=b"other")
    with pytest.raises(ProduceError, match="1 messages still undelivered"):
        producer.flush(0.01)  # the queue stays full: the resend is still owed
    sent.full = False
    producer.flush(1)
    assert len(sent.calls) == 2


@pytest.mark.parametrize("offset", [0, 41])
def test_an_ack_with_an_offset_is_delivered_as_is(offset: int) -> None:
    producer, deliveries, sent = producer_with(resend=True)
    report(producer, offset)
    assert [(d.ok, d.offset) for d in deliveries] == [(True, offset)]
    assert sent.calls == []
