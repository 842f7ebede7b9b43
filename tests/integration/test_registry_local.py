"""A real Confluent-compatible Schema Registry from ``scripts/registry-local``, through the
Confluent API as confluent-kafka's ``SchemaRegistryClient`` speaks it.

The registry is the session's ``schema_registry_url`` (tests/conftest.py):
``STREAMPROC_SCHEMA_REGISTRY_URL`` if set (nothing is started or stopped); otherwise
``scripts/registry-local`` starts one in ``.streamproc/registry-test`` (or reuses the one running
there) and stops it afterwards only if it started it.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from tests.conftest import REGISTRY_LOCAL, TEST_REGISTRY_HOME, run_local

pytestmark = pytest.mark.integration

# Confluent error codes the registry must answer with (404 + these; 409 for incompatible).
SUBJECT_NOT_FOUND = 40401
VERSION_NOT_FOUND = 40402
SCHEMA_NOT_FOUND = 40403


@pytest.fixture
def client(schema_registry_url: str) -> Iterator[SchemaRegistryClient]:
    with SchemaRegistryClient(
        {"url": schema_registry_url}
    ) as registry:  # closes its HTTP connections
        yield registry


@pytest.fixture
def new_subject(client: SchemaRegistryClient) -> Iterator[Callable[[], str]]:
    """Subjects no other test uses; deleted afterwards (matters on a shared registry)."""
    made: list[str] = []

    def make() -> str:
        subject = f"t{uuid.uuid4().hex[:10]}-value"
        made.append(subject)
        return subject

    yield make
    for subject in made:
        try:
            client.delete_subject(subject)
            client.delete_subject(subject, permanent=True)
        except SchemaRegistryError as error:
            if error.error_code != SUBJECT_NOT_FOUND:  # never registered: nothing to clean
                raise


def avro_record(name: str, fields: list[dict[str, object]]) -> Schema:
    definition = {"type": "record", "name": name, "namespace": "streamproc.test", "fields": fields}
    return Schema(json.dumps(definition), schema_type="AVRO")


def definition(schema: Schema) -> object:
    """The parsed schema text: equal definitions compare equal whatever their whitespace."""
    text = schema.schema_str
    assert text is not None
    return json.loads(text)


def unique_record() -> Schema:
    """An Avro record no other test registers, so its id is new."""
    return avro_record(
        f"R{uuid.uuid4().hex[:10]}",
        [{"name": "tracking_id", "type": "string"}, {"name": "size", "type": "long"}],
    )


def test_registered_schema_is_found_by_id_and_by_subject(
    client: SchemaRegistryClient, new_subject: Callable[[], str]
) -> None:
    subject = new_subject()
    schema = unique_record()

    schema_id = client.register_schema(subject, schema)

    by_id = client.get_schema(schema_id)
    assert definition(by_id) == definition(schema)
    assert by_id.schema_type == "AVRO"
    found = client.lookup_schema(subject, schema)
    assert (found.schema_id, found.subject, found.version) == (schema_id, subject, 1)
    assert client.get_latest_version(subject).schema_id == schema_id
    assert client.get_versions(subject) == [1]
    assert subject in client.get_subjects()
    assert client.register_schema(subject, schema) == schema_id, "registering again is a no-op"
    assert client.get_versions(subject) == [1]


def test_lookup_and_re_registration_match_the_parsed_schema_not_its_text(
    client: SchemaRegistryClient, new_subject: Callable[[], str]
) -> None:
    """As with Confluent's registry: a schema written with other whitespace is the same schema.

    The producer registers one rendering of the chunk schema and a reader may look up another.
    """
    subject = new_subject()
    compact = unique_record()
    parsed = definition(compact)
    pretty = Schema(json.dumps(parsed, indent=2), schema_type="AVRO")
    schema_id = client.register_schema(subject, compact)

    assert client.lookup_schema(subject, pretty).schema_id == schema_id
    assert client.register_schema(subject, pretty) == schema_id
    assert client.get_versions(subject) == [1]


def test_same_schema_has_one_id_under_every_subject(
    client: SchemaRegistryClient, new_subject: Callable[[], str]
) -> None:
    """What registry framing relies on: both lane subjects resolve the chunk schema to one id."""
    schema = unique_record()
    realtime, bulk = new_subject(), new_subject()

    assert client.register_schema(realtime, schema) == client.register_schema(bulk, schema)
    assert client.lookup_schema(bulk, schema).version == 1


def test_unknown_id_subject_and_version_answer_confluent_error_codes(
    client: SchemaRegistryClient, new_subject: Callable[[], str]
) -> None:
    with pytest.raises(SchemaRegistryError) as unknown_id:
        client.get_schema(2**31 - 1)
    assert (unknown_id.value.http_status_code, unknown_id.value.error_code) == (
        404,
        SCHEMA_NOT_FOUND,
    )

    never_registered = new_subject()
    with pytest.raises(SchemaRegistryError) as unknown_subject:
        client.lookup_schema(never_registered, unique_record())
    assert unknown_subject.value.error_code == SUBJECT_NOT_FOUND

    subject = new_subject()
    client.register_schema(subject, unique_record())
    with pytest.raises(SchemaRegistryError) as unknown_version:
        client.get_version(subject, 7)
    assert unknown_version.value.error_code == VERSION_NOT_FOUND


def test_backward_compatibility_admits_a_defaulted_field_and_refuses_a_type_change(
    client: SchemaRegistryClient, new_subject: Callable[[], str]
) -> None:
    subject = new_subject()
    name = f"R{uuid.uuid4().hex[:10]}"
    first = avro_record(name, [{"name": "size", "type": "long"}])
    widened = avro_record(
        name, [{"name": "size", "type": "long"}, {"name": "lane", "type": "string", "default": ""}]
    )
    retyped = avro_record(name, [{"name": "size", "type": "string"}])
    first_id = client.register_schema(subject, first)
    client.set_compatibility(subject_name=subject, level="BACKWARD")

    assert client.test_compatibility(subject, widened)
    widened_id = client.register_schema(subject, widened)
    assert widened_id != first_id
    assert client.get_latest_version(subject).version == 2
    assert not client.test_compatibility(subject, retyped)
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(subject, retyped)
    assert refused.value.http_status_code == 409
    assert client.get_versions(subject) == [1, 2]


def test_local_registry_defaults_to_backward_and_start_is_idempotent(
    client: SchemaRegistryClient, schema_registry_url: str
) -> None:
    if os.environ.get("STREAMPROC_SCHEMA_REGISTRY_URL"):
        pytest.skip("a configured registry is not managed by scripts/registry-local")
    assert client.get_compatibility() == "BACKWARD", "as Confluent's registry defaults to"
    again = run_local(REGISTRY_LOCAL, TEST_REGISTRY_HOME, "start")  # raises if it fails
    assert again == schema_registry_url
    assert schema_registry_url.startswith("http://127.0.0.1:")
    assert schema_registry_url.endswith("/apis/ccompat/v7")
