"""Handlers and built-in sinks: SQLite upsert ordering, JSON lines, null, loading, sink URIs."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.chunk import Chunk
from streamproc.errors import ConfigError
from streamproc.handlers import (
    BatchHandler,
    ChunkRecord,
    JsonlSink,
    MessageContext,
    NullSink,
    SqliteSink,
    as_async_single,
    as_batch,
    as_single,
    is_async,
    load_handler,
    message_context,
    open_sink,
)

LANE_RANKS = {"realtime": 0, "bulk": 1}


def record(
    version: int,
    lane: str,
    *,
    tracking_id: str | None = "doc-1",
    dataset_id: str | None = "ds",
    html: str | None = None,
    offset: int = 0,
) -> ChunkRecord:
    """A chunk whose content tells which (version, lane) wrote it."""
    chunk = Chunk(
        chunk_html=html if html is not None else f"v{version}-{lane}",
        tracking_id=tracking_id,
        dataset_id=dataset_id,
        low_priority=lane == "bulk",
    )
    context = MessageContext(
        lane=lane,
        lane_rank=LANE_RANKS[lane],
        topic=f"chunks.{lane}",
        partition=0,
        offset=offset,
        timestamp_ms=version,
        key=chunk.key.encode(),
    )
    return ChunkRecord(chunk, context)


def stored(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Every row of the sink's table, by (dataset_id, chunk_key)."""
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM chunks").fetchall()
    db.close()
    return {(row["dataset_id"], row["chunk_key"]): dict(row) for row in rows}


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "chunks.sqlite"


@pytest.fixture
def sink(sqlite_path: Path) -> Iterator[SqliteSink]:
    sink = SqliteSink(str(sqlite_path))
    yield sink
    sink.close()


# -- SqliteSink -------------------------------------------------------------------------------


@given(
    offset=st.integers(0, 2**63 - 1),
    key=st.none() | st.binary(max_size=8),
    headers=st.lists(st.tuples(st.text(max_size=5), st.binary(max_size=5)), max_size=3),
)
def test_message_context_builds_what_the_constructor_builds(
    offset: int, key: bytes | None, headers: list[tuple[str, bytes]]
) -> None:
    args = ("bulk", 1, "chunks.bulk", 2, offset, 1_700_000_000_000, key, tuple(headers))
    fast, built = message_context(*args), MessageContext(*args)
    assert fast == built and hash(fast) == hash(built) and repr(fast) == repr(built)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.offset = 0  # type: ignore[misc]  # frozen, like the constructor's


def test_sqlite_newer_version_wins(sink: SqliteSink, sqlite_path: Path) -> None:
    sink.handle_batch([record(100, "realtime")])
    sink.handle_batch([record(200, "realtime", offset=1)])
    sink.handle_batch([record(150, "realtime", offset=2)])
    row = stored(sqlite_path)[("ds", "doc-1")]
    assert (row["version"], row["offset"]) == (200, 1)
    assert json.loads(row["chunk"])["chunk_html"] == "v200-realtime"


@pytest.mark.parametrize("bulk_first", [True, False])
def test_sqlite_stale_bulk_never_overwrites_newer_realtime(
    sink: SqliteSink, sqlite_path: Path, bulk_first: bool
) -> None:
    stale_bulk, newer_realtime = record(100, "bulk"), record(200, "realtime")
    for item in (stale_bulk, newer_realtime) if bulk_first else (newer_realtime, stale_bulk):
        sink.handle_batch([item])
    row = stored(sqlite_path)[("ds", "doc-1")]
    assert (row["version"], row["lane"], row["lane_rank"]) == (200, "realtime", 0)


@pytest.mark.parametrize("bulk_first", [True, False])
def test_sqlite_equal_version_realtime_wins(
    sink: SqliteSink, sqlite_path: Path, bulk_first: bool
) -> None:
    items = [record(100, "bulk"), record(100, "realtime")]
    sink.handle_batch(items if bulk_first else items[::-1])
    row = stored(sqlite_path)[("ds", "doc-1")]
    assert (row["lane"], json.loads(row["chunk"])["chunk_html"]) == ("realtime", "v100-realtime")


def test_sqlite_newer_bulk_replaces_older_realtime(sink: SqliteSink, sqlite_path: Path) -> None:
    sink.handle_batch([record(100, "realtime")])
    sink.handle_batch([record(101, "bulk")])
    assert stored(sqlite_path)[("ds", "doc-1")]["lane"] == "bulk"


