"""The generated Avro writer and reader against fastavro, and trusted Chunk construction against
validation: property tests over generated chunks and records (unicode, empty and absent fields,
extreme numbers, garbage bytes)."""

from __future__ import annotations

import copy
import json
import math
import struct
import uuid
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final

import pytest
from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import parse_schema
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from streamproc.avro_codegen import UnsupportedSchemaError, generate, uuid_from_text
from streamproc.chunk import (
    Chunk,
    ChunkLimits,
    FullTextBoost,
    GeoInfo,
    SemanticBoost,
    chunk_from_record,
    validate_record,
)
from streamproc.codec import (
    SINGLE_OBJECT_HEADER_BYTES,
    TRUSTED_RECORD_FINGERPRINT,
    ChunkCodec,
    Framing,
    StaticSchemaIds,
    WriterSchema,
    chunk_to_record,
    generated_codec,
    metadata_text,
    parse_metadata,
    read_body,
    record_to_chunk,
)
from streamproc.errors import ChunkValidationError, DecodeError

REPO: Final = Path(__file__).resolve().parents[2]
SCHEMA: Final[dict[str, Any]] = json.loads((REPO / "avro" / "chunk.avsc").read_text("utf-8"))
PARSED: Final = parse_schema(copy.deepcopy(SCHEMA))
GENERATED: Final = generate(SCHEMA)  # no transforms: writes records given as plain objects
CODEC: Final = ChunkCodec(schema_ids=StaticSchemaIds({1: SCHEMA}))
EXAMPLES: Final = 300

# -- strategies ---------------------------------------------------------------------------------

# Any Unicode text fastavro can write (lone surrogates are not UTF-8): astral characters, NUL,
# combining marks, the empty string.
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)
long_texts = st.text(st.characters(exclude_categories=["Cs"]), min_size=60, max_size=400)
any_text = texts | long_texts
extreme_floats = st.sampled_from(
    [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -1e300, 1.5]
)
any_floats = st.floats() | extreme_floats  # NaN and the infinities included
finite_floats = st.floats(allow_nan=False, allow_infinity=False) | extreme_floats
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | finite_floats
    | texts
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


def string_lists(size: int = 5) -> st.SearchStrategy[list[str]]:
    return st.lists(any_text, max_size=size)


# Records of the schema as Avro sees them: every value Avro can carry, valid chunk or not.
avro_records: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {
        "chunk_html": optional(any_text),
        "semantic_content": optional(texts),
        "fulltext_content": optional(texts),
        "link": optional(texts),
        "tag_set": optional(string_lists()),
        "num_value": optional(any_floats),
        "metadata": optional(texts),
        "tracking_id": optional(texts),
        "upsert_by_tracking_id": optional(st.booleans()),
        "group_ids": optional(st.lists(st.uuids(), max_size=3)),
        "group_tracking_ids": optional(string_lists(3)),
        "time_stamp": optional(texts),
        "location": optional(st.fixed_dictionaries({"lat": any_floats, "lon": any_floats})),
        "image_urls": optional(string_lists(3)),
        "weight": optional(any_floats),
        "split_avg": optional(st.booleans()),
        "convert_html_to_text": optional(st.booleans()),
        "fulltext_boost": optional(
            st.fixed_dictionaries({"phrase": texts, "boost_factor": any_floats})
        ),
        "semantic_boost": optional(
            st.fixed_dictionaries({"phrase": texts, "distance_factor": any_floats})
        ),
        "low_priority": st.booleans(),
        "dataset_id": optional(texts),
    }
)

