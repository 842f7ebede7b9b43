"""Configuration: pydantic-settings models, converted to librdkafka keys in exactly one place.

Every field reads the environment with the prefix ``STREAMPROC_`` (``bootstrap_servers`` from
``STREAMPROC_BOOTSTRAP_SERVERS``). Each client model has one ``to_librdkafka()`` that merges the
user's ``librdkafka_extra`` first and streamproc's safety keys last, so a stray extra cannot switch
off idempotence or manual offset storage by accident.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamproc.deliverable import STATISTICS_INTERVAL_MS, IsolationLevel
from streamproc.dispatch import Ordering
from streamproc.errors import ConfigError, permanent_reasons
from streamproc.flow import FlowSettings
from streamproc.lanes import BULK, DEFAULT_PREFIX, REALTIME, Lanes
from streamproc.logs import LIBRDKAFKA_LOGGER
from streamproc.registry import SchemaRegistrySettings

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]
Compression = Literal["none", "gzip", "snappy", "lz4", "zstd"]
Assignor = Literal["cooperative-sticky", "range", "roundrobin"]
GroupProtocol = Literal["classic", "consumer"]

# hide_input_in_errors: a validation error otherwise quotes the whole input, SASL password included.
_ENV = SettingsConfigDict(
    env_prefix="STREAMPROC_",
    frozen=True,
    extra="forbid",
    populate_by_name=True,
    hide_input_in_errors=True,
)


class KafkaSettings(BaseSettings):
    """Connection settings shared by every client."""

    model_config = _ENV

    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Comma-separated host:port list of Kafka brokers."
    )
    topic_prefix: str = Field(
        DEFAULT_PREFIX, description="Lane topics are <prefix>.realtime and <prefix>.bulk."
    )
    lanes: tuple[str, ...] = Field(
        (REALTIME, BULK), description="Lane names from most to least urgent."
    )
    client_id: str = Field("streamproc", description="Client id reported to the brokers.")
    security_protocol: SecurityProtocol = Field("PLAINTEXT", description="Broker protocol.")
    sasl_mechanism: SaslMechanism | None = Field(None, description="SASL mechanism, if any.")
    sasl_username: str | None = Field(None, description="SASL username.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (kept secret).")
    ssl_ca_location: str | None = Field(None, description="CA bundle to verify the brokers.")
    ssl_certificate_location: str | None = Field(None, description="Client certificate (mTLS).")
    ssl_key_location: str | None = Field(None, description="Client private key (mTLS).")
    librdkafka_extra: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Extra librdkafka properties (JSON in the environment); ours win on conflict.",
    )
    schema_registry_url: str | None = Field(
        None,
        description=(
            "Confluent-API Schema Registry URL (credentials as http://user:pass@host); needed to "
            "produce with schema-registry framing and to read registry-framed values."
        ),
    )

    @model_validator(mode="after")
    def _check_sasl(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and self.sasl_mechanism is None:
            raise ValueError(f"sasl_mechanism is required with {self.security_protocol}")
        if self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and not (
            self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                f"sasl_username and sasl_password are required with {self.sasl_mechanism}"
            )
        return self

    def schema_registry(self, *, auto_register: bool = False) -> SchemaRegistrySettings | None:
        """The registry settings, or None when no registry URL is configured."""
        if self.schema_registry_url is None:
            return None
        return SchemaRegistrySettings(
            url=self.schema_registry_url,
            ssl_ca_location=self.ssl_ca_location,
            auto_register=auto_register,
        )

    @property
    def topology(self) -> Lanes:
        """The lanes and their topics."""
        return Lanes(self.topic_prefix, self.lanes)

    def secrets(self) -> list[str]:
        """Values that must never appear in a log line (for :func:`streamproc.logs.redact`)."""
        found = [self.sasl_password.get_secret_value()] if self.sasl_password else []
        if self.schema_registry_url:
            found += [p for p in (urlsplit(self.schema_registry_url).password,) if p]
        return found

    def connection(self) -> dict[str, Any]:
        """librdkafka keys for reaching the cluster (what an AdminClient needs).

        librdkafka logs through :data:`~streamproc.logs.LIBRDKAFKA_LOGGER` (Python logging),
        never raw to stderr.
        """
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol.lower(),
            "logger": LIBRDKAFKA_LOGGER,
        }
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password.get_secret_value() if self.sasl_password else None,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
        }
        conf.update({key: value for key, value in optional.items() if value is not None})
        return conf

    def admin_config(self) -> dict[str, Any]:
        """Configuration for an AdminClient: extras first, connection keys last."""
        return {**self.librdkafka_extra, **self.connection()}


class ProducerSettings(KafkaSettings):
    """Producer tuning. Defaults favour bulk throughput without hurting realtime latency much."""

    linger_ms: float = Field(
        5.0, ge=0, description="How long to wait to fill a batch (librdkafka linger.ms)."
    )
    batch_size: int = Field(
        1_000_000, gt=0, description="Maximum batch size in bytes (librdkafka batch.size)."
    )
    compression_type: Compression = Field("lz4", description="Batch compression codec.")
    queue_buffering_max_messages: int = Field(
        500_000, gt=0, description="Local produce queue capacity before backpressure."
    )
    queue_buffering_max_kbytes: int = Field(
        65_536,
        gt=0,
        description=(
            "Local produce queue size bound in KiB before backpressure"
            " (queue.buffering.max.kbytes): bounds the producer's memory when the brokers are"
            " slower than the input."
        ),
    )
    delivery_timeout_ms: int = Field(
        120_000, gt=0, description="Give up on a message after this long (delivery.timeout.ms)."
    )
    framing: Literal["single-object", "schema-registry"] = Field(
        "single-object", description="Wire framing of produced values."
    )
    max_chunk_bytes: int = Field(
        900_000, gt=0, description="Largest encoded chunk accepted (bytes); larger is rejected."
    )
    schema_registry_auto_register: bool = Field(
        False,
        description="Register the chunk schema under each lane subject on first use (registry).",
    )
    resend_unconfirmed: bool = Field(
        True,
        description=(
            "Send once more a chunk acknowledged without an offset: librdkafka infers such an"
            " ack from a later batch's, which a broker before Apache Kafka 4.5 can make wrong"
            " (KAFKA-15591: a batch refused while a partition changed leader is reported"
            " delivered). At worst a duplicate; off trusts the inference."
        ),
    )

    def to_librdkafka(self) -> dict[str, Any]:
        """The producer configuration. Idempotence and acks=all cannot be overridden.

        Keys are partitioned with murmur2, like Java's default partitioner and the other clients
        of the wire contract, so one key lands on one partition whichever client wrote it.
        """
        return {
            "partitioner": "murmur2_random",
            "linger.ms": self.linger_ms,
            "batch.size": self.batch_size,
            "compression.type": self.compression_type,
            "queue.buffering.max.messages": self.queue_buffering_max_messages,
            "queue.buffering.max.kbytes": self.queue_buffering_max_kbytes,
            "delivery.timeout.ms": self.delivery_timeout_ms,
            **self.librdkafka_extra,
            **self.connection(),
            # Safety last: no duplicates from retries, no loss on leader change.
            "enable.idempotence": True,
            "acks": "all",
        }


def parse_bootstrap(value: str) -> str:
    """Validate a bootstrap list early, with an error that says what is wrong."""
    servers = [item.strip() for item in value.split(",") if item.strip()]
    if not servers:
        raise ConfigError("bootstrap servers must not be empty")
    for server in servers:
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"bootstrap server {server!r} is not host:port")
        if not 0 < int(port) < 65536:
            raise ConfigError(f"bootstrap server {server!r}: port {port} is not in 1..65535")
    return ",".join(servers)


ErrorAction = Literal["dead_letter", "stop", "retry"]

# librdkafka settings of the classic group protocol only: with group.protocol=consumer it refuses
# them (the broker assigns partitions and owns the session timeout).
CLASSIC_ONLY = (
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
)


class ConsumerSettings(KafkaSettings, FlowSettings):
    """The priority consumer: group, polling, flow policy (inherited fields), error policy."""

    model_config = _ENV

    group_id: str = Field("streamproc", description="Consumer group id.")
    assignor: Assignor = Field(
        "cooperative-sticky",
        description=(
            "Partition assignment strategy of the classic protocol; range and roundrobin are eager."
        ),
    )
    group_protocol: GroupProtocol = Field(
        "classic",
        description=(
            "Consumer group protocol: classic, or consumer (KIP-848, Kafka 4.0+ brokers): the"
            " broker assigns partitions incrementally and owns the session timeout; assignor and"
            " session_timeout_ms do not apply."
        ),
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a partition without a committed offset starts."
    )
    isolation_level: IsolationLevel = Field(
        "read_committed",
        description=(
            "read_committed (the default): records of transactions still open or aborted are"
            " never handled, and lag counts up to the last stable offset. read_uncommitted:"
            " every record is handled as soon as it is written, aborted ones included."
        ),
    )
    transaction_hold_warn_s: float = Field(
        60.0,
        gt=0,
        description=(
            "Log a warning when an open transaction has held a partition's last stable offset"
            " for this many seconds, and again every as long while it lasts (read_committed)."
        ),
    )
    session_timeout_ms: int = Field(45_000, gt=0, description="Group session timeout.")
    max_poll_interval_ms: int = Field(300_000, gt=0, description="Longest gap between polls.")
    auto_commit_interval_ms: int = Field(
        1_000, gt=0, description="How often stored offsets are committed."
    )
    max_batch_messages: int = Field(
        500, gt=0, description="Most messages taken per poll (one batch)."
    )
    poll_timeout_s: float = Field(
        0.1, gt=0, description="Longest wait of one poll; also the flow policy's tick."
    )
    gc_young_threshold: int = Field(
        20_000,
        ge=0,
        description=(
            "While the consumer runs, Python's cyclic garbage collector looks at the youngest"
            " objects after this many more allocations than releases (gc.set_threshold's first"
            " value; Python's own is 700). Decoding allocates many short-lived objects per chunk:"
            " at 700 the collector ran every few dozen chunks and took about a quarter of the"
            " consumer's CPU."
            " Raised only, by run() and until it returns (an application calling tick() itself"
            " keeps its own); 0 leaves the interpreter's setting."
        ),
    )
    gil_switch_interval_ms: float = Field(
        2.0,
        ge=0,
        description=(
            "While the consumer runs, how long a thread that computes keeps the GIL while another"
            " waits for it (sys.setswitchinterval; Python's own is 5 ms). The loop thread waits"
            " for realtime without the GIL: when a chunk arrives while a CPU-bound handler runs,"
            " this is how long the loop may wait to take it."
            " Shortened only, by run() and until it returns (an application calling tick() itself"
            " keeps its own); 0 leaves the interpreter's setting."
        ),
    )
    serial_cpu_share: float = Field(
        0.8,
        ge=0,
        description=(
            "With concurrency above 1: once the handler's batches (every lane's) spend more than"
            " this share of their time on the CPU, running them one at a time, each as large as"
            " with one slot, is tried for half a second and kept unless side by side handled"
            " over 1.1 times as many chunks a second; the other way is tried again after 30 s,"
            " doubling up to 10 minutes while the choice holds. Python threads share one GIL: a"
            " handler that only computes gains nothing from threads, only the GIL's hand-overs"
            " between them (see docs/concurrency.md). Above 1: never."
        ),
    )
    prefetch_kbytes: int = Field(
        256,
        gt=0,
        description=(
            "Bound of each lane consumer's local queue of prefetched messages"
            " (queued.max.messages.kbytes). Every lane has a consumer and a queue of its own, so"
            " a bulk backlog never sits ahead of a realtime message."
        ),
    )
    fetch_partition_kbytes: int = Field(
        64,
        gt=0,
        description=(
            "Largest fetch per partition (max.partition.fetch.bytes, in KiB); one fetch response"
            " may overshoot the queue bound by this much per partition."
        ),
    )
    scope: Literal["local", "group", "auto"] = Field(
        "auto",
        description="Whose top-lane lag drives the policy: this member's, the group's, or auto.",
    )
    watermark_refresh_s: float = Field(
        5.0, gt=0, description="How often paused partitions' watermarks are asked of the broker."
    )
    group_refresh_s: float = Field(
        1.0, gt=0, description="How often the group's top-lane lag is measured (group scope)."
    )
    group_lag_slack: int = Field(
        0,
        ge=0,
        description="Group lag forgiven for committed offsets trailing positions (group scope).",
    )
    max_retries: int = Field(3, ge=0, description="Retries of a retriable handler error.")
    retry_backoff_s: float = Field(
        0.2,
        ge=0,
        description=(
            "Ceiling of the first retry backoff; it doubles per retry. Each wait is random between"
            " 0 and the ceiling (full jitter), so workers do not retry in lockstep."
        ),
    )
    retry_backoff_max_s: float = Field(5.0, ge=0, description="Cap of the retry backoff ceiling.")
    error_actions: dict[str, ErrorAction] = Field(
        default_factory=dict,
        description=(
            "Action per error reason (undecodable, unknown_schema, invalid, handler_error, ...): "
            "dead_letter (default), stop, or, for a retriable reason (handler_retriable,"
            " sink_unavailable), retry: keep retrying with capped backoff past max_retries until"
            " it succeeds or the consumer stops (a sink outage parks nothing)."
        ),
    )
    health_max_tick_age_s: float = Field(
        60.0,
        gt=0,
        description=(
            "/healthz fails when the poll loop has not ticked, or a batch has run, for this long."
        ),
    )
    dlq_flush_timeout_s: float = Field(
        30.0, gt=0, description="How long a dead-letter write may take to be acknowledged."
    )
    concurrency: int = Field(
        1,
        ge=1,
        description=(
            "Worker slots: batches handled at once, realtime first. Sync handlers run on a"
            " thread pool of this size, async handlers on one event loop; the poll loop keeps"
            " every lane consumer in the group however long a handler takes."
        ),
    )
    bulk_turn_ms: float = Field(
        5.0,
        gt=0,
        description=(
            "Time budget of one lower-lane turn: a bulk batch is sized (from the measured"
            " handling time per chunk) to end within it. A per-chunk handler's turn yields to a"
            " realtime chunk arriving meanwhile after the chunk it is handling; a batch handler's"
            " turn runs to its end, so there realtime waits at most about this long for a slot."
        ),
    )
    ordering: Ordering = Field(
        "key",
        description=(
            "key (same message key never in flight twice, per partition), partition (one"
            " chunk in flight per partition) or unordered."
        ),
    )
    max_in_flight: int | None = Field(
        None,
        ge=1,
        description=(
            "Chunks taken and not finished per lane: a lane holding this many takes no more,"
            " and has its partitions paused until it is back at half (backpressure) once it"
            " stays full for a second; default 4 x concurrency, at least two batches"
            " (2 x max_batch_messages)."
        ),
    )
    reserved_workers: int | None = Field(
        None,
        ge=0,
        description=(
            "Workers lower lanes leave free while the realtime lane is active (default:"
            " one from 8 workers, concurrency / 16 from 32, none below 8)."
        ),
    )
    statistics_interval_s: float = Field(
        15.0,
        ge=0,
        description=(
            "How often each lane consumer reports librdkafka's statistics (fetch queue depth,"
            " broker round-trip time) to the metrics (statistics.interval.ms); 0 turns them off"
            " (under read_committed they still come every 250 ms: they carry the last stable"
            " offsets)."
        ),
    )
    stuck_fetch_s: float = Field(
        10.0,
        ge=0,
        description=(
            "How long a partition may stay assigned without being fetched, as librdkafka's"
            " statistics tell it, before it is unassigned and assigned again (librdkafka can lose"
            " the committed offset lookup of an assignment while the group coordinator moves);"
            " 0 turns the watch off. Seen at the statistics' pace."
        ),
    )
    revoke_timeout_s: float = Field(
        10.0,
        ge=0,
        description="On revoke, how long to finish taken chunks of the revoked partitions.",
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, description="On shutdown, how long to finish the chunks already taken."
    )
    close_timeout_s: float = Field(
        10.0,
        gt=0,
        description=(
            "On shutdown, after the chunks in hand are finished: how long the synchronous commits"
            " and the closing of the Kafka clients may take altogether. A commit failing because"
            " the group coordinator is away (a broker restarting) is tried again every 0.5 s"
            " within it. With the broker gone they would wait for minutes; what still waits at"
            " this deadline is given up and the process exits, and offsets it could not commit"
            " are redelivered."
        ),
    )
    group_instance_id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9._-]+$",
        description=(
            "Static group membership (group.instance.id), unique per member, e.g. the pod name:"
            " a member restarted within session_timeout_ms gets its partitions back without a"
            " rebalance. Each lane's consumer appends -<lane>. Unset: dynamic membership."
        ),
    )

    @model_validator(mode="after")
    def _check_error_actions(self) -> ConsumerSettings:
        permanent = permanent_reasons()
        refused = sorted(
            reason
            for reason, action in self.error_actions.items()
            if action == "retry" and reason in permanent
        )
        if refused:
            raise ValueError(
                f"error_actions: retry applies to retriable reasons only (handler_retriable,"
                f" sink_unavailable, or a retriable error of your own), not {', '.join(refused)}:"
                f" retrying would fail the same way forever"
            )
        return self

    @property
    def incremental_rebalances(self) -> bool:
        """Partitions move one by one (cooperative-sticky or the consumer protocol), not all at
        once (eager assignors of the classic protocol)."""
        return self.group_protocol == "consumer" or self.assignor == "cooperative-sticky"

    @property
    def in_flight_limit(self) -> int:
        """Backpressure bound per lane: :attr:`max_in_flight` or its default."""
        return self.max_in_flight or max(4 * self.concurrency, 2 * self.max_batch_messages)

    def action_for(self, error: BaseException) -> ErrorAction:
        """What to do with a message that failed with ``error``.

        The most specific reason configured wins: ``undecodable`` covers ``unknown_framing``,
        ``unknown_schema`` and ``incompatible_schema`` unless those are configured themselves.
        Errors that are not streamproc's (raised by a handler) count as ``handler_error``.
        """
        for cls in type(error).__mro__:
            reason = getattr(cls, "reason", None) if cls is not object else "handler_error"
            if isinstance(reason, str) and reason in self.error_actions:
                return self.error_actions[reason]
        return "dead_letter"

    def flow_settings(self) -> FlowSettings:
        """The flow policy part of these settings."""
        return FlowSettings(**{name: getattr(self, name) for name in FlowSettings.model_fields})

    def to_librdkafka(
        self,
        error_cb: Callable[[Any], None] | None = None,
        on_commit: Callable[[Any, Any], None] | None = None,
        *,
        lane: str | None = None,
        stats_cb: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """The consumer configuration. Manual offset storage cannot be overridden.

        Args:
            error_cb: librdkafka's error callback.
            on_commit: librdkafka's commit callback.
            lane: the lane this consumer reads (each lane has its own consumer, a member of
                the group of its own): ``client.id`` and a static ``group.instance.id`` (from
                :attr:`group_instance_id` or ``librdkafka_extra``) get ``-<lane>`` appended,
                since two members of one group must never share an instance id.
            stats_cb: librdkafka's statistics callback (JSON text), called from the consumer's
                poll every :attr:`statistics_interval_s`, or every ``STATISTICS_INTERVAL_MS``
                under read_committed when that is shorter (the statistics carry the last stable
                offsets). Only for consumers that poll: statistics queue up otherwise.
        """
        conf: dict[str, Any] = {
            "auto.offset.reset": self.auto_offset_reset,
            "max.poll.interval.ms": self.max_poll_interval_ms,
            "auto.commit.interval.ms": self.auto_commit_interval_ms,
            "queued.max.messages.kbytes": self.prefetch_kbytes,
            "max.partition.fetch.bytes": self.fetch_partition_kbytes * 1024,
            "queued.min.messages": self.max_batch_messages,
            # librdkafka postpones a partition's next fetch by this much once the queue bound is
            # reached (default 1 s): with a small bound that would starve the consumer.
            "fetch.queue.backoff.ms": 10,
            # A fetch waits this long for data when there is none. Fetches are serial per broker,
            # so a partition resumed meanwhile (flow control, backpressure) only fetches after the
            # pending one returns: librdkafka's default 500 ms stalls a resumed partition.
            "fetch.wait.max.ms": 50,
            **self.librdkafka_extra,
            **self.connection(),
            "group.id": self.group_id,
            "isolation.level": self.isolation_level,
            # Safety last: offsets are stored by streamproc only after a message is handled or
            # parked; librdkafka commits what was stored, on an interval.
            "enable.auto.offset.store": False,
            "enable.auto.commit": True,
            "enable.partition.eof": False,
        }
        if self.group_protocol == "consumer":
            # The broker assigns and times sessions out: librdkafka refuses these settings.
            conf["group.protocol"] = "consumer"
            for key in CLASSIC_ONLY:
                conf.pop(key, None)
        else:
            conf["partition.assignment.strategy"] = self.assignor
            conf["session.timeout.ms"] = self.session_timeout_ms
        if lane is not None:
            conf["client.id"] = f"{conf.get('client.id', self.client_id)}-{lane}"
        if instance := self.group_instance_id or conf.get("group.instance.id"):
            conf["group.instance.id"] = instance if lane is None else f"{instance}-{lane}"
        if error_cb is not None:
            conf["error_cb"] = error_cb
        if on_commit is not None:
            conf["on_commit"] = on_commit
        if stats_cb is not None:
            intervals = []
            if self.statistics_interval_s > 0:
                intervals.append(int(self.statistics_interval_s * 1000))
            if self.isolation_level == "read_committed":
                intervals.append(STATISTICS_INTERVAL_MS)
            if intervals:
                conf["stats_cb"] = stats_cb
                conf["statistics.interval.ms"] = min(intervals)
        return conf

    def dead_letter_producer_config(self) -> dict[str, Any]:
        """An idempotent acks=all producer for dead letters."""
        return {
            "linger.ms": 0,
            **self.librdkafka_extra,
            **self.connection(),
            "client.id": f"{self.client_id}-dlq",
            "enable.idempotence": True,
            "acks": "all",
        }