def test_sqlite_row_identity(sink: SqliteSink, sqlite_path: Path) -> None:
    keyless = record(1, "bulk", tracking_id=None, html="<p>no id</p>")
    sink.handle_batch(
        [
            record(1, "realtime", dataset_id="a"),
            record(1, "realtime", dataset_id="b"),
            record(1, "realtime", dataset_id=None),
            keyless,
        ]
    )
    rows = stored(sqlite_path)
    assert set(rows) == {("a", "doc-1"), ("b", "doc-1"), ("", "doc-1"), ("ds", keyless.chunk.key)}
    row = rows[("ds", keyless.chunk.key)]
    assert Chunk.model_validate_json(row["chunk"]) == keyless.chunk
    assert (row["topic"], row["partition"], row["offset"]) == ("chunks.bulk", 0, 0)


def test_sqlite_reopens_existing_database(sqlite_path: Path) -> None:
    first = SqliteSink(str(sqlite_path))
    first.handle_batch([record(5, "realtime")])
    first.close()
    second = SqliteSink(str(sqlite_path))
    second.handle_batch([record(4, "bulk")])
    second.close()
    assert stored(sqlite_path)[("ds", "doc-1")]["version"] == 5


deliveries = st.lists(
    st.tuples(st.integers(min_value=0, max_value=4), st.sampled_from(["realtime", "bulk"])),
    min_size=1,
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(items=deliveries, data=st.data())
def test_sqlite_final_row_is_independent_of_order(
    items: list[tuple[int, str]], data: st.DataObject
) -> None:
    """Whatever the order, batching and redeliveries: highest version, realtime on ties."""
    cuts = sorted(data.draw(st.sets(st.integers(min_value=1, max_value=len(items))), label="cuts"))
    batches = [items[start:end] for start, end in zip([0, *cuts], [*cuts, len(items)], strict=True)]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "chunks.sqlite"
        sink = SqliteSink(str(path))
        try:
            for offset, batch in enumerate(batches):
                sink.handle_batch([record(v, lane, offset=offset) for v, lane in batch])
        finally:
            sink.close()
        row = stored(path)[("ds", "doc-1")]
    version, lane = max(items, key=lambda item: (item[0], item[1] == "realtime"))
    assert (row["version"], row["lane"]) == (version, lane)
    assert json.loads(row["chunk"])["chunk_html"] == f"v{version}-{lane}"


# -- JsonlSink and NullSink -------------------------------------------------------------------


def test_jsonl_sink_appends_one_line_per_chunk(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('{"earlier": true}\n', encoding="utf-8")
    sink = JsonlSink(str(path))
    unicode_record = record(7, "bulk", html="<p>caf\u00e9 \U0001f600</p>", offset=3)
    sink.handle_batch([record(6, "realtime"), unicode_record])
    sink.handle_batch([record(8, "realtime", tracking_id=None, html="x")])
    sink.close()

    text = path.read_text(encoding="utf-8")
    assert "caf\u00e9 \U0001f600" in text  # written as UTF-8, not \u escapes
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0] == {"earlier": True}
    assert lines[2] == {
        "lane": "bulk",
        "topic": "chunks.bulk",
        "partition": 0,
        "offset": 3,
        "timestamp_ms": 7,
        "key": "doc-1",
        "chunk": {
            "chunk_html": "<p>caf\u00e9 \U0001f600</p>",
            "tracking_id": "doc-1",
            "dataset_id": "ds",
            "low_priority": True,
        },
    }
    assert [line["timestamp_ms"] for line in lines[1:]] == [6, 7, 8]
    assert Chunk.model_validate(lines[3]["chunk"]).key == lines[3]["key"]


def test_jsonl_sink_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    sink = JsonlSink("-")
    sink.handle_batch([record(1, "realtime")])
    sink.close()  # must not close stdout
    sink.handle_batch([record(2, "realtime")])
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["timestamp_ms"] for line in out] == [1, 2]


def test_null_sink() -> None:
    sink = NullSink()
    assert isinstance(sink, BatchHandler)
    sink.handle_batch([record(1, "realtime")])
    sink.close()


# -- shapes and loading -----------------------------------------------------------------------


def test_as_batch_and_as_single_adapt_both_shapes() -> None:
    seen: list[int] = []

    def single(item: ChunkRecord) -> None:
        seen.append(item.context.timestamp_ms)

    class Batch:
        def handle_batch(self, records: Sequence[ChunkRecord]) -> None:
            seen.append(-len(records))

    as_batch(single)([record(1, "realtime"), record(2, "realtime")])
    as_single(single)(record(3, "realtime"))
    as_batch(Batch())([record(4, "realtime")] * 3)
    as_single(Batch())(record(5, "realtime"))
    assert seen == [1, 2, 3, -3, -1]


