"""The Avro codec: round trips, golden wire vectors, fingerprints, schema evolution and errors."""

from __future__ import annotations

import copy
import json
import shutil
import uuid
from io import BytesIO
from pathlib import Path
from typing import Any, Final

import pytest
from fastavro import schemaless_writer
from fastavro.schema import parse_schema, to_parsing_canonical_form
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproc.chunk import Chunk, ChunkLimits, FullTextBoost, GeoInfo, SemanticBoost, parse_chunk
from streamproc.codec import (
    REGISTRY_MAGIC_BYTE,
    SINGLE_OBJECT_MARKER,
    ChunkCodec,
    Framing,
    StaticSchemaIds,
    bundled_schema_dir,
    chunk_to_record,
    encode_chunk_body,
    generated_codec,
    schema_fingerprint,
)
from streamproc.errors import (
    ChunkValidationError,
    ConfigError,
    DecodeError,
    IncompatibleSchemaError,
    OversizeError,
    UnknownFramingError,
    UnknownSchemaError,
)

REPO: Final = Path(__file__).resolve().parents[2]
SCHEMA_DIR: Final = REPO / "avro"
GOLDEN_DIR: Final = REPO / "tests" / "golden"
GOLDEN_SAMPLES: Final = sorted(
    path.name.removesuffix(".input.json") for path in GOLDEN_DIR.glob("*.input.json")
)
CURRENT_SCHEMA: Final[dict[str, Any]] = json.loads(
    (SCHEMA_DIR / "chunk.avsc").read_text(encoding="utf-8")
)


# -- an independent CRC-64-AVRO, straight from the Avro specification ---------------------------

CRC64_AVRO_EMPTY: Final = 0xC15D213AA4D7A795


def _crc64_avro_table() -> list[int]:
    table = []
    for byte in range(256):
        fingerprint = byte
        for _ in range(8):
            fingerprint = (fingerprint >> 1) ^ (CRC64_AVRO_EMPTY & -(fingerprint & 1))
        table.append(fingerprint)
    return table


CRC64_AVRO_TABLE: Final = _crc64_avro_table()


def reference_crc64_avro(data: bytes) -> int:
    """The Rabin fingerprint exactly as the Avro specification's reference code computes it."""
    fingerprint = CRC64_AVRO_EMPTY
    for byte in data:
        fingerprint = (fingerprint >> 8) ^ CRC64_AVRO_TABLE[(fingerprint ^ byte) & 0xFF]
    return fingerprint


def as_unsigned(signed_java_long: int) -> int:
    return signed_java_long & 0xFFFF_FFFF_FFFF_FFFF


# -- helpers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def codec() -> ChunkCodec:
    return ChunkCodec(schema_ids=StaticSchemaIds({1: CURRENT_SCHEMA}))


