"""The ``streamproc`` CLI against the real broker: produce, topics, schema.

Produced messages are read back with a plain confluent-kafka Consumer, so the checks are what any
other Kafka client would see.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from kafka_helpers import high_watermarks, read_topic
from typer.testing import CliRunner, Result

from streamproc.chunk import Chunk, parse_payload
from streamproc.cli import app
from streamproc.codec import ChunkCodec
from streamproc.lanes import Lanes
from streamproc.samples import sample_chunks
from streamproc.topics import TopicAdmin

REPO = Path(__file__).resolve().parents[2]
CHUNK_COUNT = 10_000
CODEC = ChunkCodec()

# A Trieve create-chunk batch (POST /api/chunk) as a Trieve client would send it, extras included:
# high_priority, the boost_phrase/distance_phrase aliases, every optional field somewhere.
TRIEVE_BATCH: list[dict[str, Any]] = [
    {
        "chunk_html": "<p>Refunds are accepted within 30 days.</p>",
        "semantic_content": "refund policy thirty days",
        "fulltext_content": "Refunds are accepted within 30 days.",
        "link": "https://docs.example.com/refunds",
        "tag_set": ["support", "policy"],
        "num_value": 30,
        "metadata": {"author": "ops", "revision": 3, "reviewed": True, "langs": ["en", "de"]},
        "tracking_id": "refunds-1",
        "upsert_by_tracking_id": True,
        "group_ids": ["8f9a2b5c-2d1e-4f3a-9b8c-7d6e5f4a3b2c"],
        "group_tracking_ids": ["handbook"],
        "time_stamp": "2024-05-01T10:00:00Z",
        "location": {"lat": 52.52, "lon": 13.405},
        "image_urls": ["https://docs.example.com/refunds.png"],
        "weight": 1.5,
        "split_avg": False,
        "convert_html_to_text": True,
        "boost_phrase": {"phrase": "refund", "boost_factor": 2.0},
        "distance_phrase": {"phrase": "money back", "distance_factor": 0.5},
        "high_priority": True,
    },
    {
        "chunk_html": "<p>Archived release notes 1.0</p>",
        "tracking_id": "archive-7",
        "low_priority": True,
    },
    {"chunk_html": "<p>Plain chunk</p>", "tracking_id": "plain-1", "high_priority": False},
]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def lanes(kafka_bootstrap: str, topic_prefix: str) -> Iterator[Lanes]:
    """This test's lanes with their topics created (3 partitions); deleted afterwards."""
    topics = TopicAdmin(AdminClient({"bootstrap.servers": kafka_bootstrap}), Lanes(topic_prefix))
    topics.create(partitions=3)
    yield Lanes(topic_prefix)
    topics.delete()


def read_lanes(bootstrap: str, lanes: Lanes) -> dict[str, dict[str, Chunk]]:
    """Lane name -> {key: decoded chunk} of everything in the lane topics; keys must be unique."""
    result: dict[str, dict[str, Chunk]] = {}
    for lane in lanes:
        decoded: dict[str, Chunk] = {}
        for message in read_topic(bootstrap, lane.topic):
            key = message.key().decode()
            assert key not in decoded, f"{key} twice in {lane.topic}"
            decoded[key] = CODEC.decode(message.value())
        result[lane.name] = decoded
    return result


