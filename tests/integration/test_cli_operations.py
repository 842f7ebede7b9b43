"""What an operator meets first, through the real ``streamproc`` command (a child process).

* A metrics port in use: one clear line naming the port and the option, exit code 2;
  ``--metrics-port 0`` binds a free port and logs which.
* No broker at the bootstrap address: every command that talks to Kafka stops within seconds
  with one error naming the servers and the cause, and no raw librdkafka line on stderr.
* librdkafka's log lines come out as Python log records (JSON with ``--log-format json``), and
  a SASL password given in the settings appears in no line of output.
* ``streamproc lag --output json`` against the real broker.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from streamproc.chunk import Chunk
from streamproc.producer import ChunkProducer
from streamproc.settings import KafkaSettings, ProducerSettings
from streamproc.topics import TopicAdmin

# A librdkafka line written raw to stderr: %<level>|<time>|<facility>|<client>: ...
RAW_LIBRDKAFKA = re.compile(r"^%\d\|", re.MULTILINE)
# "A few seconds": the check waits 5 s; the rest is interpreter start-up on a busy machine.
UNREACHABLE_WITHIN_S = 15.0


def streamproc(
    *args: str, env: dict[str, str] | None = None, stdin: str = "", timeout: float = 60
) -> tuple[int, str, str, float]:
    """Run ``python -m streamproc ARGS``; return (exit code, stdout, stderr, seconds)."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "streamproc", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
    )
    return result.returncode, result.stdout, result.stderr, time.monotonic() - started


@contextmanager
def taken_port() -> Iterator[int]:
    """A port another process (this one) listens on."""
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))  # noqa: S104  # where streamproc binds by default
        sock.listen()
        yield int(sock.getsockname()[1])


