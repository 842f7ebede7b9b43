"""Denials by the broker (missing ACL, refused password) stop the consumer instead of being
retried forever; their message names the user, never the password.

The real secured broker proves the same end to end (tests/integration/test_security.py).
"""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError, Message
from fake_kafka import FakeBroker, FakeClients

from streamproc.access import denial_message, is_denied
from streamproc.chunk import Chunk
from streamproc.codec import ChunkCodec
from streamproc.consumer import PriorityConsumer
from streamproc.handlers import open_sink
from streamproc.settings import ConsumerSettings

REALTIME, BULK = "chunks.realtime", "chunks.bulk"
CODEC = ChunkCodec()


@pytest.mark.parametrize(
    ("code", "denied"),
    [
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, True),
        (KafkaError.GROUP_AUTHORIZATION_FAILED, True),
        (KafkaError.SASL_AUTHENTICATION_FAILED, True),
        (KafkaError._AUTHENTICATION, True),
        (KafkaError._TRANSPORT, False),
        (KafkaError._ALL_BROKERS_DOWN, False),
        (KafkaError.NOT_COORDINATOR, False),
    ],
)
def test_only_authentication_and_authorization_failures_are_denials(
    code: int, denied: bool
) -> None:
    assert is_denied(KafkaError(code)) is denied


def test_denial_message_names_the_user_and_what_was_refused() -> None:
    error = KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED, "Group authorization failed")
    message = denial_message(error, "svc", "describing group 'g'")
    assert message.startswith("not authorized: user 'svc' was refused describing group 'g': ")
    assert "Group authorization failed" in message
    assert "this client was refused" in denial_message(error, None, "x")


def test_a_topic_authorization_failure_stops_the_consumer_without_committing_past_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeBroker({REALTIME: 1, BULK: 1})
    for index in range(3):
        fake.produce(REALTIME, 0, CODEC.encode(Chunk(tracking_id=f"rt-{index}")))
    fake.logs[(BULK, 0)] = [
        Message(topic=BULK, partition=0, error=KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    ]
    settings = ConsumerSettings(
        bootstrap_servers="fake:9092",
        poll_timeout_s=0.02,
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password="never-shown",  # noqa: S106  # a test value
    )
    clients = FakeClients(fake)
    consumer = PriorityConsumer(settings, open_sink("null"), codec=CODEC, clients=clients)
    with caplog.at_level(logging.ERROR, logger="streamproc"):
        assert consumer.run(install_signal_handlers=False) == 1
    stop = [r.getMessage() for r in caplog.records if "not authorized" in r.getMessage()]
    assert len(stop) == 1
    assert f"user 'svc' was refused consuming {BULK} in group 'streamproc'" in stop[0]
    assert "never-shown" not in caplog.text
    assert (BULK, 0) not in fake.committed or fake.committed[(BULK, 0)] <= 0
