"""The PostgreSQL sink: ``postgresql://...``, version-guarded upserts from many consumers at once.

The row model is the SQLite sink's (:class:`~streamproc.handlers.SqliteSink`): one row per
``(dataset_id, chunk_key)`` holding the newest version of the chunk, its lane and Kafka
coordinates, and the chunk itself (as ``jsonb``). What a batch does:

1. Build one row per record; ``chunk_key`` is the chunk's ``tracking_id`` when set, else its
   stable key; the version is the message timestamp (:attr:`MessageContext.timestamp_ms`).
2. Keep, per ``(dataset_id, chunk_key)``, the row that would win in the table
   (:func:`winning_rows`), sorted by key: one statement never touches a row twice, and
   concurrent batches lock rows in the same order, so two consumers writing the same chunks
   cannot deadlock.
3. In one transaction, upsert them with one ``INSERT ... SELECT FROM unnest(...) ON CONFLICT``
   whose update only applies when the incoming version is newer, or equal and from a lane at
   least as urgent. A stale bulk copy never replaces a newer realtime one, whichever is handled
   first, and a replay of the same message rewrites the same values (idempotent).
4. Commit before returning: the consumer stores the offsets only after that.

Errors are typed so the consumer can decide by attribute: a lost connection, a server restart or
shutdown, a pool that cannot hand out a connection in time, a deadlock or serialization failure
raise :class:`~streamproc.errors.SinkUnavailableError` (retriable); a row the server refuses
(a NUL character, a value out of range) raises :class:`~streamproc.errors.HandlerError`
(permanent: the consumer isolates the chunk and dead-letters it).

The table is created when missing (``CREATE TABLE IF NOT EXISTS`` under an advisory lock, so
consumers starting together do not race). An existing table must have the columns of
:data:`COLUMNS`; the sink checks them when it opens.

The URI is libpq's (``postgresql://user:password@host:port/dbname?sslmode=...``) plus the sink's
own query parameters, removed before connecting: ``table`` (default ``chunks``, may be
``schema.table``), ``pool_max`` (connections, default 4), ``wait_s`` (how long a batch waits for
a connection, default 10, which rides out a server restart).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from streamproc.errors import ConfigError, HandlerError, SinkUnavailableError, StreamprocError
from streamproc.handlers import ChunkRecord

try:
    import psycopg
    from psycopg import sql
    from psycopg_pool import ConnectionPool
except ImportError as exc:  # the optional extra is missing
    raise ConfigError(
        "the postgresql sink needs psycopg 3 and psycopg-pool: pip install 'streamproc[postgresql]'"
    ) from exc

__all__ = ["COLUMNS", "PostgresSink", "PostgresSinkOptions", "Row", "redacted", "winning_rows"]

SCHEMES: Final = ("postgresql", "postgres")
DEFAULT_TABLE: Final = "chunks"
DEFAULT_POOL_MAX: Final = 4
DEFAULT_WAIT_S: Final = 10.0
# Keys of the URI's query string that belong to the sink, not to libpq.
SINK_PARAMETERS: Final = ("table", "pool_max", "wait_s")
COLUMNS: Final = (
    "dataset_id",
    "chunk_key",
    "version",
    "lane",
    "lane_rank",
    "topic",
    "partition",
    "offset",
    "chunk",
)
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")

_CREATE = """
    CREATE TABLE IF NOT EXISTS {table} (
        dataset_id  text    NOT NULL,
        chunk_key   text    NOT NULL,
        version     bigint  NOT NULL,
        lane        text    NOT NULL,
        lane_rank   integer NOT NULL,
        topic       text    NOT NULL,
        "partition" integer NOT NULL,
        "offset"    bigint  NOT NULL,
        chunk       jsonb   NOT NULL,
        PRIMARY KEY (dataset_id, chunk_key)
    )
"""
_UPSERT = """
    INSERT INTO {table} AS current
        (dataset_id, chunk_key, version, lane, lane_rank, topic, "partition", "offset", chunk)
    SELECT dataset_id, chunk_key, version, lane, lane_rank, topic, "partition", "offset",
           chunk::jsonb
    FROM unnest(
        %s::text[], %s::text[], %s::bigint[], %s::text[], %s::integer[], %s::text[],
        %s::integer[], %s::bigint[], %s::text[]
    ) AS incoming
        (dataset_id, chunk_key, version, lane, lane_rank, topic, "partition", "offset", chunk)
    ON CONFLICT (dataset_id, chunk_key) DO UPDATE SET
        version = excluded.version, lane = excluded.lane, lane_rank = excluded.lane_rank,
        topic = excluded.topic, "partition" = excluded."partition", "offset" = excluded."offset",
        chunk = excluded.chunk
    WHERE excluded.version > current.version
       OR (excluded.version = current.version AND excluded.lane_rank <= current.lane_rank)
