"""Confluent Schema Registry framing against a live registry.

:class:`RegistrySchemaIds` is the :class:`~streamproc.codec.SchemaIds` resolver the codec uses for
:attr:`~streamproc.codec.Framing.SCHEMA_REGISTRY` values when a registry URL is configured. It
speaks the Confluent Schema Registry REST API through confluent-kafka's own
``SchemaRegistryClient`` (retries, caching, basic auth and TLS come with it), so it works with
Confluent Schema Registry and with the registries that serve the same API (Apicurio's
``/apis/ccompat/v7``, Karapace, Redpanda).

Subjects follow the ``TopicNameStrategy`` every Confluent serializer uses by default: the value
schema of topic ``T`` lives under subject ``T-value``. A producer encodes with the id of the
current chunk schema under the subjects of every lane topic (registering it there first when
``auto_register`` is on); a consumer resolves any id it reads, once, and caches the writer schema.

What a missing schema and a missing registry mean differ on purpose:

* The registry answers "no such id" (HTTP 404): the value is unreadable by design, the codec raises
  :class:`~streamproc.errors.UnknownSchemaError` and the consumer parks it as a dead letter.
* The registry cannot be reached, or fails (timeouts, 5xx, auth): nothing is wrong with the value,
  so :class:`~streamproc.errors.SchemaRegistryUnavailableError` (retriable) propagates and the
  message is never parked; the consumer stops without committing it and is restarted.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from importlib.resources.abc import Traversable
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from streamproc.chunk import DEFAULT_LIMITS, ChunkLimits
from streamproc.codec import (
    CURRENT_SCHEMA_FILE,
    ChunkCodec,
    bundled_schema_dir,
    history_files,
    load_schema_file,
    schema_fingerprint,
)
from streamproc.errors import ConfigError, SchemaRegistryUnavailableError

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient

__all__ = [
    "NOT_FOUND_STATUS",
    "RegistrySchemaIds",
    "SchemaRegistryApi",
    "SchemaRegistrySettings",
    "registry_codec",
    "value_subject",
]

NOT_FOUND_STATUS = 404


def value_subject(topic: str) -> str:
    """The ``TopicNameStrategy`` subject of ``topic``'s values."""
    return f"{topic}-value"


class SchemaRegistrySettings(BaseModel):
    """Where the Schema Registry is and how to talk to it.

    Only used with ``framing="schema-registry"`` on the producer; a consumer uses it whenever it is
    set, to resolve the ids of registry-framed values (single-object values never need it).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(
        description="Base URL of the registry's Confluent API (comma-separated for several).",
        min_length=1,
    )
    basic_auth_user_info: SecretStr | None = Field(
        None, description="Basic auth credentials as 'user:password'."
    )
    ssl_ca_location: str | None = Field(None, description="CA bundle to verify the registry.")
    auto_register: bool = Field(
        False,
        description=(
            "Register the current chunk schema under each lane subject on first use (producer). "
            "Off by default: production registries are usually written by a deploy step."
        ),
    )
    request_timeout_s: float = Field(10.0, gt=0, description="Timeout of one registry request.")
    max_retries: int = Field(3, ge=0, description="Retries of a failed registry request.")

    def client_config(self) -> dict[str, Any]:
        """The ``SchemaRegistryClient`` configuration."""
        conf: dict[str, Any] = {
            "url": self.url,
            "timeout": self.request_timeout_s,
            "max.retries": self.max_retries,
        }
        if self.basic_auth_user_info is not None:
            conf["basic.auth.user.info"] = self.basic_auth_user_info.get_secret_value()
        if self.ssl_ca_location is not None:
            conf["ssl.ca.location"] = self.ssl_ca_location
        return conf

    def create_client(self) -> SchemaRegistryClient:
        """A ``SchemaRegistryClient`` for this registry (needs the ``registry`` extra)."""
        try:
            from confluent_kafka.schema_registry import SchemaRegistryClient
        except ImportError as exc:  # httpx and friends come with the extra
            raise ConfigError(
                "a schema registry is configured but its client is not installed: "
                "pip install 'streamproc[registry]'"
            ) from exc
        return SchemaRegistryClient(self.client_config())


class SchemaRegistryApi(Protocol):
    """The part of confluent-kafka's ``SchemaRegistryClient`` this module uses."""

    def register_schema(self, subject_name: str, schema: Any) -> int: ...

    def lookup_schema(self, subject_name: str, schema: Any) -> Any: ...

    def get_schema(self, schema_id: int) -> Any: ...

    def close(self) -> None: ...


