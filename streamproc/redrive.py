"""Dead letters after the fact: read them, summarize them, and replay them to a lane topic.

A dead letter is the original message (key, value, headers untouched) in ``<lane topic>.dlq``
with the ``streamproc.*`` headers :mod:`streamproc.deadletter` adds (reason, original topic,
partition, offset and timestamp, lane, attempts). This module reads them back:

* :func:`summarize` counts them by lane, reason and age (pure);
* :class:`DeadLetterFilter` selects them by reason, time parked, partition and offset (pure);
* :class:`DeadLetterReader` reads the dead-letter topics from the start up to their ends at the
  time of the call, committing nothing;
* :class:`DeadLetterReplayer` produces the selected ones back to their original topic (or
  another), at least once, from a consumer group of its own.

A replay, batch by batch:

1. Take up to ``batch_size`` dead letters from the group's committed position (the start of the
   topic the first time), never past the end offsets taken when the replay began (a replayed
   message that fails again is parked again; chasing it would loop).
2. Produce each selected one to its target with its original key, value, headers and timestamp
   (the timestamp is the chunk's version: a replayed stale copy must not win over a newer one),
   the parking headers replaced by ``streamproc.replay.*`` headers. An original timestamp that
   has used up half the target topic's ``retention.ms`` is replaced by the current time (the
   broker would delete the copy as expired, maybe before it is read); the
   ``streamproc.replay.original.timestamp`` header keeps it.
3. Flush, and fail on any delivery error (nothing of the batch is committed then).
4. Commit the offset after the last dead letter of the batch, selected or not.

An interrupted replay (killed, broker gone) resumes after the last committed batch: what was
produced and not committed is produced again (at least once, never lost).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported, unlisted
    AdminClient,
    ConfigResource,
)

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
from streamproc.errors import ConfigError, StreamprocError
from streamproc.lanes import DLQ_SUFFIX, Lane
from streamproc.messages import Header, coordinates, headers, timestamp_ms
from streamproc.settings import KafkaSettings

log = logging.getLogger(__name__)

# Headers of a replayed message: the documented part of the wire contract.
HEADER_REPLAY_COUNT = "streamproc.replay.count"
HEADER_REPLAY_FROM_TOPIC = "streamproc.replay.from.topic"
HEADER_REPLAY_FROM_PARTITION = "streamproc.replay.from.partition"
HEADER_REPLAY_FROM_OFFSET = "streamproc.replay.from.offset"
HEADER_REPLAY_ORIGINAL_TOPIC = "streamproc.replay.original.topic"
HEADER_REPLAY_ORIGINAL_PARTITION = "streamproc.replay.original.partition"
HEADER_REPLAY_ORIGINAL_OFFSET = "streamproc.replay.original.offset"
HEADER_REPLAY_REASON = "streamproc.replay.reason"
HEADER_REPLAY_ORIGINAL_TIMESTAMP = "streamproc.replay.original.timestamp"

# Written when a message is parked, and by a replay: a replayed message carries fresh ones only.
PARKING_HEADERS = frozenset(
    {
        HEADER_ERROR_CLASS,
        HEADER_ERROR_REASON,
        HEADER_ERROR_MESSAGE,
        HEADER_TOPIC,
        HEADER_PARTITION,
        HEADER_OFFSET,
        HEADER_TIMESTAMP,
        HEADER_LANE,
        HEADER_ATTEMPTS,
    }
)
REPLAY_HEADERS = frozenset(
    {
        HEADER_REPLAY_COUNT,
        HEADER_REPLAY_FROM_TOPIC,
        HEADER_REPLAY_FROM_PARTITION,
        HEADER_REPLAY_FROM_OFFSET,
        HEADER_REPLAY_ORIGINAL_TOPIC,
        HEADER_REPLAY_ORIGINAL_PARTITION,
        HEADER_REPLAY_ORIGINAL_OFFSET,
        HEADER_REPLAY_REASON,
        HEADER_REPLAY_ORIGINAL_TIMESTAMP,
    }
)

# Age classes of the summary: (label, upper bound in seconds), youngest first.
AGE_BUCKETS: tuple[tuple[str, float], ...] = (
    ("<1h", 3600.0),
    ("<1d", 86_400.0),
    ("<7d", 7 * 86_400.0),
    (">=7d", float("inf")),
)
UNKNOWN = "unknown"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
# Longest wait for a partition to reach its end offset when nothing arrives.
_READ_IDLE_TIMEOUT_S = 30.0


class ReplayError(StreamprocError):
    """A replay could not deliver (or commit) a batch; rerun it to resume."""

    reason = "replay"


# -- the dead letter, pure ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One parked message as read back from its dead-letter topic.

    Attributes:
        topic: The dead-letter topic (``<lane topic>.dlq``).
        partition: Its partition there.
        offset: Its offset there.
        parked_ms: When it was parked (the dead letter's timestamp), epoch milliseconds.
        key: The original key.
        value: The original value bytes, untouched.
        headers: Every header of the dead letter, in order (original and ``streamproc.*``).
        lane: The lane it was read from.
        reason: Why it was parked (``undecodable``, ``invalid``, ``handler_error``, ...).
        error_class: The exception class that parked it.
        error_message: The exception's message (at most 1000 characters).
        original_topic: The topic it was consumed from.
        original_partition: Its partition there.
        original_offset: Its offset there.
        original_timestamp_ms: Its timestamp there (the chunk's version).
        attempts: How many times handling was tried.
        replay_count: How many times it had been replayed before it was parked this time.
    """

    topic: str
    partition: int
    offset: int
    parked_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]
    lane: str
    reason: str
    error_class: str
    error_message: str
    original_topic: str | None
    original_partition: int | None
    original_offset: int | None
    original_timestamp_ms: int | None
    attempts: int | None
    replay_count: int

    @classmethod
    def from_parts(
        cls,
        topic: str,
        partition: int,
        offset: int,
        parked_ms: int,
        key: bytes | None,
        value: bytes | None,
        message_headers: Sequence[Header],
    ) -> DeadLetter:
        """Read the ``streamproc.*`` headers of a dead letter (missing ones are tolerated: a
        message written to the topic by hand still shows, with reason ``unknown``)."""
        by_name: dict[str, str] = {}
        for name, raw in message_headers:  # the last occurrence wins, as it was added last
            by_name[name] = raw.decode("utf-8", errors="replace")
        lane_topic = topic.removesuffix(DLQ_SUFFIX)
        return cls(
            topic=topic,
            partition=partition,
            offset=offset,
            parked_ms=parked_ms,
            key=key,
            value=value,
            headers=tuple(message_headers),
            lane=by_name.get(HEADER_LANE) or lane_topic.rpartition(".")[2] or UNKNOWN,
            reason=by_name.get(HEADER_ERROR_REASON) or UNKNOWN,
            error_class=by_name.get(HEADER_ERROR_CLASS, ""),
            error_message=by_name.get(HEADER_ERROR_MESSAGE, ""),
            original_topic=by_name.get(HEADER_TOPIC) or None,
            original_partition=_int(by_name.get(HEADER_PARTITION)),
            original_offset=_int(by_name.get(HEADER_OFFSET)),
            original_timestamp_ms=_int(by_name.get(HEADER_TIMESTAMP)),
            attempts=_int(by_name.get(HEADER_ATTEMPTS)),
            replay_count=_int(by_name.get(HEADER_REPLAY_COUNT)) or 0,
        )

    @classmethod
    def from_message(cls, message: Message) -> DeadLetter:
        """The dead letter of a consumed (non-error) message."""
        topic, partition, offset = coordinates(message)
        key = message.key()
        value = message.value()
        return cls.from_parts(
            topic,
            partition,
            offset,
            timestamp_ms(message),
            key.encode() if isinstance(key, str) else key,
            value.encode() if isinstance(value, str) else value,
            headers(message),
        )

    @property
    def lane_topic(self) -> str:
        """The lane topic this dead-letter topic belongs to."""
        return self.topic.removesuffix(DLQ_SUFFIX)

    def replay_headers(self) -> list[Header]:
        """The headers of the replayed message: the original ones, then what marks the replay.

        Parking headers and those of an earlier replay are dropped, so a replayed message that
        fails again is parked with one set of reasons, and ``streamproc.replay.count`` counts.
        """
        kept = [
            (name, raw)
            for name, raw in self.headers
            if name not in PARKING_HEADERS and name not in REPLAY_HEADERS
        ]
        marks = {
            HEADER_REPLAY_COUNT: str(self.replay_count + 1),
            HEADER_REPLAY_FROM_TOPIC: self.topic,
            HEADER_REPLAY_FROM_PARTITION: str(self.partition),
            HEADER_REPLAY_FROM_OFFSET: str(self.offset),
            HEADER_REPLAY_REASON: self.reason,
        }
        if self.original_topic is not None:
            marks[HEADER_REPLAY_ORIGINAL_TOPIC] = self.original_topic
        if self.original_partition is not None:
            marks[HEADER_REPLAY_ORIGINAL_PARTITION] = str(self.original_partition)
        if self.original_offset is not None:
            marks[HEADER_REPLAY_ORIGINAL_OFFSET] = str(self.original_offset)
        if self.original_timestamp_ms is not None:
            marks[HEADER_REPLAY_ORIGINAL_TIMESTAMP] = str(self.original_timestamp_ms)
        return kept + [(name, text.encode()) for name, text in marks.items()]

    def target_topic(self, override: str | None = None) -> str:
        """Where a replay sends it: ``override``, else its original topic, else the lane topic."""
        return override or self.original_topic or self.lane_topic

    def to_json(
        self, *, chunk: Mapping[str, Any] | None, decode_error: str | None
    ) -> dict[str, Any]:
        """A JSON-ready view (``chunk``: the decoded chunk, if the value decodes)."""
        return {
            "dlq": {"topic": self.topic, "partition": self.partition, "offset": self.offset},
            "parked_at": iso_time(self.parked_ms),
            "lane": self.lane,
            "reason": self.reason,
            "error_class": self.error_class,
            "error_message": self.error_message,
            "attempts": self.attempts,
            "replay_count": self.replay_count,
            "original": {
                "topic": self.original_topic,
                "partition": self.original_partition,
                "offset": self.original_offset,
                "timestamp": (
                    None
                    if self.original_timestamp_ms is None
                    else iso_time(self.original_timestamp_ms)
                ),
            },
            "key": bytes_text(self.key),
            "headers": [[name, bytes_text(raw)] for name, raw in self.headers],
            "chunk": None if chunk is None else dict(chunk),
            "decode_error": decode_error,
            "value_base64": None if self.value is None else base64.b64encode(self.value).decode(),
        }


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def bytes_text(raw: bytes | None) -> str | None:
    """UTF-8 text of ``raw`` when it is valid UTF-8, else ``base64:<base64>``."""
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(raw).decode()


