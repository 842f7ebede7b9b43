"""The ``streamproc`` command line. Thin: parse options, call the library, map errors to exit codes.

Every option can also be given through the environment variable named in its ``--help``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TextIO, cast

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streamproc import __version__
from streamproc.deliverable import IsolationLevel
from streamproc.errors import ChunkValidationError, StreamprocError

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
app.add_typer(topics_app, name="topics")
app.add_typer(schema_app, name="schema")

console = Console(stderr=True)
out = Console()

BootstrapOption = Annotated[
    str,
    typer.Option(
        "--bootstrap-servers",
        "-b",
        envvar="STREAMPROC_BOOTSTRAP_SERVERS",
        help="Kafka bootstrap servers, host:port[,host:port].",
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


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` as an error and return the exit to raise."""
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


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
) -> None:
    """Create the lane topics and their .dlq topics (idempotent), then check them."""
    admin = _topic_admin(bootstrap_servers, topic_prefix)
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
) -> None:
    """Show partitions and replication of the lane topics; exit 1 if a lane topic is missing."""
    admin = _topic_admin(bootstrap_servers, topic_prefix)
    infos = admin.describe()
    _print_topics(infos)
    try:
        admin.check()
    except StreamprocError as exc:
        raise fail(str(exc)) from exc


def _topic_admin(bootstrap_servers: str, topic_prefix: str) -> Any:
    from confluent_kafka.admin import AdminClient

    from streamproc.settings import KafkaSettings
    from streamproc.topics import TopicAdmin

    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix)
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


@dataclass(slots=True)
class InputRecord:
    """One JSON object read from the input, with where it came from."""

    line: int
    text: str
    value: object


def read_records(stream: TextIO) -> Iterator[InputRecord | tuple[int, str, str]]:
    """Yield chunk payloads from JSON lines, one JSON array (Trieve batch) or one JSON object.

    A whole input that parses as one JSON array is a batch; its items are numbered from 1. A whole
    input that parses as one object (a pretty-printed Trieve ``ChunkReqPayload``) is one chunk.
    Otherwise each line holds one object or an array of objects, numbered by line. Unparseable
    lines are yielded as ``(line, text, reason)`` so the caller reports them and sends nothing
    for them.
    """
    text = stream.read()
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            if stripped.startswith("[") and not _parses(stripped.split("\n", 1)[0]):
                # A broken array document: one rejection that says where, not one per line.
                yield (exc.lineno, text, f"malformed JSON: {exc.msg} (column {exc.colno})")
                return
            document = None  # JSON lines
        if isinstance(document, list):
            for index, item in enumerate(document, start=1):
                yield InputRecord(index, json.dumps(item), item)
            return
        if isinstance(document, dict):
            first_line = text[: len(text) - len(stripped)].count("\n") + 1
            yield InputRecord(first_line, stripped.strip(), document)
            return
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            yield (number, line, f"malformed JSON: {exc.msg} (column {exc.colno})")
            continue
        if isinstance(value, list):
            for item in value:
                yield InputRecord(number, json.dumps(item), item)
        else:
            yield InputRecord(number, line, value)


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


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
        int,
        typer.Option(
            envvar="STREAMPROC_METRICS_PORT",
            min=0,
            max=65535,
            help="Port of /metrics (produced messages by lane and outcome); 0 disables it.",
        ),
    ] = 0,
) -> None:
    """Validate chunk payloads (Trieve ChunkReqPayload JSON accepted) and produce each to its lane.

    Invalid lines are reported with their line number and reason and never sent. The exit code is
    1 if any line was rejected, unless --rejects keeps them in a file.
    """
    from streamproc.chunk import Chunk, parse_chunk
    from streamproc.metrics import MetricsServer, ProducerMetrics
    from streamproc.producer import ChunkProducer
    from streamproc.settings import ProducerSettings

    try:
        settings = ProducerSettings(
            bootstrap_servers=bootstrap_servers,
            topic_prefix=topic_prefix,
            framing=framing,
            schema_registry_url=schema_registry_url,
            schema_registry_auto_register=auto_register_schema,
        )
        metrics = ProducerMetrics(lanes=[lane.name for lane in settings.topology])
        producer = ChunkProducer(settings, on_delivery=lambda d: metrics.delivered(d.lane, ok=d.ok))
    except (ValueError, StreamprocError) as exc:  # pydantic's ValidationError is a ValueError
        raise fail(str(exc), 2) from exc
    server = MetricsServer(metrics.registry, port=metrics_port).start() if metrics_port else None
    bottom = producer.lanes.bottom
    rejected = 0
    rejects_file = rejects.open("w", encoding="utf-8") if rejects else None
    stream: TextIO = sys.stdin if source == "-" else Path(source).open(encoding="utf-8")  # noqa: SIM115
    show_progress = progress and console.is_terminal
    bar = Progress(
        TextColumn("[bold]producing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>9} chunks/s"),
        TimeElapsedColumn(),
        console=console,
        disable=not show_progress,
    )

    def reject(line: int, text: str, reason: str, chunk: Chunk | None = None) -> None:
        nonlocal rejected
        rejected += 1
        lane = None if chunk is None else bottom if low_priority else producer.lanes.route(chunk)
        metrics.rejected(None if lane is None else lane.name)
        console.print(f"[red]line {line}:[/] {reason}")
        if rejects_file is not None:
            rejects_file.write(text + "\n")

    try:
        with bar:
            task = bar.add_task("produce", total=None, rate="")
            for record in read_records(stream):
                if isinstance(record, tuple):
                    reject(*record)
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
                bar.advance(task)
                speed = bar.tasks[0].speed
                bar.update(task, rate=f"{speed:,.0f}" if speed else "")
            producer.close()
    except StreamprocError as exc:
        raise fail(str(exc)) from exc
    finally:
        if stream is not sys.stdin:
            stream.close()
        if rejects_file is not None:
            rejects_file.close()
        if server is not None:
            server.stop()

    table = Table("lane", "topic", "sent", "delivered", "failed", title="produced")
    for lane in producer.lanes:
        counts = producer.stats.lanes[lane.name]
        table.add_row(
            lane.name, lane.topic, str(counts.sent), str(counts.delivered), str(counts.failed)
        )
    out.print(table)
    if rejected:
        where = f", kept in {rejects}" if rejects else ""
        console.print(f"[yellow]{rejected} line(s) rejected{where}[/]")
    if producer.stats.failed:
        raise fail(f"{producer.stats.failed} chunk(s) failed delivery")
    if rejected and rejects is None:
        raise typer.Exit(1)


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
        help="Port of /metrics, /healthz and /readyz; 0 disables the endpoint.",
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
            if not sep or action.strip() not in ("dead_letter", "stop"):
                raise typer.BadParameter(
                    f"{item!r}: expected REASON=dead_letter or REASON=stop", param_hint="--on-error"
                )
            actions[reason.strip()] = action.strip()
    return actions


