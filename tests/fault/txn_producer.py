"""A transactional producer for fault scenarios: acknowledged means committed.

Records of a transaction are acknowledged by the broker as they are written, long before the
transaction commits (or aborts, or hangs): a line goes to ``acked.tsv`` only once its transaction
committed, so the ledger lists exactly what a ``read_committed`` consumer must handle.

Run as a child process so a scenario can kill it in the middle of a transaction::

    python -m tests.fault.txn_producer BOOTSTRAP TOPIC LEDGER_DIR TRANSACTIONAL_ID \\
        --commit N --size M --prefix P --transaction-timeout-ms T

commits ``N`` transactions of ``M`` chunks, then begins one more, writes ``M`` chunks, flushes
them, lists their ids in ``LEDGER_DIR/hung.txt`` and waits to be killed.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterable
from pathlib import Path

from confluent_kafka import KafkaError, Message, Producer

from streamproc.chunk import Chunk
from streamproc.codec import ChunkCodec
from streamproc.messages import coordinates
from streamproc.samples import sample_chunks
from tests.fault.ledger import ACKED, LedgerFile

HUNG = "hung.txt"
_TIMEOUT_S = 30.0


class TransactionalWriter:
    """Writes chunks to one topic in transactions, recording committed ones in ``acked.tsv``."""

    def __init__(
        self,
        bootstrap: str,
        transactional_id: str,
        directory: Path,
        *,
        transaction_timeout_ms: int | None = None,
    ) -> None:
        config: dict[str, object] = {
            "bootstrap.servers": bootstrap,
            "transactional.id": transactional_id,
            "partitioner": "murmur2_random",
            "linger.ms": 5,
        }
        if transaction_timeout_ms is not None:
            config["transaction.timeout.ms"] = transaction_timeout_ms
        self._producer = Producer(config)
        self._producer.init_transactions(_TIMEOUT_S)
        self._codec = ChunkCodec()
        self._acked = LedgerFile(directory / ACKED)
        self.produced = 0
        self.committed: list[str] = []
        self.aborted: list[str] = []

    def _write(self, topic: str, chunks: Iterable[Chunk]) -> list[tuple[str, str, int, int]]:
        written: list[tuple[str, str, int, int]] = []
        failures: list[str] = []

        def delivered(error: KafkaError | None, message: Message) -> None:
            key = message.key()
            identifier = key.decode() if isinstance(key, bytes) else str(key)
            if error is None:
                written.append((identifier, *coordinates(message)))
            else:
                failures.append(f"{identifier}: {error.str()}")

        self._producer.begin_transaction()
        for chunk in chunks:
            self.produced += 1
            self._producer.produce(
                topic, self._codec.encode(chunk), chunk.key.encode(), on_delivery=delivered
            )
        self._producer.flush(_TIMEOUT_S)
        assert not failures, failures
        return written

    def transaction(self, topic: str, chunks: Iterable[Chunk], *, commit: bool) -> list[str]:
        """One transaction of ``chunks``, committed or aborted; returns their ids."""
        written = self._write(topic, chunks)
        ids = [row[0] for row in written]
        if commit:
            self._producer.commit_transaction(_TIMEOUT_S)
            self._acked.append(written)
            self.committed += ids
        else:
            self._producer.abort_transaction(_TIMEOUT_S)
            self.aborted += ids
        return ids

    def begin_and_hang(self, topic: str, chunks: Iterable[Chunk], hung_file: Path) -> None:
        """Write ``chunks`` in a transaction that never ends; list their ids, then wait."""
        written = self._write(topic, chunks)
        text = "".join(f"{row[0]}\n" for row in written)
        descriptor = os.open(hung_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(descriptor, text.encode())
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        while True:
            time.sleep(1)


def read_hung(directory: Path) -> list[str]:
    path = directory / HUNG
    return path.read_text().split() if path.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bootstrap")
    parser.add_argument("topic")
    parser.add_argument("directory", type=Path)
    parser.add_argument("transactional_id")
    parser.add_argument("--commit", type=int, default=3)
    parser.add_argument("--size", type=int, default=50)
    parser.add_argument("--prefix", default="txn")
    parser.add_argument("--transaction-timeout-ms", type=int, default=5_000)
    args = parser.parse_args()
    writer = TransactionalWriter(
        args.bootstrap,
        args.transactional_id,
        args.directory,
        transaction_timeout_ms=args.transaction_timeout_ms,
    )
    for number in range(args.commit):
        chunks = sample_chunks(args.size, prefix=f"{args.prefix}-c{number}", seed=number)
        writer.transaction(args.topic, chunks, commit=True)
    hung = sample_chunks(args.size, prefix=f"{args.prefix}-hung", seed=99)
    writer.begin_and_hang(args.topic, hung, args.directory / HUNG)


if __name__ == "__main__":
    main()
