"""The ``streamproc`` command line. Thin: parse options, call the library, map errors to exit codes.

Every option can also be given through the environment variable named in its ``--help``.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, BinaryIO, cast, get_args

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streamproc import __version__
from streamproc.cliopts import settings_options
from streamproc.deliverable import IsolationLevel
from streamproc.errors import ChunkValidationError, StreamprocError
from streamproc.settings import ConsumerSettings, ErrorAction

app = typer.Typer(
    name="streamproc",
    help=(
        "Priority-aware Kafka stream processor: realtime and bulk lanes, lag-driven flow control."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
topics_app = typer.Typer(help="Create and inspect the lane topics.", no_args_is_help=True)
schema_app = typer.Typer(help="Show the Avro schema of chunks.", no_args_is_help=True)
dlq_app = typer.Typer(
    help="Inspect dead letters (<lane topic>.dlq) and replay them to a lane topic.",
    no_args_is_help=True,
)
app.add_typer(topics_app, name="topics")
app.add_typer(schema_app, name="schema")
app.add_typer(dlq_app, name="dlq")

console = Console(stderr=True)
out = Console()


def check_bootstrap(value: str) -> str:
    """Reject a malformed bootstrap list before any client connects (option callback)."""
    from streamproc.settings import parse_bootstrap

    try:
        return parse_bootstrap(value)
    except StreamprocError as exc:
        raise typer.BadParameter(str(exc)) from exc


BootstrapOption = Annotated[
    str,
    typer.Option(
        "--bootstrap-servers",
        "-b",
        envvar="STREAMPROC_BOOTSTRAP_SERVERS",
        help="Kafka bootstrap servers, host:port[,host:port].",
        callback=check_bootstrap,
    ),
]
PrefixOption = Annotated[
    str,
    typer.Option(
        "--topic-prefix",
        envvar="STREAMPROC_TOPIC_PREFIX",
        help="Lane topics are <prefix>.realtime and <prefix>.bulk.",
    ),
]
RegistryOption = Annotated[
    str | None,
    typer.Option(
        "--schema-registry-url",
        envvar="STREAMPROC_SCHEMA_REGISTRY_URL",
        help="Confluent-API Schema Registry (http://user:pass@host:port) for registry framing.",
    ),
]
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_PREFIX = "chunks"


LogLevelOption = Annotated[
    str, typer.Option(envvar="STREAMPROC_LOG_LEVEL", help="Log level (DEBUG, INFO, WARNING, ...).")
]
LogFormatOption = Annotated[
    str,
    typer.Option(
        envvar="STREAMPROC_LOG_FORMAT",
        help="Log lines as text or json (one object per line, for log shippers); librdkafka's too.",
    ),
]
LOG_FORMATS = ("text", "json")


# Set by setup_logging: errors then go out as JSON log lines too, for log shippers.
_json_logs = False


def fail(message: str, code: int = 1) -> typer.Exit:
    """Report ``message`` as an error (one line, however long) and return the exit to raise."""
    if _json_logs:
        import logging

        logging.getLogger("streamproc.cli").error(message)
    else:
        console.print(
            f"[bold red]error:[/] {message}", soft_wrap=True, markup=True, highlight=False
        )
    return typer.Exit(code)


def setup_logging(level: str, log_format: str, settings: Any = None) -> None:
    """Log streamproc's and librdkafka's lines to stderr; never the settings' secrets."""
    from streamproc.logs import configure_logging, redact

    if log_format not in LOG_FORMATS:
        raise typer.BadParameter(
            f"{log_format!r}: expected text or json", param_hint="--log-format"
        )
    global _json_logs  # one process, one log configuration
    try:
        configure_logging(level, "json" if log_format == "json" else "text")
    except ValueError as exc:  # an unknown level name
        raise typer.BadParameter(str(exc), param_hint="--log-level") from exc
    _json_logs = log_format == "json"
    if settings is not None:
        redact(settings.secrets())


def check_broker(settings: Any) -> None:
    """Stop with one clear error when no broker of the bootstrap list answers within seconds."""
    from streamproc.reachability import check_reachable

    try:
        check_reachable(settings.admin_config())
    except StreamprocError as exc:
        raise fail(str(exc)) from exc


def start_metrics_server(registry: Any, port: int, **probes: Any) -> Any:
    """Serve /metrics (and the probes) on ``port`` (0: a free one); log the port it got.

    A port in use is a configuration error (exit code 2) that names the way out.
    """
    import logging

    from streamproc.errors import MetricsPortInUseError
    from streamproc.metrics import MetricsServer

    try:
        server = MetricsServer(registry, port=port, **probes).start()
    except MetricsPortInUseError as exc:
        raise fail(
            f"metrics port {port} is already in use (another streamproc on this host?):"
            " choose another with --metrics-port (STREAMPROC_METRICS_PORT), or 0 for a free one",
            2,
        ) from exc
    logging.getLogger("streamproc.cli").info(
        "metrics on port %d (/metrics, /healthz, /readyz)", server.port
    )
    return server


def version_callback(value: bool) -> None:
    if value:
        out.print(f"streamproc {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool,
        typer.Option("--version", callback=version_callback, is_eager=True, help="Print version."),
    ] = False,
) -> None:
    """Priority-aware Kafka stream processor."""


# -- topics -----------------------------------------------------------------------------------