time_stamps = st.one_of(
    st.dates().map(lambda day: day.isoformat()),
    st.datetimes().map(lambda moment: moment.isoformat()),
    st.datetimes().map(lambda moment: moment.isoformat(sep=" ", timespec="milliseconds")),
)
chunks: st.SearchStrategy[Chunk] = st.builds(
    Chunk,
    chunk_html=optional(any_text),
    semantic_content=optional(texts),
    fulltext_content=optional(texts),
    link=optional(texts),
    tag_set=optional(string_lists()),
    num_value=optional(finite_floats),
    metadata=json_values,
    tracking_id=optional(texts),
    upsert_by_tracking_id=optional(st.booleans()),
    group_ids=optional(st.lists(st.uuids(), max_size=3)),
    group_tracking_ids=optional(string_lists(3)),
    time_stamp=optional(time_stamps),
    location=optional(
        st.builds(
            GeoInfo,
            lat=st.floats(min_value=-90, max_value=90),
            lon=st.floats(min_value=-180, max_value=180),
        )
    ),
    image_urls=optional(string_lists(3)),
    weight=optional(finite_floats),
    split_avg=optional(st.booleans()),
    convert_html_to_text=optional(st.booleans()),
    fulltext_boost=optional(st.builds(FullTextBoost, phrase=texts, boost_factor=finite_floats)),
    semantic_boost=optional(st.builds(SemanticBoost, phrase=texts, distance_factor=finite_floats)),
    low_priority=st.booleans(),
    dataset_id=optional(st.text(min_size=1, max_size=40)),
)


def as_object(value: Any) -> Any:
    """A record as an object with attributes, what the generated writer reads."""
    if isinstance(value, dict):
        return SimpleNamespace(**{key: as_object(item) for key, item in value.items()})
    if isinstance(value, list):
        return [as_object(item) for item in value]
    return value


def fastavro_body(record: dict[str, Any]) -> bytes:
    buffer = BytesIO()
    schemaless_writer(buffer, PARSED, record)
    return buffer.getvalue()


def fastavro_read(body: bytes) -> tuple[dict[str, Any], int]:
    stream = BytesIO(body)
    record = schemaless_reader(stream, PARSED, None)
    assert isinstance(record, dict)
    return record, stream.tell()


def generated_body(record: dict[str, Any]) -> bytes:
    out = bytearray()
    GENERATED.write(out, as_object(record))
    return bytes(out)