def single_object_value(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    """Frame ``record`` written with ``schema`` the way Avro's BinaryMessageEncoder does."""
    buffer = BytesIO()
    buffer.write(SINGLE_OBJECT_MARKER + schema_fingerprint(schema).to_bytes(8, "little"))
    schemaless_writer(buffer, parse_schema(copy.deepcopy(schema)), record)
    return buffer.getvalue()


def registry_value(schema_id: int, schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buffer = BytesIO()
    buffer.write(REGISTRY_MAGIC_BYTE + schema_id.to_bytes(4, "big"))
    schemaless_writer(buffer, parse_schema(copy.deepcopy(schema)), record)
    return buffer.getvalue()


def schema_without(field: str) -> dict[str, Any]:
    schema = copy.deepcopy(CURRENT_SCHEMA)
    schema["fields"] = [f for f in schema["fields"] if f["name"] != field]
    return schema


def schema_with_extra_field() -> dict[str, Any]:
    schema = copy.deepcopy(CURRENT_SCHEMA)
    schema["fields"].append(
        {"name": "language", "type": ["null", "string"], "default": None, "doc": "ISO 639-1."}
    )
    return schema


def schema_dir_with_history(tmp_path: Path, *history: dict[str, Any]) -> Path:
    shutil.copy(SCHEMA_DIR / "chunk.avsc", tmp_path / "chunk.avsc")
    (tmp_path / "history").mkdir()
    for version, schema in enumerate(history, start=1):
        (tmp_path / "history" / f"chunk.v{version}.avsc").write_text(json.dumps(schema), "utf-8")
    return tmp_path


FULL_CHUNK: Final = parse_chunk(
    json.loads((GOLDEN_DIR / "every_field.input.json").read_text(encoding="utf-8"))
)


# -- a hypothesis strategy for chunks -----------------------------------------------------------

texts = st.text(max_size=40)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | finite_floats
    | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
time_stamps = st.one_of(
    st.dates().map(lambda day: day.isoformat()),
    st.datetimes().map(lambda moment: moment.isoformat()),
    st.datetimes().map(lambda moment: moment.isoformat(sep=" ", timespec="milliseconds")),
)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


chunks: st.SearchStrategy[Chunk] = st.builds(
    Chunk,
    chunk_html=optional(st.text(max_size=200)),
    semantic_content=optional(texts),
    fulltext_content=optional(texts),
    link=optional(texts),
    tag_set=optional(st.lists(texts, max_size=5)),
    num_value=optional(finite_floats),
    metadata=json_values,
    tracking_id=optional(texts),
    upsert_by_tracking_id=optional(st.booleans()),
    group_ids=optional(st.lists(st.uuids(), max_size=3)),
    group_tracking_ids=optional(st.lists(texts, max_size=3)),
    time_stamp=optional(time_stamps),
    location=optional(
        st.builds(
            GeoInfo,
            lat=st.floats(min_value=-90, max_value=90),
            lon=st.floats(min_value=-180, max_value=180),
        )
    ),
    image_urls=optional(st.lists(texts, max_size=3)),
    weight=optional(finite_floats),
    split_avg=optional(st.booleans()),
    convert_html_to_text=optional(st.booleans()),
    fulltext_boost=optional(st.builds(FullTextBoost, phrase=texts, boost_factor=finite_floats)),
    semantic_boost=optional(st.builds(SemanticBoost, phrase=texts, distance_factor=finite_floats)),
    low_priority=st.booleans(),
    dataset_id=optional(st.text(min_size=1, max_size=40)),
)


# -- round trips --------------------------------------------------------------------------------


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(chunk=chunks, framing=st.sampled_from(Framing))
def test_round_trip(codec: ChunkCodec, chunk: Chunk, framing: Framing) -> None:
    value = codec.encode(chunk, framing)

    assert codec.detect_framing(value) is framing
    decoded = codec.decode(value)
    assert decoded == chunk
    assert decoded.key == chunk.key
    assert codec.encode(decoded, framing) == value


def test_both_framings_share_the_body(codec: ChunkCodec) -> None:
    single = codec.encode(FULL_CHUNK, Framing.SINGLE_OBJECT)
    registry = codec.encode(FULL_CHUNK, Framing.SCHEMA_REGISTRY)

    assert single[:2] == b"\xc3\x01"
    assert single[2:10] == codec.fingerprint.to_bytes(8, "little")
    assert registry[:5] == b"\x00\x00\x00\x00\x01"
    assert single[10:] == registry[5:]


def test_metadata_travels_as_compact_json_with_sorted_keys() -> None:
    chunk = Chunk(metadata={"b": 1, "a": {"d": "ü", "c": [True, None]}})

    assert chunk_to_record(chunk)["metadata"] == '{"a":{"c":[true,null],"d":"ü"},"b":1}'


def test_default_codec_uses_the_bundled_schemas() -> None:
    assert Path(str(bundled_schema_dir())) == SCHEMA_DIR
    assert ChunkCodec().fingerprint == ChunkCodec(SCHEMA_DIR).fingerprint
    assert ChunkCodec(str(SCHEMA_DIR)).schema_json == ChunkCodec().schema_json


def test_schema_json_is_the_current_schema() -> None:
    assert json.loads(ChunkCodec().schema_json) == CURRENT_SCHEMA


# -- golden vectors -----------------------------------------------------------------------------


def test_golden_samples_are_present() -> None:
    assert GOLDEN_SAMPLES == ["every_field", "low_priority_unicode", "minimal"]


@pytest.mark.parametrize("sample", GOLDEN_SAMPLES)
@pytest.mark.parametrize("framing", list(Framing))
def test_golden_vector(codec: ChunkCodec, sample: str, framing: Framing) -> None:
    payload = (GOLDEN_DIR / f"{sample}.input.json").read_text(encoding="utf-8")
    expected = json.loads((GOLDEN_DIR / f"{sample}.expected.json").read_text(encoding="utf-8"))
    value = bytes.fromhex(expected[framing.value])
    chunk = parse_chunk(payload)

    assert expected["fingerprint"] == codec.fingerprint_hex
    assert expected["registry_schema_id"] == 1
    assert codec.decode(value) == chunk
    assert codec.encode(chunk, framing) == value
    assert chunk.key == expected["key"]


# -- fingerprints -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "canonical", "java_fingerprint"),
    [
        # Vectors from the Avro project's share/test/data/schema-tests.txt (Java signed longs).
        ('"null"', '"null"', 7195948357588979594),
        ('{"type": "int"}', '"int"', 8247732601305521295),
        (
            '{"type": "fixed", "name": "foo", "size": 15}',
            '{"name":"foo","type":"fixed","size":15}',
            1756455273707447556,
        ),
        (
            '{"type": "record", "name": "foo", "fields": [{"name": "f1", "type": "boolean"}]}',
            '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"}]}',
            7843277075252814651,
        ),
    ],
)
def test_fingerprint_matches_avro_specification_vectors(
    schema: str, canonical: str, java_fingerprint: int
) -> None:
    assert to_parsing_canonical_form(json.loads(schema)) == canonical
    assert reference_crc64_avro(canonical.encode()) == as_unsigned(java_fingerprint)
    assert schema_fingerprint(schema) == as_unsigned(java_fingerprint)


def test_fingerprint_of_chunk_schema_computed_independently(codec: ChunkCodec) -> None:
    canonical = to_parsing_canonical_form(CURRENT_SCHEMA).encode()

    assert codec.fingerprint == reference_crc64_avro(canonical)
    assert codec.fingerprint_hex == reference_crc64_avro(canonical).to_bytes(8, "little").hex()
    # Docs and logical types are not part of the canonical form.
    assert b"doc" not in canonical
    assert b"logicalType" not in canonical
    assert b'"name":"io.streamproc.Chunk"' in canonical


# -- schema evolution ---------------------------------------------------------------------------


def test_value_from_an_older_writer_decodes(tmp_path: Path) -> None:
    old = schema_without("fulltext_content")
    codec = ChunkCodec(schema_dir_with_history(tmp_path, old))
    record = chunk_to_record(FULL_CHUNK)
    del record["fulltext_content"]

    decoded = codec.decode(single_object_value(old, record))

    assert schema_fingerprint(old) in codec.known_fingerprints
    assert decoded == FULL_CHUNK.model_copy(update={"fulltext_content": None})


def test_history_file_identical_to_the_current_schema_is_harmless(tmp_path: Path) -> None:
    codec = ChunkCodec(schema_dir_with_history(tmp_path, CURRENT_SCHEMA))

    assert codec.known_fingerprints == {codec.fingerprint}
    assert codec.decode(codec.encode(FULL_CHUNK)) == FULL_CHUNK


def test_value_from_an_older_writer_without_history_is_unknown() -> None:
    old = schema_without("fulltext_content")
    record = chunk_to_record(FULL_CHUNK)
    del record["fulltext_content"]
    value = single_object_value(old, record)

    with pytest.raises(UnknownSchemaError) as caught:
        ChunkCodec().decode(value)
    assert caught.value.raw == value


def test_value_from_a_newer_writer_decodes_through_the_registry() -> None:
    # Single-object values name the writer only by fingerprint, so a reader cannot know a newer
    # writer's schema; the registry framing hands it over by id and resolution drops the new field.
    newer = schema_with_extra_field()
    codec = ChunkCodec(schema_ids=StaticSchemaIds({1: CURRENT_SCHEMA, 2: json.dumps(newer)}))
    record = {**chunk_to_record(FULL_CHUNK), "language": "en"}

    assert codec.decode(registry_value(2, newer, record)) == FULL_CHUNK
    assert codec.decode(registry_value(2, newer, record)) == FULL_CHUNK  # cached schema


def test_value_from_a_newer_writer_in_single_object_framing_is_unknown() -> None:
    newer = schema_with_extra_field()
    value = single_object_value(newer, {**chunk_to_record(FULL_CHUNK), "language": "en"})

    with pytest.raises(UnknownSchemaError):
        ChunkCodec().decode(value)


def test_incompatible_writer_schema(tmp_path: Path) -> None:
    incompatible = copy.deepcopy(CURRENT_SCHEMA)
    for field in incompatible["fields"]:
        if field["name"] == "low_priority":
            field["type"] = "string"
            field["default"] = "no"
    codec = ChunkCodec(schema_dir_with_history(tmp_path, incompatible))
    value = single_object_value(incompatible, {**chunk_to_record(FULL_CHUNK), "low_priority": "x"})

    with pytest.raises(IncompatibleSchemaError) as caught:
        codec.decode(value)
    assert caught.value.raw == value
    assert caught.value.reason == "incompatible_schema"


def test_history_files_are_loaded_in_version_order(tmp_path: Path) -> None:
    v1 = schema_without("fulltext_content")
    v2 = schema_without("semantic_content")
    directory = schema_dir_with_history(tmp_path, v1, v2)
    (directory / "history" / "notes.txt").write_text("not a schema", "utf-8")

    codec = ChunkCodec(directory)

    assert codec.known_fingerprints == {
        codec.fingerprint,
        schema_fingerprint(v1),
        schema_fingerprint(v2),
    }


def test_broken_history_file_is_a_config_error(tmp_path: Path) -> None:
    directory = schema_dir_with_history(tmp_path)
    (directory / "history" / "chunk.v1.avsc").write_text("{not json", "utf-8")

    with pytest.raises(ConfigError, match=r"chunk\.v1\.avsc"):
        ChunkCodec(directory)


def test_missing_schema_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"chunk\.avsc"):
        ChunkCodec(tmp_path)


