"""Against a broker that demands TLS, SCRAM-SHA-512 and ACLs (``kafka-local --security sasl_ssl``).

* The settings in ``client.env`` are all a user needs: produce, consume, lag and topics work
  through the real command and the Python API.
* A wrong password: one clear error and exit code 1 within seconds, from every command and from
  the API's consumer (no hang, no retry storm).
* A principal without READ on the bulk topic, or without access to the group: the consumer stops
  at once with an error naming the user and what was refused; ``lag`` says so too.
* A dead-letter write the broker refuses (a DENY ACL on the ``.dlq`` topic) stops the consumer
  without committing past the message; once allowed again, the message is parked (nothing lost).
* The password appears in no log line, ``/metrics``, ``--help`` output or exception message.

One secured broker for the session (``secured_broker``); the tests share its lane topics and the
group the ACLs grant, so each one reasons from offsets it measured first.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # ACL types: public, untyped
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)
from kafka_helpers import ThreadedConsumer, wait_until

from streamproc.chunk import Chunk
from streamproc.consumer import PriorityConsumer
from streamproc.errors import StreamprocError
from streamproc.handlers import open_sink
from streamproc.producer import ChunkProducer
from streamproc.settings import ConsumerSettings, KafkaSettings, ProducerSettings
from streamproc.topics import TopicAdmin

if TYPE_CHECKING:
    from tests.conftest import SecuredBroker

pytestmark = pytest.mark.security

# "Within seconds": the start-up check gives up at once on a refused password; the rest is
# interpreter start-up on a busy machine.
REFUSED_WITHIN_S = 15.0
# librdkafka's raw stderr line format: %<level>|<time>|<facility>|...
RAW_LIBRDKAFKA = re.compile(r"^%\d\|", re.MULTILINE)


class Outputs:
    """Everything the tests saw (stdout, stderr, /metrics, --help, exception text)."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def add(self, *texts: str) -> None:
        self.texts.extend(texts)

    def assert_no_secret(self, *secrets: str) -> None:
        assert self.texts, "nothing captured"
        for secret in secrets:
            for text in self.texts:
                assert secret not in text


@pytest.fixture
def outputs(secured_broker: SecuredBroker) -> Iterator[Outputs]:
    """Captured outputs of one test; after it, no password of any user may appear in them."""
    captured = Outputs()
    yield captured
    captured.assert_no_secret(
        *(
            env["STREAMPROC_SASL_PASSWORD"]
            for env in (
                secured_broker.client_env,
                secured_broker.limited_env,
                secured_broker.admin_env,
            )
        )
    )


def streamproc(
    outputs: Outputs, env: dict[str, str], *args: str, stdin: str = "", timeout: float = 120
) -> tuple[int, str, str, float]:
    """Run ``python -m streamproc ARGS`` with ``env`` on top of ours (as after ``source``)."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "streamproc", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout,
        check=False,
    )
    outputs.add(result.stdout, result.stderr)
    return result.returncode, result.stdout, result.stderr, time.monotonic() - started


def start_consumer(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "streamproc", "consume", "--metrics-port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


def wait_for(process: subprocess.Popen[str], outputs: Outputs, timeout_s: float) -> tuple[int, str]:
    """The consumer's exit code and stderr once it exits by itself within ``timeout_s``."""
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        outputs.add(stdout, stderr)
        pytest.fail(f"consumer still running after {timeout_s}s:\n{stderr[-3000:]}")
    outputs.add(stdout, stderr)
    return process.returncode, stderr


def terminate(process: subprocess.Popen[str], outputs: Outputs) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    outputs.add(stdout, stderr)
    return process.returncode, stderr


def settings_from(env: dict[str, str], model: type[Any], **overrides: Any) -> Any:
    """A settings model read from the environment of ``env`` only (as after ``source``)."""
    saved = {
        name: os.environ.pop(name) for name in list(os.environ) if name.startswith("STREAMPROC_")
    }
    os.environ.update(env)
    try:
        return model(**overrides)
    finally:
        for name in env:
            os.environ.pop(name, None)
        os.environ.update(saved)


def admin_of(env: dict[str, str]) -> AdminClient:
    return AdminClient(settings_from(env, KafkaSettings).admin_config())


def lane_topics(env: dict[str, str]) -> tuple[str, str]:
    prefix = env["STREAMPROC_TOPIC_PREFIX"]
    return f"{prefix}.realtime", f"{prefix}.bulk"


def ensure_topics(env: dict[str, str]) -> None:
    settings = settings_from(env, KafkaSettings)
    TopicAdmin(AdminClient(settings.admin_config()), settings.topology).create(partitions=2)