@topics_app.command("create")
def topics_create(
    bootstrap_servers: BootstrapOption = DEFAULT_BOOTSTRAP,
    topic_prefix: PrefixOption = DEFAULT_PREFIX,
    partitions: Annotated[
        int,
        typer.Option(min=1, envvar="STREAMPROC_PARTITIONS", help="Partitions per lane topic."),
    ] = 6,
    replication_factor: Annotated[
        int,
        typer.Option(min=1, envvar="STREAMPROC_REPLICATION_FACTOR", help="Replicas per partition."),
    ] = 1,
    retention_ms: Annotated[
        int | None,
        typer.Option(help="retention.ms of the lane topics (default: broker's)."),
    ] = None,
    dlq_retention_ms: Annotated[
        int | None,
        typer.Option(help="retention.ms of the dead-letter topics (default: broker's)."),
    ] = None,
    log_level: LogLevelOption = "WARNING",
    log_format: LogFormatOption = "text",
) -> None:
    """Create the lane topics and their .dlq topics (idempotent), then check them."""
    admin = _topic_admin(bootstrap_servers, topic_prefix, log_level, log_format)
    try:
        created = admin.create(
            partitions=partitions,
            replication_factor=replication_factor,
            retention_ms=retention_ms,
            dlq_retention_ms=dlq_retention_ms,
        )
    except StreamprocError as exc:
        raise fail(str(exc)) from exc
    for name in created:
        console.print(f"created [bold]{name}[/]")
    _print_topics(admin.describe())


@topics_app.command("describe")
def topics_describe(
    bootstrap_servers: BootstrapOption = DEFAULT_BOOTSTRAP,
    topic_prefix: PrefixOption = DEFAULT_PREFIX,
    log_level: LogLevelOption = "WARNING",
    log_format: LogFormatOption = "text",
) -> None:
    """Show partitions and replication of the lane topics; exit 1 if a lane topic is missing."""
    admin = _topic_admin(bootstrap_servers, topic_prefix, log_level, log_format)
    infos = admin.describe()
    _print_topics(infos)
    try:
        admin.check()
    except StreamprocError as exc:
        raise fail(str(exc)) from exc


def _topic_admin(bootstrap_servers: str, topic_prefix: str, log_level: str, log_format: str) -> Any:
    from confluent_kafka.admin import AdminClient

    from streamproc.settings import KafkaSettings
    from streamproc.topics import TopicAdmin

    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix)
    setup_logging(log_level, log_format, settings)
    check_broker(settings)
    return TopicAdmin(AdminClient(settings.admin_config()), settings.topology)


def _print_topics(infos: list[Any]) -> None:
    table = Table("topic", "exists", "partitions", "replication")
    for info in infos:
        table.add_row(
            info.name,
            "yes" if info.exists else "no",
            str(info.partitions),
            str(info.replication_factor),
        )
    out.print(table)


# -- schema -----------------------------------------------------------------------------------


@schema_app.command("show")
def schema_show() -> None:
    """Print the current Avro schema of chunks (JSON)."""
    from streamproc.codec import ChunkCodec

    out.print_json(ChunkCodec().schema_json)


@schema_app.command("fingerprint")
def schema_fingerprint() -> None:
    """Print the CRC-64-AVRO fingerprint of the schema (hex, in single-object wire order)."""
    from streamproc.codec import ChunkCodec

    out.print(ChunkCodec().fingerprint_hex)


# -- produce ----------------------------------------------------------------------------------