# -- decode errors ------------------------------------------------------------------------------


def test_unknown_fingerprint(codec: ChunkCodec) -> None:
    value = SINGLE_OBJECT_MARKER + (codec.fingerprint ^ 1).to_bytes(8, "little") + b"\x00" * 21

    with pytest.raises(UnknownSchemaError) as caught:
        codec.decode(value)
    assert caught.value.raw == value
    assert caught.value.reason == "unknown_schema"


def test_unknown_registry_id(codec: ChunkCodec) -> None:
    value = REGISTRY_MAGIC_BYTE + (7).to_bytes(4, "big") + b"\x00" * 21

    with pytest.raises(UnknownSchemaError, match="7") as caught:
        codec.decode(value)
    assert caught.value.raw == value


def test_registry_value_without_a_registry() -> None:
    value = ChunkCodec(schema_ids=StaticSchemaIds({1: CURRENT_SCHEMA})).encode(
        FULL_CHUNK, Framing.SCHEMA_REGISTRY
    )

    with pytest.raises(UnknownSchemaError, match="no schema registry") as caught:
        ChunkCodec().decode(value)
    assert caught.value.raw == value


def test_registry_id_of_an_invalid_schema() -> None:
    codec = ChunkCodec(schema_ids=StaticSchemaIds({1: CURRENT_SCHEMA}))
    codec_with_bad_id = ChunkCodec(schema_ids=BrokenSchemaIds())
    value = codec.encode(FULL_CHUNK, Framing.SCHEMA_REGISTRY)

    with pytest.raises(UnknownSchemaError, match="not a valid Avro schema"):
        codec_with_bad_id.decode(value)