def iso_time(epoch_ms: int) -> str:
    """``epoch_ms`` as ISO 8601 UTC with milliseconds."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str, *, now_ms: int) -> int:
    """A point in time as epoch milliseconds.

    Accepts ISO 8601 (``2026-12-01T10:00:00Z``; without a zone, UTC), a duration ago (``30m``,
    ``2h``, ``7d``, ``1w``), or epoch milliseconds.

    Raises:
        ConfigError: ``text`` is none of these.
    """
    value = text.strip()
    if match := _DURATION.match(value):
        return now_ms - round(float(match.group(1)) * _UNIT_S[match.group(2)] * 1000)
    if value.isdigit():
        return int(value)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{text!r} is not a time: use ISO 8601 (2026-12-01T10:00:00Z), a duration ago "
            "(30m, 2h, 7d) or epoch milliseconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which dead letters to list or replay; an empty field selects everything.

    Attributes:
        reasons: Parking reasons to keep.
        since_ms: Parked at or after this time (epoch ms).
        until_ms: Parked before this time (epoch ms).
        partitions: Partitions of the dead-letter topic to keep.
        first_offset: Lowest dead-letter offset kept (inclusive).
        last_offset: Highest dead-letter offset kept (inclusive).
    """

    reasons: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None
    partitions: frozenset[int] = frozenset()
    first_offset: int | None = None
    last_offset: int | None = None

    def __post_init__(self) -> None:
        if (
            self.since_ms is not None
            and self.until_ms is not None
            and self.since_ms >= self.until_ms
        ):
            raise ConfigError("the time range is empty: --since must be before --until")
        if (
            self.first_offset is not None
            and self.last_offset is not None
            and self.first_offset > self.last_offset
        ):
            raise ConfigError("the offset range is empty: --from-offset > --to-offset")

    def matches(self, dead_letter: DeadLetter) -> bool:
        """True when ``dead_letter`` passes every condition set."""
        checks = (
            not self.reasons or dead_letter.reason in self.reasons,
            self.since_ms is None or dead_letter.parked_ms >= self.since_ms,
            self.until_ms is None or dead_letter.parked_ms < self.until_ms,
            not self.partitions or dead_letter.partition in self.partitions,
            self.first_offset is None or dead_letter.offset >= self.first_offset,
            self.last_offset is None or dead_letter.offset <= self.last_offset,
        )
        return all(checks)

    def skips_partition(self, partition: int) -> bool:
        """True when no dead letter of ``partition`` can match (it need not be read)."""
        return bool(self.partitions) and partition not in self.partitions


