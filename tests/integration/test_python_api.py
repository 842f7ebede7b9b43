"""The Python API against the real broker: the examples of docs/python.md run as shown, and a
cancelled ``run_in_thread`` stops the consumer cleanly (drained and committed) before it raises."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kafka_helpers import Cluster

from streamproc import Chunk, ChunkRecord, PriorityConsumer, run_in_thread

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "python"


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ("produce_and_consume.py", "handled 100 chunks: 75 realtime, 25 bulk"),
        ("asyncio_app.py", "handled 100 chunks; consumer stopped"),
    ],
)
def test_the_documented_examples_run(
    kafka_bootstrap: str, topic_prefix: str, example: str, expected: str
) -> None:
    # The page embeds these very files.
    assert f'--8<-- "examples/python/{example}"' in (REPO / "docs" / "python.md").read_text()
    group = f"{topic_prefix}-example"
    env = {
        **os.environ,
        "STREAMPROC_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "STREAMPROC_TOPIC_PREFIX": topic_prefix,
        "STREAMPROC_GROUP_ID": group,
    }
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / example)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stdout
    # Stopped cleanly: every lane that got chunks is committed to its end.
    cluster = Cluster(kafka_bootstrap, topic_prefix)
    for topic in cluster.lanes.topics:
        highs = cluster.high_watermarks(topic)
        if any(highs.values()):
            assert cluster.committed(group, topic) == highs, topic


def test_cancelling_run_in_thread_drains_and_commits_before_raising(cluster: Cluster) -> None:
    cluster.create_topics(partitions=1)
    cluster.produce(Chunk(chunk_html=f"<p>{i}</p>", tracking_id=f"doc-{i}") for i in range(500))
    handled: list[int] = []
    lock = threading.Lock()

    def slow(record: ChunkRecord) -> None:
        time.sleep(0.01)
        with lock:
            handled.append(record.context.offset)

    consumer = PriorityConsumer(cluster.consumer_settings("embedded", max_batch_messages=10), slow)

    async def application() -> int:
        task = asyncio.create_task(run_in_thread(consumer))
        while len(handled) < 50:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return len(handled)

    handled_when_cancelled = asyncio.run(application())
    assert 50 <= handled_when_cancelled < 500
    # Nothing ran after the cancellation went through, and all of it was committed in order.
    time.sleep(0.3)
    assert len(handled) == handled_when_cancelled
    assert handled == list(range(handled_when_cancelled))
    topic = cluster.lanes.top.topic
    assert cluster.committed("embedded", topic) == {0: handled_when_cancelled}