HANDLER_MODULE = """
CALLS = []


def handle(record):
    CALLS.append(record)


class Collector:
    def __init__(self):
        self.batches = []

    def handle_batch(self, records):
        self.batches.append(list(records))


class Holder:
    @staticmethod
    def nested(record):
        CALLS.append(("nested", record))


NOT_CALLABLE = 42


class NeedsArguments:
    def __init__(self, required):
        self.required = required
"""


@pytest.fixture
def handler_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Name of a fresh importable module holding handlers of every shape."""
    name = f"streamproc_test_handlers_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(HANDLER_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_load_handler_function(handler_module: str) -> None:
    handler = load_handler(f"{handler_module}:handle")
    assert callable(handler) and not isinstance(handler, BatchHandler)
    item = record(1, "realtime")
    as_single(handler)(item)
    module = __import__(handler_module)
    calls = module.CALLS
    assert calls == [item]


def test_load_handler_class_is_instantiated(handler_module: str) -> None:
    handler = load_handler(f"{handler_module}:Collector")
    assert isinstance(handler, BatchHandler)
    handler.handle_batch([record(1, "realtime")])
    assert len(handler.batches) == 1  # type: ignore[attr-defined]  # the user's own class


def test_load_handler_dotted_attribute(handler_module: str) -> None:
    handler = load_handler(f"{handler_module}:Holder.nested")
    assert callable(handler)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon_here", "must look like"),
        (":handle", "must look like"),
        ("{module}:", "must look like"),
        ("streamproc_no_such_module_xyz:handle", "cannot import"),
        ("{module}:missing", "has no attribute"),
        ("{module}:Holder.missing", "has no attribute"),
        ("{module}:NOT_CALLABLE", "neither callable"),
    ],
)
def test_load_handler_bad_specs(handler_module: str, spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_handler(spec.format(module=handler_module))


def test_load_handler_class_needing_arguments_is_a_config_error(handler_module: str) -> None:
    with pytest.raises(ConfigError):
        load_handler(f"{handler_module}:NeedsArguments")


def test_load_handler_broken_module_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"streamproc_test_broken_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text("def handle(record:\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError):
        load_handler(f"{name}:handle")


# -- open_sink --------------------------------------------------------------------------------


def test_open_sink_uris(tmp_path: Path) -> None:
    sqlite_sink = open_sink(f"sqlite:{tmp_path / 'db.sqlite'}")
    assert isinstance(sqlite_sink, SqliteSink)
    sqlite_sink.close()
    assert (tmp_path / "db.sqlite").exists()

    jsonl_sink = open_sink(f"jsonl:{tmp_path / 'out.jsonl'}")
    assert isinstance(jsonl_sink, JsonlSink)
    jsonl_sink.close()
    assert (tmp_path / "out.jsonl").exists()

    stdout_sink = open_sink("jsonl:-")
    assert isinstance(stdout_sink, JsonlSink)
    stdout_sink.close()

    assert isinstance(open_sink("null"), NullSink)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("sqlite:", "needs a path"),
        ("jsonl:", "needs a path"),
        ("null:somewhere", "unknown sink"),
        ("kafka:topic", "unknown sink"),
        ("", "unknown sink"),
        ("/tmp/file.sqlite", "unknown sink"),
    ],
)
def test_open_sink_bad_uris(uri: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        open_sink(uri)


def test_async_handlers_are_recognised_in_either_shape() -> None:
    seen: list[str] = []

    async def one(item: ChunkRecord) -> None:
        seen.append(item.chunk.chunk_html or "")

    class Batch:
        async def handle_batch(self, records: Sequence[ChunkRecord]) -> None:
            seen.extend(r.chunk.chunk_html or "" for r in records)

    class Callable_:
        async def __call__(self, item: ChunkRecord) -> None:
            seen.append("call")

    def sync(item: ChunkRecord) -> None:
        return None

    assert is_async(one) and is_async(Batch()) and is_async(Callable_())
    assert not is_async(sync) and not is_async(SqliteSink(":memory:"))
    asyncio.run(as_async_single(one)(record(1, "realtime")))
    asyncio.run(as_async_single(Batch())(record(2, "bulk")))
    asyncio.run(as_async_single(Callable_())(record(3, "bulk")))
    assert seen == ["v1-realtime", "v2-bulk", "call"]


def test_sqlite_sink_takes_writes_from_many_threads(sink: SqliteSink, sqlite_path: Path) -> None:
    records = [record(1, "bulk", tracking_id=f"doc-{n}", offset=n) for n in range(200)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda r: sink.handle_batch([r]), records))
    assert len(stored(sqlite_path)) == 200