@dataclass(frozen=True, slots=True)
class SummaryRow:
    """Dead letters of one lane and reason."""

    lane: str
    reason: str
    count: int
    by_age: dict[str, int]
    oldest_ms: int
    newest_ms: int


def summarize(dead_letters: Iterable[DeadLetter], *, now_ms: int) -> list[SummaryRow]:
    """Count dead letters by lane and reason, and by age (:data:`AGE_BUCKETS`) within those."""
    counts: dict[tuple[str, str], Counter[str]] = {}
    oldest: dict[tuple[str, str], int] = {}
    newest: dict[tuple[str, str], int] = {}
    for dead_letter in dead_letters:
        group = (dead_letter.lane, dead_letter.reason)
        age_s = max(0.0, (now_ms - dead_letter.parked_ms) / 1000)
        label = next(label for label, bound in AGE_BUCKETS if age_s < bound)
        counts.setdefault(group, Counter())[label] += 1
        oldest[group] = min(oldest.get(group, dead_letter.parked_ms), dead_letter.parked_ms)
        newest[group] = max(newest.get(group, dead_letter.parked_ms), dead_letter.parked_ms)
    return [
        SummaryRow(
            lane=lane,
            reason=reason,
            count=sum(counts[(lane, reason)].values()),
            by_age={label: counts[(lane, reason)][label] for label, _ in AGE_BUCKETS},
            oldest_ms=oldest[(lane, reason)],
            newest_ms=newest[(lane, reason)],
        )
        for lane, reason in sorted(counts)
    ]


