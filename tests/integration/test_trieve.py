"""Trieve ``ChunkReqPayload`` files produced unchanged by ``streamproc produce``, read back raw.

The payload files in ``tests/trieve/`` are what a Trieve user already has: request bodies of
``POST /api/chunk``, a single object or a batch array, with every field Trieve documents (including
``high_priority`` and the ``boost_phrase``/``distance_phrase`` aliases its server accepts). They go
through the real CLI to the real broker, and every message is read back with a plain
confluent-kafka consumer and compared, field by field, with the JSON the user wrote.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from kafka_helpers import read_topic
from typer.testing import CliRunner, Result

from streamproc.chunk import Chunk
from streamproc.cli import app
from streamproc.codec import ChunkCodec
from streamproc.lanes import Lanes
from streamproc.topics import TopicAdmin

pytestmark = pytest.mark.integration

TRIEVE_DIR = Path(__file__).resolve().parents[1] / "trieve"
CODEC = ChunkCodec()

# Every field of Trieve's ChunkReqPayload (its OpenAPI document, POST /api/chunk).
TRIEVE_FIELDS = frozenset(
    {
        "chunk_html",
        "semantic_content",
        "fulltext_content",
        "link",
        "tag_set",
        "num_value",
        "metadata",
        "tracking_id",
        "upsert_by_tracking_id",
        "group_ids",
        "group_tracking_ids",
        "time_stamp",
        "location",
        "image_urls",
        "weight",
        "split_avg",
        "convert_html_to_text",
        "fulltext_boost",
        "semantic_boost",
        "high_priority",
    }
)
# Names Trieve's server also accepts for two of them.
TRIEVE_ALIASES = {"boost_phrase": "fulltext_boost", "distance_phrase": "semantic_boost"}


@pytest.fixture
def lanes(kafka_bootstrap: str, topic_prefix: str) -> Iterator[Lanes]:
    """This test's lanes with their topics created (3 partitions); deleted afterwards."""
    topics = TopicAdmin(AdminClient({"bootstrap.servers": kafka_bootstrap}), Lanes(topic_prefix))
    topics.create(partitions=3)
    yield Lanes(topic_prefix)
    topics.delete()


def produce(bootstrap: str, lanes: Lanes, source: Path, *extra: str) -> Result:
    return CliRunner().invoke(
        app,
        [
            "produce",
            str(source),
            "--bootstrap-servers",
            bootstrap,
            "--topic-prefix",
            lanes.prefix,
            "--no-progress",
            *extra,
        ],
    )


def read_lanes(bootstrap: str, lanes: Lanes) -> dict[str, dict[str, Chunk]]:
    """Lane name -> {message key: decoded chunk}; a key twice in one lane fails."""
    result: dict[str, dict[str, Chunk]] = {}
    for lane in lanes:
        decoded: dict[str, Chunk] = {}
        for message in read_topic(bootstrap, lane.topic):
            key = message.key().decode()
            assert key not in decoded, f"{key} twice in {lane.topic}"
            decoded[key] = CODEC.decode(message.value())
            assert decoded[key].key == key
        result[lane.name] = decoded
    return result


def payloads(path: Path) -> list[dict[str, Any]]:
    """The chunk objects of a payload file: one object, an array, or JSON lines of either."""
    text = path.read_text(encoding="utf-8")
    try:
        documents = [json.loads(text)]
    except json.JSONDecodeError:
        documents = [json.loads(line) for line in text.splitlines() if line.strip()]
    items: list[dict[str, Any]] = []
    for document in documents:
        items.extend(document if isinstance(document, list) else [document])
    return items


def expected_content(payload: dict[str, Any], dataset_id: str | None = None) -> dict[str, Any]:
    """What the consumer must see for ``payload``, written from the JSON alone (not the model).

    Aliases take their canonical names, ``high_priority`` is not stored (the lane carries it),
    ``low_priority`` is false unless set, ``dataset_id`` comes from the CLI when absent.
    """
    content = {TRIEVE_ALIASES.get(name, name): value for name, value in payload.items()}
    content.pop("high_priority", None)
    content.setdefault("low_priority", False)
    if dataset_id is not None:
        content.setdefault("dataset_id", dataset_id)
    return content


