"""Straight-line Avro writer and reader generated from a record schema: the codec's hot path.

fastavro interprets the schema for every value it reads or writes: per field it looks up a reader
by type name, matches union branches and goes through a file-like object. For the one schema the
lane topics carry, that work can be done once: this module turns a record schema into Python
source, one statement run per field with the varints, lengths and union indexes inline, and
compiles it. Measured on sample chunks, the generated reader takes well under half of
fastavro's time per value, the writer about a third.

The generated functions know one schema and nothing else: schema resolution (values from other
writer schemas), the framings and the registry stay with fastavro and :mod:`streamproc.codec`.
They are checked against fastavro byte for byte (writer) and value for value (reader) by the
property tests in ``tests/unit/test_avro_codegen.py``.

Supported types: ``null``, ``boolean``, ``int``, ``long``, ``float``, ``double``, ``string``
(with the ``uuid`` logical type read as :class:`uuid.UUID`, as fastavro reads it), ``bytes``,
``array``, ``record`` (nested or referenced by name) and two-branch unions with ``null``.
Anything else raises :class:`UnsupportedSchemaError`; the codec then keeps fastavro for that
schema.

The writer reads the fields of an object from its instance dict (``chunk.__dict__["tag_set"]``,
the same for nested records), so it writes a pydantic model directly, without building the
intermediate record dict; a
``transforms`` entry maps a top-level field's value first (``metadata`` to its JSON text). The
reader returns what fastavro's ``schemaless_reader`` returns: a dict per record, fields in schema
order.
"""

from __future__ import annotations

import keyword
import struct
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

__all__ = [
    "GeneratedCodec",
    "UnsupportedSchemaError",
    "generate",
    "reader_source",
    "writer_source",
]

Writer = Callable[[bytearray, Any], None]
Reader = Callable[[bytes, int], tuple[dict[str, Any], int]]

PRIMITIVES: Final = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "string", "bytes"}
)
SMALL_LONG_LIMIT: Final = 8192
# Zigzag varints of 0..8191 (2n < 2**14 fits two bytes): the lengths and counts seen in practice.
SMALL_LONGS: Final = tuple(
    bytes([(2 * n & 0x7F) | 0x80, 2 * n >> 7]) if 2 * n > 0x7F else bytes([2 * n])
    for n in range(SMALL_LONG_LIMIT)
)


UNION_SECOND: Final = b"\x02"  # the branch byte of a union's second branch
# The same varints behind that branch byte: an optional string's prefix in one append.
SECOND_SMALL_LONGS: Final = tuple(UNION_SECOND + encoded for encoded in SMALL_LONGS)


class UnsupportedSchemaError(ValueError):
    """The schema uses a type the generator does not handle (enum, fixed, map, wide unions)."""


class AvroBodyError(ValueError):
    """The bytes are not a valid Avro body of the schema (raised by generated readers)."""


def write_long(value: int) -> bytes:
    """Avro ``long``: zigzag, then base-128 varint, least significant group first."""
    if 0 <= value < SMALL_LONG_LIMIT:
        return SMALL_LONGS[value]
    encoded = (value << 1) ^ (value >> 63)
    out = bytearray()
    while encoded > 0x7F:
        out.append((encoded & 0x7F) | 0x80)
        encoded >>= 7
    out.append(encoded)
    return bytes(out)


def read_long_tail(data: bytes, pos: int, first: int) -> tuple[int, int]:
    """The rest of a varint whose first byte ``first`` had the continuation bit set.

    Returns:
        The decoded (zigzag) value and the position after it.

    Raises:
        AvroBodyError: The varint runs over 10 bytes (no 64-bit long does).
        IndexError: The data ends inside the varint.
    """
    value = first & 0x7F
    shift = 7
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (value >> 1) ^ -(value & 1), pos
        shift += 7
        if shift > 63:
            raise AvroBodyError(f"varint longer than 10 bytes ending at {pos}")


def bad_union_index(index_byte: int, pos: int) -> AvroBodyError:
    return AvroBodyError(f"union branch byte {index_byte:#04x} at {pos} names no branch")