def produce(runner: CliRunner, bootstrap: str, lanes: Lanes, source: Path, *extra: str) -> Result:
    return runner.invoke(
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


def table_rows(text: str) -> dict[str, list[str]]:
    """First cell -> other cells of every row of the rich tables in ``text``."""
    rows = (line.replace("\u2502", " ").split() for line in text.splitlines())
    return {row[0]: row[1:] for row in rows if len(row) > 1}


def flat(text: str) -> str:
    """``text`` with rich's soft line wrapping undone."""
    return " ".join(text.split())


def test_ten_thousand_json_lines_land_in_their_lane(
    runner: CliRunner, kafka_bootstrap: str, lanes: Lanes, tmp_path: Path
) -> None:
    chunks = list(sample_chunks(CHUNK_COUNT, low_priority_ratio=0.3, seed=11))
    source = tmp_path / "chunks.jsonl"
    source.write_text(
        "".join(chunk.model_dump_json(exclude_none=True) + "\n" for chunk in chunks),
        encoding="utf-8",
    )

    result = produce(runner, kafka_bootstrap, lanes, source)

    assert result.exit_code == 0, result.output
    assert "rejected" not in result.stderr
    bulk_count = sum(chunk.low_priority for chunk in chunks)
    realtime_count = CHUNK_COUNT - bulk_count
    summary = table_rows(result.stdout)
    assert summary["realtime"] == [lanes.top.topic, *[str(realtime_count)] * 2, "0"]
    assert summary["bulk"] == [lanes.bottom.topic, *[str(bulk_count)] * 2, "0"]
    read = read_lanes(kafka_bootstrap, lanes)
    assert len(read["realtime"]) == CHUNK_COUNT - bulk_count
    assert len(read["bulk"]) == bulk_count
    for chunk in chunks:
        lane = "bulk" if chunk.low_priority else "realtime"
        assert read[lane].get(chunk.key) == chunk, chunk.key


def test_json_array_from_environment_settings(
    runner: CliRunner, kafka_bootstrap: str, lanes: Lanes, tmp_path: Path
) -> None:
    chunks = list(sample_chunks(300, low_priority_ratio=0.3, seed=5, prefix="arr"))
    source = tmp_path / "chunks.json"
    source.write_text(
        json.dumps(
            [chunk.model_dump(mode="json", exclude_none=True) for chunk in chunks], indent=2
        ),
        encoding="utf-8",
    )

    result = runner.invoke(
        app,
        ["produce", str(source), "--no-progress"],
        env={
            "STREAMPROC_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "STREAMPROC_TOPIC_PREFIX": lanes.prefix,
        },
    )

    assert result.exit_code == 0, result.output
    read = read_lanes(kafka_bootstrap, lanes)
    assert read["realtime"] == {c.key: c for c in chunks if not c.low_priority}
    assert read["bulk"] == {c.key: c for c in chunks if c.low_priority}


def test_trieve_batch_payload(
    runner: CliRunner, kafka_bootstrap: str, lanes: Lanes, tmp_path: Path
) -> None:
    source = tmp_path / "trieve.json"
    source.write_text(json.dumps(TRIEVE_BATCH), encoding="utf-8")

    result = produce(runner, kafka_bootstrap, lanes, source)

    assert result.exit_code == 0, result.output
    expected = {chunk.key: chunk for chunk in parse_payload(json.dumps(TRIEVE_BATCH))}
    read = read_lanes(kafka_bootstrap, lanes)
    assert set(read["realtime"]) == {"refunds-1", "plain-1"}
    assert set(read["bulk"]) == {"archive-7"}
    for decoded in (*read["realtime"].values(), *read["bulk"].values()):
        assert decoded == expected[decoded.key]
    refunds = read["realtime"]["refunds-1"]
    assert refunds.fulltext_boost is not None and refunds.fulltext_boost.phrase == "refund"
    assert refunds.semantic_boost is not None and refunds.semantic_boost.distance_factor == 0.5
    assert refunds.metadata == TRIEVE_BATCH[0]["metadata"]
    assert str(refunds.group_ids[0] if refunds.group_ids else "") == TRIEVE_BATCH[0]["group_ids"][0]


def test_low_priority_forces_bulk_and_dataset_id_fills_in(
    runner: CliRunner, kafka_bootstrap: str, lanes: Lanes, tmp_path: Path
) -> None:
    payloads: list[dict[str, Any]] = [
        {"chunk_html": "<p>one</p>", "tracking_id": "one"},
        {"chunk_html": "<p>two</p>", "tracking_id": "two", "high_priority": True},
        {"chunk_html": "<p>three</p>", "tracking_id": "three", "dataset_id": "own-dataset"},
        {"chunk_html": "<p>four</p>", "tracking_id": "four", "low_priority": True},
    ]
    source = tmp_path / "chunks.jsonl"
    source.write_text("".join(json.dumps(p) + "\n" for p in payloads), encoding="utf-8")

    result = produce(
        runner, kafka_bootstrap, lanes, source, "--low-priority", "--dataset-id", "cli-dataset"
    )

    assert result.exit_code == 0, result.output
    read = read_lanes(kafka_bootstrap, lanes)
    assert read["realtime"] == {}
    assert set(read["bulk"]) == {"one", "two", "three", "four"}
    datasets = {key: chunk.dataset_id for key, chunk in read["bulk"].items()}
    assert datasets == {
        "one": "cli-dataset",
        "two": "cli-dataset",
        "three": "own-dataset",
        "four": "cli-dataset",
    }
    for payload in payloads:
        decoded = read["bulk"][payload["tracking_id"]]
        original = parse_payload(payload, dataset_id="cli-dataset")[0]
        # The lane is forced; the rest of the chunk travels unchanged.
        assert decoded.model_dump(exclude={"low_priority"}) == original.model_dump(
            exclude={"low_priority"}
        )


GOOD_LINES = [
    json.dumps({"chunk_html": "<p>good 1</p>", "tracking_id": "good-1"}),
    json.dumps({"chunk_html": "<p>good 2</p>", "tracking_id": "good-2", "low_priority": True}),
    json.dumps({"chunk_html": "<p>good 3</p>", "tracking_id": "good-3"}),
]
# (line text, what the reason must say)
BAD_LINES = [
    ('{"chunk_html": "broken", "tracking_id": "bad-json"', "malformed JSON"),
    ('{"chunk_html": 5, "tracking_id": "bad-type"}', "chunk_html: Input should be a valid string"),
    ('{"chunk_html": "x", "tracking_id": "bad-flag", "low_priority": "yes"}', "low_priority:"),
    ('{"chunk_htm": "x", "tracking_id": "bad-field"}', "chunk_htm: unknown field"),
    (
        '{"chunk_html": "x", "tracking_id": "bad-both", '
        '"high_priority": true, "low_priority": true}',
        "high_priority and low_priority are both true",
    ),
    (
        json.dumps({"chunk_html": "x" * 1_000_000, "tracking_id": "bad-size"}),
        "over the limit of 900000 bytes",
    ),
]


@pytest.mark.parametrize("keep_rejects", [False, True], ids=["exit-1", "rejects-file"])
def test_invalid_lines_are_reported_and_never_sent(
    runner: CliRunner, kafka_bootstrap: str, lanes: Lanes, tmp_path: Path, keep_rejects: bool
) -> None:
    # good, bad, good, blank, bad..., good: line numbers count every physical line.
    lines = [GOOD_LINES[0], BAD_LINES[0][0], GOOD_LINES[1], ""]
    lines += [text for text, _ in BAD_LINES[1:]] + [GOOD_LINES[2]]
    source = tmp_path / "mixed.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rejects = tmp_path / "rejects.jsonl"

    extra = ["--rejects", str(rejects)] if keep_rejects else []
    result = produce(runner, kafka_bootstrap, lanes, source, *extra)

    assert result.exit_code == (0 if keep_rejects else 1), result.output
    stderr = flat(result.stderr)
    for text, reason in BAD_LINES:
        number = lines.index(text) + 1
        assert f"line {number}: " in stderr
        reported = stderr.split(f"line {number}: ", 1)[1][:200]
        assert reason in reported, (number, reason, reported)
    assert f"{len(BAD_LINES)} line(s) rejected" in stderr
    for number in (1, 3, len(lines)):
        assert f"line {number}:" not in stderr

    read = read_lanes(kafka_bootstrap, lanes)
    assert set(read["realtime"]) == {"good-1", "good-3"}
    assert set(read["bulk"]) == {"good-2"}
    total = sum(sum(high_watermarks(kafka_bootstrap, lane.topic).values()) for lane in lanes)
    assert total == len(GOOD_LINES)
    if keep_rejects:
        assert rejects.read_text(encoding="utf-8") == "".join(t + "\n" for t, _ in BAD_LINES)
    else:
        assert not rejects.exists()


def test_broken_json_array_sends_what_precedes_the_break_and_exits_1(
    runner: CliRunner, kafka_bootstrap: str, lanes: Lanes, tmp_path: Path
) -> None:
    chunks = list(sample_chunks(500, low_priority_ratio=0.3, seed=8, prefix="broken"))
    good = json.dumps([c.model_dump(mode="json", exclude_none=True) for c in chunks], indent=2)
    source = tmp_path / "broken.json"
    # Item 501 is cut off: everything before it is read and sent, nothing after.
    source.write_text(good[:-2] + ',\n  {"chunk_html": }\n, {"chunk_html": "after"}]\n', "utf-8")
    rejects = tmp_path / "rejects.jsonl"

    result = produce(runner, kafka_bootstrap, lanes, source, "--rejects", str(rejects))

    assert result.exit_code == 1, result.output
    stderr = flat(result.stderr)
    assert "line 501: malformed JSON array after item 500" in stderr
    assert "was not read" in stderr
    read = read_lanes(kafka_bootstrap, lanes)
    assert read["realtime"] == {c.key: c for c in chunks if not c.low_priority}
    assert read["bulk"] == {c.key: c for c in chunks if c.low_priority}


def test_json_array_from_stdin(
    runner: CliRunner, kafka_bootstrap: str, lanes: Lanes, tmp_path: Path
) -> None:
    chunks = list(sample_chunks(200, low_priority_ratio=0.5, seed=9, prefix="stdin"))
    payload = json.dumps([c.model_dump(mode="json", exclude_none=True) for c in chunks], indent=1)

    result = runner.invoke(
        app,
        ["produce", "-", "-b", kafka_bootstrap, "--topic-prefix", lanes.prefix, "--no-progress"],
        input=payload,
    )

    assert result.exit_code == 0, result.output
    assert "200 chunk(s) sent in" in flat(result.stderr)
    read = read_lanes(kafka_bootstrap, lanes)
    assert read["realtime"] == {c.key: c for c in chunks if not c.low_priority}
    assert read["bulk"] == {c.key: c for c in chunks if c.low_priority}


# -- memory -------------------------------------------------------------------------------------

LARGE_INPUT_CHUNKS = 50_000
LARGE_INPUT_PAD = "lorem ipsum dolor sit amet " * 100  # about 2.8 KB of JSON per chunk
# The peak resident memory of a produce of a ~140 MB input may exceed that of a one-chunk input
# by at most this much: reading the input whole needs more than its size.
MAX_GROWTH_BYTES = 80 * 1024 * 1024
MAX_PEAK_BYTES = 250 * 1024 * 1024  # the target for any input size


def large_payloads() -> Iterator[dict[str, Any]]:
    for index in range(LARGE_INPUT_CHUNKS):
        yield {
            "chunk_html": f"<p>{index} {LARGE_INPUT_PAD}</p>",
            "tracking_id": f"large-{index}",
            "low_priority": index % 3 == 0,
            "metadata": {"index": index},
        }


def peak_rss_of_produce(bootstrap: str, lanes: Lanes, source: Path) -> int:
    """Run ``streamproc produce`` as a child process; its peak resident set size in bytes."""
    command = [
        *(sys.executable, "-m", "streamproc", "produce", str(source)),
        *("--bootstrap-servers", bootstrap, "--topic-prefix", lanes.prefix, "--no-progress"),
    ]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as child:
        assert child.stderr is not None
        errors = child.stderr.read()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    assert child.returncode == 0, errors.decode()
    return usage.ru_maxrss * 1024  # kilobytes on Linux


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["json-lines", "json-array"])
def test_peak_memory_does_not_grow_with_the_input(
    kafka_bootstrap: str, lanes: Lanes, tmp_path: Path, shape: str
) -> None:
    small = tmp_path / "one.jsonl"
    small.write_text(json.dumps(next(large_payloads())) + "\n", encoding="utf-8")
    large = tmp_path / f"large.{shape}"
    with large.open("w", encoding="utf-8") as out:
        if shape == "json-lines":
            for payload in large_payloads():
                out.write(json.dumps(payload) + "\n")
        else:
            out.write("[\n")
            for index, payload in enumerate(large_payloads()):
                out.write(("" if index == 0 else ",\n") + json.dumps(payload, indent=1))
            out.write("\n]\n")
    size = large.stat().st_size
    assert size > 130 * 1024 * 1024

    baseline = peak_rss_of_produce(kafka_bootstrap, lanes, small)
    peak = peak_rss_of_produce(kafka_bootstrap, lanes, large)

    assert peak - baseline < MAX_GROWTH_BYTES, (peak, baseline, size)
    assert peak < MAX_PEAK_BYTES, (peak, size)
    sent = sum(sum(high_watermarks(kafka_bootstrap, lane.topic).values()) for lane in lanes)
    assert sent == LARGE_INPUT_CHUNKS + 1