def replay_timestamp(
    original_ms: int | None, retention_ms: int | None, *, now_ms: int
) -> int | None:
    """The timestamp a replayed dead letter is produced with (None: the current time).

    The original timestamp (the chunk's version) is kept unless it has used up half of
    ``retention_ms``, the target topic's time retention (None: it keeps records forever). Kept,
    the broker could delete the replayed copy as expired before anyone reads it.
    """
    if original_ms is None:
        return None
    if retention_ms is not None and now_ms - original_ms > retention_ms // 2:
        return None
    return original_ms


def replay_group(prefix: str, selection: Mapping[str, object]) -> str:
    """The default consumer group of a replay: one per topic prefix and selection.

    Rerunning the same replay command resumes it (and later replays only what was parked since);
    a replay with other options starts from the beginning of the dead-letter topics.
    """
    canonical = json.dumps(selection, sort_keys=True, default=str)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:12]
    return f"{prefix}.dlq-replay.{digest}"


# -- Kafka I/O ---------------------------------------------------------------------------------


def _consumer_config(settings: KafkaSettings, group: str) -> dict[str, Any]:
    return {
        **settings.librdkafka_extra,
        **settings.connection(),
        "client.id": f"{settings.client_id}-dlq",
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
    }


def replay_producer_config(settings: KafkaSettings) -> dict[str, Any]:
    """Idempotent, acks=all, murmur2 keys: a replayed key lands where the producer puts it."""
    return {
        "linger.ms": 5,
        **settings.librdkafka_extra,
        **settings.connection(),
        "client.id": f"{settings.client_id}-dlq-replay",
        "partitioner": "murmur2_random",
        "enable.idempotence": True,
        "acks": "all",
    }