def same(left: Any, right: Any) -> bool:
    """Equal value for value, NaN equal to NaN, 0.0 different from -0.0 (types compared too)."""
    if isinstance(left, float) and isinstance(right, float):
        return struct.pack("<d", left) == struct.pack("<d", right) or (
            math.isnan(left) and math.isnan(right)
        )
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return list(left) == list(right) and all(same(left[k], right[k]) for k in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(same(a, b) for a, b in zip(left, right, strict=True))
    return bool(left == right)


# -- the writer ---------------------------------------------------------------------------------


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(record=avro_records)
def test_generated_writer_writes_what_fastavro_writes(record: dict[str, Any]) -> None:
    assert generated_body(record) == fastavro_body(record)


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(chunk=chunks, framing=st.sampled_from(Framing))
def test_codec_encodes_chunks_as_fastavro_does(chunk: Chunk, framing: Framing) -> None:
    value = CODEC.encode(chunk, framing)

    header = SINGLE_OBJECT_HEADER_BYTES if framing is Framing.SINGLE_OBJECT else 5
    assert value[header:] == fastavro_body(chunk_to_record(chunk))


def uuid_spellings(value: uuid.UUID) -> st.SearchStrategy[str]:
    text = str(value)
    return st.sampled_from(
        [text, text.upper(), value.hex, f"{{{text}}}", f"urn:uuid:{text}", text[1:], text + "0"]
    )


_hex_or_noise = st.sampled_from("0123456789abcdefABCDEF-+_ g{}:")


@settings(max_examples=EXAMPLES)
@given(
    text=st.uuids().flatmap(uuid_spellings)
    | st.text(_hex_or_noise, min_size=30, max_size=40)
    | st.builds(
        lambda t: f"{t[:8]}-{t[9:13]}-{t[14:18]}-{t[19:23]}-{t[24:]}",
        st.text(_hex_or_noise, min_size=36, max_size=36),
    )
)
@example(text="+6dd6ed2-8582-47db-9e3f-52f431e67995")  # int() takes a sign, UUID() too
@example(text="-6dd6ed2-8582-47db-9e3f-52f431e67995")
@example(text="3_dd6ed2-8582-47db-9e3f-52f431e67995")  # and an underscore between digits
@example(text=" 6dd6ed2-8582-47db-9e3f-52f431e67995")
def test_uuid_fast_path_equals_uuid(text: str) -> None:
    """The reader's uuid parsing gives what ``uuid.UUID(text)`` gives, error included."""
    try:
        expected: uuid.UUID | str = uuid.UUID(text)
    except ValueError as exc:
        expected = str(exc)
    try:
        got: uuid.UUID | str = uuid_from_text(text)
    except ValueError as exc:
        got = str(exc)
    assert got == expected
    if isinstance(got, uuid.UUID):
        assert isinstance(expected, uuid.UUID)
        assert (got.is_safe, hash(got), str(got)) == (
            expected.is_safe,
            hash(expected),
            str(expected),
        )


def test_long_lengths_and_counts() -> None:
    record = {
        **chunk_to_record(Chunk()),
        "chunk_html": "x" * 100_000,
        "tag_set": [str(i) for i in range(9000)],
        "image_urls": ["é" * 9000],
        "group_ids": [],
        "num_value": -1e300,
    }
    body = fastavro_body(record)
    assert generated_body(record) == body
    assert same(GENERATED.read(body, 0)[0], fastavro_read(body)[0])


# -- the reader ---------------------------------------------------------------------------------


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(record=avro_records)
def test_generated_reader_reads_what_fastavro_reads(record: dict[str, Any]) -> None:
    body = fastavro_body(record)

    read, end = GENERATED.read(body, 0)

    expected, expected_end = fastavro_read(body)
    assert same(read, expected)
    assert end == expected_end == len(body)


def blocked_array(items: list[bytes]) -> bytes:
    """An Avro array written in one block with a negative count and its byte size (legal Avro)."""
    payload = b"".join(items)
    count = len(items)
    return zigzag(-count) + zigzag(len(payload)) + payload + b"\x00" if items else b"\x00"


def zigzag(value: int) -> bytes:
    encoded = (value << 1) ^ (value >> 63)
    out = bytearray()
    while encoded > 0x7F:
        out.append((encoded & 0x7F) | 0x80)
        encoded >>= 7
    out.append(encoded)
    return bytes(out)


@given(tags=st.lists(texts, min_size=1, max_size=5))
def test_array_blocks_with_byte_sizes_are_read(tags: list[str]) -> None:
    record = {**chunk_to_record(Chunk()), "tag_set": ["placeholder"]}
    plain = fastavro_body(record)
    # tag_set is the fifth field: four null unions, then its union byte and the array.
    prefix = plain[:5]
    encoded_tags = [zigzag(len(t.encode())) + t.encode() for t in tags]
    array_start = 5
    array_end = plain.index(b"\x00", array_start + 2 + len("placeholder")) + 1
    body = prefix + blocked_array(encoded_tags) + plain[array_end:]

    read, end = GENERATED.read(body, 0)

    expected, expected_end = fastavro_read(body)
    assert read["tag_set"] == tags
    assert same(read, expected)
    assert end == expected_end == len(body)


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(record=avro_records, data=st.data())
def test_garbage_is_refused_or_read_as_fastavro_reads_it(
    record: dict[str, Any], data: st.DataObject
) -> None:
    """Mutated bodies: whatever the generated reader accepts, fastavro reads the same way.

    The generated reader may refuse slightly more (a union index of -1, a varint over 10 bytes),
    never less: what fastavro refuses, it refuses too.
    """
    body = bytearray(fastavro_body(record))
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(body)))
        action = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip" and position < len(body):
            body[position] = data.draw(st.integers(0, 255))
        elif action == "insert":
            body[position:position] = bytes([data.draw(st.integers(0, 255))])
        elif action == "delete" and position < len(body):
            del body[position]
        elif action == "truncate":
            del body[position:]
    garbage = bytes(body)
    try:
        expected: Any = fastavro_read(garbage)
    except Exception:  # noqa: BLE001  # fastavro raises assorted types on garbage
        expected = None
    try:
        read: Any = GENERATED.read(garbage, 0)
    except (IndexError, ValueError, struct.error) as exc:  # UnicodeDecodeError is a ValueError
        assert expected is None or not isinstance(exc, struct.error | UnicodeDecodeError), exc
        return
    assert expected is not None, "the generated reader accepted what fastavro refuses"
    assert same(read[0], expected[0])
    assert read[1] == expected[1]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (b"\x04", "union branch byte"),  # chunk_html: branch 2 of a two-branch union
        (b"\x02\x08abc", "4 bytes announced"),  # truncated string
        (b"\x02\x03abc", "negative length"),
        (b"\x02\x02\xff", "UnicodeDecodeError"),
        (b"\x02" + b"\xff" * 11 + b"\x01", "varint longer than 10 bytes"),
        (b"", "IndexError"),
    ],
)
def test_codec_turns_every_reader_failure_into_a_decode_error(value: bytes, problem: str) -> None:
    framed = CODEC.encode(Chunk())[:SINGLE_OBJECT_HEADER_BYTES] + value

    with pytest.raises(DecodeError) as caught:
        CODEC.decode(framed)
    assert caught.value.reason == "undecodable"
    assert caught.value.raw == framed
    assert problem in str(caught.value)


