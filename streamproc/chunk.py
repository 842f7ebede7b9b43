"""The chunk model: Trieve's ``ChunkReqPayload`` plus streamproc's routing fields.

A :class:`Chunk` accepts every field of Trieve's ``ChunkReqPayload`` (``POST /api/chunk``) under
the same name and JSON type, so a payload written for Trieve validates unchanged, single or batch.
On top of those it carries ``low_priority`` (route to the bulk lane) and ``dataset_id`` (the
target dataset, a UUID or a dataset tracking id, which Trieve takes from the ``TR-Dataset``
header instead).

Input rules beyond plain types, each chosen to match what Trieve's server does with the payload:

* ``high_priority`` is Trieve's realtime flag. It is accepted on input and not stored: a chunk is
  realtime exactly when ``low_priority`` is false, and ``high_priority: true`` together with
  ``low_priority: true`` is a contradiction, rejected as a validation error.
* ``boost_phrase`` and ``distance_phrase`` are accepted as the aliases Trieve's server accepts for
  ``fulltext_boost`` and ``semantic_boost``.
* Any other unknown field is an error naming the field, so a typo never silently drops data.
* An empty ``tracking_id`` means "none", as on Trieve's server (which also drops empty ones); this
  keeps empty strings from becoming a Kafka key shared by unrelated chunks.
* ``time_stamp`` stays the caller's string (it travels as text) but must parse as an ISO 8601 date
  or date-time (``datetime.fromisoformat``), which is the format Trieve documents for it.
* Numbers must be finite; booleans must be JSON booleans (``1`` or ``"true"`` are rejected, as
  Trieve's JSON decoder rejects them); ``location`` must be a valid latitude/longitude.

Validation is hot (the producer validates tens of thousands of chunks per second), so the model
relies on pydantic-core for types and keeps the Python-level checks to a few ``len()`` calls.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Annotated, Any, Final, Self, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from streamproc.errors import ChunkValidationError, ConfigError

__all__ = [
    "CHUNK_KEY_NAMESPACE",
    "DEFAULT_LIMITS",
    "Chunk",
    "ChunkLimits",
    "FullTextBoost",
    "GeoInfo",
    "SemanticBoost",
    "chunk_from_record",
    "parse_chunk",
    "parse_payload",
]

CHUNK_KEY_NAMESPACE: Final = uuid.UUID("a6624f05-2fa3-4f6c-868d-e1d9182bcea4")
"""UUIDv5 namespace of derived chunk keys (see :attr:`Chunk.key`). Part of the wire contract:
changing it changes the key, and so the partition, of every chunk without a ``tracking_id``."""

# Where ``ValidationInfo.context`` carries the limits of one validation call.
LIMITS_CONTEXT_KEY: Final = "limits"

FiniteFloat = Annotated[float, Field(strict=True)]
StrictBool = Annotated[bool, Field(strict=True)]


@dataclass(frozen=True, slots=True)
class ChunkLimits:
    """Size limits of a chunk.

    The list and length limits are checked when a chunk is validated; ``max_encoded_bytes`` is
    checked by the codec after encoding (:class:`~streamproc.errors.OversizeError`), because only
    then is the size known. The default stays below Kafka's default ``message.max.bytes`` of
    1 MB with headroom for the key, headers and batch overhead.

    Args:
        max_encoded_bytes: Largest encoded value (framing included) in bytes.
        max_tag_set: Most entries in ``tag_set``.
        max_group_ids: Most entries in ``group_ids``.
        max_group_tracking_ids: Most entries in ``group_tracking_ids``.
        max_image_urls: Most entries in ``image_urls``.
        max_tracking_id_length: Longest ``tracking_id`` in characters.

    Raises:
        ConfigError: A limit is not a positive integer.
    """

    max_encoded_bytes: int = 900_000
    max_tag_set: int = 1_000
    max_group_ids: int = 1_000
    max_group_tracking_ids: int = 1_000
    max_image_urls: int = 1_000
    max_tracking_id_length: int = 1_024

    def __post_init__(self) -> None:
        for field in fields(self):
            name = field.name
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"chunk limit {name} must be a positive integer, got {value!r}")


DEFAULT_LIMITS: Final = ChunkLimits()


class GeoInfo(BaseModel):
    """A point on Earth (Trieve's ``GeoInfo``), in degrees."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    lat: Annotated[FiniteFloat, Field(ge=-90.0, le=90.0)]
    lon: Annotated[FiniteFloat, Field(ge=-180.0, le=180.0)]


class FullTextBoost(BaseModel):
    """Multiply the in-document frequency of ``phrase``'s tokens by ``boost_factor``."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    phrase: str
    boost_factor: FiniteFloat


class SemanticBoost(BaseModel):
    """Move the embedding ``distance_factor`` of the way towards the embedding of ``phrase``."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    phrase: str
    distance_factor: FiniteFloat


class Chunk(BaseModel):
    """One chunk to ingest: Trieve's ``ChunkReqPayload`` plus ``low_priority`` and ``dataset_id``.

    Construct from untrusted input with :func:`parse_chunk` or :func:`parse_payload`, which turn
    every failure into :class:`~streamproc.errors.ChunkValidationError`. Constructing directly
    raises ``pydantic.ValidationError`` for type errors and ``ChunkValidationError`` for limit and
    priority conflicts. The model is frozen; its list fields must not be mutated in place.
    """

    # allow_inf_nan=False also covers the floats inside metadata given as Python data; NaN in
    # metadata given as JSON text is refused when the chunk is encoded.
    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, allow_inf_nan=False
    )

    chunk_html: str | None = None
    semantic_content: str | None = None
    fulltext_content: str | None = None
    link: str | None = None
    tag_set: list[str] | None = None
    num_value: FiniteFloat | None = None
    metadata: JsonValue | None = None
    tracking_id: str | None = None
    upsert_by_tracking_id: StrictBool | None = None
    group_ids: list[uuid.UUID] | None = None
    group_tracking_ids: list[str] | None = None
    time_stamp: str | None = None
    location: GeoInfo | None = None
    image_urls: list[str] | None = None
    weight: FiniteFloat | None = None
    split_avg: StrictBool | None = None
    convert_html_to_text: StrictBool | None = None
    fulltext_boost: FullTextBoost | None = Field(
        default=None, validation_alias=AliasChoices("fulltext_boost", "boost_phrase")
    )
    semantic_boost: SemanticBoost | None = Field(
        default=None, validation_alias=AliasChoices("semantic_boost", "distance_phrase")
    )
    low_priority: StrictBool = False
    dataset_id: Annotated[str, Field(min_length=1)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _accept_high_priority(cls, data: Any) -> Any:
        """Accept Trieve's ``high_priority`` without storing it; reject it next to low_priority."""
        if not isinstance(data, dict) or "high_priority" not in data:
            return data
        data = dict(data)
        high_priority = data.pop("high_priority")
        if high_priority is not None and not isinstance(high_priority, bool):
            raise ChunkValidationError(
                f"high_priority: must be a boolean, got {type(high_priority).__name__}",
                field="high_priority",
            )
        if high_priority and data.get("low_priority") is True:
            raise ChunkValidationError(
                "high_priority: high_priority and low_priority are both true; pick one lane",
                field="high_priority",
            )
        return data

    @field_validator("tracking_id")
    @classmethod
    def _empty_tracking_id_is_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("time_stamp")
    @classmethod
    def _time_stamp_is_iso8601(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise PydanticCustomError(
                    "iso8601_datetime",
                    "not an ISO 8601 date-time: {value}",
                    {"value": repr(value)},
                ) from None
        return value

    @model_validator(mode="after")
    def _within_limits(self, info: ValidationInfo) -> Self:
        context = info.context
        limits: ChunkLimits = (
            context.get(LIMITS_CONTEXT_KEY, DEFAULT_LIMITS)
            if isinstance(context, dict)
            else DEFAULT_LIMITS
        )
        check_limits(self, limits)
        return self

    @property
    def key(self) -> str:
        """The Kafka message key of this chunk; part of the wire contract.

        Updates of one chunk must share a key so they stay ordered within a lane. The key is:

        1. ``tracking_id`` when it is set (non-empty);
        2. otherwise the UUIDv5 (RFC 4122, SHA-1) in :data:`CHUNK_KEY_NAMESPACE` of the name
           ``json.dumps([dataset_id, chunk_html, link, semantic_content, fulltext_content],
           separators=(",", ":"))``, i.e. a compact JSON array (``null`` for absent fields) with
           every non-ASCII character escaped as ``\\uXXXX`` (UTF-16 surrogate pairs beyond the BMP),
           encoded as UTF-8, formatted as the lowercase hyphenated UUID string.

        Returns:
            The key as text; producers encode it as UTF-8.
        """
        if self.tracking_id is not None:
            return self.tracking_id
        identity = json.dumps(
            [
                self.dataset_id,
                self.chunk_html,
                self.link,
                self.semantic_content,
                self.fulltext_content,
            ],
            separators=(",", ":"),
        )
        return str(uuid.uuid5(CHUNK_KEY_NAMESPACE, identity))


def check_limits(chunk: Chunk, limits: ChunkLimits) -> None:
    """Check the list and length limits of ``chunk`` (not ``max_encoded_bytes``).

    Args:
        chunk: The chunk to check.
        limits: The limits to apply.

    Raises:
        ChunkValidationError: A limit is exceeded; ``field`` names the field.
    """
    if chunk.tracking_id is not None and len(chunk.tracking_id) > limits.max_tracking_id_length:
        raise ChunkValidationError(
            f"tracking_id: {len(chunk.tracking_id)} characters, over the limit of "
            f"{limits.max_tracking_id_length}",
            field="tracking_id",
        )
    for field, values, limit in (
        ("tag_set", chunk.tag_set, limits.max_tag_set),
        ("group_ids", chunk.group_ids, limits.max_group_ids),
        ("group_tracking_ids", chunk.group_tracking_ids, limits.max_group_tracking_ids),
        ("image_urls", chunk.image_urls, limits.max_image_urls),
    ):
        if values is not None and len(values) > limit:
            raise ChunkValidationError(
                f"{field}: {len(values)} entries, over the limit of {limit}", field=field
            )


def parse_chunk(
    data: Mapping[str, object] | str | bytes,
    *,
    dataset_id: str | None = None,
    limits: ChunkLimits = DEFAULT_LIMITS,
) -> Chunk:
    """Validate one chunk payload (a Trieve ``ChunkReqPayload`` object, with or without extras).

    Args:
        data: The payload as a mapping or as JSON text.
        dataset_id: Dataset to use when the payload names none.
        limits: List and length limits to enforce.

    Returns:
        The validated chunk.

    Raises:
        ChunkValidationError: The payload is malformed JSON, not an object, or invalid; ``field``
            is the dotted path of the first offending field (e.g. ``location.lat``, ``tag_set.3``).
    """
    context = {LIMITS_CONTEXT_KEY: limits}
    try:
        if isinstance(data, str | bytes):
            chunk = Chunk.model_validate_json(data, context=context)
        else:
            chunk = Chunk.model_validate(
                data if isinstance(data, dict) else dict(data), context=context
            )
    except ValidationError as exc:
        raise chunk_validation_error(exc) from None
    return with_default_dataset(chunk, dataset_id)


def parse_payload(
    data: object,
    *,
    dataset_id: str | None = None,
    limits: ChunkLimits = DEFAULT_LIMITS,
) -> list[Chunk]:
    """Validate a Trieve create-chunk request body: one chunk object or a JSON array of them.

    Args:
        data: JSON text (``str``/``bytes``), a mapping (one chunk) or a list of mappings.
        dataset_id: Dataset to use for chunks that name none.
        limits: List and length limits to enforce on every chunk.

    Returns:
        The validated chunks, in input order (one element for a single object).

    Raises:
        ChunkValidationError: Malformed JSON, a body that is neither an object nor an array, or an
            invalid chunk. For arrays, ``field`` starts with the index of the offending chunk
            (e.g. ``2.location.lat``).
    """
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data, parse_constant=reject_non_json_constant)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity
            raise ChunkValidationError(f"malformed JSON: {exc}") from None
    if isinstance(data, Mapping):
        return [parse_chunk(data, dataset_id=dataset_id, limits=limits)]
    if not isinstance(data, list):
        raise ChunkValidationError(
            f"a payload must be a chunk object or an array of them, got {type(data).__name__}"
        )
    chunks: list[Chunk] = []
    for index, item in enumerate(data):
        if not isinstance(item, Mapping):
            raise ChunkValidationError(
                f"{index}: a chunk must be an object, got {type(item).__name__}", field=str(index)
            )
        try:
            chunks.append(parse_chunk(item, dataset_id=dataset_id, limits=limits))
        except ChunkValidationError as exc:
            field = f"{index}.{exc.field}" if exc.field else str(index)
            raise ChunkValidationError(f"chunk {index}: {exc}", field=field) from None
    return chunks


CHUNK_FIELDS: Final = frozenset(Chunk.model_fields)
GEO_INFO_FIELDS: Final = frozenset(GeoInfo.model_fields)
FULL_TEXT_BOOST_FIELDS: Final = frozenset(FullTextBoost.model_fields)
SEMANTIC_BOOST_FIELDS: Final = frozenset(SemanticBoost.model_fields)

Model = TypeVar("Model", bound=BaseModel)
_new_object = object.__new__
_set_slot = object.__setattr__
_isfinite = math.isfinite
_fromisoformat = datetime.fromisoformat


def chunk_from_record(record: dict[str, Any], limits: ChunkLimits = DEFAULT_LIMITS) -> Chunk:
    """Build a chunk from a decoded Avro record, running only the checks Avro cannot make.

    ``record`` must be what an Avro reader returns for a schema whose fields are exactly the
    chunk's, nested records included, with ``metadata`` already parsed from its JSON text (see
    :func:`streamproc.codec.record_to_chunk`). Avro then guarantees every type: text is ``str``,
    numbers ``float``, flags ``bool``, ``group_ids`` ``uuid.UUID``, nested records dicts holding
    their members, and no field is missing or extra. What Avro cannot guarantee is checked here:

    1. every number is finite (``num_value``, ``weight``, ``location``, the boost factors and the
       floats inside ``metadata``), and ``location`` is a valid latitude/longitude;
    2. ``time_stamp`` parses as ISO 8601;
    3. ``tracking_id`` and ``dataset_id`` are not empty (validation turns an empty ``tracking_id``
       into ``None`` and refuses an empty ``dataset_id``);
    4. the list and length limits (:func:`check_limits`, the check validation runs last).

    When any of 1-3 is in doubt the record goes through full pydantic validation instead, so the
    chunk returned and every error raised are exactly those of validating the record
    (``Chunk.model_validate``); the unit tests compare both paths on generated records.

    Args:
        record: The decoded record; it becomes the chunk's field dict (its nested records are
            replaced by models in place), so the caller must not use it afterwards.
        limits: List and length limits to enforce.

    Returns:
        The chunk, equal to what validation builds (fields, fields set, nested models).

    Raises:
        ChunkValidationError: The record is not a valid chunk; ``field`` names the field.
    """
    num_value = record["num_value"]
    weight = record["weight"]
    metadata = record["metadata"]
    time_stamp = record["time_stamp"]
    location = record["location"]
    fulltext_boost = record["fulltext_boost"]
    semantic_boost = record["semantic_boost"]
    if (
        (num_value is not None and not _isfinite(num_value))
        or (weight is not None and not _isfinite(weight))
        or record["tracking_id"] == ""
        or record["dataset_id"] == ""
        or (metadata is not None and not json_is_finite(metadata))
        or (time_stamp is not None and not is_iso8601(time_stamp))
        or (location is not None and not is_geo_point(location["lat"], location["lon"]))
        or (fulltext_boost is not None and not _isfinite(fulltext_boost["boost_factor"]))
        or (semantic_boost is not None and not _isfinite(semantic_boost["distance_factor"]))
    ):
        return validate_record(record, limits)
    if location is not None:
        record["location"] = trusted_model(GeoInfo, location, GEO_INFO_FIELDS)
    if fulltext_boost is not None:
        record["fulltext_boost"] = trusted_model(
            FullTextBoost, fulltext_boost, FULL_TEXT_BOOST_FIELDS
        )
    if semantic_boost is not None:
        record["semantic_boost"] = trusted_model(
            SemanticBoost, semantic_boost, SEMANTIC_BOOST_FIELDS
        )
    chunk = trusted_model(Chunk, record, CHUNK_FIELDS)
    tracking_id = record["tracking_id"]
    tag_set = record["tag_set"]
    group_ids = record["group_ids"]
    group_tracking_ids = record["group_tracking_ids"]
    image_urls = record["image_urls"]
    if (
        (tracking_id is not None and len(tracking_id) > limits.max_tracking_id_length)
        or (tag_set is not None and len(tag_set) > limits.max_tag_set)
        or (group_ids is not None and len(group_ids) > limits.max_group_ids)
        or (
            group_tracking_ids is not None
            and len(group_tracking_ids) > limits.max_group_tracking_ids
        )
        or (image_urls is not None and len(image_urls) > limits.max_image_urls)
    ):
        check_limits(chunk, limits)  # raises the error validation raises
    return chunk


def validate_record(record: dict[str, Any], limits: ChunkLimits) -> Chunk:
    """Validate a decoded record (``metadata`` parsed) into a chunk: the full pydantic path.

    Raises:
        ChunkValidationError: The record is not a valid chunk; ``field`` names the field.
    """
    try:
        return Chunk.model_validate(record, context={LIMITS_CONTEXT_KEY: limits})
    except ValidationError as exc:
        raise chunk_validation_error(exc) from None


def trusted_model(model: type[Model], values: dict[str, Any], fields_set: frozenset[str]) -> Model:
    """An instance of ``model`` holding ``values`` as they are, as validation would store them.

    Sets the four slots pydantic's own ``model_construct`` sets, without its per-field default
    and alias handling (the values hold every field): the dict of values, the fields set (every
    field, as validating a complete record reports) and no extra or private values.
    """
    instance = _new_object(model)
    _set_slot(instance, "__dict__", values)
    _set_slot(instance, "__pydantic_fields_set__", set(fields_set))
    _set_slot(instance, "__pydantic_extra__", None)
    _set_slot(instance, "__pydantic_private__", None)
    return instance


def is_geo_point(lat: float, lon: float) -> bool:
    """True if ``lat``/``lon`` pass :class:`GeoInfo` validation (NaN fails every comparison)."""
    return -90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0


def is_iso8601(text: str) -> bool:
    """True if ``text`` passes the ``time_stamp`` check of :class:`Chunk`."""
    try:
        _fromisoformat(text)
    except ValueError:
        return False
    return True


def json_is_finite(value: Any) -> bool:
    """True if no float inside a parsed JSON value is infinite or NaN (``1e400`` parses as inf)."""
    kind = type(value)
    if kind is float:
        return _isfinite(value)
    if kind is dict:
        items = value.values()
    elif kind is list:
        items = value
    else:
        return True
    for item in items:
        item_kind = type(item)
        if item_kind is float:
            if not _isfinite(item):
                return False
        elif (item_kind is dict or item_kind is list) and not json_is_finite(item):
            return False
    return True


def reject_non_json_constant(name: str) -> None:
    """Refuse ``NaN``/``Infinity``, which Python's JSON decoder accepts but JSON does not have.

    Raises:
        ValueError: Always.
    """
    raise ValueError(f"{name} is not valid JSON")


def with_default_dataset(chunk: Chunk, dataset_id: str | None) -> Chunk:
    """Return ``chunk`` with ``dataset_id`` filled in when it has none.

    Args:
        chunk: A validated chunk.
        dataset_id: The dataset to fill in; ``None`` leaves the chunk as it is.

    Returns:
        ``chunk`` itself, or a copy naming ``dataset_id``.

    Raises:
        ChunkValidationError: ``dataset_id`` is empty.
    """
    if dataset_id is None or chunk.dataset_id is not None:
        return chunk
    if not dataset_id:
        raise ChunkValidationError("dataset_id: must not be empty", field="dataset_id")
    return chunk.model_copy(update={"dataset_id": dataset_id})


def chunk_validation_error(exc: ValidationError) -> ChunkValidationError:
    """Translate pydantic's error into ours, naming the first offending field by dotted path.

    Args:
        exc: The error pydantic raised.

    Returns:
        A :class:`~streamproc.errors.ChunkValidationError` whose message lists up to three
        problems and whose ``field`` is the path of the first.
    """
    problems = exc.errors(include_url=False, include_context=False, include_input=False)
    described: list[str] = []
    for problem in problems[:3]:
        path = field_path(problem["loc"])
        if problem["type"] == "extra_forbidden":
            message = "unknown field (not a Trieve ChunkReqPayload field nor a streamproc one)"
        elif problem["type"] == "json_invalid":
            message = f"malformed JSON: {problem['msg']}"
        else:
            message = problem["msg"]
        described.append(f"{path}: {message}" if path else message)
    if len(problems) > 3:
        described.append(f"and {len(problems) - 3} more")
    first_path = field_path(problems[0]["loc"]) if problems else ""
    return ChunkValidationError("; ".join(described), field=first_path or None)


def field_path(loc: tuple[int | str, ...]) -> str:
    """Dotted path of a pydantic error location, e.g. ``location.lat`` or ``tag_set.3``.

    Inside ``metadata`` pydantic interleaves the JSON type it tried (``dict``, ``list``,
    ``float``...) with the keys and indexes; those type tags are dropped so the path names only
    the position in the caller's JSON (``metadata.a.1``, not ``metadata.dict.a.list.1.float``).
    """
    if len(loc) > 1 and loc[0] == "metadata":
        loc = (loc[0], *loc[2::2])
    return ".".join(str(part) for part in loc)
