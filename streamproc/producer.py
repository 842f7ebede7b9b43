"""ChunkProducer: validate, route by lane, encode to Avro, produce with the chunk's stable key.

The producer is idempotent with ``acks=all``; batching and compression are tuned for bulk loads.
Every delivery report is counted per lane, so a caller can tell exactly what the brokers have
acknowledged. Oversized chunks are rejected with :class:`~streamproc.errors.OversizeError` before
anything is sent.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import NamedTuple, Self

from confluent_kafka import TIMESTAMP_CREATE_TIME, KafkaError, KafkaException, Message, Producer

from streamproc.chunk import Chunk, ChunkLimits
from streamproc.codec import ChunkCodec, Framing
from streamproc.errors import ConfigError, OversizeError, ProduceError
from streamproc.lanes import Lane, Lanes
from streamproc.messages import coordinates
from streamproc.registry import RegistrySchemaIds, registry_codec
from streamproc.settings import ProducerSettings

DeliveryCallback = Callable[["Delivery"], None]

log = logging.getLogger(__name__)

# How long produce() waits for room in librdkafka's queue before trying again.
_QUEUE_FULL_POLL_S = 0.05
# Delivery reports are served every this many produce() calls (and by flush()): a poll per
# message cost a tenth of the produce path, and librdkafka queues the reports meanwhile.
POLL_EVERY = 64


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of one produced message, as its delivery report told it.

    ``offset`` is None when librdkafka reports none. librdkafka reports a success without an
    offset when it infers the ack from a later batch's (an "implicit ack") or when the broker
    answers a resend with "duplicate sequence number". The inference can be wrong: see
    :attr:`~streamproc.settings.ProducerSettings.resend_unconfirmed`, on by default, which sends
    such a message once more and reports only the resend's outcome, so that a success without
    an offset reaches this callback only if the resend's report has none either.
    """

    lane: str
    topic: str
    partition: int
    offset: int | None
    key: bytes | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


class _Resend(NamedTuple):
    """A message to produce again, as its delivery report gave it."""

    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str | bytes | None] | list[tuple[str, str | bytes | None]] | None
    timestamp_ms: int  # the original create time (a chunk's version); 0: the producer's clock


@dataclass(slots=True)
class LaneCounts:
    """Per-lane produce counters."""

    sent: int = 0
    delivered: int = 0
    failed: int = 0
    # Acked without an offset and sent once more (see ProducerSettings.resend_unconfirmed).
    resent: int = 0


@dataclass(slots=True)
class ProducerStats:
    """Counters of everything this producer sent, by lane."""

    lanes: dict[str, LaneCounts] = field(default_factory=dict)
    rejected: int = 0

    @property
    def in_flight(self) -> int:
        return sum(c.sent - c.delivered - c.failed for c in self.lanes.values())

    @property
    def failed(self) -> int:
        return sum(c.failed for c in self.lanes.values())