@app.command()
def produce(
    source: Annotated[
        str, typer.Argument(help="JSON lines or a JSON array of chunk payloads; '-' for stdin.")
    ] = "-",
    bootstrap_servers: BootstrapOption = DEFAULT_BOOTSTRAP,
    topic_prefix: PrefixOption = DEFAULT_PREFIX,
    dataset_id: Annotated[
        str | None,
        typer.Option(envvar="STREAMPROC_DATASET_ID", help="dataset_id for chunks without one."),
    ] = None,
    low_priority: Annotated[
        bool, typer.Option("--low-priority", help="Send every chunk to the bulk lane.")
    ] = False,
    rejects: Annotated[
        Path | None,
        typer.Option(help="Write rejected lines here (verbatim) and exit 0 despite them."),
    ] = None,
    framing: Annotated[
        str, typer.Option(help="Wire framing: single-object or schema-registry.")
    ] = "single-object",
    schema_registry_url: RegistryOption = None,
    auto_register_schema: Annotated[
        bool,
        typer.Option(
            "--auto-register-schema",
            envvar="STREAMPROC_SCHEMA_REGISTRY_AUTO_REGISTER",
            help="Register the chunk schema under each lane subject (schema-registry framing).",
        ),
    ] = False,
    progress: Annotated[
        bool, typer.Option(help="Show a progress bar (off when stderr is not a terminal).")
    ] = True,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            envvar="STREAMPROC_METRICS_PORT",
            min=0,
            max=65535,
            show_default="off",
            help="Serve /metrics (produced messages by lane and outcome) on this port while"
            " producing; 0 binds a free port and logs which.",
        ),
    ] = None,
    log_level: LogLevelOption = "INFO",
    log_format: LogFormatOption = "text",
) -> None:
    """Validate chunk payloads (Trieve ChunkReqPayload JSON accepted) and produce each to its lane.

    SOURCE holds JSON lines (an object, or an array of objects, per line), one JSON array or one
    pretty-printed object. It is streamed: JSON lines are read line by line and a JSON array item
    by item (ijson), so memory stays bounded whatever the input size.

    Invalid lines are reported with their line number (array items: their index) and reason and
    never sent. The exit code is 1 if any line was rejected, unless --rejects keeps them in a
    file. A malformed JSON array stops the reading where it breaks (the items before it are
    sent) and always exits 1; in an array, NaN, Infinity and numbers beyond a 64-bit integer or
    a double count as malformed. A line over 16 MiB is rejected without being read whole.

    On a terminal a progress bar shows the bytes read, chunks per second, chunks sent per lane
    and rejects; otherwise only the summary is printed (a table on stdout, totals on stderr).
    """
    from streamproc.chunk import Chunk, parse_chunk
    from streamproc.jsoninput import BrokenInput, read_records
    from streamproc.metrics import ProducerMetrics
    from streamproc.producer import ChunkProducer
    from streamproc.settings import ProducerSettings

    setup_logging(log_level, log_format)
    try:
        settings = ProducerSettings(
            bootstrap_servers=bootstrap_servers,
            topic_prefix=topic_prefix,
            framing=framing,
            schema_registry_url=schema_registry_url,
            schema_registry_auto_register=auto_register_schema,
        )
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise fail(str(exc), 2) from exc
    setup_logging(log_level, log_format, settings)
    metrics = ProducerMetrics(lanes=[lane.name for lane in settings.topology])
    metrics.describe(topic_prefix=settings.topic_prefix)
    server = None if metrics_port is None else start_metrics_server(metrics.registry, metrics_port)
    try:
        check_broker(settings)
        try:
            producer = ChunkProducer(
                settings,
                on_delivery=lambda d: metrics.delivered(d.lane, ok=d.ok),
                on_resend=metrics.resent,
            )
        except StreamprocError as exc:
            raise fail(str(exc), 2) from exc
    except typer.Exit:
        if server is not None:
            server.stop()
        raise
    bottom = producer.lanes.bottom
    rejected = 0
    broken = False
    rejects_file = rejects.open("w", encoding="utf-8") if rejects else None
    stream: BinaryIO = sys.stdin.buffer if source == "-" else Path(source).open("rb")  # noqa: SIM115
    progress_bar = ProduceProgress(
        producer, stream, enabled=progress and console.is_terminal, console=console
    )

    def reject(line: int, text: str | None, reason: str, chunk: Chunk | None = None) -> None:
        nonlocal rejected
        rejected += 1
        lane = None if chunk is None else bottom if low_priority else producer.lanes.route(chunk)
        metrics.rejected(None if lane is None else lane.name)
        progress_bar.console.print(f"[red]line {line}:[/] {escape(reason)}")
        if rejects_file is not None and text is not None:
            rejects_file.write(text + "\n")

    started = time.monotonic()
    try:
        with progress_bar:
            for record in read_records(stream):
                if isinstance(record, tuple):
                    reject(*record)
                    continue
                if isinstance(record, BrokenInput):
                    broken = True
                    reject(record.line, None, record.reason)
                    continue
                chunk = None
                try:
                    if not isinstance(record.value, dict):
                        raise ChunkValidationError(
                            f"expected a JSON object, got {type(record.value).__name__}"
                        )
                    chunk = parse_chunk(record.value, dataset_id=dataset_id)
                    if low_priority:  # forced to bulk: the payload says so too
                        chunk = chunk.model_copy(update={"low_priority": True})
                    producer.produce(chunk)
                except ChunkValidationError as exc:
                    reject(record.line, record.text, str(exc), chunk)
                    continue
                progress_bar.advance(rejected)
            progress_bar.advance(rejected, force=True)
            producer.close()
    except StreamprocError as exc:
        raise fail(str(exc)) from exc
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
        if rejects_file is not None:
            rejects_file.close()
        if server is not None:
            server.stop()
    seconds = time.monotonic() - started

    table = Table("lane", "topic", "sent", "delivered", "failed", title="produced")
    for lane in producer.lanes:
        counts = producer.stats.lanes[lane.name]
        table.add_row(
            lane.name, lane.topic, str(counts.sent), str(counts.delivered), str(counts.failed)
        )
    out.print(table)
    sent = sum(counts.sent for counts in producer.stats.lanes.values())
    console.print(
        f"{sent:,} chunk(s) sent in {seconds:.1f} s ({sent / seconds if seconds else 0:,.0f}/s)",
        highlight=False,
    )
    resent = sum(counts.resent for counts in producer.stats.lanes.values())
    if resent:
        console.print(
            f"[yellow]{resent} chunk(s) acknowledged without an offset were sent once more "
            "(see resend_unconfirmed in docs/configuration.md)[/]"
        )
    if rejected:
        where = f", kept in {rejects}" if rejects else ""
        console.print(f"[yellow]{rejected} line(s) rejected{where}[/]")
    if broken:
        raise fail("the input is malformed JSON: what follows the reported point was not read")
    if producer.stats.failed:
        raise fail(f"{producer.stats.failed} chunk(s) failed delivery")
    if rejected and rejects is None:
        raise typer.Exit(1)