class BrokenSchemaIds:
    """A resolver whose registry returns something that is not a schema."""

    def id_for(self, fingerprint: int) -> int:
        return 1

    def schema_for_id(self, schema_id: int) -> str:
        return '{"type": "record", "name": "X", "fields": "nope"}'


@pytest.mark.parametrize("value", [b"", b"\x01", b"\xc3", b"\xc3\x02rest", b"{}", b"\xff" * 20])
def test_unknown_framing(codec: ChunkCodec, value: bytes) -> None:
    with pytest.raises(UnknownFramingError) as caught:
        codec.decode(value)
    assert caught.value.raw == value
    assert caught.value.reason == "unknown_framing"


def test_tombstone_is_unknown_framing(codec: ChunkCodec) -> None:
    with pytest.raises(UnknownFramingError) as caught:
        codec.decode(None)  # type: ignore[arg-type]  # what a careless caller passes for tombstones
    assert caught.value.raw is None


@pytest.mark.parametrize("value", [b"\xc3\x01", b"\xc3\x01\x00\x00\x00", b"\x00", b"\x00\x00\x00"])
def test_truncated_header(codec: ChunkCodec, value: bytes) -> None:
    with pytest.raises(DecodeError, match="truncated") as caught:
        codec.decode(value)
    assert type(caught.value) is DecodeError
    assert caught.value.raw == value


