"""The PostgreSQL sink's pure parts: URI options, the winning row of a batch, error typing.

What it does against a server is in tests/integration/test_postgres_sink.py (a distinct module
name: test modules are imported by basename).
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg_pool import PoolTimeout

from streamproc.errors import ConfigError, HandlerError, SinkUnavailableError
from streamproc.handlers import open_sink
from streamproc.postgres_sink import (
    PostgresSinkOptions,
    Row,
    redacted,
    translate,
    winning_rows,
)


def row(key: str, version: int, lane_rank: int, offset: int = 0, dataset: str = "d") -> Row:
    lane = "realtime" if lane_rank == 0 else "bulk"
    return Row(dataset, key, version, lane, lane_rank, f"p.{lane}", 0, offset, "{}")


# -- options ------------------------------------------------------------------------------------


def test_options_keep_libpq_parameters_and_take_the_sink_ones() -> None:
    options = PostgresSinkOptions.from_uri(
        "postgresql://u:p@127.0.0.1:5433/db?sslmode=disable&table=app.chunks&pool_max=8"
        "&wait_s=2.5&application_name=indexer"
    )
    assert options.conninfo == (
        "postgresql://u:p@127.0.0.1:5433/db?sslmode=disable&application_name=indexer"
    )
    assert (options.table, options.pool_max, options.wait_s) == ("app.chunks", 8, 2.5)


def test_options_defaults() -> None:
    options = PostgresSinkOptions.from_uri("postgres://localhost/db")
    assert options.conninfo == "postgres://localhost/db"
    assert (options.table, options.pool_max, options.wait_s) == ("chunks", 4, 10.0)


@pytest.mark.parametrize(
    "uri",
    [
        "postgresql://h/db?table=chunks;drop",
        "postgresql://h/db?table=a.b.c",
        "postgresql://h/db?table=",
        "postgresql://h/db?pool_max=0",
        "postgresql://h/db?pool_max=many",
        "postgresql://h/db?wait_s=0",
        "postgresql:h/db",
        "mysql://h/db",
    ],
)
def test_options_reject_malformed_uris(uri: str) -> None:
    with pytest.raises(ConfigError):
        PostgresSinkOptions.from_uri(uri)


def test_messages_never_show_the_password() -> None:
    assert (
        redacted("postgresql://u:s3cret@h:5432/db?table=t")
        == "postgresql://u:***@h:5432/db?table=t"
    )
    assert redacted("postgresql://u@h/db") == "postgresql://u@h/db"
    with pytest.raises(ConfigError) as raised:
        PostgresSinkOptions.from_uri("postgresql://u:s3cret@h/db?pool_max=x")
    assert "s3cret" not in str(raised.value)


def test_open_sink_names_postgresql_among_the_sinks() -> None:
    with pytest.raises(ConfigError, match="postgresql://"):
        open_sink("mysql://h/db")


# -- the winning row of a batch -------------------------------------------------------------------


def test_newer_version_wins_whatever_the_order() -> None:
    stale_bulk, newer_realtime = row("a", 100, 1), row("a", 200, 0)
    assert winning_rows([stale_bulk, newer_realtime]) == [newer_realtime]
    assert winning_rows([newer_realtime, stale_bulk]) == [newer_realtime]
    newer_bulk = row("a", 300, 1)
    assert winning_rows([newer_realtime, newer_bulk]) == [newer_bulk]


def test_equal_versions_go_to_the_more_urgent_lane_then_the_later_row() -> None:
    realtime, bulk = row("a", 100, 0), row("a", 100, 1)
    assert winning_rows([realtime, bulk]) == [realtime]
    assert winning_rows([bulk, realtime]) == [realtime]
    first, replay = row("a", 100, 1, offset=5), row("a", 100, 1, offset=9)
    assert winning_rows([first, replay]) == [replay]


def test_one_row_per_identity_sorted_by_dataset_then_key() -> None:
    rows = [row("b", 1, 1), row("a", 1, 1, dataset="e"), row("c", 1, 1), row("a", 2, 1)]
    kept = winning_rows(rows)
    assert [(r.dataset_id, r.chunk_key) for r in kept] == [("d", "a"), ("d", "b"), ("d", "c"),
                                                           ("e", "a")]  # fmt: skip
    assert kept[0].version == 2


def test_row_replaces_matches_the_table_rule() -> None:
    assert row("a", 2, 1).replaces(row("a", 1, 0))
    assert not row("a", 1, 0).replaces(row("a", 2, 1))
    assert row("a", 1, 0).replaces(row("a", 1, 1))
    assert not row("a", 1, 1).replaces(row("a", 1, 0))
    assert row("a", 1, 1).replaces(row("a", 1, 1))


# -- error typing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        psycopg.OperationalError("server closed the connection unexpectedly"),
        pg_errors.AdminShutdown("terminating connection due to administrator command"),
        pg_errors.CannotConnectNow("the database system is starting up"),
        pg_errors.DeadlockDetected("deadlock detected"),
        pg_errors.SerializationFailure("could not serialize access"),
        PoolTimeout("couldn't get a connection after 10.00 sec"),
        psycopg.InterfaceError("the connection is closed"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_connection_and_server_failures_are_retriable(error: psycopg.Error) -> None:
    typed = translate(error)
    assert isinstance(typed, SinkUnavailableError)
    assert typed.retriable
    assert typed.reason == "sink_unavailable"


@pytest.mark.parametrize(
    "error",
    [
        pg_errors.UntranslatableCharacter("unsupported Unicode escape sequence"),
        pg_errors.NumericValueOutOfRange("value out of range"),
        pg_errors.NotNullViolation("null value in column"),
        psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"),
        pg_errors.InsufficientPrivilege("permission denied for table chunks"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_refused_rows_are_permanent(error: psycopg.Error) -> None:
    typed = translate(error)
    assert type(typed) is HandlerError
    assert not typed.retriable
