"""The ledgers of a fault scenario: append-only, fsynced lines that survive SIGKILL.

Three files in a scenario's directory (RELIABILITY.md, "the ledger"), a fourth if it times chunks:

* ``acked.tsv``: ``id, topic, partition, offset``, one line per delivery report that said the
  broker acknowledged the message (written by :class:`AckLedger`, the producer's callback);
* ``processed.tsv``: ``id, topic, partition, offset, pid``, one line per chunk a handler took,
  written and fsynced before the handler returns (:class:`LedgerHandler`);
* ``dlq.tsv``: ``id, topic, partition, offset, reason``, one line per dead letter found in the
  ``<topic>.dlq`` topics after the scenario (:func:`record_dead_letters`), coordinates being those
  of the original message;
* ``started.tsv``: ``id, lane, topic, partition, offset, pid,
  produced_at, started_at``, one line per chunk as its handler call starts, the two times being
  Unix seconds (the message timestamp, and the handler's clock) (:class:`StartLedger`).

The id of a message is its key (a chunk's ``tracking_id``). A line cut short by SIGKILL mid-write
has too few fields and is ignored: that chunk's handler never returned.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaError, Message, Producer

from streamproc.deadletter import HEADER_ERROR_REASON, HEADER_OFFSET, HEADER_PARTITION, HEADER_TOPIC
from streamproc.handlers import ChunkRecord
from streamproc.lanes import dead_letter_topic
from streamproc.messages import coordinates, headers
from streamproc.producer import Delivery
from tests.integration.kafka_helpers import Cluster, read_topic

ACKED = "acked.tsv"
PROCESSED = "processed.tsv"
DEAD_LETTERED = "dlq.tsv"
STARTED = "started.tsv"


@dataclass(frozen=True, slots=True)
class Acked:
    id: str
    topic: str
    partition: int
    offset: int | None  # None: the report had none (librdkafka inferred the ack)


@dataclass(frozen=True, slots=True)
class Processed:
    id: str
    topic: str
    partition: int
    offset: int
    pid: int


@dataclass(frozen=True, slots=True)
class DeadLettered:
    id: str
    topic: str
    partition: int
    offset: int
    reason: str


@dataclass(frozen=True, slots=True)
class Started:
    id: str
    lane: str
    topic: str
    partition: int
    offset: int
    pid: int
    produced_at: float
    started_at: float

    @property
    def latency_s(self) -> float:
        """From the message timestamp (produce time) to the start of its handler call."""
        return self.started_at - self.produced_at


class LedgerFile:
    """One append-only ledger file; every :meth:`append` is written and fsynced at once.

    ``sync=False`` skips the fsync: a write still survives SIGKILL of the writer (the kernel has
    it), only not a crash of the machine, which no scenario does.
    """

    def __init__(self, path: Path, *, sync: bool = True) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._sync = sync
        self._lock = threading.Lock()

    def append(self, rows: Iterable[Sequence[object]]) -> None:
        text = "".join("\t".join(str(field) for field in row) + "\n" for row in rows)
        if not text:
            return
        with self._lock:
            os.write(self._fd, text.encode())
            if self._sync:
                os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def _rows(path: Path, fields: int) -> list[list[str]]:
    if not path.exists():
        return []
    return [row for line in path.read_text().splitlines() if len(row := line.split("\t")) == fields]


def read_acked(directory: Path) -> list[Acked]:
    return [
        Acked(r[0], r[1], int(r[2]), None if r[3] == "None" else int(r[3]))
        for r in _rows(directory / ACKED, 4)
    ]


def read_processed(directory: Path) -> list[Processed]:
    return [
        Processed(r[0], r[1], int(r[2]), int(r[3]), int(r[4]))
        for r in _rows(directory / PROCESSED, 5)
    ]


def read_dead_lettered(directory: Path) -> list[DeadLettered]:
    return [
        DeadLettered(r[0], r[1], int(r[2]), int(r[3]), r[4])
        for r in _rows(directory / DEAD_LETTERED, 5)
    ]


def read_started(directory: Path) -> list[Started]:
    return [
        Started(r[0], r[1], r[2], int(r[3]), int(r[4]), int(r[5]), float(r[6]), float(r[7]))
        for r in _rows(directory / STARTED, 8)
    ]


class StartLedger:
    """A ``before`` hook of :class:`LedgerHandler`: one ``started.tsv`` line per chunk of a call.

    Written before the chunk is recorded as processed, so a chunk whose handler started is timed
    even when a kill stops the call before it returns.
    """

    def __init__(self, directory: Path) -> None:
        self._file = LedgerFile(directory / STARTED, sync=False)
        self._pid = os.getpid()

    def __call__(self, records: Sequence[ChunkRecord]) -> None:
        started_at = time.time()
        self._file.append(
            (
                r.chunk.key,
                r.context.lane,
                r.context.topic,
                r.context.partition,
                r.context.offset,
                self._pid,
                f"{r.context.timestamp_ms / 1000:.3f}",
                f"{started_at:.6f}",
            )
            for r in records
        )

    def close(self) -> None:
        self._file.close()


class AckLedger:
    """Delivery-report recorder: acknowledged messages go to ``acked.tsv``, failures are kept.

    Usable as ``ChunkProducer(on_delivery=ledger.on_delivery)`` and, for raw bytes produced with a
    plain confluent-kafka producer, via :meth:`produce_raw`.
    """

    def __init__(self, directory: Path) -> None:
        self._file = LedgerFile(directory / ACKED)
        self.produced = 0
        self.acknowledged = 0
        self.failures: list[str] = []

    def on_delivery(self, delivery: Delivery) -> None:
        if delivery.ok and delivery.key is not None:
            self.acknowledged += 1
            self._file.append(
                [(delivery.key.decode(), delivery.topic, delivery.partition, delivery.offset)]
            )
        else:
            self.failures.append(f"{delivery.key!r}: {delivery.error}")

    def produce_raw(self, producer: Producer, topic: str, key: str, value: bytes) -> None:
        """Produce raw bytes with a plain producer, recording the delivery like the others."""

        def delivered(err: KafkaError | None, message: Message) -> None:
            if err is None:
                self.acknowledged += 1
                self._file.append([(key, *coordinates(message))])
            else:
                self.failures.append(f"{key}: {err.str()}")

        self.produced += 1
        producer.produce(topic, value, key.encode(), on_delivery=delivered)

    def close(self) -> None:
        self._file.close()


class LedgerHandler:
    """A batch handler that writes every chunk to ``processed.tsv`` before returning.

    Args:
        directory: The scenario's ledger directory.
        before: Called with each batch before it is recorded; raising from it fails the batch
            (nothing of it is recorded), sleeping in it slows the handler down.
        after: Called with each batch once it is recorded (a kill here leaves it handled but
            not stored: the uncommitted window).
    """

    def __init__(
        self,
        directory: Path,
        before: Callable[[Sequence[ChunkRecord]], None] | None = None,
        after: Callable[[Sequence[ChunkRecord]], None] | None = None,
    ) -> None:
        self._file = LedgerFile(directory / PROCESSED)
        self._before = before
        self._after = after
        self._pid = os.getpid()
        self.handled = 0
        self.handled_by_lane: dict[str, int] = {}
        self.last_handled_at = time.monotonic()

    def handle_batch(self, records: Sequence[ChunkRecord]) -> None:
        if self._before is not None:
            self._before(records)
        self._file.append(
            (r.chunk.key, r.context.topic, r.context.partition, r.context.offset, self._pid)
            for r in records
        )
        self.handled += len(records)
        for record in records:
            lane = record.context.lane
            self.handled_by_lane[lane] = self.handled_by_lane.get(lane, 0) + 1
        self.last_handled_at = time.monotonic()
        if self._after is not None:
            self._after(records)

    def close(self) -> None:
        self._file.close()


def record_dead_letters(directory: Path, cluster: Cluster) -> list[DeadLettered]:
    """Read the ``<topic>.dlq`` of every lane and write what it holds to ``dlq.tsv``."""
    ledger = LedgerFile(directory / DEAD_LETTERED)
    try:
        for topic in cluster.lanes.topics:
            for message in read_topic(cluster.bootstrap, dead_letter_topic(topic)):
                found = {name: value.decode() for name, value in headers(message)}
                key = message.key()
                ledger.append(
                    [
                        (
                            key.decode() if key is not None else "",
                            found[HEADER_TOPIC],
                            found[HEADER_PARTITION],
                            found[HEADER_OFFSET],
                            found[HEADER_ERROR_REASON],
                        )
                    ]
                )
    finally:
        ledger.close()
    return read_dead_lettered(directory)