@pytest.mark.parametrize("framing", list(Framing))
def test_every_truncation_is_a_decode_error(codec: ChunkCodec, framing: Framing) -> None:
    value = codec.encode(FULL_CHUNK, framing)

    for length in range(len(value)):
        with pytest.raises(DecodeError) as caught:
            codec.decode(value[:length])
        assert caught.value.raw == value[:length]


def test_trailing_bytes_are_a_decode_error(codec: ChunkCodec) -> None:
    value = codec.encode(FULL_CHUNK) + b"\x00"

    with pytest.raises(DecodeError, match="1 unexpected bytes") as caught:
        codec.decode(value)
    assert caught.value.raw == value


@settings(max_examples=500)
@given(data=st.binary(max_size=200))
def test_garbage_never_escapes_as_a_foreign_error(codec: ChunkCodec, data: bytes) -> None:
    with pytest.raises(DecodeError) as caught:
        codec.decode(data)
    assert caught.value.raw == data


@settings(max_examples=1000)
@given(body=st.binary(max_size=200), framing=st.sampled_from(Framing))
def test_garbage_body_behind_a_valid_header(
    codec: ChunkCodec, body: bytes, framing: Framing
) -> None:
    header = codec.encode(Chunk(), framing)[: 10 if framing is Framing.SINGLE_OBJECT else 5]
    value = header + body
    try:
        chunk = codec.decode(value)
    except DecodeError as exc:
        assert exc.raw == value
    except ChunkValidationError:
        pass  # well-formed Avro holding an invalid chunk
    else:
        assert codec.encode(chunk, framing) == value


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"location": {"lat": 200.0, "lon": 0.0}}, "location.lat"),
        ({"time_stamp": "not a date"}, "time_stamp"),
        ({"metadata": "{not json"}, "metadata"),
        ({"metadata": '{"a": NaN}'}, "metadata"),
        ({"weight": float("nan")}, "weight"),
        ({"dataset_id": ""}, "dataset_id"),
        ({"tag_set": ["t"] * 4}, "tag_set"),
    ],
)
def test_decodable_but_invalid_chunk(change: dict[str, Any], field: str) -> None:
    codec = ChunkCodec(limits=ChunkLimits(max_tag_set=3))
    value = single_object_value(CURRENT_SCHEMA, {**chunk_to_record(Chunk()), **change})

    with pytest.raises(ChunkValidationError) as caught:
        codec.decode(value)
    assert caught.value.field == field
    assert caught.value.reason == "invalid"


def test_malformed_uuid_in_group_ids_is_undecodable(codec: ChunkCodec) -> None:
    value = single_object_value(CURRENT_SCHEMA, {**chunk_to_record(Chunk()), "group_ids": ["x"]})

    with pytest.raises(DecodeError) as caught:
        codec.decode(value)
    assert caught.value.raw == value


# -- encode errors ------------------------------------------------------------------------------


def test_oversize_chunk(codec: ChunkCodec) -> None:
    small = ChunkCodec(limits=ChunkLimits(max_encoded_bytes=100))
    chunk = Chunk(chunk_html="x" * 100)

    with pytest.raises(OversizeError) as caught:
        small.encode(chunk)
    assert caught.value.size == len(codec.encode(chunk))
    assert caught.value.limit == 100
    assert caught.value.reason == "oversize"


def test_limit_counts_the_framing() -> None:
    size = len(ChunkCodec().encode(Chunk(chunk_html="x")))

    assert ChunkCodec(limits=ChunkLimits(max_encoded_bytes=size)).encode(Chunk(chunk_html="x"))
    with pytest.raises(OversizeError):
        ChunkCodec(limits=ChunkLimits(max_encoded_bytes=size - 1)).encode(Chunk(chunk_html="x"))


def test_non_finite_metadata_from_json_text_is_refused_on_encode(codec: ChunkCodec) -> None:
    chunk = parse_chunk('{"metadata": {"a": NaN}}')

    with pytest.raises(ChunkValidationError) as caught:
        codec.encode(chunk)
    assert caught.value.field == "metadata"


def test_lone_surrogate_is_refused_on_encode(codec: ChunkCodec) -> None:
    with pytest.raises(ChunkValidationError, match="Unicode"):
        codec.encode(Chunk(chunk_html="broken \ud800 text"))