@dataclass(slots=True)
class _Span:
    """The part of one dead-letter partition a read covers: ``[start, end)``."""

    topic: str
    partition: int
    start: int
    end: int


class _SpanReader:
    """Reads spans of dead-letter partitions with one consumer, up to each span's end."""

    def __init__(self, consumer: Consumer, timeout_s: float) -> None:
        self._consumer = consumer
        self._timeout_s = timeout_s

    def spans(
        self,
        topics: Sequence[str],
        dead_letter_filter: DeadLetterFilter,
        *,
        from_committed: bool,
    ) -> list[_Span]:
        """Each partition's span: from the low watermark (or the committed offset) to the
        high watermark now."""
        try:
            return self._spans(topics, dead_letter_filter, from_committed=from_committed)
        except KafkaException as exc:
            raise ReplayError(f"could not read the dead-letter topics: {exc}") from exc

    def _spans(
        self,
        topics: Sequence[str],
        dead_letter_filter: DeadLetterFilter,
        *,
        from_committed: bool,
    ) -> list[_Span]:
        partitions: list[TopicPartition] = []
        for topic in topics:
            metadata = self._consumer.list_topics(topic, timeout=self._timeout_s)
            info = metadata.topics.get(topic)
            if info is None or info.error is not None:
                raise ConfigError(f"dead-letter topic {topic} does not exist")
            partitions += [
                TopicPartition(topic, p)
                for p in sorted(info.partitions)
                if not dead_letter_filter.skips_partition(p)
            ]
        committed: dict[tuple[str, int], int] = {}
        if from_committed and partitions:
            for tp in self._consumer.committed(partitions, timeout=self._timeout_s):
                if tp.error is None and tp.offset >= 0:
                    committed[(tp.topic, tp.partition)] = tp.offset
        result = []
        for tp in partitions:
            low, high = self._consumer.get_watermark_offsets(tp, timeout=self._timeout_s)
            start = max(low, committed.get((tp.topic, tp.partition), low))
            if dead_letter_filter.first_offset is not None:
                start = max(start, dead_letter_filter.first_offset)
            end = high
            if dead_letter_filter.last_offset is not None:
                end = min(end, dead_letter_filter.last_offset + 1)
            result.append(_Span(tp.topic, tp.partition, start, max(start, end)))
        return result

    def batches(self, spans: Sequence[_Span], batch_size: int) -> Iterator[list[Message]]:
        """Messages of the spans, in batches of at most ``batch_size``, until every span is
        read to its end."""
        pending = {(s.topic, s.partition): s.end for s in spans if s.start < s.end}
        if not pending:
            return
        self._consumer.assign(
            [TopicPartition(s.topic, s.partition, s.start) for s in spans if s.start < s.end]
        )
        idle_since = time.monotonic()
        while pending:
            batch: list[Message] = []
            for message in self._consumer.consume(batch_size, timeout=0.5):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise ReplayError(f"reading dead letters failed: {error.str()}")
                topic, partition, offset = coordinates(message)
                end = pending.get((topic, partition))
                if end is None or offset >= end:
                    continue  # past the end taken at the start
                batch.append(message)
                if offset + 1 >= end:
                    self._finish(pending, topic, partition)
            if batch:
                idle_since = time.monotonic()
                yield batch
                continue
            # Nothing came: a partition whose last offsets are gone (compaction, control
            # records) is done once its position reached the end.
            positions = self._consumer.position(
                [TopicPartition(topic, partition) for topic, partition in pending]
            )
            for tp in positions:
                if tp.offset >= 0 and tp.offset >= pending.get((tp.topic, tp.partition), 0):
                    self._finish(pending, tp.topic, tp.partition)
            if pending and time.monotonic() - idle_since > _READ_IDLE_TIMEOUT_S:
                missing = ", ".join(f"{t}[{p}]" for t, p in sorted(pending))
                raise ReplayError(
                    f"no dead letters arrived for {_READ_IDLE_TIMEOUT_S:.0f}s from {missing}"
                )

    def _finish(self, pending: dict[tuple[str, int], int], topic: str, partition: int) -> None:
        pending.pop((topic, partition), None)
        self._consumer.pause([TopicPartition(topic, partition)])


