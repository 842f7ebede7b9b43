"""Drain a topic with the PriorityConsumer of a given streamproc source tree and the null sink.

    python benchmarks/consume_side.py --src DIR --bootstrap-servers HOST:PORT --prefix PREFIX \
        --group GROUP --count N

Imports ``streamproc`` from ``DIR`` (a checkout or ``git archive`` of another version) ahead of
the installed one, reads ``N`` chunks of the lane topics ``PREFIX.*`` with a fresh group and
prints one JSON line ``{"count", "first", "last", "module"}``: perf_counter seconds of the first
chunk handled and of the Nth, and where ``streamproc`` was imported from. ``consume --before-src
DIR`` runs it beside the current version, so two versions are compared in one run. Standalone on
purpose: it imports nothing from ``benchmarks``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--src", type=Path, required=True, help="Source tree holding streamproc/.")
    parser.add_argument("--bootstrap-servers", required=True, help="Kafka bootstrap servers.")
    parser.add_argument("--prefix", required=True, help="Lane topic prefix.")
    parser.add_argument("--group", required=True, help="Consumer group id (use a fresh one).")
    parser.add_argument("--count", type=int, required=True, help="Chunks to read.")
    parser.add_argument("--timeout", type=float, default=300.0, help="Give up after (s).")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.src.resolve()))
    # Imported here, after the path is set, so the tree given wins over the installed one.
    import streamproc
    from streamproc.consumer import PriorityConsumer
    from streamproc.handlers import ChunkRecord, NullSink
    from streamproc.settings import ConsumerSettings

    done = threading.Event()
    progress: dict[str, Any] = {"count": 0, "first": 0.0, "last": 0.0}
    progress["module"] = str(Path(streamproc.__file__ or "").resolve().parent)

    class CountingSink(NullSink):
        def handle_batch(self, records: Sequence[ChunkRecord]) -> None:
            if progress["count"] == 0:
                progress["first"] = time.perf_counter()
            super().handle_batch(records)
            progress["count"] += len(records)
            if progress["count"] >= args.count and not done.is_set():
                progress["last"] = time.perf_counter()
                done.set()

    settings = ConsumerSettings(
        bootstrap_servers=args.bootstrap_servers,
        topic_prefix=args.prefix,
        group_id=args.group,
        client_id="streamproc-bench",
    )
    consumer: Any = PriorityConsumer(settings, CountingSink())
    takes_flag = "install_signal_handlers" in inspect.signature(consumer.run).parameters
    runner = threading.Thread(
        target=lambda: (
            consumer.run(install_signal_handlers=False) if takes_flag else consumer.run()
        ),
        daemon=True,
    )
    runner.start()
    done.wait(args.timeout)
    consumer.stop()
    runner.join(60)
    print(json.dumps(progress))
    return 0 if done.is_set() else 1


if __name__ == "__main__":
    sys.exit(main())