class ProduceProgress:
    """The progress display of ``produce`` on a terminal: bytes read, rate, lanes, rejects.

    Refreshed at most every :data:`PROGRESS_INTERVAL_S` (checked every 256 chunks), so the
    per-chunk cost is one counter increment. Disabled, it prints nothing.
    """

    def __init__(self, producer: Any, stream: BinaryIO, *, enabled: bool, console: Console) -> None:
        self._producer = producer
        self._stream = stream
        total = file_size(stream)
        self._seekable = total is not None
        self._progress = Progress(
            TextColumn("[bold]producing"),
            BarColumn(bar_width=20),
            DownloadColumn() if total else TextColumn(""),
            TextColumn("{task.fields[rate]:>9} chunks/s"),
            TextColumn("{task.fields[lanes]}"),
            TextColumn("{task.fields[rejected]}"),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled,
        )
        self._task = self._progress.add_task("produce", total=total, rate="", lanes="", rejected="")
        self._enabled = enabled
        self._count = 0
        self._started = time.monotonic()
        self._next_refresh = 0.0

    @property
    def console(self) -> Console:
        return self._progress.console

    def __enter__(self) -> ProduceProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(None, None, None)

    def advance(self, rejected: int, *, force: bool = False) -> None:
        """Count one produced chunk; refresh the display now and then."""
        self._count += 1
        if not self._enabled or (self._count & 0xFF and not force):
            return
        now = time.monotonic()
        if now < self._next_refresh and not force:
            return
        self._next_refresh = now + PROGRESS_INTERVAL_S
        elapsed = now - self._started
        lanes = self._producer.stats.lanes
        self._progress.update(
            self._task,
            completed=self._stream.tell() if self._seekable else 0,
            rate=f"{self._count / elapsed:,.0f}" if elapsed > 0 else "",
            lanes="  ".join(f"{name} {counts.sent:,}" for name, counts in lanes.items()),
            rejected=f"[red]{rejected:,} rejected[/]" if rejected else "0 rejected",
        )


PROGRESS_INTERVAL_S = 0.2


def file_size(stream: BinaryIO) -> int | None:
    """Size of ``stream`` when it is a regular file (a path, or stdin redirected from one)."""
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError):  # no file descriptor (in-memory streams)
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


# -- consume ----------------------------------------------------------------------------------

GroupOption = Annotated[
    str, typer.Option("--group", "-g", envvar="STREAMPROC_GROUP_ID", help="Consumer group id.")
]
MetricsPortOption = Annotated[
    int,
    typer.Option(
        envvar="STREAMPROC_METRICS_PORT",
        min=0,
        max=65535,
        help="Port of /metrics, /healthz and /readyz; 0 binds a free port and logs which.",
    ),
]
MetricsEnabledOption = Annotated[
    bool,
    typer.Option(
        "--metrics/--no-metrics",
        envvar="STREAMPROC_METRICS_ENABLED",
        help="Serve /metrics, /healthz and /readyz (--no-metrics: no endpoint at all).",
    ),
]
DEFAULT_METRICS_PORT = 9464


def _option(help_text: str, env: str, **kwargs: Any) -> Any:
    return typer.Option(envvar=f"STREAMPROC_{env}", help=help_text, **kwargs)


def parse_error_actions(values: list[str]) -> dict[str, str]:
    """Turn ``REASON=ACTION`` items (or comma-separated lists of them) into a mapping."""
    actions: dict[str, str] = {}
    for value in values:
        for item in value.split(","):
            if not item.strip():
                continue
            reason, sep, action = item.partition("=")
            if not sep or action.strip() not in get_args(ErrorAction):
                raise typer.BadParameter(
                    f"{item!r}: expected REASON=dead_letter, REASON=stop or REASON=retry",
                    param_hint="--on-error",
                )
            actions[reason.strip()] = action.strip()
    return actions


# The consumer settings given as options of their own (names, types, help and environment
# variables come from the settings model; see streamproc.cliopts).
CONSUME_SETTINGS = (
    "pause_lag",
    "resume_lag",
    "pause_delay_s",
    "max_pause_s",
    "starvation_slice_s",
    "min_bulk_share",
    "min_bulk_share_window_s",
    "scope",
    "group_protocol",
    "assignor",
    "auto_offset_reset",
    "max_batch_messages",
    "poll_timeout_s",
    "max_retries",
    "concurrency",
    "bulk_turn_ms",
    "ordering",
    "max_in_flight",
    "reserved_workers",
    "isolation_level",
    "transaction_hold_warn_s",
    "drain_timeout_s",
    "close_timeout_s",
)