def test_trailing_bytes_are_refused() -> None:
    value = CODEC.encode(Chunk(chunk_html="x")) + b"\x00"

    with pytest.raises(DecodeError, match="1 unexpected bytes"):
        CODEC.decode(value)


def test_memoryview_values_decode() -> None:
    value = CODEC.encode(Chunk(chunk_html="x", tag_set=["a"]))

    assert CODEC.decode(memoryview(value)) == CODEC.decode(value)  # type: ignore[arg-type]


def test_unsupported_types_are_refused_so_the_codec_keeps_fastavro() -> None:
    schema = copy.deepcopy(SCHEMA)
    schema["fields"].append(
        {"name": "colour", "type": {"type": "enum", "name": "Colour", "symbols": ["RED"]}}
    )
    with pytest.raises(UnsupportedSchemaError):
        generate(schema)
    wide_union = copy.deepcopy(SCHEMA)
    wide_union["fields"][0]["type"] = ["null", "string", "long"]
    with pytest.raises(UnsupportedSchemaError):
        generate(wide_union)
    assert generated_codec(wide_union) is None


def test_generated_source_names_every_field() -> None:
    for field in SCHEMA["fields"]:
        assert f"fields[{field['name']!r}]" in GENERATED.writer_source
        assert repr(field["name"]) in GENERATED.reader_source


# -- decode: the generated path against the fastavro path ----------------------------------------


def fastavro_decode(value: bytes, limits: ChunkLimits) -> Chunk:
    """What ``ChunkCodec.decode`` did before the generated reader: fastavro, then validation."""
    writer = WriterSchema(PARSED, None, 0, "test")
    return record_to_chunk(read_body(value, SINGLE_OBJECT_HEADER_BYTES, writer), limits)


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(chunk=chunks)
def test_decode_equals_the_fastavro_path(chunk: Chunk) -> None:
    value = CODEC.encode(chunk)

    decoded = CODEC.decode(value)

    reference = fastavro_decode(value, CODEC.limits)
    assert decoded == reference == chunk
    assert decoded.__pydantic_fields_set__ == reference.__pydantic_fields_set__
    assert decoded.key == chunk.key


# -- trusted construction against validation ----------------------------------------------------

limits_strategy = st.builds(
    ChunkLimits,
    max_tag_set=st.integers(1, 6),
    max_group_ids=st.integers(1, 4),
    max_group_tracking_ids=st.integers(1, 4),
    max_image_urls=st.integers(1, 4),
    max_tracking_id_length=st.integers(1, 40),
)
metadata_texts = st.one_of(
    json_values.map(
        lambda value: json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    ),
    st.sampled_from(
        ['{"a":1e400}', "[-1e999]", '{"a":NaN}', "{not json", '"x"', "1" * 400 + ".0", "null", ""]
    ),
)
# Decoded records as a reader returns them, biased towards the edges of every check.
decoded_records = avro_records.flatmap(
    lambda record: st.fixed_dictionaries(
        {
            **{key: st.just(value) for key, value in record.items()},
            "metadata": optional(metadata_texts),
            "time_stamp": optional(time_stamps | texts | st.just("")),
            "tracking_id": optional(st.just("") | texts),
            "dataset_id": optional(st.just("") | texts),
            "location": optional(
                st.fixed_dictionaries(
                    {
                        "lat": st.floats(-90, 90) | any_floats | st.sampled_from([90.0, -90.0]),
                        "lon": st.floats(-180, 180) | any_floats | st.just(180.0),
                    }
                )
            ),
        }
    )
)