class ChunkProducer:
    """Produce chunks to their lane's topic.

    Args:
        settings: Connection and tuning; ``settings.topology`` names the lane topics.
        codec: The Avro codec (one is built from the bundled schemas if omitted).
        on_delivery: Called with each delivery outcome as reports are served: every
            :data:`POLL_EVERY` :meth:`produce` calls, and in :meth:`poll` and :meth:`flush`.
        on_resend: Called with the lane's name when a chunk acknowledged without an offset is
            sent once more (see ``ProducerSettings.resend_unconfirmed``).

    Example:
        >>> with ChunkProducer(ProducerSettings(bootstrap_servers="127.0.0.1:9092")) as p:
        ...     p.produce(Chunk(chunk_html="<p>hi</p>", tracking_id="doc-1"))
    """

    def __init__(
        self,
        settings: ProducerSettings | None = None,
        *,
        codec: ChunkCodec | None = None,
        on_delivery: DeliveryCallback | None = None,
        on_resend: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings or ProducerSettings()
        self.lanes: Lanes = self.settings.topology
        self.framing = Framing(self.settings.framing)
        self._schema_ids: RegistrySchemaIds | None = None
        if codec is None:
            registry = self.settings.schema_registry(
                auto_register=self.settings.schema_registry_auto_register
            )
            if self.framing is Framing.SCHEMA_REGISTRY and registry is None:
                raise ConfigError("schema-registry framing needs schema_registry_url")
            limits = ChunkLimits(max_encoded_bytes=self.settings.max_chunk_bytes)
            codec, self._schema_ids = registry_codec(registry, self.lanes.topics, limits)
        self.codec = codec
        self.stats = ProducerStats({lane.name: LaneCounts() for lane in self.lanes})
        self._on_delivery = on_delivery
        self._on_resend = on_resend
        self._lane_of_topic = {lane.topic: lane.name for lane in self.lanes}
        self._counts_of_topic = {lane.topic: self.stats.lanes[lane.name] for lane in self.lanes}
        self._producer = Producer(self.settings.to_librdkafka())
        # Bound once: the hot path below runs per chunk.
        self._encode = codec.encode
        self._route = self.lanes.route
        self._produce = self._producer.produce
        self._poll = self._producer.poll
        self._delivery_callback = self._delivered
        self._unpolled = 0
        self._resend_unconfirmed = self.settings.resend_unconfirmed
        self._resend_callback = functools.partial(self._delivered, resent=True)
        # Resends librdkafka's full queue refused inside a delivery callback, produced next.
        self._resend_backlog: list[_Resend] = []

    def produce(
        self,
        chunk: Chunk,
        *,
        lane: Lane | None = None,
        headers: Mapping[str, str | bytes] | None = None,
    ) -> Lane:
        """Encode ``chunk`` and queue it for its lane's topic.

        Args:
            chunk: A validated chunk.
            lane: Override the routing (default: by ``chunk.low_priority``).
            headers: Extra Kafka headers.

        Returns:
            The lane the chunk was sent to.

        Raises:
            OversizeError: the encoded chunk exceeds ``settings.max_chunk_bytes``.
            ProduceError: librdkafka refused the message outright.
        """
        target = lane or self._route(chunk)
        try:
            value = self._encode(chunk, self.framing)  # enforces max_chunk_bytes
        except OversizeError:
            self.stats.rejected += 1
            raise
        tracking_id = chunk.tracking_id
        key = (chunk.key if tracking_id is None else tracking_id).encode()
        if headers:
            self.produce_encoded(target, key, value, headers)
            return target
        try:
            self._produce(target.topic, value, key, on_delivery=self._delivery_callback)
        except BufferError:
            self.produce_encoded(target, key, value)  # waits for room, then produces
            return target
        except KafkaException as exc:
            raise ProduceError(f"could not produce to {target.topic}: {exc}") from exc
        self._counts_of_topic[target.topic].sent += 1
        self._after_send()
        return target

    def produce_encoded(
        self,
        lane: Lane,
        key: bytes | None,
        value: bytes,
        headers: Mapping[str, str | bytes] | None = None,
    ) -> None:
        """Queue already-encoded bytes for ``lane`` (the fast path for re-sends and tools)."""
        header_list: list[tuple[str, str | bytes | None]] | None = (
            list(headers.items()) if headers else None
        )
        while True:
            try:
                self._produce(
                    lane.topic, value, key, headers=header_list, on_delivery=self._delivery_callback
                )
                break
            except BufferError:
                # librdkafka's queue is full: serve delivery reports to make room, then retry.
                self._poll(_QUEUE_FULL_POLL_S)
            except KafkaException as exc:
                raise ProduceError(f"could not produce to {lane.topic}: {exc}") from exc
        self.stats.lanes[lane.name].sent += 1
        self._after_send()

    def _after_send(self) -> None:
        """Serve delivery reports once every ``POLL_EVERY`` messages queued."""
        self._unpolled += 1
        if self._unpolled >= POLL_EVERY:
            self._unpolled = 0
            self._poll(0)
            if self._resend_backlog:
                self._produce_backlog()

    def produce_many(self, chunks: Iterable[Chunk]) -> int:
        """Produce every chunk of ``chunks``; returns how many were queued."""
        count = 0
        for chunk in chunks:
            self.produce(chunk)
            count += 1
        return count

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery reports; returns how many were served."""
        served: int = self._producer.poll(timeout_s)
        if self._resend_backlog:
            self._produce_backlog(until=None)  # the next poll tries again while the queue is full
        return served

    def flush(self, timeout_s: float = 60.0) -> None:
        """Wait until every queued message is acknowledged or failed.

        Raises:
            ProduceError: messages are still undelivered after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        remaining: int = self._producer.flush(timeout_s)
        # A report served by this flush can queue a resend; flush again until none is left.
        while not remaining and self._resend_backlog and time.monotonic() < deadline:
            self._produce_backlog(until=deadline)
            remaining = self._producer.flush(max(0.0, deadline - time.monotonic()))
        remaining += len(self._resend_backlog)
        if remaining:
            raise ProduceError(f"{remaining} messages still undelivered after {timeout_s:.0f}s")

    def close(self, timeout_s: float = 60.0) -> None:
        """Flush and close the registry client; librdkafka's is released when collected."""
        try:
            self.flush(timeout_s)
        finally:
            if self._schema_ids is not None:
                self._schema_ids.close()

    def _resend(self, msg: Message) -> None:
        """Send again a message acknowledged without an offset.

        librdkafka acknowledges a failed batch by inference when a later batch to its partition
        succeeds, assuming the broker accepts sequence numbers only in order. A broker that has
        no state for this producer on the partition accepts any sequence (Apache Kafka before
        4.5, KAFKA-15591), so a batch refused with ``NOT_LEADER_OR_FOLLOWER`` while a newly led
        partition was taken on is reported delivered and was never written. The report cannot
        tell that case from a batch that was written but whose answer was lost, so the message
        is sent again: at worst a duplicate, which at-least-once consumers absorb, never a loss.
        The resend keeps the original timestamp (the chunk's version: a sink must not take the
        resend for a newer version than one sent after it) and goes to the same partition.
        """
        topic = msg.topic() or ""
        partition = msg.partition()
        log.warning(
            "%s[%s]: message acknowledged without an offset (inferred from a later batch, which "
            "can be wrong: KAFKA-15591); sending it once more",
            topic,
            partition,
        )
        timestamp_type, timestamp_ms = msg.timestamp()
        self._resend_backlog.append(
            _Resend(
                topic,
                -1 if partition is None else partition,  # -1: the partitioner's choice
                msg.key(),
                msg.value(),
                msg.headers(),
                timestamp_ms if timestamp_type == TIMESTAMP_CREATE_TIME else 0,
            )
        )
        if len(self._resend_backlog) == 1:
            self._produce_backlog(until=None)

    def _produce_backlog(self, *, until: float | None = math.inf) -> None:
        """Produce the queued resends, to their first partition, waiting for room in
        librdkafka's queue up to the monotonic time ``until`` (None: not at all).

        A resend librdkafka refuses outright is a failed delivery: counted and reported.
        """
        while self._resend_backlog:
            resend = self._resend_backlog[0]
            try:
                self._produce(
                    resend.topic,
                    resend.value,
                    resend.key,
                    partition=resend.partition,
                    headers=resend.headers,
                    timestamp=resend.timestamp_ms,
                    on_delivery=self._resend_callback,
                )
            except BufferError:
                # Inside a delivery callback (until None) the next poll or flush produces it.
                if until is None or time.monotonic() >= until:
                    return
                self._poll(_QUEUE_FULL_POLL_S)
                continue
            except KafkaException as exc:
                self._resend_backlog.pop(0)
                self._refused(resend, exc)
                continue
            self._resend_backlog.pop(0)

    def _refused(self, resend: _Resend, exc: KafkaException) -> None:
        counts = self._counts_of_topic[resend.topic]
        counts.failed += 1
        log.error("%s[%s]: the resend was refused: %s", resend.topic, resend.partition, exc)
        if self._on_delivery is not None:
            self._on_delivery(
                Delivery(
                    lane=self._lane_of_topic.get(resend.topic, resend.topic),
                    topic=resend.topic,
                    partition=resend.partition,
                    offset=None,
                    key=resend.key,
                    error=f"resend refused: {exc}",
                )
            )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _delivered(self, err: KafkaError | None, msg: Message, resent: bool = False) -> None:
        """Count and pass on one delivery report; ``resent``: a resend's, the final one."""
        topic: str = msg.topic()  # type: ignore[assignment]  # set on a delivered message
        counts = self._counts_of_topic[topic]
        if err is None:
            if msg.offset() is None:  # rare: one check per report on the common path
                if not resent and self._resend_unconfirmed:
                    counts.resent += 1
                    if self._on_resend is not None:
                        self._on_resend(self._lane_of_topic.get(topic, topic))
                    self._resend(msg)
                    return
                if resent:
                    log.warning(
                        "%s[%s]: a resent message was acknowledged without an offset again; "
                        "reporting it delivered as librdkafka does",
                        topic,
                        msg.partition(),
                    )
            counts.delivered += 1
        else:
            counts.failed += 1
        if self._on_delivery is not None:
            topic, partition, offset = coordinates(msg)
            self._on_delivery(
                Delivery(
                    lane=self._lane_of_topic.get(topic, topic),
                    topic=topic,
                    partition=partition,
                    offset=offset if offset is not None and offset >= 0 else None,
                    key=key.encode() if isinstance(key := msg.key(), str) else key,
                    error=None if err is None else err.str(),
                )
            )