def truncated(length: int, pos: int, size: int) -> AvroBodyError:
    if length < 0:
        return AvroBodyError(f"negative length {length} at {pos}")
    return AvroBodyError(f"{length} bytes announced at {pos}, only {size - pos} left")


_new_object = object.__new__
# UUID's slots, set through their descriptors: half the cost of object.__setattr__ by name.
_set_uuid_int = uuid.UUID.__dict__["int"].__set__
_set_uuid_is_safe = uuid.UUID.__dict__["is_safe"].__set__
_SAFE_UNKNOWN = uuid.SafeUUID.unknown


def uuid_from_text(text: str) -> uuid.UUID:
    """``uuid.UUID(text)``, about three times faster for the canonical 36-character form.

    That form is what every writer sends: its 32 hex digits are parsed exactly as ``UUID()``
    parses them (``int(digits, 16)``), into an equal, immutable instance. Anything else (braces,
    ``urn:uuid:``, no dashes, garbage) goes to ``UUID()`` itself, its errors included.
    """
    if len(text) == 36 and text[8] == text[13] == text[18] == text[23] == "-":
        digits = text.replace("-", "")
        if len(digits) == 32:
            try:
                value = int(digits, 16)
            except ValueError:
                pass  # UUID() raises its own error below
            else:
                if value >= 0:  # int() takes a sign; UUID() refuses a negative value
                    instance: uuid.UUID = _new_object(uuid.UUID)
                    _set_uuid_int(instance, value)
                    _set_uuid_is_safe(instance, _SAFE_UNKNOWN)
                    return instance
    return uuid.UUID(text)


# -- schema walking -----------------------------------------------------------------------------


@dataclass(slots=True)
class Names:
    """Named types seen so far, by full name and by short name."""

    records: dict[str, Mapping[str, Any]]

    def define(self, schema: Mapping[str, Any], namespace: str | None) -> str | None:
        name = str(schema["name"])
        space = schema.get("namespace", namespace)
        full = name if "." in name or not space else f"{space}.{name}"
        self.records[full] = schema
        self.records.setdefault(name.rsplit(".", 1)[-1], schema)
        return full.rsplit(".", 1)[0] if "." in full else None

    def lookup(self, name: str) -> Mapping[str, Any]:
        try:
            return self.records[name]
        except KeyError:
            raise UnsupportedSchemaError(f"unknown named type {name!r}") from None


def canonical(schema: Any, names: Names) -> Any:
    """``schema`` with a named reference replaced by its definition and ``{"type": T}`` by T."""
    if isinstance(schema, str):
        return schema if schema in PRIMITIVES else names.lookup(schema)
    if isinstance(schema, Mapping):
        kind = schema.get("type")
        if isinstance(kind, str) and kind in PRIMITIVES:
            logical = schema.get("logicalType")
            if kind == "string" and logical == "uuid":
                return "uuid"
            return kind  # other logical types keep their underlying type, as fastavro without them
    return schema


def nullable_branch(schema: list[Any]) -> tuple[int, Any]:
    """For a ``["null", T]`` or ``[T, "null"]`` union: the index byte of null and T's schema."""
    if len(schema) != 2 or "null" not in schema or schema[0] == schema[1]:
        raise UnsupportedSchemaError(f"only two-branch unions with null are supported: {schema}")
    if schema[0] == "null":
        return 0, schema[1]
    return 2, schema[0]