@app.command()
@settings_options(ConsumerSettings, CONSUME_SETTINGS)
def consume(
    bootstrap_servers: BootstrapOption = DEFAULT_BOOTSTRAP,
    topic_prefix: PrefixOption = DEFAULT_PREFIX,
    group: GroupOption = "streamproc",
    handler: Annotated[
        str | None,
        _option("Handler to call, 'package.module:function' (overrides --sink).", "HANDLER"),
    ] = None,
    sink: Annotated[
        str,
        _option(
            "Built-in sink: sqlite:PATH, postgresql://..., jsonl:PATH, jsonl:- or null.", "SINK"
        ),
    ] = "sqlite:streamproc.sqlite",
    schema_registry_url: RegistryOption = None,
    on_error: Annotated[
        list[str] | None,
        _option(
            "REASON=dead_letter|stop|retry, repeatable (reasons: undecodable, unknown_schema, "
            "invalid, handler_error, sink_unavailable, ...); retry: a retriable reason is retried"
            " past --max-retries until it succeeds or the consumer stops.",
            "ON_ERROR",
        ),
    ] = None,
    metrics_port: MetricsPortOption = DEFAULT_METRICS_PORT,
    metrics_enabled: MetricsEnabledOption = True,
    log_level: LogLevelOption = "INFO",
    log_format: LogFormatOption = "text",
    *,
    settings: dict[str, Any] | None = None,
) -> None:
    """Consume every lane in one group, realtime first, pausing bulk while realtime lags.

    Runs until SIGTERM or SIGINT, then finishes the chunks in hand (up to --drain-timeout-s),
    commits and closes (up to --close-timeout-s, even with the broker gone: what was not
    committed is logged and redelivered) and exits 0. A second signal exits at once with 128 +
    the signal number.
    """
    from streamproc.consumer import PriorityConsumer
    from streamproc.handlers import load_handler, open_sink
    from streamproc.metrics import ConsumerMetrics

    setup_logging(log_level, log_format)
    given: dict[str, Any] = dict(settings or {})
    if schema_registry_url is not None:
        given["schema_registry_url"] = schema_registry_url
    try:
        consumer_settings = ConsumerSettings(
            bootstrap_servers=bootstrap_servers,
            topic_prefix=topic_prefix,
            group_id=group,
            error_actions=parse_error_actions(on_error or []),
            **given,
        )
    except (ValueError, StreamprocError) as exc:  # pydantic's ValidationError is a ValueError
        raise fail(str(exc), 2) from exc
    setup_logging(log_level, log_format, consumer_settings)
    metrics = ConsumerMetrics(lane.name for lane in consumer_settings.topology)
    started: list[PriorityConsumer] = []

    def probe(name: str) -> Any:
        def answer() -> tuple[bool, str]:
            if not started:
                return (name == "healthy", "starting")
            result: tuple[bool, str] = getattr(started[0], name)()
            return result

        return answer

    # The port first: a taken port is a local mistake, reported before anything else.
    server = (
        start_metrics_server(
            metrics.registry, metrics_port, healthy=probe("healthy"), ready=probe("ready")
        )
        if metrics_enabled
        else None
    )
    target: Any = None
    try:
        check_broker(consumer_settings)
        try:
            target = load_handler(handler) if handler else open_sink(sink)
        except (ValueError, StreamprocError) as exc:
            raise fail(str(exc), 2) from exc
        consumer = PriorityConsumer(consumer_settings, target, metrics=metrics)
        started.append(consumer)
        code = consumer.run()
    finally:
        if server is not None:
            server.stop()
        close = getattr(target, "close", None)
        if callable(close):
            close()
    if not consumer.shutdown_complete:
        # A step given up is still blocked in librdkafka on its thread, and a chunk still running
        # holds a worker thread the interpreter joins at exit: exit past both. Nothing is lost:
        # what was not committed is redelivered.
        logging.getLogger("streamproc.cli").warning(
            "exiting with %d past what the shutdown gave up (see above)", code
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise typer.Exit(code)


# -- lag ------------------------------------------------------------------------------------------


@app.command()
def lag(
    bootstrap_servers: BootstrapOption = DEFAULT_BOOTSTRAP,
    topic_prefix: PrefixOption = DEFAULT_PREFIX,
    group: GroupOption = "streamproc",
    isolation_level: Annotated[
        str,
        _option(
            "read_committed (default): lag ends at the last stable offset, as the group's"
            " consumers read; read_uncommitted: at the high watermark.",
            "ISOLATION_LEVEL",
        ),
    ] = "read_committed",
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            envvar="STREAMPROC_LAG_OUTPUT",
            help="table (for people) or json (one document on stdout, for scripts).",
        ),
    ] = "table",
    log_level: LogLevelOption = "WARNING",
    log_format: LogFormatOption = "text",
) -> None:
    """Per-lane, per-partition lag of a group: end offset, committed, lag, paused, owner.

    The end offset is the last stable offset under read_committed (records of a transaction still
    open are not lag yet; it equals the high watermark when none is open), the high watermark under
    read_uncommitted. Exits 1 when the group does not exist, the principal may not describe it, or
    no broker answers.
    """
    from confluent_kafka.admin import AdminClient

    from streamproc.lag import describe_group_lag, group_exists
    from streamproc.settings import KafkaSettings

    if output not in ("table", "json"):
        raise typer.BadParameter(f"{output!r}: expected table or json", param_hint="--output")
    if isolation_level not in ("read_committed", "read_uncommitted"):
        raise fail(
            f"--isolation-level: {isolation_level!r} is not read_committed or read_uncommitted", 2
        )
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix)
    setup_logging(log_level, log_format, settings)
    check_broker(settings)
    admin = AdminClient(settings.admin_config())
    try:
        exists = group_exists(
            admin,
            group,
            settings.sasl_username,
            client_config=settings.admin_config(),
            topics=settings.topology.topics,
        )
    except StreamprocError as exc:  # not authorized to describe it
        raise fail(str(exc)) from exc
    if not exists:
        raise fail(f"consumer group {group!r} does not exist")
    rows = describe_group_lag(
        admin,
        settings.topology,
        group,
        cast(IsolationLevel, isolation_level),
        client_config=settings.admin_config(),
    )
    totals: dict[str, int] = {lane.name: 0 for lane in settings.topology}
    unknown: dict[str, int] = {lane.name: 0 for lane in settings.topology}
    for row in rows:
        totals[row.lane] = totals.get(row.lane, 0) + (row.lag_messages or 0)
        if row.lag_messages is None:
            unknown[row.lane] = unknown.get(row.lane, 0) + 1
    if output == "json":
        document = {
            "group": group,
            "lanes": {
                lane: {"lag_messages": total, "partitions_unknown": unknown[lane]}
                for lane, total in totals.items()
            },
            "partitions": [
                {
                    "lane": row.lane,
                    "topic": row.topic,
                    "partition": row.partition,
                    "high_watermark": row.high_watermark,
                    "committed": row.committed,
                    "lag_messages": row.lag_messages,
                    "paused": row.paused,
                    "owner": row.owner,
                }
                for row in rows
            ],
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return
    table = Table(
        "lane",
        "partition",
        "end offset",
        "committed",
        "lag",
        "paused",
        "owner",
        title=f"group {group}",
    )
    for row in rows:
        table.add_row(
            row.lane,
            str(row.partition),
            str(row.high_watermark),
            "-" if row.committed is None else str(row.committed),
            "?" if row.lag_messages is None else str(row.lag_messages),
            "yes" if row.paused else "no",
            row.owner or "-",
        )
    out.print(table)
    for lane_name, total in totals.items():
        out.print(f"{lane_name}: lag {total}")


# -- dlq ------------------------------------------------------------------------------------------

LaneFilterOption = Annotated[
    list[str] | None,
    typer.Option("--lane", help="Only this lane's dead-letter topic, repeatable (default: all)."),
]
ReasonOption = Annotated[
    list[str] | None,
    typer.Option(
        "--reason",
        help="Only dead letters parked for this reason (undecodable, invalid, handler_error, ...),"
        " repeatable.",
    ),
]
SinceOption = Annotated[
    str | None,
    typer.Option(
        help="Only dead letters parked at or after this time: ISO 8601, a duration ago (30m, 2h,"
        " 7d) or epoch ms."
    ),
]
UntilOption = Annotated[
    str | None,
    typer.Option(help="Only dead letters parked before this time (same forms as --since)."),
]
PartitionOption = Annotated[
    list[int] | None,
    typer.Option(
        "--partition", min=0, help="Only this partition of the dead-letter topic, repeatable."
    ),
]
FromOffsetOption = Annotated[
    int | None,
    typer.Option(
        min=0, help="Only dead letters at this offset of their dead-letter topic or later."
    ),
]
ToOffsetOption = Annotated[
    int | None,
    typer.Option(
        min=0, help="Only dead letters at this offset of their dead-letter topic or earlier."
    ),
]
OutputOption = Annotated[
    str,
    typer.Option(
        "--output", "-o", help="table, or json (one JSON object per line).", case_sensitive=False
    ),
]


@dataclass(frozen=True, slots=True)
class _DlqSelection:
    lanes: list[Any]
    filter: Any
    options: dict[str, object]


def _dlq_selection(
    topic_prefix: str,
    lane: list[str] | None,
    reason: list[str] | None,
    since: str | None,
    until: str | None,
    partition: list[int] | None,
    from_offset: int | None,
    to_offset: int | None,
) -> _DlqSelection:
    import time

    from streamproc.lanes import Lanes
    from streamproc.redrive import DeadLetterFilter, lanes_named, parse_time

    now_ms = int(time.time() * 1000)
    try:
        lanes = lanes_named(Lanes(topic_prefix), lane or [])
        selection = DeadLetterFilter(
            reasons=frozenset(reason or ()),
            since_ms=None if since is None else parse_time(since, now_ms=now_ms),
            until_ms=None if until is None else parse_time(until, now_ms=now_ms),
            partitions=frozenset(partition or ()),
            first_offset=from_offset,
            last_offset=to_offset,
        )
    except StreamprocError as exc:
        raise fail(str(exc), 2) from exc
    options: dict[str, object] = {
        "lanes": sorted(lane or []),
        "reasons": sorted(reason or []),
        "since": since,
        "until": until,
        "partitions": sorted(partition or []),
        "from_offset": from_offset,
        "to_offset": to_offset,
    }
    return _DlqSelection(lanes, selection, options)


def _table_console() -> Console:
    """Wide tables keep whole values when written to a pipe or a file (not to a terminal)."""
    return out if out.is_terminal else Console(width=max(out.width, 240))


def _check_output(output: str) -> str:
    value = output.lower()
    if value not in ("table", "json"):
        raise typer.BadParameter(f"{output!r}: expected table or json", param_hint="--output")
    return value


@dlq_app.command("summary")
def dlq_summary(
    bootstrap_servers: BootstrapOption = DEFAULT_BOOTSTRAP,
    topic_prefix: PrefixOption = DEFAULT_PREFIX,
    lane: LaneFilterOption = None,
    output: OutputOption = "table",
) -> None:
    """Count the dead letters by lane, reason and age (time since they were parked).

    Reads every dead-letter topic from its start to its end; commits nothing.
    """
    import time

    from streamproc.redrive import AGE_BUCKETS, DeadLetterReader, iso_time, summarize
    from streamproc.settings import KafkaSettings

    output = _check_output(output)
    selection = _dlq_selection(topic_prefix, lane, None, None, None, None, None, None)
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix)
    try:
        rows = summarize(
            DeadLetterReader(settings).read(selection.lanes), now_ms=int(time.time() * 1000)
        )
    except StreamprocError as exc:
        raise fail(str(exc)) from exc
    if output == "json":
        for row in rows:
            document = {
                "lane": row.lane,
                "reason": row.reason,
                "count": row.count,
                "by_age": row.by_age,
                "oldest": iso_time(row.oldest_ms),
                "newest": iso_time(row.newest_ms),
            }
            sys.stdout.write(json.dumps(document) + "\n")
        return
    labels = [label for label, _ in AGE_BUCKETS]
    table = Table("lane", "reason", "count", *labels, "oldest", "newest", title="dead letters")
    for row in rows:
        table.add_row(
            row.lane,
            row.reason,
            str(row.count),
            *(str(row.by_age[label]) for label in labels),
            iso_time(row.oldest_ms),
            iso_time(row.newest_ms),
        )
    _table_console().print(table)
    total = sum(row.count for row in rows)
    out.print(f"{total} dead letter(s)")


