"""docs/wire-contract.md is checked against the code, the schema and the golden vectors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastavro.schema import to_parsing_canonical_form

from streamproc import deadletter
from streamproc.chunk import CHUNK_KEY_NAMESPACE
from streamproc.codec import ChunkCodec
from streamproc.errors import StreamprocError

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "wire-contract.md").read_text(encoding="utf-8")
SCHEMA: dict[str, Any] = json.loads((REPO / "avro" / "chunk.avsc").read_text(encoding="utf-8"))
GOLDEN = REPO / "tests" / "golden"


def fenced_blocks(language: str) -> list[str]:
    """The contents of every fenced code block of ``language`` in the document."""
    return re.findall(rf"^```{language}\n(.*?)^```$", DOC, flags=re.DOTALL | re.MULTILINE)


def table_rows() -> list[list[str]]:
    """The cells of every Markdown table row of the document."""
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in DOC.splitlines()
        if line.startswith("| ")
    ]


def type_text(avro_type: Any) -> str:
    """How the document's tables spell an Avro type (the non-null branch of a union)."""
    if isinstance(avro_type, list):
        (branch,) = (item for item in avro_type if item != "null")
        return type_text(branch)
    if isinstance(avro_type, dict):
        if avro_type["type"] == "array":
            return f"array<{type_text(avro_type['items'])}>"
        if avro_type["type"] == "record":
            return str(avro_type["name"])
        if "logicalType" in avro_type:
            return f"{avro_type['type']}:{avro_type['logicalType']}"
        return type_text(avro_type["type"])
    return str(avro_type)


def golden(name: str) -> dict[str, Any]:
    expected: dict[str, Any] = json.loads(
        (GOLDEN / f"{name}.expected.json").read_text(encoding="utf-8")
    )
    return expected


def test_every_schema_field_is_in_the_table_in_order_with_type_and_default() -> None:
    rows = {row[1]: row for row in table_rows() if len(row) == 6 and row[0].isdigit()}
    documented = [name.strip("`") for name in rows]
    assert documented == [field["name"] for field in SCHEMA["fields"]]
    for position, field in enumerate(SCHEMA["fields"]):
        row = rows[f"`{field['name']}`"]
        nullable = isinstance(field["type"], list) and "null" in field["type"]
        assert row[0] == str(position), field["name"]
        assert row[2] == f"`{type_text(field['type'])}`", field["name"]
        assert row[3] == ("yes" if nullable else "no"), field["name"]
        assert row[4] == f"`{json.dumps(field['default'])}`", field["name"]
        assert row[5], f"{field['name']} has no description"


def test_every_nested_record_member_is_in_the_table() -> None:
    rows = {row[0]: row for row in table_rows() if len(row) == 3}
    members = 0
    for field in SCHEMA["fields"]:
        for branch in field["type"] if isinstance(field["type"], list) else [field["type"]]:
            if isinstance(branch, dict) and branch["type"] == "record":
                for member in branch["fields"]:
                    members += 1
                    row = rows[f"`{branch['name']}.{member['name']}`"]
                    assert row[1] == f"`{type_text(member['type'])}`"
    assert members == 6


def test_fingerprint_and_canonical_form_are_the_current_schema() -> None:
    codec = ChunkCodec()
    wire = bytes.fromhex(codec.fingerprint_hex)
    value = int.from_bytes(wire, "little")
    assert f"`{wire.hex(' ')}`" in DOC
    assert f"`{codec.fingerprint_hex}`" in DOC
    assert f"`{value:#018x}` = `{value}`" in DOC
    assert [block.strip() for block in fenced_blocks("json")] == [to_parsing_canonical_form(SCHEMA)]


def test_crc64_avro_code_in_the_document_computes_the_fingerprint() -> None:
    (code,) = fenced_blocks("python")
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # noqa: S102  # the document's own example code, run as written
    canonical = to_parsing_canonical_form(SCHEMA)
    header = namespace["single_object_header"](canonical)
    assert header == bytes.fromhex("c301" + ChunkCodec().fingerprint_hex)
    assert namespace["crc64_avro"](b'"null"').to_bytes(8, "little").hex() == "8a8f25cce724dd63"


@pytest.mark.parametrize("name", ["minimal", "every_field"])
def test_annotated_hex_dumps_are_the_golden_vectors(name: str) -> None:
    dumps = [
        bytes.fromhex("".join(line.split("#")[0] for line in block.splitlines()))
        for block in fenced_blocks("text")
        if block.startswith("c3 01")
    ]
    assert bytes.fromhex(golden(name)["single-object"]) in dumps


def test_key_examples_are_the_golden_keys() -> None:
    assert str(CHUNK_KEY_NAMESPACE) in DOC
    for name in ("minimal", "low_priority_unicode", "every_field"):
        (row,) = (r for r in table_rows() if len(r) == 3 and r[0] == f"`{name}`")
        assert row[-1] == f"`{golden(name)['key']}`"


def test_dead_letter_headers_and_reasons_are_documented() -> None:
    headers = [value for key, value in vars(deadletter).items() if key.startswith("HEADER_")]
    assert len(headers) == 9
    documented = {row[0] for row in table_rows()}
    for header in headers:
        assert f"`{header}`" in documented, header
    reasons = {
        cls.reason
        for cls in all_subclasses(StreamprocError)
        if cls.reason in {"invalid", "handler_error", "handler_retriable"}
        or cls.reason.endswith(("_framing", "_schema", "undecodable"))
    }
    assert len(reasons) == 7
    for reason in reasons:
        assert f"`{reason}`" in documented, reason


def all_subclasses(cls: type[StreamprocError]) -> set[type[StreamprocError]]:
    found: set[type[StreamprocError]] = set()
    for sub in cls.__subclasses__():
        found |= {sub, *all_subclasses(sub)}
    return found
