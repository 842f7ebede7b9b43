"""Realistic synthetic chunks for the demo, benchmarks and tests (deterministic for a seed)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator

from streamproc.chunk import Chunk

_WORDS = (
    "kafka", "lane", "realtime", "bulk", "partition", "offset", "consumer", "producer", "schema",
    "avro", "index", "vector", "search", "latency", "throughput", "backlog", "migration",
    "document", "chunk", "update", "edit", "tenant", "shard",
)  # fmt: skip
_TAGS = ("news", "docs", "faq", "blog", "legal", "support", "product", "release")


def sample_chunk(
    index: int,
    *,
    rng: random.Random,
    low_priority: bool = False,
    dataset_id: str = "demo",
    prefix: str = "doc",
) -> Chunk:
    """One chunk that looks like a real document piece, keyed ``<prefix>-<index>``."""
    words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(20, 60)))
    tags = rng.sample(_TAGS, k=rng.randint(1, 3))
    return Chunk(
        chunk_html=f"<h2>{prefix} {index}</h2><p>{words}</p>",
        link=f"https://example.com/{prefix}/{index}",
        tag_set=tags,
        num_value=round(rng.random() * 100, 2),
        metadata={"source": "bulk" if low_priority else "editor", "rev": rng.randint(1, 9)},
        tracking_id=f"{prefix}-{index}",
        time_stamp="2026-11-26T12:00:00Z",
        weight=1.0,
        group_ids=[uuid.UUID(int=rng.getrandbits(128), version=4)],
        low_priority=low_priority,
        dataset_id=dataset_id,
    )


def sample_chunks(
    count: int,
    *,
    low_priority_ratio: float = 0.0,
    seed: int = 7,
    dataset_id: str = "demo",
    prefix: str = "doc",
) -> Iterator[Chunk]:
    """``count`` chunks; about ``low_priority_ratio`` of them flagged ``low_priority``."""
    rng = random.Random(seed)  # noqa: S311  # sample data, not security
    for index in range(count):
        yield sample_chunk(
            index,
            rng=rng,
            low_priority=rng.random() < low_priority_ratio,
            dataset_id=dataset_id,
            prefix=prefix,
        )