"""


class Row(NamedTuple):
    """One chunk as the sink stores it (the columns of :data:`COLUMNS`, in order)."""

    dataset_id: str
    chunk_key: str
    version: int
    lane: str
    lane_rank: int
    topic: str
    partition: int
    offset: int
    chunk: str

    @classmethod
    def of(cls, record: ChunkRecord) -> Row:
        chunk, context = record.chunk, record.context
        return cls(
            chunk.dataset_id or "",
            chunk.tracking_id or chunk.key,
            context.timestamp_ms,
            context.lane,
            context.lane_rank,
            context.topic,
            context.partition,
            context.offset,
            chunk.model_dump_json(exclude_none=True),
        )

    def replaces(self, other: Row) -> bool:
        """The table's rule: newer version, or same version from a lane at least as urgent."""
        return self.version > other.version or (
            self.version == other.version and self.lane_rank <= other.lane_rank
        )


def winning_rows(rows: Iterable[Row]) -> list[Row]:
    """Per ``(dataset_id, chunk_key)`` the row the table would keep, sorted by that key.

    Rows are taken in order, as if upserted one after the other, so of two equal rows the later
    one wins, as a later upsert would.
    """
    kept: dict[tuple[str, str], Row] = {}
    for row in rows:
        identity = (row.dataset_id, row.chunk_key)
        held = kept.get(identity)
        if held is None or row.replaces(held):
            kept[identity] = row
    return [kept[identity] for identity in sorted(kept)]


@dataclass(frozen=True, slots=True)
class PostgresSinkOptions:
    """The sink's settings, read from its URI.

    Attributes:
        conninfo: The libpq URI without the sink's own parameters.
        table: Table name, ``name`` or ``schema.name``.
        pool_max: Most connections held (batches written at once).
        wait_s: How long a batch waits for a connection before failing as retriable.
    """

    conninfo: str
    table: str = DEFAULT_TABLE
    pool_max: int = DEFAULT_POOL_MAX
    wait_s: float = DEFAULT_WAIT_S

    @classmethod
    def from_uri(cls, uri: str) -> PostgresSinkOptions:
        """Split ``uri`` into libpq's part and the sink's parameters.

        Raises:
            ConfigError: not a ``postgresql://`` URI, or a sink parameter is malformed.
        """
        parts = urlsplit(uri)
        shown = redacted(uri)
        if parts.scheme not in SCHEMES or not uri.startswith(f"{parts.scheme}://"):
            raise ConfigError(f"sink {shown!r}: expected postgresql://[user@]host[:port]/dbname")
        query = parse_qsl(parts.query, keep_blank_values=True)
        ours = {key: value for key, value in query if key in SINK_PARAMETERS}
        libpq = [(key, value) for key, value in query if key not in SINK_PARAMETERS]
        conninfo = urlunsplit(parts._replace(query=urlencode(libpq)))
        table = ours.get("table", DEFAULT_TABLE)
        if not _TABLE_NAME.match(table):
            raise ConfigError(f"sink table {table!r}: expected name or schema.name")
        try:
            pool_max = int(ours.get("pool_max", DEFAULT_POOL_MAX))
            wait_s = float(ours.get("wait_s", DEFAULT_WAIT_S))
        except ValueError as exc:
            raise ConfigError(f"sink {shown!r}: pool_max and wait_s must be numbers") from exc
        if pool_max < 1 or not wait_s > 0:
            raise ConfigError(f"sink {shown!r}: pool_max must be >= 1 and wait_s > 0")
        return cls(conninfo, table, pool_max, wait_s)