def check_lanes_and_content(
    read: dict[str, dict[str, Chunk]], sent: list[dict[str, Any]], dataset_id: str | None = None
) -> None:
    expected_lanes: dict[str, list[dict[str, Any]]] = {"realtime": [], "bulk": []}
    for payload in sent:
        lane = "bulk" if payload.get("low_priority") else "realtime"
        expected_lanes[lane].append(expected_content(payload, dataset_id))
    for lane, expected in expected_lanes.items():
        got = [chunk.model_dump(mode="json", exclude_none=True) for chunk in read[lane].values()]
        assert len(got) == len(expected), lane
        by_html = {content["chunk_html"]: content for content in got}
        for content in expected:
            assert by_html[content["chunk_html"]] == content


def test_sample_files_use_every_documented_trieve_field() -> None:
    used: set[str] = set()
    for path in TRIEVE_DIR.iterdir():
        for payload in payloads(path):
            used |= set(payload)
    canonical = {TRIEVE_ALIASES.get(name, name) for name in used}
    assert canonical >= TRIEVE_FIELDS, TRIEVE_FIELDS - canonical
    assert set(TRIEVE_ALIASES) <= used
    assert canonical - TRIEVE_FIELDS == {"low_priority"}


def test_batch_array_lands_in_its_lanes_unchanged(kafka_bootstrap: str, lanes: Lanes) -> None:
    source = TRIEVE_DIR / "batch.json"

    result = produce(kafka_bootstrap, lanes, source)

    assert result.exit_code == 0, result.output
    read = read_lanes(kafka_bootstrap, lanes)
    sent = payloads(source)
    check_lanes_and_content(read, sent)
    assert set(read["realtime"]) >= {"help-shipping-en-gb", "help-gift-cards-en-gb"}
    assert "catalog-2019-alp" in read["bulk"]
    # Chunks without a tracking_id get the derived key, the same on every run.
    derived = [key for lane in read.values() for key in lane if not key.startswith(("help", "cat"))]
    assert len(derived) == 2
    shipping = read["realtime"]["help-shipping-en-gb"]
    assert shipping.fulltext_boost is not None
    assert shipping.fulltext_boost.phrase == "express delivery"
    assert shipping.semantic_boost is not None
    assert shipping.semantic_boost.distance_factor == 0.4


def test_request_bodies_as_json_lines_with_dataset_from_the_cli(
    kafka_bootstrap: str, lanes: Lanes
) -> None:
    # One request body per line, object or batch array; TR-Dataset becomes --dataset-id.
    source = TRIEVE_DIR / "requests.jsonl"

    result = produce(kafka_bootstrap, lanes, source, "--dataset-id", "help-center-dataset")

    assert result.exit_code == 0, result.output
    read = read_lanes(kafka_bootstrap, lanes)
    check_lanes_and_content(read, payloads(source), dataset_id="help-center-dataset")
    assert set(read["realtime"]) == {"help-password-reset", "help-invoices"}
    assert set(read["bulk"]) == {"legacy-faq-1", "legacy-faq-2"}


def test_single_pretty_printed_object_with_every_field(kafka_bootstrap: str, lanes: Lanes) -> None:
    source = TRIEVE_DIR / "single.json"

    result = produce(kafka_bootstrap, lanes, source)

    assert result.exit_code == 0, result.output
    read = read_lanes(kafka_bootstrap, lanes)
    check_lanes_and_content(read, payloads(source))
    assert set(read["realtime"]) == {"help-returns-en-us"}
    assert read["bulk"] == {}


def test_single_object_on_one_line(kafka_bootstrap: str, lanes: Lanes, tmp_path: Path) -> None:
    (payload,) = payloads(TRIEVE_DIR / "single.json")
    source = tmp_path / "single-line.json"
    source.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")

    result = produce(kafka_bootstrap, lanes, source)

    assert result.exit_code == 0, result.output
    read = read_lanes(kafka_bootstrap, lanes)
    check_lanes_and_content(read, [payload])
    returns = read["realtime"]["help-returns-en-us"]
    assert returns.metadata == payload["metadata"]
    assert [str(group_id) for group_id in returns.group_ids or []] == payload["group_ids"]