class DeadLetterReader:
    """Reads the dead-letter topics of some lanes, start to end, committing nothing.

    Args:
        settings: Connection settings.
        timeout_s: Longest wait of one metadata or watermark request.
    """

    def __init__(self, settings: KafkaSettings, *, timeout_s: float = 10.0) -> None:
        self._settings = settings
        self._timeout_s = timeout_s

    def read(
        self, lanes: Sequence[Lane], dead_letter_filter: DeadLetterFilter | None = None
    ) -> Iterator[DeadLetter]:
        """Every dead letter of ``lanes`` present now that passes the filter, partition by
        partition in offset order."""
        selection = dead_letter_filter or DeadLetterFilter()
        consumer = Consumer(_consumer_config(self._settings, f"{self._settings.client_id}-dlq"))
        try:
            reader = _SpanReader(consumer, self._timeout_s)
            spans = reader.spans(
                [lane.dlq_topic for lane in lanes], selection, from_committed=False
            )
            for batch in reader.batches(spans, 500):
                for message in batch:
                    dead_letter = DeadLetter.from_message(message)
                    if selection.matches(dead_letter):
                        yield dead_letter
        finally:
            consumer.close()


@dataclass(slots=True)
class ReplayResult:
    """What a replay did (or, in a dry run, would do).

    Attributes:
        group: The replay's consumer group.
        replayed: Dead letters produced (dry run: selected), by target topic.
        skipped: Dead letters read and not selected by the filter.
        reasons: Dead letters produced (dry run: selected), by parking reason.
        restamped: Dead letters produced with the current time instead of their original
            timestamp, which had used up half the target topic's retention (see
            :meth:`DeadLetterReplayer.run`).
        dry_run: Nothing was produced nor committed.
    """

    group: str
    replayed: Counter[str] = field(default_factory=Counter)
    skipped: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    restamped: int = 0
    dry_run: bool = False

    @property
    def total(self) -> int:
        return sum(self.replayed.values())