def high_watermarks(env: dict[str, str], topic: str) -> dict[int, int]:
    """High watermarks of ``topic``, read with a plain consumer of ``env``'s user."""
    from confluent_kafka import Consumer

    settings = settings_from(env, KafkaSettings)
    consumer = Consumer({**settings.connection(), "group.id": f"hw-{uuid.uuid4().hex}"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
    finally:
        consumer.close()


def read_all(env: dict[str, str], topic: str) -> list[Any]:
    """Every message of ``topic`` up to the high watermarks taken first, as ``env``'s user."""
    from confluent_kafka import Consumer

    highs = high_watermarks(env, topic)
    settings = settings_from(env, KafkaSettings)
    consumer = Consumer(
        {
            **settings.connection(),
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    messages: list[Any] = []
    try:
        pending = {partition: high for partition, high in highs.items() if high > 0}
        consumer.assign([TopicPartition(topic, p, 0) for p in pending])
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.5):
                assert message.error() is None, message.error()
                messages.append(message)
                partition, offset = cast(int, message.partition()), cast(int, message.offset())
                if offset + 1 >= pending.get(partition, 0):
                    pending.pop(partition, None)
        assert not pending, f"{topic}: partitions {sorted(pending)} not read to the end"
    finally:
        consumer.close()
    return messages


def committed(
    admin_env: dict[str, str], group: str, topic: str, partitions: int = 2
) -> dict[int, int]:
    """The group's committed offsets, fetched by a consumer that does not join the group.

    Not the AdminClient's ``list_consumer_group_offsets``: librdkafka crashes the process when
    that request meets a coordinator still loading, as on a broker that has just started.
    """
    from confluent_kafka import Consumer, KafkaError, KafkaException

    settings = settings_from(admin_env, KafkaSettings)
    consumer = Consumer({**settings.connection(), "group.id": group, "enable.auto.commit": False})
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                offsets = consumer.committed(
                    [TopicPartition(topic, partition) for partition in range(partitions)],
                    timeout=10,
                )
                break
            except KafkaException as exc:
                # The group coordinator moves or still loads right after the broker started.
                retriable = exc.args[0].code() in (
                    KafkaError.NOT_COORDINATOR,
                    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                    KafkaError.COORDINATOR_NOT_AVAILABLE,
                )
                if not retriable or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in offsets}


def chunk_lines(count: int, *, low_priority: bool = False) -> str:
    tag = uuid.uuid4().hex[:8]
    return "".join(
        json.dumps(
            {
                "chunk_html": f"<p>{index}</p>",
                "tracking_id": f"{tag}-{index}",
                "low_priority": low_priority,
            }
        )
        + "\n"
        for index in range(count)
    )


# -- the right credentials ---------------------------------------------------------------------


def test_client_env_is_all_a_user_needs_for_topics_produce_lag_and_consume(
    secured_broker: SecuredBroker, outputs: Outputs
) -> None:
    env = secured_broker.client_env
    assert env["STREAMPROC_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["STREAMPROC_SASL_MECHANISM"] == "SCRAM-SHA-512"
    realtime, bulk = lane_topics(env)

    code, stdout, stderr, _ = streamproc(outputs, env, "topics", "create", "--partitions", "2")
    assert code == 0, stderr
    code, stdout, stderr, _ = streamproc(outputs, env, "topics", "describe")
    assert code == 0, stderr
    assert realtime in stdout and f"{bulk}.dlq" in stdout

    admin_env = secured_broker.admin_env
    before = {topic: high_watermarks(env, topic) for topic in (realtime, bulk)}
    code, stdout, stderr, _ = streamproc(
        outputs, env, "produce", "-", "--no-progress",
        stdin=chunk_lines(30) + chunk_lines(20, low_priority=True),
    )  # fmt: skip
    assert code == 0, stderr
    after = {topic: high_watermarks(env, topic) for topic in (realtime, bulk)}
    assert sum(after[realtime].values()) - sum(before[realtime].values()) == 30
    assert sum(after[bulk].values()) - sum(before[bulk].values()) == 20

    # The API reads the same variables: a producer of its own adds to the bulk lane.
    with ChunkProducer(settings_from(env, ProducerSettings)) as producer:
        producer.produce(Chunk(chunk_html="<p>api</p>", tracking_id="api-1", low_priority=True))
    group = env["STREAMPROC_GROUP_ID"]
    consumer = start_consumer(env, "--sink", "null", "--log-format", "json")
    try:
        assert consumer.stderr is not None
        first = json.loads(consumer.stderr.readline())
        outputs.add(json.dumps(first))
        port = int(re.findall(r"metrics on port (\d+)", first["message"])[0])
        ends = {topic: high_watermarks(env, topic) for topic in (realtime, bulk)}
        wait_until(
            lambda: all(committed(admin_env, group, topic) == ends[topic] for topic in ends),
            timeout_s=60,
            what="the group to commit both lanes to their ends",
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        outputs.add(metrics)
        assert "streamproc_" in metrics
    finally:
        code, stderr = terminate(consumer, outputs)
    assert code == 0, stderr

    code, stdout, stderr, _ = streamproc(outputs, env, "lag", "--output", "json")
    assert code == 0, stderr
    document = json.loads(stdout)
    assert document["group"] == group
    assert {lane["lag_messages"] for lane in document["lanes"].values()} == {0}


def test_debug_logs_and_help_never_show_the_password(
    secured_broker: SecuredBroker, outputs: Outputs
) -> None:
    """librdkafka's every line (``debug=all``, the configuration included) through a successful
    SASL_SSL session of a producer, and every command's ``--help`` with the variables set."""
    env = {
        **secured_broker.client_env,
        "STREAMPROC_LIBRDKAFKA_EXTRA": json.dumps({"debug": "all"}),
    }
    code, stdout, stderr, _ = streamproc(
        outputs, env, "produce", "-", "--no-progress", "--log-level", "DEBUG", stdin=chunk_lines(3)
    )
    assert code == 0, stderr
    assert "SCRAM-SHA-512" in stderr and "streamproc.librdkafka" in stderr
    assert RAW_LIBRDKAFKA.search(stderr) is None
    for command in (["--help"], ["produce", "--help"], ["consume", "--help"], ["lag", "--help"]):
        code, stdout, stderr, _ = streamproc(outputs, secured_broker.client_env, *command)
        assert code == 0, stderr
        assert "Usage" in stdout


# -- a wrong password ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["produce", "-", "--no-progress"],
        ["consume", "--sink", "null", "--metrics-port", "0"],
        ["lag"],
        ["topics", "describe"],
    ],
    ids=lambda command: " ".join(command[:2]),
)
def test_wrong_password_is_one_clear_error_within_seconds(
    secured_broker: SecuredBroker, outputs: Outputs, command: list[str]
) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    env = {**secured_broker.client_env, "STREAMPROC_SASL_PASSWORD": wrong}
    code, stdout, stderr, seconds = streamproc(
        outputs, env, *command, stdin=chunk_lines(1), timeout=120
    )
    assert code == 1, stderr
    assert seconds < REFUSED_WITHIN_S, f"took {seconds:.1f}s"
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "refused the authentication" in errors[0], errors[0]
    assert "invalid credentials" in errors[0], errors[0]
    assert "SCRAM-SHA-512" in errors[0] and "cannot reach" not in errors[0], errors[0]
    assert RAW_LIBRDKAFKA.search(stderr + stdout) is None
    assert "Traceback" not in stderr
    outputs.assert_no_secret(wrong)


def test_wrong_password_stops_the_api_consumer_within_seconds(
    secured_broker: SecuredBroker, outputs: Outputs
) -> None:
    """No start-up check in the API: the refusal itself stops the loop (exit code 1)."""
    wrong = f"wrong-{uuid.uuid4().hex}"
    env = {**secured_broker.client_env, "STREAMPROC_SASL_PASSWORD": wrong}
    settings = settings_from(env, ConsumerSettings, session_timeout_ms=10_000)
    outputs.add(repr(settings), str(settings))
    consumer = PriorityConsumer(settings, open_sink("null"))
    started = time.monotonic()
    threaded = ThreadedConsumer(consumer).start()
    wait_until(lambda: not threaded.alive, timeout_s=REFUSED_WITHIN_S, what="the consumer to stop")
    assert threaded.exit_code == 1
    assert time.monotonic() - started < REFUSED_WITHIN_S
    outputs.assert_no_secret(wrong)


# -- missing ACLs ----------------------------------------------------------------------------------


def test_no_read_on_the_bulk_topic_stops_the_consumer_naming_it(
    secured_broker: SecuredBroker, outputs: Outputs
) -> None:
    ensure_topics(secured_broker.client_env)
    env = secured_broker.limited_env
    _, bulk = lane_topics(env)
    started = time.monotonic()
    code, stderr = wait_for(start_consumer(env, "--sink", "null"), outputs, timeout_s=60)
    assert code == 1, stderr
    assert time.monotonic() - started < 30
    assert "not authorized" in stderr and "streamproc-limited" in stderr, stderr
    assert f"refused consuming {bulk}" in stderr and "Topic authorization failed" in stderr
    admin_env = secured_broker.admin_env
    assert set(committed(admin_env, env["STREAMPROC_GROUP_ID"], bulk).values()) == {-1001}


def test_no_access_to_the_group_stops_the_consumer_and_lag_says_so(
    secured_broker: SecuredBroker, outputs: Outputs
) -> None:
    ensure_topics(secured_broker.client_env)
    env = secured_broker.limited_env
    group = secured_broker.client_env["STREAMPROC_GROUP_ID"]  # granted to the client user only
    code, stderr = wait_for(
        start_consumer(env, "--sink", "null", "--group", group), outputs, timeout_s=60
    )
    assert code == 1, stderr
    assert f"in group {group!r}" in stderr and "Group authorization failed" in stderr, stderr
    code, _, stderr, _ = streamproc(outputs, env, "lag", "--group", group)
    assert code == 1
    assert (
        f"error: not authorized: user 'streamproc-limited' was refused describing group {group!r}"
        in stderr
    )
    assert "does not exist" not in stderr


# -- a refused dead-letter write -------------------------------------------------------------------


def test_refused_dead_letter_stops_without_committing_past_the_message(
    secured_broker: SecuredBroker, outputs: Outputs
) -> None:
    env = secured_broker.client_env
    ensure_topics(env)
    realtime, _ = lane_topics(env)
    dead_letters = f"{realtime}.dlq"
    group = env["STREAMPROC_GROUP_ID"]
    admin_env = secured_broker.admin_env
    admin = admin_of(admin_env)
    deny = AclBinding(
        ResourceType.TOPIC, dead_letters, ResourcePatternType.LITERAL,
        f"User:{env['STREAMPROC_SASL_USERNAME']}", "*", AclOperation.WRITE, AclPermissionType.DENY,
    )  # fmt: skip
    admin.create_acls([deny])[deny].result(timeout=30)
    try:
        # On partition 0: good chunks, one undecodable value, good chunks.
        settings = settings_from(env, ProducerSettings)
        raw = Producer(settings.to_librdkafka())
        with ChunkProducer(settings) as producer:
            for index in range(5):
                producer.produce(Chunk(chunk_html=f"<p>{index}</p>", tracking_id=f"ok-{index}"))
        poison_key = f"poison-{uuid.uuid4().hex}".encode()
        delivered: list[Any] = []
        raw.produce(realtime, b"\x00not avro", poison_key, partition=0,
                    on_delivery=lambda err, msg: delivered.append((err, msg)))  # fmt: skip
        raw.flush(30)
        assert delivered and delivered[0][0] is None
        poison_offset = delivered[0][1].offset()
        with ChunkProducer(settings) as producer:
            for index in range(5):
                producer.produce(Chunk(chunk_html=f"<p>{index}</p>", tracking_id=f"after-{index}"))

        code, stderr = wait_for(start_consumer(env, "--sink", "null"), outputs, timeout_s=90)
        assert code == 1, stderr
        assert f"dead letter of {realtime}[0]@{poison_offset}" in stderr, stderr
        assert "authorization failed" in stderr.lower()
        assert committed(admin_env, group, realtime)[0] == poison_offset  # not past the message
    finally:
        allow_again = AclBindingFilter(
            ResourceType.TOPIC, dead_letters, ResourcePatternType.LITERAL,
            deny.principal, "*", AclOperation.WRITE, AclPermissionType.DENY,
        )  # fmt: skip
        admin.delete_acls([allow_again])[allow_again].result(timeout=30)

    # Allowed again: the same message is parked this time, and the group moves past it.
    consumer = start_consumer(env, "--sink", "null")
    try:
        ends = high_watermarks(env, realtime)
        wait_until(
            lambda: committed(admin_env, group, realtime) == ends,
            timeout_s=60,
            what="the group to commit past the parked message",
        )
    finally:
        code, stderr = terminate(consumer, outputs)
    assert code == 0, stderr
    parked = [m for m in read_all(secured_broker.admin_env, dead_letters) if m.key() == poison_key]
    assert len(parked) == 1


def test_exception_messages_of_the_api_carry_no_password(
    secured_broker: SecuredBroker, outputs: Outputs
) -> None:
    """The settings' repr, str and validation errors, and a refused admin call's exception."""
    env = secured_broker.client_env
    settings = settings_from(env, KafkaSettings)
    outputs.add(repr(settings), str(settings), json.dumps(settings.model_dump(mode="json")))
    with pytest.raises(ValueError) as invalid:
        settings_from(env, KafkaSettings, sasl_mechanism=None)
    outputs.add(str(invalid.value), repr(invalid.value))
    limited = settings_from(secured_broker.limited_env, KafkaSettings)
    with pytest.raises(StreamprocError) as refused:
        from streamproc.lag import group_exists

        group_exists(
            AdminClient(limited.admin_config()),
            env["STREAMPROC_GROUP_ID"],
            "x",
            client_config=limited.admin_config(),
        )
    outputs.add(str(refused.value), repr(refused.value))
    assert "Group authorization failed" in str(refused.value)
