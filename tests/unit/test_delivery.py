"""Delivery reports as ChunkProducer passes them on (no broker: the reports are built here)."""

from __future__ import annotations

from confluent_kafka import OFFSET_INVALID, Message

from streamproc.producer import ChunkProducer, Delivery
from streamproc.settings import ProducerSettings


def test_a_delivery_without_an_offset_is_delivered_with_offset_none() -> None:
    # An idempotent resend the broker already had (its first acknowledgement was lost): librdkafka
    # reports success without an offset.
    deliveries: list[Delivery] = []
    producer = ChunkProducer(ProducerSettings(), on_delivery=deliveries.append)
    topic = producer.settings.topology.top.topic
    for offset in (OFFSET_INVALID, 7):
        message = Message(topic=topic, partition=1, offset=offset, key=b"k", value=b"v")
        producer._delivered(None, message)
    assert [(d.ok, d.partition, d.offset) for d in deliveries] == [(True, 1, None), (True, 1, 7)]
    assert producer.stats.lanes["realtime"].delivered == 2
