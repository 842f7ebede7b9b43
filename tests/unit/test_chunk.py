"""The chunk model: Trieve payload compatibility, field-naming errors, limits and the Kafka key."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from pydantic import ValidationError

from streamproc.chunk import (
    CHUNK_KEY_NAMESPACE,
    DEFAULT_LIMITS,
    Chunk,
    ChunkLimits,
    FullTextBoost,
    GeoInfo,
    SemanticBoost,
    parse_chunk,
    parse_payload,
)
from streamproc.errors import ChunkValidationError, ConfigError

# A single create-chunk body as Trieve documents it, with every ChunkReqPayload field set.
TRIEVE_SINGLE: dict[str, Any] = {
    "chunk_html": "<p>Some HTML content</p>",
    "semantic_content": "Some HTML content",
    "fulltext_content": "some html content",
    "link": "https://example.com",
    "tag_set": ["tag1", "tag2"],
    "num_value": 12,
    "metadata": {"key1": "value1", "key2": "value2", "nested": {"list": [1, 2.5, None, True]}},
    "tracking_id": "tracking_id",
    "upsert_by_tracking_id": True,
    "group_ids": ["d290f1ee-6c54-4b01-90e6-d701748f0851"],
    "group_tracking_ids": ["group_tracking_id"],
    "time_stamp": "2021-01-01 00:00:00.000",
    "location": {"lat": -34, "lon": 151},
    "image_urls": ["https://example.com/red", "https://example.com/blue"],
    "weight": 0.5,
    "split_avg": False,
    "convert_html_to_text": False,
    "fulltext_boost": {"phrase": "foo", "boost_factor": 5.0},
    "semantic_boost": {"phrase": "flagship", "distance_factor": 0.5},
}

TRIEVE_BATCH: list[dict[str, Any]] = [
    {
        "chunk_html": "<p>Some HTML content</p>",
        "link": "https://example.com",
        "tag_set": ["tag1", "tag2"],
        "metadata": {"key1": "value1", "key2": "value2"},
        "tracking_id": "tracking_id_1",
        "upsert_by_tracking_id": True,
        "group_ids": ["d290f1ee-6c54-4b01-90e6-d701748f0851"],
        "group_tracking_ids": ["group_tracking_id"],
        "time_stamp": "2021-01-01 00:00:00.000",
        "image_urls": ["https://example.com/red", "https://example.com/blue"],
        "location": {"lat": -34, "lon": 151},
        "high_priority": True,
    },
    {
        "chunk_html": "<p>Some more HTML content</p>",
        "link": "https://explain.com",
        "tag_set": ["tag3", "tag4"],
        "metadata": {"key1": "value1", "key2": "value2"},
        "tracking_id": "tracking_id_2",
        "time_stamp": "2021-01-01T00:00:00",
        "image_urls": [],
        "location": {"lat": -34, "lon": 151},
        "weight": 0.5,
    },
]


def as_payload(chunk: Chunk) -> dict[str, Any]:
    """The chunk back as JSON-shaped data, without unset optional fields and the lane flag."""
    return chunk.model_dump(mode="json", exclude_none=True, exclude={"low_priority"})


# -- Trieve payloads validate unchanged ---------------------------------------------------------


def test_trieve_single_payload_validates_unchanged() -> None:
    chunk = parse_chunk(TRIEVE_SINGLE)

    assert as_payload(chunk) == TRIEVE_SINGLE
    assert chunk.low_priority is False
    assert chunk.group_ids == [uuid.UUID("d290f1ee-6c54-4b01-90e6-d701748f0851")]
    assert chunk.location == GeoInfo(lat=-34.0, lon=151.0)
    assert chunk.fulltext_boost == FullTextBoost(phrase="foo", boost_factor=5.0)
    assert chunk.semantic_boost == SemanticBoost(phrase="flagship", distance_factor=0.5)


def test_trieve_single_payload_as_json_text_and_bytes() -> None:
    text = json.dumps(TRIEVE_SINGLE)

    assert parse_chunk(text) == parse_chunk(TRIEVE_SINGLE)
    assert parse_chunk(text.encode()) == parse_chunk(TRIEVE_SINGLE)


def test_trieve_batch_payload_validates_unchanged() -> None:
    chunks = parse_payload(json.dumps(TRIEVE_BATCH))

    assert len(chunks) == 2
    for chunk, payload in zip(chunks, TRIEVE_BATCH, strict=True):
        assert as_payload(chunk) == {k: v for k, v in payload.items() if k != "high_priority"}


def test_parse_payload_accepts_a_single_object_and_python_data() -> None:
    assert parse_payload(json.dumps(TRIEVE_SINGLE)) == [parse_chunk(TRIEVE_SINGLE)]
    assert parse_payload(TRIEVE_SINGLE) == [parse_chunk(TRIEVE_SINGLE)]
    assert parse_payload(TRIEVE_BATCH) == parse_payload(json.dumps(TRIEVE_BATCH))
    assert parse_payload("[]") == []


def test_trieve_aliases_of_the_boosts_are_accepted() -> None:
    chunk = parse_chunk(
        {
            "chunk_html": "x",
            "boost_phrase": {"phrase": "foo", "boost_factor": 2},
            "distance_phrase": {"phrase": "bar", "distance_factor": 0.1},
        }
    )

    assert chunk.fulltext_boost == FullTextBoost(phrase="foo", boost_factor=2.0)
    assert chunk.semantic_boost == SemanticBoost(phrase="bar", distance_factor=0.1)


def test_fields_by_name_in_the_constructor() -> None:
    chunk = Chunk(
        fulltext_boost=FullTextBoost(phrase="p", boost_factor=1.0),
        semantic_boost=SemanticBoost(phrase="q", distance_factor=0.5),
    )

    assert chunk.fulltext_boost is not None
    assert chunk.semantic_boost is not None


# -- priority flags -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "low_priority"),
    [
        ({}, False),
        ({"high_priority": True}, False),
        ({"high_priority": False}, False),
        ({"high_priority": None}, False),
        ({"low_priority": True}, True),
        ({"high_priority": False, "low_priority": True}, True),
    ],
)
def test_priority_flags(flags: dict[str, Any], low_priority: bool) -> None:
    chunk = parse_chunk({"chunk_html": "x", **flags})

    assert chunk.low_priority is low_priority
    assert "high_priority" not in chunk.model_dump()


def test_high_priority_with_low_priority_is_rejected() -> None:
    with pytest.raises(ChunkValidationError, match="high_priority") as caught:
        parse_chunk({"chunk_html": "x", "high_priority": True, "low_priority": True})

    assert caught.value.field == "high_priority"
    assert caught.value.reason == "invalid"


def test_high_priority_must_be_a_boolean() -> None:
    with pytest.raises(ChunkValidationError) as caught:
        parse_chunk('{"high_priority": "yes"}')

    assert caught.value.field == "high_priority"


# -- errors name the field ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"chunk_html": 5}, "chunk_html"),
        ({"tag_set": "not-a-list"}, "tag_set"),
        ({"tag_set": ["a", "b", "c", 4]}, "tag_set.3"),
        ({"num_value": "1.5"}, "num_value"),
        ({"num_value": True}, "num_value"),
        ({"weight": float("inf")}, "weight"),
        ({"upsert_by_tracking_id": "true"}, "upsert_by_tracking_id"),
        ({"split_avg": 1}, "split_avg"),
        ({"group_ids": ["d290f1ee-6c54-4b01-90e6-d701748f0851", "nope"]}, "group_ids.1"),
        ({"location": {"lat": "north", "lon": 0}}, "location.lat"),
        ({"location": {"lat": 91, "lon": 0}}, "location.lat"),
        ({"location": {"lat": 0, "lon": -180.5}}, "location.lon"),
        ({"location": {"lat": 0}}, "location.lon"),
        ({"fulltext_boost": {"phrase": "p"}}, "fulltext_boost.boost_factor"),
        ({"semantic_boost": {"phrase": 1, "distance_factor": 0.1}}, "semantic_boost.phrase"),
        ({"time_stamp": "yesterday"}, "time_stamp"),
        ({"time_stamp": "2021-13-01T00:00:00"}, "time_stamp"),
        ({"low_priority": "false"}, "low_priority"),
        ({"dataset_id": ""}, "dataset_id"),
        ({"metadata": {"when": object()}}, "metadata.when"),
        ({"metadata": {"a": [1, float("nan")]}}, "metadata.a.1"),
        ({"metadata": [{"x": {1, 2}}]}, "metadata.0.x"),
    ],
)
def test_wrong_types_name_the_field(payload: dict[str, Any], field: str) -> None:
    with pytest.raises(ChunkValidationError) as caught:
        parse_chunk(payload)

    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


@pytest.mark.parametrize("typo", ["chunk_htm", "tags", "lowPriority", "chunk_vector"])
def test_unknown_field_is_named(typo: str) -> None:
    with pytest.raises(ChunkValidationError, match=f"^{typo}: unknown field") as caught:
        parse_chunk({"chunk_html": "x", typo: "value"})

    assert caught.value.field == typo


def test_several_problems_are_listed_first_one_is_the_field() -> None:
    with pytest.raises(ChunkValidationError) as caught:
        parse_chunk({"chunk_html": 1, "link": 2, "tag_set": 3, "weight": "w", "split_avg": 0})

    assert caught.value.field == "chunk_html"
    assert "link" in str(caught.value)
    assert "and 2 more" in str(caught.value)


def test_batch_errors_start_with_the_index() -> None:
    with pytest.raises(ChunkValidationError, match="chunk 1") as caught:
        parse_payload([{"chunk_html": "ok"}, {"location": {"lat": 100, "lon": 0}}])

    assert caught.value.field == "1.location.lat"


def test_batch_element_that_is_not_an_object() -> None:
    with pytest.raises(ChunkValidationError) as caught:
        parse_payload('[{"chunk_html": "ok"}, 3]')

    assert caught.value.field == "1"


@pytest.mark.parametrize("text", ["{", '{"chunk_html": }', "", b"\xff\xfe", "[1,"])
def test_malformed_json_is_a_validation_error(text: str | bytes) -> None:
    with pytest.raises(ChunkValidationError, match="JSON"):
        parse_chunk(text)
    with pytest.raises(ChunkValidationError, match="JSON"):
        parse_payload(text)


def test_non_finite_json_numbers_are_rejected() -> None:
    with pytest.raises(ChunkValidationError) as caught:
        parse_chunk('{"num_value": NaN}')
    assert caught.value.field == "num_value"
    with pytest.raises(ChunkValidationError, match="JSON"):
        parse_payload('{"num_value": Infinity}')


@pytest.mark.parametrize("text", ["3", '"chunk"', "null", "true"])
def test_json_that_is_not_an_object(text: str) -> None:
    with pytest.raises(ChunkValidationError):
        parse_chunk(text)
    with pytest.raises(ChunkValidationError):
        parse_payload(text)


def test_direct_construction_raises_pydantic_errors_for_types() -> None:
    with pytest.raises(ValidationError):
        Chunk.model_validate({"tag_set": 3})


# -- value rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "time_stamp",
    [
        "2021-01-01T00:00:00",
        "2021-01-01 00:00:00.000",
        "2021-01-01T00:00:00Z",
        "2021-01-01T00:00:00.123456+02:00",
        "2021-01-01",
    ],
)
def test_iso8601_time_stamps_are_kept_as_given(time_stamp: str) -> None:
    assert parse_chunk({"time_stamp": time_stamp}).time_stamp == time_stamp


def test_empty_tracking_id_means_none() -> None:
    assert parse_chunk({"chunk_html": "x", "tracking_id": ""}).tracking_id is None


def test_dataset_id_argument_fills_in_only_when_missing() -> None:
    assert parse_chunk({"chunk_html": "x"}, dataset_id="ds").dataset_id == "ds"
    assert parse_chunk({"dataset_id": "own"}, dataset_id="ds").dataset_id == "own"
    assert parse_chunk({"chunk_html": "x"}).dataset_id is None
    assert [c.dataset_id for c in parse_payload(TRIEVE_BATCH, dataset_id="ds")] == ["ds", "ds"]


def test_empty_dataset_id_argument_is_rejected() -> None:
    with pytest.raises(ChunkValidationError) as caught:
        parse_chunk({"chunk_html": "x"}, dataset_id="")

    assert caught.value.field == "dataset_id"


def test_chunk_is_frozen() -> None:
    chunk = parse_chunk({"chunk_html": "x"})

    with pytest.raises(ValidationError):
        chunk.chunk_html = "y"  # type: ignore[misc]  # assigning is the point of the test


# -- limits -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"tag_set": ["t"] * 3}, "tag_set"),
        ({"group_ids": [str(uuid.uuid4()) for _ in range(3)]}, "group_ids"),
        ({"group_tracking_ids": ["g"] * 3}, "group_tracking_ids"),
        ({"image_urls": ["u"] * 3}, "image_urls"),
        ({"tracking_id": "x" * 11}, "tracking_id"),
    ],
)
def test_limits_name_the_field(payload: dict[str, Any], field: str) -> None:
    limits = ChunkLimits(
        max_tag_set=2,
        max_group_ids=2,
        max_group_tracking_ids=2,
        max_image_urls=2,
        max_tracking_id_length=10,
    )

    with pytest.raises(ChunkValidationError, match="over the limit") as caught:
        parse_chunk(payload, limits=limits)
    assert caught.value.field == field
    parse_chunk(payload)  # within the defaults


def test_limits_apply_at_the_boundary() -> None:
    limits = ChunkLimits(max_tag_set=2)

    assert parse_chunk({"tag_set": ["a", "b"]}, limits=limits).tag_set == ["a", "b"]


def test_default_limits_apply_to_direct_construction() -> None:
    with pytest.raises(ChunkValidationError) as caught:
        Chunk(tag_set=["t"] * (DEFAULT_LIMITS.max_tag_set + 1))

    assert caught.value.field == "tag_set"


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_limits_must_be_positive_integers(bad: Any) -> None:
    with pytest.raises(ConfigError, match="max_image_urls"):
        ChunkLimits(max_image_urls=bad)


def test_default_limit_on_encoded_size_leaves_headroom_below_one_megabyte() -> None:
    assert 800_000 <= DEFAULT_LIMITS.max_encoded_bytes < 1_000_000


# -- the Kafka key ------------------------------------------------------------------------------


def test_key_is_the_tracking_id_when_set() -> None:
    chunk = parse_chunk({"chunk_html": "x", "tracking_id": "doc-1", "dataset_id": "ds"})

    assert chunk.key == "doc-1"


def test_derived_key_follows_the_documented_formula() -> None:
    chunk = parse_chunk(
        {
            "chunk_html": "<p>Zürich 🚀</p>",
            "link": "https://example.com",
            "semantic_content": "s",
            "dataset_id": "ds",
        }
    )
    name = '["ds","<p>Z\\u00fcrich \\ud83d\\ude80</p>","https://example.com","s",null]'

    assert chunk.key == str(uuid.uuid5(CHUNK_KEY_NAMESPACE, name))


def test_derived_key_is_pinned() -> None:
    # The wire contract: this value must never change (partitioning of keyless chunks).
    assert uuid.UUID("a6624f05-2fa3-4f6c-868d-e1d9182bcea4") == CHUNK_KEY_NAMESPACE
    assert Chunk(chunk_html="hello").key == "b72cefda-e83f-567a-b482-e5c80775607e"


def test_derived_key_depends_only_on_identity_fields() -> None:
    base = {"chunk_html": "x", "link": "l", "dataset_id": "ds"}
    key = parse_chunk(base).key

    assert parse_chunk({**base, "tag_set": ["t"], "weight": 2.0, "low_priority": True}).key == key
    assert parse_chunk({**base, "dataset_id": "other"}).key != key
    assert parse_chunk({**base, "chunk_html": "y"}).key != key
    assert parse_chunk({**base, "fulltext_content": "f"}).key != key
    # Fields do not bleed into each other: the JSON array keeps positions apart.
    assert Chunk(chunk_html="a", link=None).key != Chunk(chunk_html=None, link="a").key


def test_key_is_stable_across_instances_and_runs() -> None:
    assert parse_chunk(TRIEVE_BATCH[0]).key == "tracking_id_1"
    assert Chunk(chunk_html="x").key == Chunk(chunk_html="x").key