# -- topics -----------------------------------------------------------------------------------


def test_topics_create_then_describe(
    runner: CliRunner, kafka_bootstrap: str, topic_prefix: str
) -> None:
    common = ["--bootstrap-servers", kafka_bootstrap, "--topic-prefix", topic_prefix]
    names = [
        f"{topic_prefix}.realtime",
        f"{topic_prefix}.bulk",
        f"{topic_prefix}.realtime.dlq",
        f"{topic_prefix}.bulk.dlq",
    ]
    topics = TopicAdmin(AdminClient({"bootstrap.servers": kafka_bootstrap}), Lanes(topic_prefix))
    try:
        missing = runner.invoke(app, ["topics", "describe", *common])
        assert missing.exit_code == 1, missing.output
        assert "lane topics missing" in flat(missing.stderr)

        created = runner.invoke(app, ["topics", "create", *common, "--partitions", "2"])
        assert created.exit_code == 0, created.output
        for name in names:
            assert f"created {name}" in created.stderr

        described = runner.invoke(app, ["topics", "describe", *common])
        assert described.exit_code == 0, described.output
        table = table_rows(described.stdout)
        assert {name: table.get(name) for name in names} == {
            name: ["yes", "2", "1"] for name in names
        }

        again = runner.invoke(app, ["topics", "create", *common, "--partitions", "2"])
        assert again.exit_code == 0, again.output
        assert "created" not in again.stderr

        conflicting = runner.invoke(app, ["topics", "create", *common, "--partitions", "3"])
        assert conflicting.exit_code == 1
        assert "expected 3" in flat(conflicting.stderr)
    finally:
        topics.delete()


# -- schema -----------------------------------------------------------------------------------


def test_schema_show_prints_the_schema_file(runner: CliRunner) -> None:
    result = runner.invoke(app, ["schema", "show"])
    assert result.exit_code == 0, result.output
    schema_file = json.loads((REPO / "avro" / "chunk.avsc").read_text(encoding="utf-8"))
    assert json.loads(result.stdout) == schema_file


def test_schema_fingerprint_is_the_codec_fingerprint(runner: CliRunner) -> None:
    result = runner.invoke(app, ["schema", "fingerprint"])
    assert result.exit_code == 0, result.output
    fingerprint = result.stdout.strip()
    assert fingerprint == ChunkCodec().fingerprint_hex
    assert len(fingerprint) == 16
    header = CODEC.encode(Chunk(chunk_html="x"))[:10]
    assert header == bytes.fromhex("c301" + fingerprint)
