"""Delivery reports as ChunkProducer passes them on (no broker: the reports are built here)."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import OFFSET_INVALID, Message

from streamproc.producer import ChunkProducer, Delivery
from streamproc.settings import ProducerSettings


class Sent:
    """Stands in for librdkafka's produce(): records what was queued, refuses while full."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.full = False

    def __call__(self, topic: str, value: bytes, key: bytes, **kwargs: Any) -> None:
        if self.full:
            raise BufferError("Local: Queue full")
        self.calls.append((topic, kwargs.get("partition"), key, value, kwargs.get("headers")))


def producer_with(resend: bool) -> tuple[ChunkProducer, list[Delivery], Sent]:
    deliveries: list[Delivery] = []
    producer = ChunkProducer(
        ProducerSettings(resend_unconfirmed=resend), on_delivery=deliveries.append
    )
    sent = Sent()
    producer._produce = sent  # type: ignore[assignment]  # records instead of producing
    return producer, deliveries, sent


def report(producer: ChunkProducer, offset: int, key: bytes = b"k") -> None:
    topic = producer.settings.topology.top.topic
    headers: list[tuple[str, str | bytes | None]] = [("h", b"1")]
    message = Message(topic=topic, partition=1, offset=offset, key=key, value=b"v", headers=headers)
    producer._delivered(None, message)


def test_without_resends_an_ack_without_an_offset_is_delivered_with_offset_none() -> None:
    producer, deliveries, sent = producer_with(resend=False)
    for offset in (OFFSET_INVALID, 7):
        report(producer, offset)
    assert [(d.ok, d.partition, d.offset) for d in deliveries] == [(True, 1, None), (True, 1, 7)]
    assert producer.stats.lanes["realtime"].delivered == 2
    assert sent.calls == []


def test_an_ack_without_an_offset_is_sent_once_more_to_its_partition_and_not_reported() -> None:
    producer, deliveries, sent = producer_with(resend=True)
    report(producer, OFFSET_INVALID)
    topic = producer.settings.topology.top.topic
    assert sent.calls == [(topic, 1, b"k", b"v", [("h", b"1")])]
    assert deliveries == []
    counts = producer.stats.lanes["realtime"]
    assert (counts.delivered, counts.resent) == (0, 1)
    report(producer, 12)  # the resend's report
    assert [(d.ok, d.offset) for d in deliveries] == [(True, 12)]
    assert (counts.delivered, counts.resent) == (1, 1)


def test_a_resend_acknowledged_without_an_offset_again_is_reported_not_resent() -> None:
    producer, deliveries, sent = producer_with(resend=True)
    report(producer, OFFSET_INVALID)
    report(producer, OFFSET_INVALID)
    assert len(sent.calls) == 1
    assert [(d.ok, d.offset) for d in deliveries] == [(True, None)]
    report(producer, OFFSET_INVALID, key=b"other")  # another message: resent
    assert len(sent.calls) == 2


def test_a_resend_refused_by_a_full_queue_is_produced_by_the_next_poll() -> None:
    producer, deliveries, sent = producer_with(resend=True)
    producer._poll = lambda timeout_s=0.0: 0  # type: ignore[assignment]
    producer._producer = type("P", (), {"poll": staticmethod(lambda timeout_s=0.0: 0)})()
    sent.full = True
    report(producer, OFFSET_INVALID)
    assert sent.calls == [] and deliveries == []
    sent.full = False
    producer.poll(0)
    assert len(sent.calls) == 1


@pytest.mark.parametrize("offset", [0, 41])
def test_an_ack_with_an_offset_is_delivered_as_is(offset: int) -> None:
    producer, deliveries, sent = producer_with(resend=True)
    report(producer, offset)
    assert [(d.ok, d.offset) for d in deliveries] == [(True, offset)]
    assert sent.calls == []
