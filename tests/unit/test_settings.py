"""Settings: environment, validation, and the one place they become librdkafka configuration."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from pydantic import SecretStr, ValidationError

from streamproc.deliverable import STATISTICS_INTERVAL_MS
from streamproc.errors import (
    ConfigError,
    RetriableHandlerError,
    SinkUnavailableError,
    permanent_reasons,
)
from streamproc.flow import FlowSettings
from streamproc.lanes import BULK, REALTIME
from streamproc.settings import (
    ConsumerSettings,
    KafkaSettings,
    ProducerSettings,
    parse_bootstrap,
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No STREAMPROC_* variable of the calling shell leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("STREAMPROC_"):
            monkeypatch.delenv(name)
    yield


HOSTILE_EXTRAS: dict[str, str | int | float | bool] = {
    "enable.idempotence": False,
    "acks": "1",
    "enable.auto.offset.store": True,
    "enable.auto.commit": False,
    "group.id": "someone-else",
    "bootstrap.servers": "evil:9092",
    "linger.ms": 50,
    "statistics.interval.ms": 1000,
}


def test_producer_safety_keys_win_over_extras() -> None:
    settings = ProducerSettings(bootstrap_servers="b:9092", librdkafka_extra=HOSTILE_EXTRAS)
    conf = settings.to_librdkafka()
    assert conf["enable.idempotence"] is True
    assert conf["acks"] == "all"
    assert conf["bootstrap.servers"] == "b:9092"
    # Extras may tune what is not a safety key (here they replace the linger field).
    assert conf["linger.ms"] == 50
    assert conf["statistics.interval.ms"] == 1000


def test_producer_defaults_are_tuned_for_bulk() -> None:
    conf = ProducerSettings().to_librdkafka()
    assert conf["partitioner"] == "murmur2_random", "keys partition as Java's client does"
    assert conf["compression.type"] == "lz4"
    assert conf["linger.ms"] == 5.0
    assert conf["enable.idempotence"] is True
    assert conf["acks"] == "all"
    assert conf["security.protocol"] == "plaintext"
    assert not any(key.startswith("sasl.") for key in conf)


def test_consumer_safety_keys_win_over_extras() -> None:
    settings = ConsumerSettings(
        bootstrap_servers="b:9092", group_id="mine", librdkafka_extra=HOSTILE_EXTRAS
    )
    conf = settings.to_librdkafka()
    assert conf["enable.auto.offset.store"] is False
    assert conf["enable.auto.commit"] is True
    assert conf["group.id"] == "mine"
    assert conf["bootstrap.servers"] == "b:9092"
    assert conf["statistics.interval.ms"] == 1000
    callbacks = settings.to_librdkafka(error_cb=print, on_commit=lambda err, parts: None)
    assert callbacks["error_cb"] is print
    assert callable(callbacks["on_commit"])
    assert "error_cb" not in conf


def test_dead_letter_producer_is_idempotent_whatever_the_extras() -> None:
    conf = ConsumerSettings(librdkafka_extra=HOSTILE_EXTRAS).dead_letter_producer_config()
    assert conf["enable.idempotence"] is True
    assert conf["acks"] == "all"
    assert conf["client.id"] == "streamproc-dlq"


def test_admin_config_keeps_connection_over_extras() -> None:
    conf = KafkaSettings(bootstrap_servers="b:9092", librdkafka_extra=HOSTILE_EXTRAS).admin_config()
    assert conf["bootstrap.servers"] == "b:9092"
    assert conf["statistics.interval.ms"] == 1000


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMPROC_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("STREAMPROC_TOPIC_PREFIX", "tenant7")
    monkeypatch.setenv("STREAMPROC_LINGER_MS", "20")
    monkeypatch.setenv("STREAMPROC_COMPRESSION_TYPE", "zstd")
    monkeypatch.setenv("STREAMPROC_LIBRDKAFKA_EXTRA", '{"statistics.interval.ms": 500}')
    monkeypatch.setenv("STREAMPROC_SASL_PASSWORD", "from-env")
    settings = ProducerSettings()
    assert settings.bootstrap_servers == "k1:9092,k2:9092"
    assert settings.topology.topics == ("tenant7.realtime", "tenant7.bulk")
    assert settings.linger_ms == 20
    assert settings.compression_type == "zstd"
    assert settings.librdkafka_extra == {"statistics.interval.ms": 500}
    assert settings.sasl_password == SecretStr("from-env")
    # Explicit arguments beat the environment.
    assert ProducerSettings(topic_prefix="explicit").topic_prefix == "explicit"


def test_environment_feeds_consumer_and_flow_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMPROC_GROUP_ID", "indexers")
    monkeypatch.setenv("STREAMPROC_PAUSE_LAG", "250")
    monkeypatch.setenv("STREAMPROC_RESUME_LAG", "10")
    monkeypatch.setenv("STREAMPROC_ERROR_ACTIONS", '{"undecodable": "stop"}')
    settings = ConsumerSettings()
    assert settings.group_id == "indexers"
    assert (settings.pause_lag, settings.resume_lag) == (250, 10)
    assert settings.error_actions == {"undecodable": "stop"}


def test_retry_is_an_action_for_retriable_reasons_only() -> None:
    settings = ConsumerSettings(
        error_actions={"sink_unavailable": "retry", "handler_retriable": "retry", "mine": "retry"}
    )
    assert settings.action_for(SinkUnavailableError("down")) == "retry"
    assert settings.action_for(RetriableHandlerError("slow")) == "retry"
    for permanent in ("invalid", "handler_error", "undecodable"):
        with pytest.raises(ValidationError, match=f"retriable reasons only.*not {permanent}"):
            ConsumerSettings(error_actions={permanent: "retry"})
    assert {"invalid", "handler_error", "undecodable", "unknown_schema"} <= permanent_reasons()
    assert not {"handler_retriable", "sink_unavailable"} & permanent_reasons()


def test_invalid_environment_value_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMPROC_COMPRESSION_TYPE", "brotli")
    with pytest.raises(ValidationError, match="compression_type"):
        ProducerSettings()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"security_protocol": "SASL_SSL"}, "sasl_mechanism is required with SASL_SSL"),
        ({"security_protocol": "SASL_PLAINTEXT"}, "sasl_mechanism is required"),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"},
            "sasl_username and sasl_password are required with PLAIN",
        ),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_username": "u",
            },
            "sasl_username and sasl_password are required with SCRAM-SHA-512",
        ),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"}, "sasl_mechanism"),
        ({"security_protocol": "TLS"}, "security_protocol"),
    ],
)
def test_sasl_validation(values: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        KafkaSettings.model_validate(values)


def test_sasl_settings_reach_librdkafka_and_the_password_stays_hidden() -> None:
    settings = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="svc",
        sasl_password=SecretStr("hunter2"),
        ssl_ca_location="/etc/ca.pem",
    )
    conf = settings.connection()
    assert conf["security.protocol"] == "sasl_ssl"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-256"
    assert conf["sasl.username"] == "svc"
    assert conf["sasl.password"] == "hunter2"
    assert conf["ssl.ca.location"] == "/etc/ca.pem"
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.model_dump())
    # OAUTHBEARER needs no username or password.
    KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER")


def test_settings_are_frozen_and_strict() -> None:
    settings = ProducerSettings()
    with pytest.raises(ValidationError):
        settings.linger_ms = 1
    with pytest.raises(ValidationError, match="linger"):
        ProducerSettings.model_validate({"lingerms": 1})
    with pytest.raises(ValidationError, match="linger_ms"):
        ProducerSettings(linger_ms=-1)


def test_flow_settings_round_trip() -> None:
    flow_values = {
        "pause_lag": 5000,
        "resume_lag": 100,
        "pause_delay_s": 2.5,
        "max_pause_s": 30.0,
        "starvation_slice_s": 1.5,
        "min_bulk_share": 0.1,
        "min_bulk_share_window_s": 20.0,
    }
    assert set(flow_values) == set(FlowSettings.model_fields), "a flow field is not covered"
    settings = ConsumerSettings.model_validate({**flow_values, "group_id": "g"})
    flow = settings.flow_settings()
    assert type(flow) is FlowSettings
    assert flow == FlowSettings.model_validate(flow_values)
    assert flow.model_dump() == flow_values
    assert ConsumerSettings().flow_settings() == FlowSettings()


@pytest.mark.parametrize(("pause_lag", "resume_lag"), [(10, 10), (10, 11), (1, 5)])
def test_resume_lag_must_be_below_pause_lag(pause_lag: int, resume_lag: int) -> None:
    with pytest.raises(ValidationError, match=r"resume_lag .* must be lower than pause_lag"):
        ConsumerSettings(pause_lag=pause_lag, resume_lag=resume_lag)


def test_resume_lag_from_environment_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMPROC_PAUSE_LAG", "100")
    monkeypatch.setenv("STREAMPROC_RESUME_LAG", "100")
    with pytest.raises(ValidationError, match="resume_lag"):
        ConsumerSettings()


def test_topology_from_settings() -> None:
    settings = KafkaSettings(topic_prefix="p", lanes=("urgent", "normal", "later"))
    assert settings.topology.topics == ("p.urgent", "p.normal", "p.later")
    with pytest.raises(ConfigError):
        KafkaSettings(topic_prefix="").topology  # noqa: B018  # the property raises


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("k:9092", "k:9092"),
        (" a:1 , b:2 ,", "a:1,b:2"),
        ("[::1]:9092", "[::1]:9092"),
    ],
)
def test_parse_bootstrap(value: str, expected: str) -> None:
    assert parse_bootstrap(value) == expected


@pytest.mark.parametrize(
    "value", ["", " , ", "host", "host:", ":9092", "host:port", "host:0", "host:65536", "a:1,b"]
)
def test_parse_bootstrap_rejects(value: str) -> None:
    with pytest.raises(ConfigError):
        parse_bootstrap(value)


def test_concurrency_settings_defaults_and_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = ConsumerSettings()
    assert (defaults.concurrency, defaults.ordering, defaults.max_in_flight) == (1, "key", None)
    assert defaults.in_flight_limit == 2 * defaults.max_batch_messages == 1000
    assert ConsumerSettings(concurrency=32, max_batch_messages=50).in_flight_limit == 128
    assert ConsumerSettings(concurrency=32, max_in_flight=10).in_flight_limit == 10
    monkeypatch.setenv("STREAMPROC_CONCURRENCY", "8")
    monkeypatch.setenv("STREAMPROC_ORDERING", "partition")
    from_env = ConsumerSettings()
    assert (from_env.concurrency, from_env.ordering) == (8, "partition")
    with pytest.raises(ValueError, match="concurrency"):
        ConsumerSettings(concurrency=0)
    with pytest.raises(ValueError, match="ordering"):
        ConsumerSettings(ordering="random")


def test_static_membership_is_off_by_default_and_distinct_per_lane_consumer() -> None:
    assert "group.instance.id" not in ConsumerSettings().to_librdkafka()
    settings = ConsumerSettings(
        group_instance_id="sp-streamproc-7d9f-x2k4",
        librdkafka_extra={"group.instance.id": "from-extras"},
    )
    assert settings.to_librdkafka()["group.instance.id"] == "sp-streamproc-7d9f-x2k4"
    lanes = (REALTIME, BULK)
    per_lane = {lane: settings.to_librdkafka(lane=lane)["group.instance.id"] for lane in lanes}
    assert per_lane == {lane: f"sp-streamproc-7d9f-x2k4-{lane}" for lane in lanes}


@pytest.mark.parametrize("instance_id", ["", "has space", "a/b", "x" * 201])
def test_group_instance_id_must_be_a_legal_kafka_id(instance_id: str) -> None:
    with pytest.raises(ValidationError, match="group_instance_id"):
        ConsumerSettings(group_instance_id=instance_id)


def test_consumer_group_protocol_sends_only_what_that_protocol_accepts() -> None:
    classic = ConsumerSettings().to_librdkafka(lane="realtime")
    assert classic["partition.assignment.strategy"] == "cooperative-sticky"
    assert "session.timeout.ms" in classic
    assert "group.protocol" not in classic
    settings = ConsumerSettings(
        group_protocol="consumer",
        librdkafka_extra={"heartbeat.interval.ms": 500, "session.timeout.ms": 10_000},
    )
    conf = settings.to_librdkafka(lane="realtime")
    assert conf["group.protocol"] == "consumer"
    for key in ("partition.assignment.strategy", "session.timeout.ms", "heartbeat.interval.ms"):
        assert key not in conf
    assert settings.incremental_rebalances
    assert not ConsumerSettings(assignor="roundrobin").incremental_rebalances
    assert ConsumerSettings(assignor="roundrobin", group_protocol="consumer").incremental_rebalances


def test_isolation_level_is_read_committed_with_statistics_for_the_lso() -> None:
    def stats(statistics_json: str) -> None: ...

    conf = ConsumerSettings().to_librdkafka(stats_cb=stats)
    assert conf["isolation.level"] == "read_committed"
    assert conf["statistics.interval.ms"] == STATISTICS_INTERVAL_MS
    assert conf["stats_cb"] is stats
    # A consumer that never polls gets none (its statistics would pile up unread).
    assert "statistics.interval.ms" not in ConsumerSettings().to_librdkafka()
    uncommitted = ConsumerSettings(isolation_level="read_uncommitted")
    conf = uncommitted.to_librdkafka(stats_cb=stats)
    assert conf["isolation.level"] == "read_uncommitted"
    # The LSO does not bound what it reads: statistics only at the client-metrics interval.
    assert conf["statistics.interval.ms"] == int(uncommitted.statistics_interval_s * 1000)
    quiet = ConsumerSettings(isolation_level="read_uncommitted", statistics_interval_s=0)
    assert "stats_cb" not in quiet.to_librdkafka(stats_cb=stats)
    extra = ConsumerSettings(librdkafka_extra={"isolation.level": "read_uncommitted"})
    assert extra.to_librdkafka()["isolation.level"] == "read_committed"  # the setting wins


def test_a_settings_validation_error_does_not_quote_the_password() -> None:
    with pytest.raises(ValueError, match="sasl_mechanism is required") as invalid:
        KafkaSettings(security_protocol="SASL_SSL", sasl_password="never-shown")  # noqa: S106
    assert "never-shown" not in str(invalid.value)
    assert "never-shown" not in repr(invalid.value)