class DeadLetterReplayer:
    """Produces dead letters back to a lane topic, at least once; see the module docstring.

    Args:
        settings: Connection settings.
        group: The replay's consumer group (its committed offsets are where a rerun resumes).
        to_topic: Send every selected dead letter here instead of its original topic.
        keep_timestamp: Produce with the original timestamp (the chunk's version) when known.
        batch_size: Dead letters per produce-flush-commit cycle.
        flush_timeout_s: Longest wait for a batch's delivery reports.
        timeout_s: Longest wait of one metadata, watermark or commit request.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        group: str,
        to_topic: str | None = None,
        keep_timestamp: bool = True,
        batch_size: int = 500,
        flush_timeout_s: float = 60.0,
        timeout_s: float = 10.0,
    ) -> None:
        if batch_size < 1:
            raise ConfigError("batch_size must be at least 1")
        self._settings = settings
        self.group = group
        self._to_topic = to_topic
        self._keep_timestamp = keep_timestamp
        self._batch_size = batch_size
        self._flush_timeout_s = flush_timeout_s
        self._timeout_s = timeout_s
        self._consumer: Consumer | None = None
        self._admin: AdminClient | None = None  # one for every target topic of a replay
        self._known_targets: set[str] = set()
        self._retention_ms: dict[str, int | None] = {}
        self._restamp_warned: set[str] = set()

    def run(
        self,
        lanes: Sequence[Lane],
        dead_letter_filter: DeadLetterFilter | None = None,
        *,
        dry_run: bool = False,
        on_batch: Callable[[ReplayResult], None] | None = None,
    ) -> ReplayResult:
        """Replay the dead letters of ``lanes`` present now that pass the filter.

        Args:
            lanes: Whose dead-letter topics to read.
            dead_letter_filter: Which dead letters to replay (default: all).
            dry_run: Read and count only: produce nothing, commit nothing.
            on_batch: Called after every committed batch with the running totals.

        Returns:
            What was replayed.

        Raises:
            ReplayError: a batch was not delivered or not committed (rerun to resume).
            ConfigError: a dead-letter topic does not exist.
        """
        selection = dead_letter_filter or DeadLetterFilter()
        result = ReplayResult(group=self.group, dry_run=dry_run)
        consumer = Consumer(_consumer_config(self._settings, self.group))
        self._consumer = consumer
        self._known_targets = set()
        producer = None if dry_run else Producer(replay_producer_config(self._settings))
        try:
            reader = _SpanReader(consumer, self._timeout_s)
            spans = reader.spans([lane.dlq_topic for lane in lanes], selection, from_committed=True)
            for batch in reader.batches(spans, self._batch_size):
                self._replay_batch(batch, selection, producer, result)
                if producer is not None:
                    self._commit(consumer, batch)
                if on_batch is not None:
                    on_batch(result)
        finally:
            if producer is not None:
                producer.purge()  # whatever was not flushed was not committed either
                producer.flush(0)
            consumer.close()
            self._consumer = None
            self._admin = None
        return result

    def _check_target(self, topic: str) -> None:
        """Fail at once on a target topic that does not exist (a produce would wait for it),
        and learn its time retention."""
        if topic in self._known_targets:
            return
        if self._consumer is None:
            raise ReplayError("the replay is not running")
        try:
            metadata = self._consumer.list_topics(topic, timeout=self._timeout_s)
        except KafkaException as exc:
            raise ReplayError(f"could not look up the replay target topic {topic}: {exc}") from exc
        info = metadata.topics.get(topic)
        if info is None or info.error is not None:
            raise ConfigError(f"replay target topic {topic} does not exist")
        self._known_targets.add(topic)
        if self._keep_timestamp:
            self._retention_ms[topic] = self._time_retention_ms(topic)

    def _time_retention_ms(self, topic: str) -> int | None:
        """``retention.ms`` of a topic that deletes by time; None if it keeps records forever
        (or its configuration cannot be read: then original timestamps are kept, with a
        warning)."""
        if self._admin is None:
            self._admin = AdminClient(self._settings.admin_config())
        admin = self._admin
        resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
        try:
            entries = admin.describe_configs([resource])[resource].result(self._timeout_s)
        except (KafkaException, TimeoutError) as exc:  # e.g. no DescribeConfigs right
            log.warning(
                "could not read the retention of %s (%s): original timestamps are kept, and a"
                " dead letter older than its retention may be deleted before it is read",
                topic,
                exc,
            )
            return None
        policy = entries["cleanup.policy"].value if "cleanup.policy" in entries else "delete"
        retention = entries["retention.ms"].value if "retention.ms" in entries else None
        if "delete" not in (policy or "") or retention is None or int(retention) < 0:
            return None
        return int(retention)

    def _replay_batch(
        self,
        batch: Sequence[Message],
        selection: DeadLetterFilter,
        producer: Producer | None,
        result: ReplayResult,
    ) -> None:
        """Steps 2 and 3: produce the selected ones, then wait for every delivery report."""
        failures: list[str] = []
        now_ms = int(time.time() * 1000)

        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                failures.append(error.str())
            elif message.offset() is None:
                # No offset: librdkafka may have inferred the ack from a later batch's, which
                # can be wrong (KAFKA-15591, see docs/reliability.md). Not committed: a rerun
                # sends it again.
                failures.append(f"{message.topic()}[{message.partition()}] acked without offset")

        for message in batch:
            dead_letter = DeadLetter.from_message(message)
            if not selection.matches(dead_letter):
                result.skipped += 1
                continue
            target = dead_letter.target_topic(self._to_topic)
            self._check_target(target)
            original = dead_letter.original_timestamp_ms if self._keep_timestamp else None
            timestamp = replay_timestamp(original, self._retention_ms.get(target), now_ms=now_ms)
            if timestamp != original:
                result.restamped += 1
                self._warn_restamped(target)
            if producer is not None:
                extra = {} if timestamp is None else {"timestamp": timestamp}
                self._produce(producer, target, dead_letter, delivered, extra)
            result.replayed[target] += 1
            result.reasons[dead_letter.reason] += 1
        if producer is None:
            return
        remaining = producer.flush(self._flush_timeout_s)
        if remaining or failures:
            detail = failures[0] if failures else f"{remaining} not acknowledged in time"
            raise ReplayError(
                f"replay batch not delivered ({detail}); nothing of it was committed, rerun to"
                " resume"
            )

    def _warn_restamped(self, target: str) -> None:
        if target in self._restamp_warned:
            return
        self._restamp_warned.add(target)
        log.warning(
            "dead letters older than half the retention of %s are produced with the current"
            " time (their original timestamp is in the %s header): with the original one the"
            " broker could delete them before they are read",
            target,
            HEADER_REPLAY_ORIGINAL_TIMESTAMP,
        )

    @staticmethod
    def _produce(
        producer: Producer,
        target: str,
        dead_letter: DeadLetter,
        delivered: Callable[[KafkaError | None, Message], None],
        extra: dict[str, Any],
    ) -> None:
        replay_headers: list[tuple[str, str | bytes | None]] = list(dead_letter.replay_headers())
        for attempt in range(2):
            try:
                producer.produce(
                    target,
                    dead_letter.value,
                    dead_letter.key,
                    headers=replay_headers,
                    on_delivery=delivered,
                    **extra,
                )
            except BufferError:
                if attempt:
                    raise ReplayError(f"the local queue for {target} stays full") from None
                producer.poll(1.0)  # let the queue drain, then once more
                continue
            except Exception as exc:  # any refusal: this batch is not done
                raise ReplayError(f"could not produce to {target}: {exc}") from exc
            return

    def _commit(self, consumer: Consumer, batch: Sequence[Message]) -> None:
        """Step 4: commit after the batch's last dead letter of each partition."""
        after: dict[tuple[str, int], int] = {}
        for message in batch:
            topic, partition, offset = coordinates(message)
            after[(topic, partition)] = max(after.get((topic, partition), 0), offset + 1)
        offsets = [TopicPartition(t, p, o) for (t, p), o in after.items()]
        try:
            committed = consumer.commit(offsets=offsets, asynchronous=False)
        except Exception as exc:  # KafkaException or any client refusal
            raise ReplayError(f"committing the replay's position failed: {exc}") from exc
        for tp in committed or []:
            if tp.error is not None:
                raise ReplayError(f"committing {tp.topic}[{tp.partition}] failed: {tp.error}")


def lanes_named(all_lanes: Iterable[Lane], names: Sequence[str]) -> list[Lane]:
    """The lanes called ``names`` (every lane when empty)."""
    lanes = list(all_lanes)
    if not names:
        return lanes
    known = {lane.name: lane for lane in lanes}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"unknown lane(s) {unknown}; lanes are {list(known)}")
    return [known[name] for name in names]
