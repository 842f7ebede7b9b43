"""The ``streamproc`` command line. Thin: parse options, call the library, map errors to exit codes.

Every option can also be given through the environment variable named in its ``--help``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streamproc import __version__
from streamproc.errors import ChunkValidationError, StreamprocError

app = typer.Typer(
    name="streamproc",
    help="Priority-aware Kafka stream processor: realtime and bulk lanes with lag-driven flow control.",
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
            info.name, "yes" if info.exists else "no", str(info.partitions), str(info.replication_factor)
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
    """Print the CRC-64-AVRO fingerprint of the current schema (hex, as in single-object framing)."""
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
    """Yield chunk payloads from JSON lines or one JSON array (Trieve batch).

    A line may hold one object or an array of objects. Unparseable lines are yielded as
    ``(line, text, reason)`` so the caller reports them and sends nothing for them.
    """
    first = stream.read(1)
    while first and first.isspace():
        first = stream.read(1)
    if first == "[":
        text = first + stream.read()
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            yield (exc.lineno, text, f"malformed JSON: {exc.msg} (column {exc.colno})")
            return
        for index, item in enumerate(items, start=1):
            yield InputRecord(index, json.dumps(item), item)
        return
    for number, raw in enumerate(_prepend(first, stream), start=1):
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


def _prepend(first: str, stream: TextIO) -> Iterator[str]:
    if not first:
        return
    lines = iter(stream)
    yield first + next(lines, "")
    yield from lines


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
            bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix, framing=framing
        )
    except ValueError as exc:
        raise fail(str(exc), 2) from exc
    metrics = ProducerMetrics(lanes=[lane.name for lane in settings.topology])
    producer = ChunkProducer(settings, on_delivery=lambda d: metrics.delivered(d.lane, ok=d.ok))
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
                    chunk = parse_chunk(record.value, dataset_id=dataset_id)  # type: ignore[arg-type]
                    producer.produce(chunk, lane=bottom if low_priority else None)
                except ChunkValidationError as exc:
                    reject(record.line, record.text, str(exc), chunk)
                    continue
                bar.advance(task)
                speed = bar.tasks[0].speed
                bar.update(task, rate=f"{speed:,.0f}" if speed else "")
            producer.flush()
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


def main() -> None:
    """Console-script entry point."""
    app()