def outcome(build: Any, record: dict[str, Any], limits: ChunkLimits) -> Any:
    try:
        return build(copy.deepcopy(record), limits)
    except ChunkValidationError as exc:
        return (type(exc), exc.reason, exc.field, str(exc))


def parsed_metadata(record: dict[str, Any]) -> dict[str, Any] | None:
    """The record with ``metadata`` parsed as the codec parses it, or None if it is not JSON."""
    try:
        return parse_metadata(dict(record))
    except ChunkValidationError:
        return None


@settings(max_examples=EXAMPLES * 2, suppress_health_check=[HealthCheck.too_slow])
@given(record=decoded_records, limits=limits_strategy)
@example(record={**chunk_to_record(Chunk()), "tracking_id": ""}, limits=ChunkLimits())
@example(record={**chunk_to_record(Chunk()), "dataset_id": ""}, limits=ChunkLimits())
@example(
    record={**chunk_to_record(Chunk()), "location": {"lat": math.nan, "lon": 0.0}},
    limits=ChunkLimits(),
)
@example(record={**chunk_to_record(Chunk()), "metadata": '{"a":1e400}'}, limits=ChunkLimits())
def test_trusted_construction_accepts_and_rejects_what_validation_does(
    record: dict[str, Any], limits: ChunkLimits
) -> None:
    parsed = parsed_metadata(record)
    assume(parsed is not None)
    assert parsed is not None

    trusted = outcome(chunk_from_record, parsed, limits)
    validated = outcome(validate_record, parsed, limits)

    assert type(trusted) is type(validated)
    if isinstance(validated, Chunk):
        assert trusted == validated
        assert trusted.__dict__.keys() == validated.__dict__.keys()
        assert trusted.model_fields_set == validated.model_fields_set
        assert trusted.__pydantic_extra__ == validated.__pydantic_extra__
        assert trusted.__pydantic_private__ == validated.__pydantic_private__
        for name in ("location", "fulltext_boost", "semantic_boost"):
            nested, expected = getattr(trusted, name), getattr(validated, name)
            assert nested == expected
            if expected is not None:
                assert nested.model_fields_set == expected.model_fields_set
        assert trusted.model_dump() == validated.model_dump()
        assert trusted.key == validated.key
    else:
        assert trusted == validated


def test_trusted_construction_refuses_what_limits_refuse() -> None:
    record = {**chunk_to_record(Chunk()), "tag_set": ["a", "b"], "metadata": None}

    with pytest.raises(ChunkValidationError) as caught:
        chunk_from_record(record, ChunkLimits(max_tag_set=1))
    assert caught.value.field == "tag_set"


def test_metadata_text_round_trips_through_the_trusted_path() -> None:
    chunk = Chunk(metadata={"b": [1, 2.5, None, True], "a": "ü", "big": 2**80})

    assert CODEC.decode(CODEC.encode(chunk)) == chunk
    assert (
        metadata_text(chunk.metadata) == '{"a":"ü","b":[1,2.5,null,true],"big":' + str(2**80) + "}"
    )


@pytest.mark.parametrize("byte", [0, 1, 2, 0x7F, 0x80, 0xFF])
def test_boolean_bytes_read_as_fastavro_reads_them(byte: int) -> None:
    # Chunk(): 19 null unions, then low_priority (a plain boolean), then a null dataset_id.
    body = b"\x00" * 19 + bytes([byte]) + b"\x00"

    read, end = GENERATED.read(body, 0)

    expected, expected_end = fastavro_read(body)
    assert same(read, expected)
    assert read["low_priority"] is (byte != 0)
    assert end == expected_end