@dlq_app.command("list")
def dlq_list(
    bootstrap_servers: BootstrapOption = DEFAULT_BOOTSTRAP,
    topic_prefix: PrefixOption = DEFAULT_PREFIX,
    lane: LaneFilterOption = None,
    reason: ReasonOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    partition: PartitionOption = None,
    from_offset: FromOffsetOption = None,
    to_offset: ToOffsetOption = None,
    limit: Annotated[
        int, typer.Option(min=0, help="Show at most this many dead letters (0: all).")
    ] = 100,
    raw: Annotated[
        bool,
        typer.Option(
            "--raw", help="Show the value bytes (hex in the table) instead of the decoded chunk."
        ),
    ] = False,
    output: OutputOption = "table",
    schema_registry_url: RegistryOption = None,
) -> None:
    """List dead letters with their reason headers and the decoded chunk (or the raw bytes).

    With --output json each line is one JSON object: where the dead letter is, when and why it
    was parked, where it came from, its key and headers, the decoded chunk (or the decode
    error) and the value in base64. Commits nothing.
    """
    from streamproc.redrive import DeadLetterReader, bytes_text, iso_time
    from streamproc.registry import registry_codec
    from streamproc.settings import KafkaSettings

    output = _check_output(output)
    selection = _dlq_selection(
        topic_prefix, lane, reason, since, until, partition, from_offset, to_offset
    )
    try:
        settings = KafkaSettings(
            bootstrap_servers=bootstrap_servers,
            topic_prefix=topic_prefix,
            schema_registry_url=schema_registry_url,
        )
        codec, schema_ids = registry_codec(settings.schema_registry(), settings.topology.topics)
    except (ValueError, StreamprocError) as exc:
        raise fail(str(exc), 2) from exc
    table = Table(
        "dead letter",
        "parked",
        "lane",
        "reason",
        "original",
        "key",
        "value" if raw else "chunk",
        "error",
        title="dead letters",
    )
    shown = 0
    try:
        for dead_letter in DeadLetterReader(settings).read(selection.lanes, selection.filter):
            if limit and shown >= limit:
                break
            shown += 1
            chunk: dict[str, Any] | None = None
            decode_error: str | None = None
            if not raw:
                try:
                    if dead_letter.value is None:
                        raise StreamprocError("no value (tombstone)")
                    chunk = codec.decode(dead_letter.value).model_dump(mode="json")
                except StreamprocError as exc:
                    decode_error = f"{type(exc).__name__}: {exc}"
            if output == "json":
                document = dead_letter.to_json(chunk=chunk, decode_error=decode_error)
                sys.stdout.write(json.dumps(document, ensure_ascii=False) + "\n")
                continue
            original = (
                f"{dead_letter.original_topic}[{dead_letter.original_partition}]"
                f"@{dead_letter.original_offset}"
                if dead_letter.original_topic
                else "-"
            )
            if raw:
                shown_value = "-" if dead_letter.value is None else dead_letter.value[:48].hex()
            elif chunk is not None:
                fields = {name: value for name, value in chunk.items() if value is not None}
                shown_value = json.dumps(fields, ensure_ascii=False)[:200]
            else:
                shown_value = decode_error or ""
            table.add_row(
                f"{dead_letter.topic}[{dead_letter.partition}]@{dead_letter.offset}",
                iso_time(dead_letter.parked_ms),
                dead_letter.lane,
                dead_letter.reason,
                original,
                bytes_text(dead_letter.key) or "-",
                shown_value,
                f"{dead_letter.error_class}: {dead_letter.error_message}"[:200],
            )
    except StreamprocError as exc:
        raise fail(str(exc)) from exc
    finally:
        if schema_ids is not None:
            schema_ids.close()
    if output == "table":
        _table_console().print(table)
        more = " (--limit reached)" if limit and shown >= limit else ""
        console.print(f"{shown} dead letter(s) shown{more}")