def test_registry_framing_needs_a_resolver() -> None:
    with pytest.raises(ConfigError, match="schema_ids"):
        ChunkCodec().encode(FULL_CHUNK, Framing.SCHEMA_REGISTRY)


def test_registry_framing_needs_the_current_schema_registered() -> None:
    codec = ChunkCodec(schema_ids=StaticSchemaIds({5: schema_with_extra_field()}))

    with pytest.raises(ConfigError, match="no registry id"):
        codec.encode(FULL_CHUNK, Framing.SCHEMA_REGISTRY)


def test_static_schema_ids() -> None:
    ids = StaticSchemaIds({3: CURRENT_SCHEMA, 9: json.dumps(CURRENT_SCHEMA)})
    fingerprint = schema_fingerprint(CURRENT_SCHEMA)

    assert ids.id_for(fingerprint) == 3
    assert ids.schema_for_id(9) == json.dumps(CURRENT_SCHEMA)
    with pytest.raises(LookupError):
        ids.id_for(fingerprint ^ 1)
    with pytest.raises(LookupError):
        ids.schema_for_id(4)
    with pytest.raises(ConfigError):
        StaticSchemaIds({2**32: CURRENT_SCHEMA})
    with pytest.raises(ConfigError):
        StaticSchemaIds({1: '{"type": "nonsense"}'})


def test_framing_values_match_the_setting_spellings() -> None:
    assert Framing("single-object") is Framing.SINGLE_OBJECT
    assert Framing("schema-registry") is Framing.SCHEMA_REGISTRY


def test_group_ids_decode_as_uuids(codec: ChunkCodec) -> None:
    group_id = uuid.uuid4()

    decoded = codec.decode(codec.encode(Chunk(group_ids=[group_id])))

    assert decoded.group_ids == [group_id]


# -- the generated encoder ----------------------------------------------------------------------


def fastavro_body(chunk: Chunk) -> bytes:
    buffer = BytesIO()
    schemaless_writer(buffer, parse_schema(copy.deepcopy(CURRENT_SCHEMA)), chunk_to_record(chunk))
    return buffer.getvalue()


def test_the_bundled_schema_has_a_generated_codec() -> None:
    assert generated_codec(CURRENT_SCHEMA) is not None


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(chunk=chunks)
def test_fast_encoder_writes_what_fastavro_writes(chunk: Chunk) -> None:
    assert encode_chunk_body(chunk) == fastavro_body(chunk)


@pytest.mark.parametrize(
    "chunk",
    [
        Chunk(),
        Chunk(chunk_html="x" * 100_000, tag_set=[], group_ids=[], image_urls=["é" * 9000]),
        Chunk(num_value=-1e300, weight=0.0, split_avg=False, convert_html_to_text=True),
        Chunk(tag_set=[str(i) for i in range(1000)], upsert_by_tracking_id=False),
        Chunk(
            location=GeoInfo(lat=-90, lon=180),
            fulltext_boost=FullTextBoost(phrase="", boost_factor=2),
            semantic_boost=SemanticBoost(phrase="😀", distance_factor=-0.5),
            low_priority=True,
            metadata={"b": [1, 2.5, None, True], "a": "ü"},
        ),
    ],
    ids=["empty", "long-lengths", "numbers", "many-items", "nested"],
)
def test_fast_encoder_edge_cases(chunk: Chunk) -> None:
    assert encode_chunk_body(chunk) == fastavro_body(chunk)


def test_another_current_schema_encodes_through_fastavro(tmp_path: Path) -> None:
    schema = copy.deepcopy(CURRENT_SCHEMA)
    schema["fields"].append({"name": "extra", "type": ["null", "string"], "default": None})
    (tmp_path / "chunk.avsc").write_text(json.dumps(schema), encoding="utf-8")
    codec = ChunkCodec(tmp_path)
    chunk = Chunk(chunk_html="<p>x</p>", tracking_id="doc-1")

    value = codec.encode(chunk)

    assert value[len(SINGLE_OBJECT_MARKER) + 8 :] == encode_chunk_body(chunk) + b"\x00"  # extra
    assert generated_codec(schema) is None


def test_metadata_with_a_lone_surrogate_escape_still_decodes(codec: ChunkCodec) -> None:
    record = {**chunk_to_record(Chunk()), "metadata": '{"a":"\\ud800"}'}

    decoded = codec.decode(single_object_value(CURRENT_SCHEMA, record))

    assert decoded.metadata == {"a": "\ud800"}