class Emitter:
    """Lines of Python source with indentation and fresh variable names."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 1
        self.counter = 0

    def line(self, text: str) -> None:
        self.lines.append("    " * self.depth + text)

    def fresh(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}_{self.counter}"

    def indent(self) -> Emitter:
        self.depth += 1
        return self

    def dedent(self) -> None:
        self.depth -= 1


# -- writer -------------------------------------------------------------------------------------


def writer_source(
    schema: Mapping[str, Any], transforms: Mapping[str, str] | None = None
) -> tuple[str, list[str]]:
    """Python source of ``write(out, obj)``, appending the Avro body of ``obj`` to ``out``.

    Args:
        schema: A record schema (parsed JSON).
        transforms: Top-level field name to the name of a function (in the namespace the source
            is compiled in) applied to the attribute's value when it is not ``None``.

    Returns:
        The source and the names of the functions of ``transforms`` it calls.

    Raises:
        UnsupportedSchemaError: The schema is not a record or uses an unsupported type.
    """
    if not isinstance(schema, Mapping) or schema.get("type") != "record":
        raise UnsupportedSchemaError("the top-level schema must be a record")
    names = Names({})
    namespace = names.define(schema, None)
    emit = Emitter()
    transforms = dict(transforms or {})
    emit.line("fields = obj.__dict__")
    for field in schema["fields"]:
        name = field["name"]
        value = emit.fresh("value")
        emit.line(f"{value} = fields[{name!r}]")
        if name in transforms:
            emit.line(f"if {value} is not None:")
            emit.indent().line(f"{value} = {transforms[name]}({value})")
            emit.dedent()
        write_value(emit, field["type"], value, names, namespace)
    body = "\n".join(emit.lines)
    return f"def write(out, obj):\n{body}\n", sorted(set(transforms.values()))


def write_length(emit: Emitter, expression: str, prefix: bytes) -> None:
    """Write a length, after ``prefix`` (the union branch byte before it, if any)."""
    length = emit.fresh("length")
    emit.line(f"{length} = {expression}")
    if prefix == UNION_SECOND:
        # One append for the branch byte and the length: the common case of an optional string.
        emit.line(
            f"out += _SECOND_SMALL_LONGS[{length}] if {length} < {SMALL_LONG_LIMIT}"
            f" else {prefix!r} + _long({length})"
        )
        return
    if prefix:
        emit.line(f"out += {prefix!r}")
    emit.line(
        f"out += _SMALL_LONGS[{length}] if {length} < {SMALL_LONG_LIMIT} else _long({length})"
    )


def write_value(
    emit: Emitter,
    schema: Any,
    value: str,
    names: Names,
    namespace: str | None,
    prefix: bytes = b"",
) -> None:
    """Emit the statements writing ``value``, after ``prefix`` (a union's branch byte)."""
    if isinstance(schema, list):
        null_byte, branch = nullable_branch(schema)
        some_byte = 2 - null_byte
        emit.line(f"if {value} is None:")
        emit.indent().line(f"out += {prefix + bytes([null_byte])!r}")
        emit.dedent()
        emit.line("else:")
        emit.indent()
        write_value(emit, branch, value, names, namespace, prefix + bytes([some_byte]))
        emit.dedent()
        return
    schema = canonical(schema, names)
    if schema in ("string", "uuid", "bytes"):
        encoded = value
        if schema != "bytes":
            encoded = emit.fresh("encoded")
            text = f"str({value})" if schema == "uuid" else value
            emit.line(f"{encoded} = {text}.encode()")
        write_length(emit, f"len({encoded})", prefix)
        emit.line(f"out += {encoded}")
        return
    if prefix:
        emit.line(f"out += {prefix!r}")
    if schema == "null":
        return
    if schema == "boolean":
        emit.line(f'out += b"\\x01" if {value} else b"\\x00"')
    elif schema in ("int", "long"):
        emit.line(f"out += _long({value})")
    elif schema == "float":
        emit.line(f"out += _PACK_FLOAT({value})")
    elif schema == "double":
        emit.line(f"out += _PACK_DOUBLE({value})")
    elif isinstance(schema, Mapping) and schema.get("type") == "array":
        item = emit.fresh("item")
        emit.line(f"if {value}:")
        emit.indent()
        write_length(emit, f"len({value})", b"")
        emit.line(f"for {item} in {value}:")
        emit.indent()
        write_value(emit, schema["items"], item, names, namespace)
        emit.dedent()
        emit.dedent()
        emit.line('out += b"\\x00"')
    elif isinstance(schema, Mapping) and schema.get("type") == "record":
        inner = names.define(schema, namespace)
        members = emit.fresh("members")
        emit.line(f"{members} = {value}.__dict__")
        for field in schema["fields"]:
            member = emit.fresh("member")
            emit.line(f"{member} = {members}[{field['name']!r}]")
            write_value(emit, field["type"], member, names, inner)
    else:
        raise UnsupportedSchemaError(f"unsupported Avro type: {schema}")


# -- reader -------------------------------------------------------------------------------------


def reader_source(schema: Mapping[str, Any]) -> str:
    """Python source of ``read(data, pos)``: the record at ``pos`` and the position after it.

    Raises:
        UnsupportedSchemaError: The schema is not a record or uses an unsupported type.
    """
    if not isinstance(schema, Mapping) or schema.get("type") != "record":
        raise UnsupportedSchemaError("the top-level schema must be a record")
    emit = Emitter()
    emit.line("size = len(data)")
    names = Names({})
    result = read_value(emit, schema, names, None)
    emit.line(f"return {result}, pos")
    body = "\n".join(emit.lines)
    return f"def read(data, pos):\n{body}\n"


def read_long(emit: Emitter, target: str) -> None:
    emit.line(f"{target} = data[pos]")
    emit.line("pos += 1")
    emit.line(f"if {target} & 0x80:")
    emit.indent().line(f"{target}, pos = _long_tail(data, pos, {target})")
    emit.dedent()
    emit.line("else:")
    emit.indent().line(f"{target} = ({target} >> 1) ^ -({target} & 1)")
    emit.dedent()


def read_sized(emit: Emitter, target: str, decode: bool) -> None:
    length = emit.fresh("length")
    end = emit.fresh("end")
    read_long(emit, length)
    emit.line(f"{end} = pos + {length}")
    emit.line(f"if {length} < 0 or {end} > size:")
    emit.indent().line(f"raise _truncated({length}, pos, size)")
    emit.dedent()
    emit.line(f"{target} = data[pos:{end}]{'.decode()' if decode else ''}")
    emit.line(f"pos = {end}")


def read_value(
    emit: Emitter, schema: Any, names: Names, namespace: str | None, target: str | None = None
) -> str:
    """Emit the statements reading one value into ``target`` (a fresh variable by default).

    Returns:
        The variable holding the value.
    """
    target = target or emit.fresh("v")
    if isinstance(schema, list):
        null_byte, branch = nullable_branch(schema)
        index = emit.fresh("branch")
        emit.line(f"{index} = data[pos]")
        emit.line("pos += 1")
        emit.line(f"if {index} == {null_byte}:")
        emit.indent().line(f"{target} = None")
        emit.dedent()
        emit.line(f"elif {index} == {2 - null_byte}:")
        emit.indent()
        read_value(emit, branch, names, namespace, target)
        emit.dedent()
        emit.line("else:")
        emit.indent().line(f"raise _bad_union({index}, pos - 1)")
        emit.dedent()
        return target
    schema = canonical(schema, names)
    if schema == "null":
        emit.line(f"{target} = None")
    elif schema == "boolean":
        # Any non-zero byte is true, as fastavro reads it.
        emit.line(f"{target} = data[pos] != 0")
        emit.line("pos += 1")
    elif schema in ("int", "long"):
        read_long(emit, target)
    elif schema == "float":
        emit.line(f"{target} = _UNPACK_FLOAT(data, pos)[0]")
        emit.line("pos += 4")
    elif schema == "double":
        emit.line(f"{target} = _UNPACK_DOUBLE(data, pos)[0]")
        emit.line("pos += 8")
    elif schema == "string":
        read_sized(emit, target, decode=True)
    elif schema == "uuid":
        read_sized(emit, target, decode=True)
        emit.line(f"{target} = _UUID({target})")
    elif schema == "bytes":
        read_sized(emit, target, decode=False)
    elif isinstance(schema, Mapping) and schema.get("type") == "array":
        count = emit.fresh("count")
        emit.line(f"{target} = []")
        read_long(emit, count)
        emit.line(f"while {count}:")
        emit.indent()
        emit.line(f"if {count} < 0:")  # a block with its size in bytes: the size is not needed
        emit.indent().line(f"{count} = -{count}")
        read_long(emit, emit.fresh("block_bytes"))
        emit.dedent()
        emit.line(f"for _ in range({count}):")
        emit.indent()
        item = read_value(emit, schema["items"], names, namespace)
        emit.line(f"{target}.append({item})")
        emit.dedent()
        read_long(emit, count)
        emit.dedent()
    elif isinstance(schema, Mapping) and schema.get("type") == "record":
        inner_namespace = names.define(schema, namespace)
        members = [
            (field["name"], read_value(emit, field["type"], names, inner_namespace))
            for field in schema["fields"]
        ]
        items = ", ".join(f"{name!r}: {variable}" for name, variable in members)
        emit.line(f"{target} = {{{items}}}")
    else:
        raise UnsupportedSchemaError(f"unsupported Avro type: {schema}")
    return target


# -- compiling ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GeneratedCodec:
    """The compiled writer and reader of one schema, with their source for inspection.

    Attributes:
        write: ``write(out, obj)`` appends the Avro body of ``obj`` to the bytearray ``out``.
        read: ``read(data, pos)`` returns the record at ``pos`` and the position after it; raises
            ``IndexError``, ``struct.error``, ``UnicodeDecodeError`` or ``ValueError`` on bytes
            that are not a body of the schema.
        writer_source: The writer's Python source.
        reader_source: The reader's Python source.
    """

    write: Writer
    read: Reader
    writer_source: str
    reader_source: str


def generate(
    schema: Mapping[str, Any], transforms: Mapping[str, Callable[[Any], Any]] | None = None
) -> GeneratedCodec:
    """Generate and compile the writer and reader of a record schema.

    Args:
        schema: The record schema as parsed JSON (the ``.avsc`` file's content).
        transforms: Top-level field name to a function applied to the attribute's value before it
            is written (when not ``None``).

    Returns:
        The compiled functions.

    Raises:
        UnsupportedSchemaError: The schema uses a type the generator does not handle.
    """
    for field_name in field_names(schema):
        # Field names become attribute names and dict keys in the source; nothing else of the
        # schema (and nothing of any value) does.
        if not field_name.isidentifier() or keyword.iskeyword(field_name):
            raise UnsupportedSchemaError(f"field name {field_name!r} is not a Python identifier")
    transforms = dict(transforms or {})
    write_src, _ = writer_source(schema, {name: f"_transform_{name}" for name in transforms})
    read_src = reader_source(schema)
    namespace: dict[str, Any] = {
        "_SMALL_LONGS": SMALL_LONGS,
        "_SECOND_SMALL_LONGS": SECOND_SMALL_LONGS,
        "_long": write_long,
        "_long_tail": read_long_tail,
        "_bad_union": bad_union_index,
        "_truncated": truncated,
        "_PACK_DOUBLE": struct.Struct("<d").pack,
        "_PACK_FLOAT": struct.Struct("<f").pack,
        "_UNPACK_DOUBLE": struct.Struct("<d").unpack_from,
        "_UNPACK_FLOAT": struct.Struct("<f").unpack_from,
        "_UUID": uuid_from_text,
        **{f"_transform_{name}": function for name, function in transforms.items()},
    }
    exec(compile(write_src, "<avro writer>", "exec"), namespace)  # noqa: S102
    exec(compile(read_src, "<avro reader>", "exec"), namespace)  # noqa: S102
    return GeneratedCodec(
        write=cast(Writer, namespace["write"]),
        read=cast(Reader, namespace["read"]),
        writer_source=write_src,
        reader_source=read_src,
    )


def field_names(schema: Any) -> list[str]:
    """Every field name of every record in ``schema``, nested ones included."""
    found: list[str] = []
    if isinstance(schema, list):
        for branch in schema:
            found += field_names(branch)
    elif isinstance(schema, Mapping):
        if schema.get("type") == "record":
            for field in schema.get("fields", []):
                found.append(str(field.get("name")))
                found += field_names(field.get("type"))
        elif schema.get("type") == "array":
            found += field_names(schema.get("items"))
    return found