@dlq_app.command("replay")
def dlq_replay(
    bootstrap_servers: BootstrapOption = DEFAULT_BOOTSTRAP,
    topic_prefix: PrefixOption = DEFAULT_PREFIX,
    lane: LaneFilterOption = None,
    reason: ReasonOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    partition: PartitionOption = None,
    from_offset: FromOffsetOption = None,
    to_offset: ToOffsetOption = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to", help="Produce to this topic instead of each dead letter's original topic."
        ),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option(
            "--group",
            "-g",
            help="Consumer group of the replay, where a rerun resumes (default: one per topic"
            " prefix and selection, printed at the start).",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Count what would be replayed; produce and commit nothing."),
    ] = False,
    keep_timestamp: Annotated[
        bool,
        typer.Option(
            help="Produce with the original timestamp, the chunk's version (a stale replayed copy"
            " then never overwrites a newer one in the sink), unless it has used up half the"
            " target topic's retention.ms: then the current time, so the broker cannot delete the"
            " copy as expired.",
        ),
    ] = True,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Dead letters per produce, flush and commit cycle.")
    ] = 500,
) -> None:
    """Produce dead letters back to their original lane topic (or --to), at least once.

    Key, value, headers and timestamp are the original ones; the parking headers are replaced by
    streamproc.replay.* headers (count, dead-letter and original topic/partition/offset, reason).
    Only the dead letters present at the start are read. Each batch is produced, flushed, then
    committed in the replay's own consumer group: an interrupted replay, run again with the same
    options, resumes after the last committed batch. Exits 1 if a batch could not be delivered.
    """
    from streamproc.redrive import DeadLetterReplayer, ReplayResult, replay_group
    from streamproc.settings import KafkaSettings

    selection = _dlq_selection(
        topic_prefix, lane, reason, since, until, partition, from_offset, to_offset
    )
    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix)
    group_id = group or replay_group(topic_prefix, {**selection.options, "to": to})
    replayer = DeadLetterReplayer(
        settings,
        group=group_id,
        to_topic=to,
        keep_timestamp=keep_timestamp,
        batch_size=batch_size,
    )
    console.print(f"replay group [bold]{group_id}[/]{' (dry run)' if dry_run else ''}")

    def progress(result: ReplayResult) -> None:
        if not dry_run:
            console.print(f"replayed {result.total}, skipped {result.skipped}")

    try:
        result = replayer.run(selection.lanes, selection.filter, dry_run=dry_run, on_batch=progress)
    except StreamprocError as exc:
        raise fail(str(exc)) from exc
    verb = "would replay" if dry_run else "replayed"
    table = Table("target topic", verb, title="dead-letter replay")
    for target, count in sorted(result.replayed.items()):
        table.add_row(target, str(count))
    out.print(table)
    reasons = ", ".join(f"{name} {count}" for name, count in sorted(result.reasons.items()))
    out.print(
        f"{verb} {result.total} dead letter(s){f' ({reasons})' if reasons else ''},"
        f" {result.skipped} not selected"
    )
    if result.restamped:
        out.print(
            f"{result.restamped} produced with the current time: their original timestamp had"
            " used up half the target topic's retention.ms"
        )