def redacted(uri: str) -> str:
    """``uri`` with its password, if any, replaced by ``***`` (for messages and logs)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


class PostgresSink:
    """Upserts chunks into a PostgreSQL table, newest version wins (see the module docstring).

    Thread-safe: concurrent batches (``concurrency`` > 1, or several threads) each take their
    own connection from the pool, up to ``pool_max`` at once.

    Args:
        options: Connection and table settings (:meth:`from_uri` builds them from a URI).

    Raises:
        SinkUnavailableError: the server did not accept a connection within ``wait_s``.
        ConfigError: the table exists without the sink's columns.
    """

    def __init__(self, options: PostgresSinkOptions) -> None:
        self.options = options
        self._table = sql.Identifier(*options.table.split("."))
        self._upsert = sql.SQL(_UPSERT).format(table=self._table)
        self._written = 0
        self._stats_lock = threading.Lock()
        self._pool = ConnectionPool(
            options.conninfo,
            min_size=1,
            max_size=options.pool_max,
            timeout=options.wait_s,
            # A server restart leaves every pooled connection dead: check each one as it is
            # handed out, so a batch after the restart gets a live one instead of failing again.
            check=ConnectionPool.check_connection,
            name="streamproc-sink",
            open=False,
        )
        try:
            with typed_errors(options.table):
                self._pool.open(wait=True, timeout=options.wait_s)
            self._prepare_table()
        except BaseException:
            self._pool.close()
            raise

    @classmethod
    def from_uri(cls, uri: str) -> PostgresSink:
        """Open the sink of a ``postgresql://...`` URI (see the module docstring)."""
        return cls(PostgresSinkOptions.from_uri(uri))

    @property
    def written(self) -> int:
        """Chunks upserted so far (stale copies the version check kept out included)."""
        return self._written

    def handle_batch(self, records: Sequence[ChunkRecord]) -> None:
        """Upsert ``records`` in one transaction; committed when this returns.

        Raises:
            SinkUnavailableError: connection lost, server restarting, no connection in time,
                deadlock or serialization failure: retry.
            HandlerError: the server refused a row (bad data): retrying cannot help.
        """
        if not records:
            return
        rows = winning_rows(Row.of(record) for record in records)
        columns = [list(column) for column in zip(*rows, strict=True)]
        with (
            typed_errors(self.options.table),
            self._pool.connection() as connection,
            connection.transaction(),
        ):
            connection.execute(self._upsert, columns)
        with self._stats_lock:
            self._written += len(records)

    def count(self, topic_prefix: str | None = None) -> int:
        """Rows in the table; only those last written from ``<topic_prefix>.*`` topics if given."""
        query = sql.SQL("SELECT count(*) FROM {table}").format(table=self._table)
        parameters: tuple[str, ...] = ()
        if topic_prefix is not None:
            query += sql.SQL(" WHERE starts_with(topic, %s)")
            parameters = (f"{topic_prefix}.",)
        with typed_errors(self.options.table), self._pool.connection() as connection:
            found = connection.execute(query, parameters).fetchone()
        return int(found[0]) if found else 0

    def close(self) -> None:
        self._pool.close()

    def _prepare_table(self) -> None:
        """Create the table if missing (one creator at a time), then check its columns."""
        create = sql.SQL(_CREATE).format(table=self._table)
        with typed_errors(self.options.table):
            with self._pool.connection() as connection, connection.transaction():
                # CREATE TABLE IF NOT EXISTS still races on the catalog when two sessions run
                # it at once; a transaction-scoped advisory lock makes them take turns.
                connection.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))",
                    (f"streamproc.sink:{self.options.table}",),
                )
                connection.execute(create)
            with self._pool.connection() as connection:
                cursor = connection.execute(
                    sql.SQL("SELECT * FROM {table} LIMIT 0").format(table=self._table)
                )
                present = {column.name for column in cursor.description or ()}
        missing = [name for name in COLUMNS if name not in present]
        if missing:
            raise ConfigError(
                f"table {self.options.table!r} exists without the sink's columns {missing}: "
                "use another table (?table=NAME) or migrate it (docs: PostgreSQL sink)"
            )


@contextmanager
def typed_errors(table: str = DEFAULT_TABLE) -> Iterator[None]:
    """Raise psycopg's exceptions of the block as streamproc's typed errors (:func:`translate`)."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate(exc, table) from exc


def translate(error: psycopg.Error, table: str = DEFAULT_TABLE) -> StreamprocError:
    """The typed error for a psycopg exception.

    ``OperationalError`` covers the connection and server classes (08 connection exception,
    57 operator intervention such as a shutdown or restart, 53 insufficient resources, 40
    deadlock and serialization failures) and the pool's timeout; ``InterfaceError`` a connection
    that is already closed. Both can succeed later. ``DataError`` (22) and ``IntegrityError``
    (23) are about the row itself. Anything else the server says (a missing table, a missing
    privilege) will not go away by retrying either.
    """
    if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
        return SinkUnavailableError(f"postgresql sink: {type(error).__name__}: {error}")
    if isinstance(error, psycopg.DataError | psycopg.IntegrityError):
        return HandlerError(f"postgresql sink refused a row: {type(error).__name__}: {error}")
    return HandlerError(f"postgresql sink, table {table!r}: {type(error).__name__}: {error}")