@settings(max_examples=EXAMPLES)
@given(value=json_values | st.floats())
def test_metadata_text_is_json_dumps_with_sorted_keys(value: Any) -> None:
    try:
        expected: Any = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(ChunkValidationError):
            metadata_text(value)
    else:
        assert metadata_text(value) == expected


def test_trusted_construction_is_for_the_schema_its_checks_were_written_for() -> None:
    assert CODEC.fingerprint == TRUSTED_RECORD_FINGERPRINT, (
        "chunk.avsc changed: review chunk_from_record's checks for its fields and types, then "
        "move TRUSTED_RECORD_FINGERPRINT"
    )


def test_another_schema_with_the_chunk_fields_is_validated_in_full(tmp_path: Path) -> None:
    # Same field names, one type changed: the generated codec serves it, validation judges it.
    schema = copy.deepcopy(SCHEMA)
    for field in schema["fields"]:
        if field["name"] == "weight":
            field["type"] = ["null", "string"]
    (tmp_path / "chunk.avsc").write_text(json.dumps(schema), encoding="utf-8")
    codec = ChunkCodec(tmp_path)
    assert generated_codec(schema) is not None
    buffer = BytesIO()
    buffer.write(b"\xc3\x01" + codec.fingerprint.to_bytes(8, "little"))
    schemaless_writer(buffer, parse_schema(schema), {**chunk_to_record(Chunk()), "weight": "x"})

    with pytest.raises(ChunkValidationError) as caught:
        codec.decode(buffer.getvalue())
    assert caught.value.field == "weight"


# -- the generator on the types chunk.avsc does not use yet --------------------------------------

OTHER_TYPES_SCHEMA: Final[dict[str, Any]] = {
    "type": "record",
    "name": "Everything",
    "namespace": "test.codegen",
    "fields": [
        {"name": "small", "type": "int"},
        {"name": "big", "type": "long"},
        {"name": "single", "type": "float"},
        {"name": "blob", "type": "bytes"},
        {"name": "flag", "type": "boolean"},
        {"name": "nothing", "type": "null"},
        {"name": "late_null", "type": [{"type": "string", "logicalType": "uuid"}, "null"]},
        {
            "name": "points",
            "type": {
                "type": "array",
                "items": {
                    "type": "record",
                    "name": "Point",
                    "fields": [
                        {"name": "x", "type": "double"},
                        {"name": "tags", "type": {"type": "array", "items": "string"}},
                    ],
                },
            },
        },
        {"name": "again", "type": ["null", "Point"]},
        {"name": "qualified", "type": ["null", "test.codegen.Point"]},
        {"name": "stamp", "type": {"type": "long", "logicalType": "timestamp-micros-unknown"}},
    ],
}
OTHER_PARSED: Final = parse_schema(copy.deepcopy(OTHER_TYPES_SCHEMA))
OTHER_GENERATED: Final = generate(OTHER_TYPES_SCHEMA)
points = st.fixed_dictionaries({"x": any_floats, "tags": st.lists(texts, max_size=3)})
other_records = st.fixed_dictionaries(
    {
        "small": st.integers(-(2**31), 2**31 - 1),
        "big": st.integers(-(2**63), 2**63 - 1),
        "single": st.floats(width=32),
        "blob": st.binary(max_size=300),
        "flag": st.booleans(),
        "nothing": st.none(),
        "late_null": optional(st.uuids()),
        "points": st.lists(points, max_size=3),
        "again": optional(points),
        "qualified": optional(points),
        "stamp": st.integers(-(2**63), 2**63 - 1),
    }
)


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(record=other_records)
def test_generator_matches_fastavro_on_every_supported_type(record: dict[str, Any]) -> None:
    buffer = BytesIO()
    schemaless_writer(buffer, OTHER_PARSED, record)
    body = buffer.getvalue()
    out = bytearray()

    OTHER_GENERATED.write(out, as_object(record))
    read, end = OTHER_GENERATED.read(body, 0)

    assert bytes(out) == body
    expected = schemaless_reader(BytesIO(body), OTHER_PARSED, None)
    assert same(read, expected)
    assert end == len(body)