class RegistrySchemaIds:
    """Schema ids from a live registry: the codec's :class:`~streamproc.codec.SchemaIds`.

    Args:
        client: A ``SchemaRegistryClient`` (or anything with its three methods).
        subjects: The subjects the current schema is written under (one per lane topic).
        schema_dir: Where the published schemas are (bundled ones by default); ``id_for`` can
            only name schemas found there.
        auto_register: Register a schema under every subject instead of only looking it up.

    Raises:
        ConfigError: No subjects given.
    """

    def __init__(
        self,
        client: SchemaRegistryApi,
        subjects: Iterable[str],
        *,
        schema_dir: Traversable | None = None,
        auto_register: bool = False,
    ) -> None:
        self._client = client
        self._subjects = tuple(subjects)
        if not self._subjects:
            raise ConfigError("a schema registry resolver needs at least one subject")
        self._auto_register = auto_register
        directory = schema_dir or bundled_schema_dir()
        self._schemas: dict[int, dict[str, Any]] = {}
        for path in (directory.joinpath(CURRENT_SCHEMA_FILE), *history_files(directory)):
            schema = load_schema_file(path)
            self._schemas.setdefault(schema_fingerprint(schema), schema)
        self._ids: dict[int, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, settings: SchemaRegistrySettings, topics: Iterable[str]
    ) -> RegistrySchemaIds:
        """A resolver for the value subjects of ``topics``, with a client built from settings."""
        return cls(
            settings.create_client(),
            [value_subject(topic) for topic in topics],
            auto_register=settings.auto_register,
        )

    def close(self) -> None:
        """Close the registry client's HTTP connections."""
        self._client.close()

    def __enter__(self) -> RegistrySchemaIds:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def id_for(self, fingerprint: int) -> int:
        """The registry id of a published schema under every subject (registered if configured).

        Raises:
            LookupError: The schema is not published in ``avro/`` or not registered, or the
                subjects disagree on its id.
            SchemaRegistryUnavailableError: The registry could not answer.
        """
        with self._lock:
            if fingerprint in self._ids:
                return self._ids[fingerprint]
            try:
                schema_json = self._schemas[fingerprint]
            except KeyError:
                raise LookupError(
                    f"no published schema has fingerprint {fingerprint:#018x}"
                ) from None
            ids = {subject: self._id_under(subject, schema_json) for subject in self._subjects}
            if len(set(ids.values())) > 1:
                raise LookupError(f"the subjects give one schema different ids: {ids}")
            schema_id = next(iter(ids.values()))
            self._ids[fingerprint] = schema_id
            return schema_id

    def schema_for_id(self, schema_id: int) -> str:
        """The schema registered under ``schema_id`` (the client caches it).

        Raises:
            LookupError: The registry has no schema with this id.
            SchemaRegistryUnavailableError: The registry could not answer.
        """
        try:
            schema = self._client.get_schema(schema_id)
        except Exception as exc:  # the client raises its own error and httpx's
            raise self._translate(exc, f"schema id {schema_id}") from exc
        if schema.schema_type not in (None, "AVRO"):
            raise LookupError(f"schema id {schema_id} is {schema.schema_type}, not AVRO")
        return str(schema.schema_str)

    def _id_under(self, subject: str, schema_json: Mapping[str, Any]) -> int:
        from confluent_kafka.schema_registry import Schema

        schema = Schema(json.dumps(schema_json), schema_type="AVRO")
        try:
            if self._auto_register:
                return int(self._client.register_schema(subject, schema))
            return int(self._client.lookup_schema(subject, schema).schema_id)
        except Exception as exc:  # the client raises its own error and httpx's
            raise self._translate(exc, f"subject {subject}") from exc

    @staticmethod
    def _translate(exc: Exception, what: str) -> Exception:
        """A 404 means "not there" (LookupError); anything else means the registry failed."""
        status = getattr(exc, "http_status_code", None)
        if status == NOT_FOUND_STATUS:
            message = getattr(exc, "error_message", None) or str(exc)
            return LookupError(f"{what} not found in the schema registry: {message}")
        return SchemaRegistryUnavailableError(f"schema registry failed on {what}: {exc}")


def registry_codec(
    registry: SchemaRegistrySettings | None,
    topics: Iterable[str],
    limits: ChunkLimits = DEFAULT_LIMITS,
) -> tuple[ChunkCodec, RegistrySchemaIds | None]:
    """A codec that resolves registry ids through ``registry`` (if any), and its resolver.

    The caller closes the resolver when it is done with the codec.
    """
    resolver = RegistrySchemaIds.from_settings(registry, topics) if registry else None
    return ChunkCodec(schema_ids=resolver, limits=limits), resolver