@app.command()
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
    pause_lag: Annotated[
        int | None, _option("Pause lower lanes when a lane's lag exceeds this.", "PAUSE_LAG")
    ] = None,
    resume_lag: Annotated[
        int | None,
        _option("Resume when the lane's lag is at most this (0 = drained).", "RESUME_LAG"),
    ] = None,
    pause_delay_s: Annotated[
        float | None,
        _option("Also pause when a lane's delay exceeds this (seconds).", "PAUSE_DELAY_S"),
    ] = None,
    max_pause_s: Annotated[
        float | None,
        _option("Starvation guard: longest continuous pause (seconds).", "MAX_PAUSE_S"),
    ] = None,
    starvation_slice_s: Annotated[
        float | None, _option("How long a starved lane then runs (seconds).", "STARVATION_SLICE_S")
    ] = None,
    min_bulk_share: Annotated[
        float | None,
        _option("Starvation guard: minimum running share of lower lanes.", "MIN_BULK_SHARE"),
    ] = None,
    scope: Annotated[
        str | None, _option("Lag scope driving the policy: local, group or auto.", "SCOPE")
    ] = None,
    assignor: Annotated[
        str | None, _option("cooperative-sticky (default), range or roundrobin.", "ASSIGNOR")
    ] = None,
    auto_offset_reset: Annotated[
        str | None, _option("earliest (default) or latest.", "AUTO_OFFSET_RESET")
    ] = None,
    isolation_level: Annotated[
        str | None,
        _option(
            "read_committed (default: records of open or aborted transactions are never"
            " handled) or read_uncommitted.",
            "ISOLATION_LEVEL",
        ),
    ] = None,
    transaction_hold_warn_s: Annotated[
        float | None,
        _option(
            "Log a partition whose last stable offset an open transaction has held this long"
            " (seconds, default 60).",
            "TRANSACTION_HOLD_WARN_S",
        ),
    ] = None,
    max_batch_messages: Annotated[
        int | None, _option("Most messages taken per poll.", "MAX_BATCH_MESSAGES")
    ] = None,
    poll_timeout_s: Annotated[
        float | None, _option("Longest wait of one poll (seconds).", "POLL_TIMEOUT_S")
    ] = None,
    max_retries: Annotated[
        int | None, _option("Retries of a retriable handler error.", "MAX_RETRIES")
    ] = None,
    concurrency: Annotated[
        int | None,
        _option(
            "Worker slots: chunks handled at once (threads for sync handlers, one event loop for"
            " async def ones), realtime first; every lane consumer is polled on however long a"
            " handler runs.",
            "CONCURRENCY",
            min=1,
        ),
    ] = None,
    bulk_turn_ms: Annotated[
        float | None,
        _option(
            "Time budget of one bulk turn (ms, default 5): a realtime chunk waits for a worker"
            " about this long at most.",
            "BULK_TURN_MS",
            min=0.1,
        ),
    ] = None,
    ordering: Annotated[
        str | None,
        _option(
            "key (default; same message key never twice in flight), partition (one chunk in"
            " flight per partition) or unordered.",
            "ORDERING",
        ),
    ] = None,
    max_in_flight: Annotated[
        int | None,
        _option(
            "Chunks taken but unfinished per lane; a lane still full after a second is paused"
            " until it is back at half (default 4 x concurrency, at least two batches).",
            "MAX_IN_FLIGHT",
            min=1,
        ),
    ] = None,
    reserved_workers: Annotated[
        int | None,
        _option(
            "Workers bulk leaves free while realtime is active (default: concurrency / 8).",
            "RESERVED_WORKERS",
            min=0,
        ),
    ] = None,
    schema_registry_url: RegistryOption = None,
    on_error: Annotated[
        list[str] | None,
        _option(
            "REASON=dead_letter|stop, repeatable (reasons: undecodable, unknown_schema, "
            "invalid, handler_error, sink_unavailable, ...).",
            "ON_ERROR",
        ),
    ] = None,
    metrics_port: MetricsPortOption = DEFAULT_METRICS_PORT,
    log_level: Annotated[str, _option("Log level.", "LOG_LEVEL")] = "INFO",
) -> None:
    """Consume every lane in one group, realtime first, pausing bulk while realtime lags.

    Runs until SIGTERM or SIGINT, then finishes the chunks in hand, commits and exits 0.
    """
    import logging

    from streamproc.consumer import PriorityConsumer
    from streamproc.handlers import load_handler, open_sink
    from streamproc.metrics import MetricsServer
    from streamproc.settings import ConsumerSettings

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    given: dict[str, Any] = {
        "pause_lag": pause_lag,
        "resume_lag": resume_lag,
        "pause_delay_s": pause_delay_s,
        "max_pause_s": max_pause_s,
        "starvation_slice_s": starvation_slice_s,
        "min_bulk_share": min_bulk_share,
        "scope": scope,
        "assignor": assignor,
        "auto_offset_reset": auto_offset_reset,
        "isolation_level": isolation_level,
        "transaction_hold_warn_s": transaction_hold_warn_s,
        "max_batch_messages": max_batch_messages,
        "poll_timeout_s": poll_timeout_s,
        "max_retries": max_retries,
        "concurrency": concurrency,
        "bulk_turn_ms": bulk_turn_ms,
        "ordering": ordering,
        "max_in_flight": max_in_flight,
        "reserved_workers": reserved_workers,
        "schema_registry_url": schema_registry_url,
    }
    try:
        settings = ConsumerSettings(
            bootstrap_servers=bootstrap_servers,
            topic_prefix=topic_prefix,
            group_id=group,
            error_actions=parse_error_actions(on_error or []),
            **{name: value for name, value in given.items() if value is not None},
        )
        target = load_handler(handler) if handler else open_sink(sink)
    except (ValueError, StreamprocError) as exc:  # pydantic's ValidationError is a ValueError
        raise fail(str(exc), 2) from exc
    consumer = PriorityConsumer(settings, target)
    server = None
    if metrics_port:
        server = MetricsServer(
            consumer.metrics.registry,
            port=metrics_port,
            healthy=consumer.healthy,
            ready=consumer.ready,
        ).start()
        console.print(f"metrics on :{server.port}/metrics")
    try:
        code = consumer.run()
    finally:
        if server is not None:
            server.stop()
        close = getattr(target, "close", None)
        if callable(close):
            close()
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
) -> None:
    """Per-lane, per-partition lag of a group: end offset, committed, lag, paused, owner.

    The end offset is the last stable offset under read_committed (records of a transaction still
    open are not lag yet; it equals the high watermark when none is open), the high watermark under
    read_uncommitted. Exits 1 when the group does not exist.
    """
    from confluent_kafka.admin import AdminClient

    from streamproc.lag import describe_group_lag, group_exists
    from streamproc.settings import KafkaSettings

    settings = KafkaSettings(bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix)
    admin = AdminClient(settings.admin_config())
    if not group_exists(admin, group):
        raise fail(f"consumer group {group!r} does not exist")
    if isolation_level not in ("read_committed", "read_uncommitted"):
        raise fail(
            f"--isolation-level: {isolation_level!r} is not read_committed or read_uncommitted", 2
        )
    rows = describe_group_lag(
        admin, settings.topology, group, cast(IsolationLevel, isolation_level)
    )
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
    totals: dict[str, int] = {}
    for row in rows:
        totals[row.lane] = totals.get(row.lane, 0) + (row.lag_messages or 0)
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
    for lane, total in totals.items():
        out.print(f"{lane}: lag {total}")


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
) -> None:
    """Run the whole job on a broker: bulk backlog, realtime stream, live lag view, summary.

    Exits 1 if not every produced chunk was handled in time.
    """
    from streamproc.demo import Demo, DemoConfig, summary_lines, summary_table

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
