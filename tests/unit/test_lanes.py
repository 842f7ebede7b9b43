"""Lane topology and routing."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from streamproc.chunk import Chunk
from streamproc.errors import ConfigError
from streamproc.lanes import BULK, DEFAULT_PREFIX, REALTIME, Lane, Lanes, dead_letter_topic


@dataclass(frozen=True)
class Flagged:
    low_priority: bool


def test_default_topology_is_realtime_then_bulk() -> None:
    lanes = Lanes()
    assert lanes.prefix == DEFAULT_PREFIX == "chunks"
    assert list(lanes) == [
        Lane(REALTIME, 0, "chunks.realtime"),
        Lane(BULK, 1, "chunks.bulk"),
    ]
    assert len(lanes) == 2
    assert lanes.top.name == "realtime"
    assert lanes.bottom.name == "bulk"
    assert lanes.topics == ("chunks.realtime", "chunks.bulk")


def test_dead_letter_topics() -> None:
    lanes = Lanes("orders")
    assert [lane.dlq_topic for lane in lanes] == ["orders.realtime.dlq", "orders.bulk.dlq"]
    assert dead_letter_topic("x.y") == "x.y.dlq"


@pytest.mark.parametrize(
    ("chunk", "lane"),
    [
        (Chunk(chunk_html="a"), "realtime"),
        (Chunk(chunk_html="a", low_priority=False), "realtime"),
        (Chunk(chunk_html="a", low_priority=True), "bulk"),
        (Chunk.model_validate({"chunk_html": "a", "high_priority": True}), "realtime"),
        (Chunk.model_validate({"chunk_html": "a", "high_priority": False}), "realtime"),
    ],
)
def test_route_by_low_priority(chunk: Chunk, lane: str) -> None:
    assert Lanes("p").route(chunk) == Lanes("p").by_name(lane)


def test_route_with_more_lanes_uses_top_and_bottom() -> None:
    lanes = Lanes("p", ("urgent", "normal", "backfill"))
    assert [lane.rank for lane in lanes] == [0, 1, 2]
    assert lanes.route(Flagged(low_priority=False)).topic == "p.urgent"
    assert lanes.route(Flagged(low_priority=True)).topic == "p.backfill"
    assert lanes.by_name("normal") == Lane("normal", 1, "p.normal")


def test_lookup_by_name_and_topic() -> None:
    lanes = Lanes("p")
    assert lanes.by_topic("p.bulk") is lanes.bottom
    assert lanes.by_name("realtime") is lanes.top
    with pytest.raises(ConfigError, match="unknown lane 'fast'"):
        lanes.by_name("fast")
    with pytest.raises(ConfigError, match="belongs to no lane"):
        lanes.by_topic("p.realtime.dlq")


@pytest.mark.parametrize(
    ("prefix", "names", "message"),
    [
        ("", ("realtime", "bulk"), "prefix must not be empty"),
        ("p", ("only",), "at least two lanes"),
        ("p", (), "at least two lanes"),
        ("p", ("a", "b", "a"), "must be unique"),
    ],
)
def test_invalid_topologies(prefix: str, names: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Lanes(prefix, names)


def test_from_names_defaults_and_equality() -> None:
    assert Lanes.from_names("p") == Lanes("p")
    assert Lanes.from_names("p", []) == Lanes("p")
    assert Lanes.from_names("p", ["x", "y"]) == Lanes("p", ("x", "y"))
    assert Lanes("p") != Lanes("q")
    assert hash(Lanes("p")) == hash(Lanes("p"))