@contextmanager
def nothing_listening() -> Iterator[str]:
    """A loopback address where nothing listens: bound (so no one else takes it), not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def create_topics(bootstrap: str, prefix: str, partitions: int = 2) -> None:
    settings = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=prefix)
    TopicAdmin(AdminClient(settings.admin_config()), settings.topology).create(
        partitions=partitions
    )


# -- the metrics port ---------------------------------------------------------------------------


def test_consume_on_a_taken_metrics_port_says_which_and_how_to_change_it(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    with taken_port() as port:
        code, _, stderr, _ = streamproc(
            "consume", "-b", kafka_bootstrap, "--topic-prefix", topic_prefix, "--sink", "null",
            "--metrics-port", str(port),
        )  # fmt: skip
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert f"metrics port {port} is already in use" in lines[0]
    assert "--metrics-port" in lines[0] and "STREAMPROC_METRICS_PORT" in lines[0]
    assert "Traceback" not in stderr


def test_produce_on_a_taken_metrics_port_exits_2(kafka_bootstrap: str, topic_prefix: str) -> None:
    with taken_port() as port:
        code, _, stderr, _ = streamproc(
            "produce", "-", "--no-progress", "-b", kafka_bootstrap, "--topic-prefix",
            topic_prefix, "--metrics-port", str(port),
        )  # fmt: skip
    assert code == 2, stderr
    assert f"metrics port {port} is already in use" in stderr
    assert "Traceback" not in stderr


def test_consume_with_metrics_port_0_binds_a_free_port_and_logs_it(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=1)
    process = subprocess.Popen(
        [
            sys.executable, "-m", "streamproc", "consume", "-b", kafka_bootstrap,
            "--topic-prefix", topic_prefix, "--group", f"{topic_prefix}-group", "--sink", "null",
            "--metrics-port", "0", "--log-format", "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        first = json.loads(process.stderr.readline())
        match = re.fullmatch(
            r"metrics on port (\d+) \(/metrics, /healthz, /readyz\)", first["message"]
        )
        assert match, first
        port = int(match.group(1))
        assert port != 0
        deadline = time.monotonic() + 60
        status = 0
        while status != 200 and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(  # loopback
                    f"http://127.0.0.1:{port}/readyz", timeout=2
                ) as response:
                    status = response.status
            except (urllib.error.URLError, OSError):
                time.sleep(0.25)
        assert status == 200
    finally:
        process.terminate()
        _, rest = process.communicate(timeout=60)
    assert process.returncode == 0, rest
    for line in rest.splitlines():
        json.loads(line)  # every line of the run is a JSON object


# -- an unreachable broker ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["produce", "-", "--no-progress"],
        ["consume", "--sink", "null", "--metrics-port", "0"],
        ["lag"],
        ["topics", "create"],
        ["topics", "describe"],
    ],
    ids=lambda command: " ".join(command[:2]),
)
def test_unreachable_broker_fails_within_seconds_naming_servers_and_cause(
    command: list[str], tmp_path: Path
) -> None:
    chunk = json.dumps({"chunk_html": "<p>x</p>", "tracking_id": "x-1"})
    with nothing_listening() as address:
        code, stdout, stderr, seconds = streamproc(
            *command, "-b", address, stdin=chunk + "\n", timeout=120
        )
    assert code == 1, stderr
    assert seconds < UNREACHABLE_WITHIN_S, f"took {seconds:.1f}s"
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert f"cannot reach Kafka at {address}" in errors[0]
    assert "Connection refused" in errors[0]
    assert RAW_LIBRDKAFKA.search(stderr + stdout) is None, stderr
    assert "Traceback" not in stderr


# -- librdkafka's logs and secrets --------------------------------------------------------------


SECRET = "pa55-w0rd-n3ver-logged"  # noqa: S105  # a test value, the one to look for


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_sasl_password_never_appears_in_any_output(kafka_bootstrap: str, log_format: str) -> None:
    """SASL against the broker's PLAINTEXT listener fails; librdkafka logs everything it does
    (``debug=all``, configuration included) and the password must still never show."""
    code, stdout, stderr, _ = streamproc(
        "topics", "describe", "--log-level", "DEBUG", "--log-format", log_format,
        env={
            "STREAMPROC_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "STREAMPROC_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "STREAMPROC_SASL_MECHANISM": "PLAIN",
            "STREAMPROC_SASL_USERNAME": "svc",
            "STREAMPROC_SASL_PASSWORD": SECRET,
            "STREAMPROC_LIBRDKAFKA_EXTRA": json.dumps({"debug": "all"}),
        },
        timeout=120,
    )  # fmt: skip
    assert code == 1, stderr
    assert SECRET not in stdout + stderr
    assert RAW_LIBRDKAFKA.search(stderr) is None
    assert "streamproc.librdkafka" in stderr  # librdkafka's lines came through Python logging
    if log_format == "json":  # every line, the error included, is a JSON object
        lines = [json.loads(line) for line in stderr.splitlines()]
        # SASL against a broker that speaks none: a refusal, not an unreachable broker.
        assert lines[-1]["level"] == "ERROR", lines[-1]
        message = lines[-1]["message"]
        assert "refused the authentication" in message or "cannot reach Kafka" in message, message


# -- lag as JSON ----------------------------------------------------------------------------------


def test_lag_output_json_reads_the_group(kafka_bootstrap: str, topic_prefix: str) -> None:
    create_topics(kafka_bootstrap, topic_prefix, partitions=1)
    settings = ProducerSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix)
    with ChunkProducer(settings) as producer:
        for index in range(7):
            producer.produce(Chunk(chunk_html=f"<p>{index}</p>", tracking_id=f"rt-{index}"))
        for index in range(4):
            producer.produce(
                Chunk(chunk_html=f"<p>{index}</p>", tracking_id=f"b-{index}", low_priority=True)
            )
    group = f"{topic_prefix}-group"
    committer = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    committer.commit(
        offsets=[
            TopicPartition(f"{topic_prefix}.realtime", 0, 2),
            TopicPartition(f"{topic_prefix}.bulk", 0, 1),
        ],
        asynchronous=False,
    )
    committer.close()
    code, stdout, stderr, _ = streamproc(
        "lag", "-b", kafka_bootstrap, "--topic-prefix", topic_prefix, "--group", group,
        "--output", "json",
    )  # fmt: skip
    assert code == 0, stderr
    document = json.loads(stdout)
    assert document["group"] == group
    assert document["lanes"]["realtime"] == {"lag_messages": 5, "partitions_unknown": 0}
    assert document["lanes"]["bulk"] == {"lag_messages": 3, "partitions_unknown": 0}
    realtime = next(p for p in document["partitions"] if p["lane"] == "realtime")
    assert realtime == {
        "lane": "realtime",
        "topic": f"{topic_prefix}.realtime",
        "partition": 0,
        "high_watermark": 7,
        "committed": 2,
        "lag_messages": 5,
        "paused": False,
        "owner": None,
    }
    code, stdout, _, _ = streamproc(
        "lag", "-b", kafka_bootstrap, "--topic-prefix", topic_prefix, "--group", group
    )
    assert code == 0 and "realtime: lag 5" in stdout  # the table stays the default
