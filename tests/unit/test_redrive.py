"""The pure half of dead-letter redrive: header reading, filters, summary, replay headers."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import OFFSET_INVALID, Message

from streamproc.deadletter import (
    HEADER_ATTEMPTS,
    HEADER_ERROR_CLASS,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_REASON,
    HEADER_LANE,
    HEADER_OFFSET,
    HEADER_PARTITION,
    HEADER_TIMESTAMP,
    HEADER_TOPIC,
)
from streamproc.errors import ConfigError
from streamproc.lanes import Lanes
from streamproc.redrive import (
    HEADER_REPLAY_COUNT,
    HEADER_REPLAY_FROM_OFFSET,
    HEADER_REPLAY_FROM_PARTITION,
    HEADER_REPLAY_FROM_TOPIC,
    HEADER_REPLAY_ORIGINAL_OFFSET,
    HEADER_REPLAY_ORIGINAL_PARTITION,
    HEADER_REPLAY_ORIGINAL_TIMESTAMP,
    HEADER_REPLAY_ORIGINAL_TOPIC,
    HEADER_REPLAY_REASON,
    DeadLetter,
    DeadLetterFilter,
    DeadLetterReplayer,
    ReplayError,
    ReplayResult,
    bytes_text,
    iso_time,
    lanes_named,
    parse_time,
    replay_group,
    replay_timestamp,
    summarize,
)
from streamproc.settings import KafkaSettings

NOW_MS = 1_800_000_000_000
HOUR_MS = 3_600_000


def parked(
    *,
    reason: str = "handler_error",
    lane: str = "realtime",
    partition: int = 0,
    offset: int = 0,
    parked_ms: int = NOW_MS,
    extra: tuple[tuple[str, bytes], ...] = (),
) -> DeadLetter:
    return DeadLetter.from_parts(
        f"chunks.{lane}.dlq",
        partition,
        offset,
        parked_ms,
        b"doc-1",
        b"\xc3\x01value",
        [
            ("trace", b"abc"),
            *extra,
            (HEADER_ERROR_CLASS, b"HandlerError"),
            (HEADER_ERROR_REASON, reason.encode()),
            (HEADER_ERROR_MESSAGE, b"the index rejected it"),
            (HEADER_TOPIC, f"chunks.{lane}".encode()),
            (HEADER_PARTITION, b"2"),
            (HEADER_OFFSET, b"41"),
            (HEADER_TIMESTAMP, b"1700000000123"),
            (HEADER_LANE, lane.encode()),
            (HEADER_ATTEMPTS, b"4"),
        ],
    )


def test_dead_letter_reads_the_parking_headers() -> None:
    letter = parked()
    assert (letter.reason, letter.lane, letter.error_class) == (
        "handler_error",
        "realtime",
        "HandlerError",
    )
    assert letter.error_message == "the index rejected it"
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == (
        "chunks.realtime",
        2,
        41,
    )
    assert letter.original_timestamp_ms == 1_700_000_000_123
    assert letter.attempts == 4
    assert letter.replay_count == 0
    assert letter.lane_topic == "chunks.realtime"


def test_a_message_without_parking_headers_still_reads() -> None:
    letter = DeadLetter.from_parts("chunks.bulk.dlq", 1, 7, NOW_MS, None, b"x", [])
    assert letter.reason == "unknown"
    assert letter.lane == "bulk"  # from the topic name
    assert letter.original_topic is None and letter.original_offset is None
    assert letter.target_topic() == "chunks.bulk"
    assert letter.target_topic("elsewhere") == "elsewhere"


def test_malformed_numbers_in_headers_read_as_unknown() -> None:
    letter = DeadLetter.from_parts(
        "chunks.realtime.dlq", 0, 0, NOW_MS, None, b"x", [(HEADER_OFFSET, b"forty")]
    )
    assert letter.original_offset is None


def test_replay_headers_keep_the_original_ones_and_mark_the_replay() -> None:
    letter = parked(partition=1, offset=9)
    replay = letter.replay_headers()
    names = [name for name, _ in replay]
    assert names[0] == "trace"  # original headers first, in order
    for name in (HEADER_ERROR_REASON, HEADER_ERROR_CLASS, HEADER_TOPIC, HEADER_LANE):
        assert name not in names
    marks = dict(replay)
    assert marks[HEADER_REPLAY_COUNT] == b"1"
    assert marks[HEADER_REPLAY_FROM_TOPIC] == b"chunks.realtime.dlq"
    assert marks[HEADER_REPLAY_FROM_PARTITION] == b"1"
    assert marks[HEADER_REPLAY_FROM_OFFSET] == b"9"
    assert marks[HEADER_REPLAY_ORIGINAL_TOPIC] == b"chunks.realtime"
    assert marks[HEADER_REPLAY_ORIGINAL_PARTITION] == b"2"
    assert marks[HEADER_REPLAY_ORIGINAL_OFFSET] == b"41"
    assert marks[HEADER_REPLAY_ORIGINAL_TIMESTAMP] == str(letter.original_timestamp_ms).encode()
    assert marks[HEADER_REPLAY_REASON] == b"handler_error"


def test_a_replayed_message_parked_again_counts_its_replays_once() -> None:
    # Parking copies the original headers, so an earlier replay's marks come back with it.
    earlier = ((HEADER_REPLAY_COUNT, b"2"), (HEADER_REPLAY_FROM_OFFSET, b"3"))
    letter = parked(offset=12, extra=earlier)
    assert letter.replay_count == 2
    replay = letter.replay_headers()
    counts = [raw for name, raw in replay if name == HEADER_REPLAY_COUNT]
    offsets = [raw for name, raw in replay if name == HEADER_REPLAY_FROM_OFFSET]
    assert counts == [b"3"]
    assert offsets == [b"12"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", NOW_MS - 30 * 60_000),
        ("2h", NOW_MS - 2 * HOUR_MS),
        ("1.5h", NOW_MS - 90 * 60_000),
        ("7d", NOW_MS - 7 * 24 * HOUR_MS),
        ("1w", NOW_MS - 7 * 24 * HOUR_MS),
        ("45s", NOW_MS - 45_000),
        ("1700000000000", 1_700_000_000_000),
        ("2023-11-14T22:13:20Z", 1_700_000_000_000),
        ("2023-11-14T22:13:20", 1_700_000_000_000),  # no zone: UTC
        ("2023-11-14T23:13:20+01:00", 1_700_000_000_000),
    ],
)
def test_parse_time(text: str, expected: int) -> None:
    assert parse_time(text, now_ms=NOW_MS) == expected


@pytest.mark.parametrize("text", ["yesterday", "2h ago", "-5m", "", "2023-13-01"])
def test_parse_time_rejects_what_it_cannot_read(text: str) -> None:
    with pytest.raises(ConfigError, match="is not a time"):
        parse_time(text, now_ms=NOW_MS)


def test_filter_conditions_combine() -> None:
    everything = DeadLetterFilter()
    assert everything.matches(parked())
    by_reason = DeadLetterFilter(reasons=frozenset({"invalid", "undecodable"}))
    assert by_reason.matches(parked(reason="invalid"))
    assert not by_reason.matches(parked(reason="handler_error"))
    window = DeadLetterFilter(since_ms=NOW_MS - HOUR_MS, until_ms=NOW_MS)
    assert window.matches(parked(parked_ms=NOW_MS - HOUR_MS))  # since is inclusive
    assert not window.matches(parked(parked_ms=NOW_MS))  # until is exclusive
    assert not window.matches(parked(parked_ms=NOW_MS - HOUR_MS - 1))
    offsets = DeadLetterFilter(partitions=frozenset({1}), first_offset=5, last_offset=6)
    assert offsets.matches(parked(partition=1, offset=5))
    assert offsets.matches(parked(partition=1, offset=6))
    assert not offsets.matches(parked(partition=1, offset=7))
    assert not offsets.matches(parked(partition=0, offset=5))
    assert offsets.skips_partition(0) and not offsets.skips_partition(1)
    assert not everything.skips_partition(0)


def test_empty_ranges_are_refused() -> None:
    with pytest.raises(ConfigError, match="time range is empty"):
        DeadLetterFilter(since_ms=NOW_MS, until_ms=NOW_MS)
    with pytest.raises(ConfigError, match="offset range is empty"):
        DeadLetterFilter(first_offset=5, last_offset=4)


def test_summary_counts_by_lane_reason_and_age() -> None:
    letters = [
        parked(parked_ms=NOW_MS - 10_000),
        parked(parked_ms=NOW_MS - 2 * HOUR_MS),
        parked(parked_ms=NOW_MS - 3 * 24 * HOUR_MS),
        parked(parked_ms=NOW_MS - 30 * 24 * HOUR_MS),
        parked(reason="invalid", parked_ms=NOW_MS + 5_000),  # clock skew: counts as new
        parked(lane="bulk", parked_ms=NOW_MS - HOUR_MS),  # exactly one hour: not < 1h
    ]
    rows = summarize(letters, now_ms=NOW_MS)
    assert [(r.lane, r.reason, r.count) for r in rows] == [
        ("bulk", "handler_error", 1),
        ("realtime", "handler_error", 4),
        ("realtime", "invalid", 1),
    ]
    bulk, realtime, invalid = rows
    assert bulk.by_age == {"<1h": 0, "<1d": 1, "<7d": 0, ">=7d": 0}
    assert realtime.by_age == {"<1h": 1, "<1d": 1, "<7d": 1, ">=7d": 1}
    assert invalid.by_age["<1h"] == 1
    assert realtime.oldest_ms == NOW_MS - 30 * 24 * HOUR_MS
    assert realtime.newest_ms == NOW_MS - 10_000
    assert summarize([], now_ms=NOW_MS) == []


def test_replay_group_is_stable_per_selection() -> None:
    selection = {"reasons": ["invalid"], "since": "2h", "to": None}
    group = replay_group("chunks", selection)
    assert group.startswith("chunks.dlq-replay.")
    assert group == replay_group("chunks", dict(reversed(selection.items())))
    assert group != replay_group("chunks", {**selection, "reasons": ["undecodable"]})
    assert group != replay_group("other", selection)


def test_lanes_named() -> None:
    lanes = Lanes("chunks")
    assert [lane.name for lane in lanes_named(lanes, [])] == ["realtime", "bulk"]
    assert [lane.name for lane in lanes_named(lanes, ["bulk"])] == ["bulk"]
    with pytest.raises(ConfigError, match="unknown lane"):
        lanes_named(lanes, ["urgent"])


def test_text_helpers() -> None:
    assert bytes_text(b"doc-1") == "doc-1"
    assert bytes_text(b"\xff\x00") == "base64:/wA="
    assert bytes_text(None) is None
    assert iso_time(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"


WEEK_MS = 7 * 24 * HOUR_MS


@pytest.mark.parametrize(
    ("age_ms", "retention_ms", "kept"),
    [
        (HOUR_MS, WEEK_MS, True),  # young: the chunk's version is kept
        (WEEK_MS // 2, WEEK_MS, True),  # exactly half the retention used: still kept
        (WEEK_MS // 2 + 1, WEEK_MS, False),  # past half: the broker may soon delete it
        (30 * 24 * HOUR_MS, WEEK_MS, False),  # already past the retention
        (10 * 365 * 24 * HOUR_MS, None, True),  # a topic without time retention keeps it
        (-HOUR_MS, WEEK_MS, True),  # a timestamp from the future is not this rule's business
    ],
)
def test_replay_keeps_the_original_timestamp_unless_it_used_up_half_the_retention(
    age_ms: int, retention_ms: int | None, kept: bool
) -> None:
    original = NOW_MS - age_ms
    expected = original if kept else None
    assert replay_timestamp(original, retention_ms, now_ms=NOW_MS) == expected


def test_replay_without_an_original_timestamp_uses_the_current_time() -> None:
    assert replay_timestamp(None, WEEK_MS, now_ms=NOW_MS) is None
    assert replay_timestamp(None, None, now_ms=NOW_MS) is None


class AckingProducer:
    """Stands in for librdkafka's producer: flush() serves one report per produced message,
    with the given offsets (OFFSET_INVALID: an ack librdkafka inferred, without an offset)."""

    def __init__(self, offsets: list[int]) -> None:
        self.offsets = offsets
        self.reports: list[tuple[str, Any]] = []

    def produce(self, topic: str, value: bytes, key: bytes, **kwargs: Any) -> None:
        self.reports.append((topic, kwargs["on_delivery"]))

    def flush(self, timeout: float) -> int:
        for (topic, report), offset in zip(self.reports, self.offsets, strict=True):
            report(None, Message(topic=topic, partition=0, offset=offset, key=b"k", value=b"v"))
        return 0


@pytest.mark.parametrize(
    ("offsets", "fails"),
    [([5, 6], False), ([OFFSET_INVALID, 6], True), ([5, OFFSET_INVALID], True)],
)
def test_a_replay_batch_with_an_ack_without_an_offset_is_not_done(
    offsets: list[int], fails: bool
) -> None:
    replayer = DeadLetterReplayer(KafkaSettings(), group="g", keep_timestamp=False)
    replayer._known_targets = {"chunks.realtime"}
    headers = [
        (HEADER_TOPIC, b"chunks.realtime"),
        (HEADER_PARTITION, b"0"),
        (HEADER_OFFSET, b"41"),
        (HEADER_LANE, b"realtime"),
    ]
    batch = [
        Message(topic="chunks.realtime.dlq", partition=0, offset=o, key=b"k", value=b"v",
                headers=headers)  # type: ignore[arg-type]  # bytes header values
        for o in (3, 4)
    ]  # fmt: skip
    producer = AckingProducer(offsets)
    result = ReplayResult(group="g")
    if fails:
        with pytest.raises(ReplayError, match="acked without offset"):
            replayer._replay_batch(batch, DeadLetterFilter(), producer, result)  # type: ignore[arg-type]
    else:
        replayer._replay_batch(batch, DeadLetterFilter(), producer, result)  # type: ignore[arg-type]
    assert len(producer.reports) == 2
