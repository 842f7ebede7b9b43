"""Write the golden wire vectors of the chunk codec into this directory.

Run ``python tests/golden/generate.py`` after an intended change of the schema or the field
mapping, then review the diff. Tests only ever read these files; they never regenerate them.

For each sample ``NAME`` this writes:

* ``NAME.input.json`` -- the producer's payload (Trieve ``ChunkReqPayload`` JSON plus extras);
* ``NAME.expected.json`` -- the Kafka key and the value in both framings as hex, plus the schema
  fingerprint and the registry schema id the registry framing was written with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from streamproc.chunk import parse_chunk
from streamproc.codec import ChunkCodec, Framing, StaticSchemaIds

GOLDEN_DIR: Final = Path(__file__).resolve().parent
REGISTRY_SCHEMA_ID: Final = 1

SAMPLES: Final[dict[str, dict[str, Any]]] = {
    "minimal": {"chunk_html": "<p>Kafka keeps the log.</p>"},
    "every_field": {
        "chunk_html": "<h1>Lanes</h1><p>Realtime first, bulk when idle.</p>",
        "semantic_content": "Realtime first, bulk when idle.",
        "fulltext_content": "lanes realtime bulk idle",
        "link": "https://example.com/docs/lanes",
        "tag_set": ["docs", "lanes", "flow-control"],
        "num_value": 42.5,
        "metadata": {"author": "ops", "revision": 7, "reviewed": True, "score": 0.25},
        "tracking_id": "docs-lanes-0001",
        "upsert_by_tracking_id": True,
        "group_ids": [
            "d290f1ee-6c54-4b01-90e6-d701748f0851",
            "0b6f3c1e-8f1a-4a55-9d2c-3e0c2f7f9a10",
        ],
        "group_tracking_ids": ["docs", "architecture"],
        "time_stamp": "2021-01-01T00:00:00",
        "location": {"lat": -34, "lon": 151.2093},
        "image_urls": ["https://example.com/red.png", "https://example.com/blue.png"],
        "weight": 0.5,
        "split_avg": False,
        "convert_html_to_text": True,
        "fulltext_boost": {"phrase": "realtime", "boost_factor": 5.0},
        "semantic_boost": {"phrase": "priority queue", "distance_factor": 0.25},
        "high_priority": True,
        "low_priority": False,
        "dataset_id": "2c3f8a5e-7d1b-4c9e-a0f4-5b6d7e8f9a0b",
    },
    "low_priority_unicode": {
        "chunk_html": "<p>Größe: 東京 → Zürich ✓ 🚀</p>",
        "link": "https://例え.jp/ページ",
        "metadata": {
            "zeta": [1, 2.5, None, {"deep": {"deeper": ["ü", "😀", {"deepest": False}]}}],
            "alpha": {"ключ": "значение", "empty": {}, "list": []},
            "mixed": [True, -1, 1e-9, "\u00e9\u0301"],
        },
        "tag_set": ["日本語", "émoji 🚀"],
        "time_stamp": "2024-02-29 23:59:59.999",
        "low_priority": True,
        "dataset_id": "bulk-backfill",
    },
}


def codec_for_vectors() -> ChunkCodec:
    """The codec the vectors are written with: bundled schemas, current schema under id 1."""
    schema_json = ChunkCodec().schema_json
    return ChunkCodec(schema_ids=StaticSchemaIds({REGISTRY_SCHEMA_ID: schema_json}))


def main() -> None:
    """Write every sample's input and expected encodings."""
    codec = codec_for_vectors()
    for name, payload in SAMPLES.items():
        chunk = parse_chunk(payload)
        expected = {
            "key": chunk.key,
            "fingerprint": codec.fingerprint_hex,
            "registry_schema_id": REGISTRY_SCHEMA_ID,
            Framing.SINGLE_OBJECT.value: codec.encode(chunk, Framing.SINGLE_OBJECT).hex(),
            Framing.SCHEMA_REGISTRY.value: codec.encode(chunk, Framing.SCHEMA_REGISTRY).hex(),
        }
        for suffix, content in (("input", payload), ("expected", expected)):
            path = GOLDEN_DIR / f"{name}.{suffix}.json"
            path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", "utf-8")
            print(f"wrote {path.relative_to(GOLDEN_DIR.parents[1])}")


if __name__ == "__main__":
    main()
