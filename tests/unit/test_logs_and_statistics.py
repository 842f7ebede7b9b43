"""Log formatting and redaction, and the librdkafka statistics streamproc reads. No broker."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from streamproc.deliverable import STATISTICS_INTERVAL_MS
from streamproc.kafkastats import parse_statistics
from streamproc.logs import LIBRDKAFKA_LOGGER, configure_logging, redact, scrub
from streamproc.metrics import ConsumerMetrics
from streamproc.settings import ConsumerSettings, KafkaSettings


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield stream
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_librdkafka_facility_and_client(captured: io.StringIO) -> None:
    configure_logging("INFO", "json", captured)
    # What confluent-kafka calls on the configured logger for a librdkafka line.
    LIBRDKAFKA_LOGGER.log(
        logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", "Connection refused"
    )
    logging.getLogger("streamproc.test").warning("lag %d", 7)
    first, second = (json.loads(line) for line in captured.getvalue().splitlines())
    assert first["level"] == "ERROR" and first["logger"] == "streamproc.librdkafka"
    assert (first["facility"], first["client"]) == ("FAIL", "rdkafka#producer-1")
    assert first["message"] == "Connection refused"
    assert second["message"] == "lag 7" and "time" in second


def test_secrets_never_reach_a_log_line(captured: io.StringIO) -> None:
    settings = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="svc",
        sasl_password=SecretStr("s3cr3t-Pa55"),
        schema_registry_url="http://reg:r3g-Pa55@registry:8081",
    )
    assert set(settings.secrets()) == {"s3cr3t-Pa55", "r3g-Pa55"}
    redact(settings.secrets())
    for log_format in ("text", "json"):
        configure_logging("DEBUG", log_format, captured)
        logging.getLogger("streamproc.test").error("config %s", settings.connection())
        try:
            raise RuntimeError("sasl.password=s3cr3t-Pa55")
        except RuntimeError:
            logging.getLogger("streamproc.test").exception("failed")
    output = captured.getvalue()
    assert "s3cr3t-Pa55" not in output and "r3g-Pa55" not in output
    assert "***" in output
    assert scrub("https://user:pw@host/x") == "https://user:***@host/x"


def test_every_client_logs_through_python_logging() -> None:
    settings = ConsumerSettings()
    for conf in (
        settings.admin_config(),
        settings.to_librdkafka(lane="realtime"),
        settings.dead_letter_producer_config(),
    ):
        assert conf["logger"] is LIBRDKAFKA_LOGGER


def test_statistics_callback_only_with_an_interval() -> None:
    record = ConsumerMetrics(["realtime"]).librdkafka_statistics("realtime")
    uncommitted: dict[str, Any] = {"isolation_level": "read_uncommitted"}
    conf = ConsumerSettings(statistics_interval_s=2, **uncommitted).to_librdkafka(
        lane="realtime", stats_cb=record
    )
    assert conf["stats_cb"] is record and conf["statistics.interval.ms"] == 2000
    off = ConsumerSettings(statistics_interval_s=0, **uncommitted).to_librdkafka(
        lane="realtime", stats_cb=record
    )
    assert "stats_cb" not in off and "statistics.interval.ms" not in off
    assert "stats_cb" not in ConsumerSettings().to_librdkafka(lane="realtime")
    # Under read_committed the statistics carry the last stable offsets: the shorter interval.
    committed = ConsumerSettings(statistics_interval_s=2).to_librdkafka(stats_cb=record)
    assert committed["statistics.interval.ms"] == STATISTICS_INTERVAL_MS


# A lane consumer's statistics document, trimmed to what is read (librdkafka STATISTICS.md).
STATISTICS = {
    "name": "streamproc-realtime#consumer-1",
    "client_id": "streamproc-realtime",
    "type": "consumer",
    "brokers": {
        "127.0.0.1:9092/bootstrap": {
            "name": "127.0.0.1:9092/bootstrap",
            "nodeid": -1,
            "nodename": "127.0.0.1:9092",
            "source": "configured",
            "rtt": {"avg": 0, "p99": 0},
        },
        "GroupCoordinator": {"name": "GroupCoordinator", "nodeid": -1, "source": "logical"},
        "127.0.0.1:9092/1": {
            "name": "127.0.0.1:9092/1",
            "nodeid": 1,
            "nodename": "127.0.0.1:9092",
            "source": "learned",
            "rtt": {"avg": 1500, "p99": 52000},
        },
    },
    "topics": {
        "chunks.realtime": {
            "topic": "chunks.realtime",
            "partitions": {
                "0": {"partition": 0, "fetchq_cnt": 12, "fetchq_size": 4096},
                "1": {"partition": 1, "fetchq_cnt": 3, "fetchq_size": 1024},
                "-1": {"partition": -1, "fetchq_cnt": 0, "fetchq_size": 0},
            },
        }
    },
}


def test_statistics_sum_the_fetch_queue_and_read_broker_rtt() -> None:
    statistics = parse_statistics(json.dumps(STATISTICS))
    assert (statistics.fetch_queue_messages, statistics.fetch_queue_bytes) == (15, 5120)
    (broker,) = statistics.brokers
    assert (broker.broker, broker.avg_s, broker.p99_s) == ("127.0.0.1:9092", 0.0015, 0.052)


def test_statistics_become_lane_metrics_and_garbage_is_skipped() -> None:
    metrics = ConsumerMetrics(["realtime"])
    record = metrics.librdkafka_statistics("realtime")
    record(json.dumps(STATISTICS))
    record("not json")  # logged and skipped: never raises inside the consumer's poll
    value = metrics.registry.get_sample_value
    assert value("streamproc_fetch_queue_messages", {"lane": "realtime"}) == 15
    assert value("streamproc_fetch_queue_bytes", {"lane": "realtime"}) == 5120
    labels = {"lane": "realtime", "broker": "127.0.0.1:9092"}
    assert value("streamproc_broker_rtt_avg_seconds", labels) == 0.0015
    assert value("streamproc_broker_rtt_p99_seconds", labels) == 0.052