# -- demo -----------------------------------------------------------------------------------------


@app.command()
def demo(
    bootstrap_servers: BootstrapOption = DEFAULT_BOOTSTRAP,
    bulk_count: Annotated[int, typer.Option(min=0, help="Bulk backlog size (chunks).")] = 100_000,
    realtime_rate: Annotated[
        float, typer.Option(min=1, help="Steady realtime rate (chunks/s).")
    ] = 200.0,
    realtime_seconds: Annotated[
        float, typer.Option(min=1, help="How long the realtime stream runs (s).")
    ] = 30.0,
    burst_size: Annotated[
        int, typer.Option(min=0, help="Realtime chunks per burst (over the pause threshold).")
    ] = 3_000,
    burst_every_s: Annotated[float, typer.Option(min=1, help="Seconds between bursts.")] = 6.0,
    pause_lag: Annotated[int, typer.Option(min=1, help="Realtime lag that pauses bulk.")] = 1_000,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions per lane topic.")] = 3,
    sqlite_path: Annotated[Path, typer.Option(help="Where the SQLite sink writes.")] = Path(
        ".streamproc/demo.sqlite"
    ),
    sink: Annotated[
        str | None,
        typer.Option(
            help=(
                "Built-in sink instead of the SQLite file: sqlite:PATH, postgresql://..., "
                "jsonl:PATH or null."
            )
        ),
    ] = None,
    log_level: LogLevelOption = "WARNING",
    log_format: LogFormatOption = "text",
) -> None:
    """Run the whole job on a broker: bulk backlog, realtime stream, live lag view, summary.

    Exits 1 if not every produced chunk was handled in time.
    """
    from streamproc.demo import Demo, DemoConfig, summary_lines, summary_table
    from streamproc.settings import KafkaSettings

    setup_logging(log_level, log_format)
    check_broker(KafkaSettings(bootstrap_servers=bootstrap_servers))

    config = DemoConfig(
        bootstrap_servers=bootstrap_servers,
        bulk_count=bulk_count,
        realtime_rate=realtime_rate,
        realtime_seconds=realtime_seconds,
        burst_size=burst_size,
        burst_every_s=burst_every_s,
        pause_lag=pause_lag,
        partitions=partitions,
        sqlite_path=sqlite_path,
        sink=sink,
    )
    try:
        result = Demo(config, out).run()
    except StreamprocError as exc:
        raise fail(str(exc)) from exc
    out.print(summary_table(result))
    for line in summary_lines(result):
        out.print(line)
    if not result.complete:
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    app()
