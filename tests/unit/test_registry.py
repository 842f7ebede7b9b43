"""Schema Registry resolver: settings, error translation, and a registry that does not answer.

The registry's own behaviour (register, look up, fetch by id) is tested against a real registry in
tests/integration/test_registry_framing.py; here the client talks to a port where nothing listens.
"""

from __future__ import annotations

import socket

import pytest
from confluent_kafka.schema_registry.error import SchemaRegistryError
from pydantic import ValidationError

from streamproc.chunk import Chunk
from streamproc.codec import REGISTRY_MAGIC_BYTE, ChunkCodec, Framing
from streamproc.errors import ConfigError, SchemaRegistryUnavailableError, UnknownSchemaError
from streamproc.registry import RegistrySchemaIds, SchemaRegistrySettings, value_subject


def closed_port_url() -> str:
    """A loopback URL where nothing listens (the port was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def unreachable_resolver() -> RegistrySchemaIds:
    settings = SchemaRegistrySettings(url=closed_port_url(), max_retries=0, request_timeout_s=2)
    return RegistrySchemaIds.from_settings(settings, ["chunks.realtime", "chunks.bulk"])


def test_value_subject_follows_topic_name_strategy() -> None:
    assert value_subject("chunks.realtime") == "chunks.realtime-value"


def test_client_config_carries_auth_tls_and_retries_without_leaking_the_secret() -> None:
    settings = SchemaRegistrySettings(
        url="https://registry:8081",
        basic_auth_user_info="user:s3cret",
        ssl_ca_location="/etc/ca.pem",
        max_retries=5,
        request_timeout_s=3,
    )
    assert settings.client_config() == {
        "url": "https://registry:8081",
        "basic.auth.user.info": "user:s3cret",
        "ssl.ca.location": "/etc/ca.pem",
        "max.retries": 5,
        "timeout": 3,
    }
    assert "s3cret" not in repr(settings)


def test_settings_reject_empty_url_and_unknown_keys() -> None:
    with pytest.raises(ValidationError, match="url"):
        SchemaRegistrySettings(url="")
    with pytest.raises(ValidationError, match="urll"):
        SchemaRegistrySettings(url="http://r", urll="x")  # type: ignore[call-arg]


def test_not_found_becomes_lookup_error() -> None:
    error = RegistrySchemaIds._translate(
        SchemaRegistryError(404, 40403, "Schema 7 not found"), "schema id 7"
    )
    assert isinstance(error, LookupError)
    assert "Schema 7 not found" in str(error)


@pytest.mark.parametrize(
    "failure",
    [
        SchemaRegistryError(500, 50001, "store error"),
        SchemaRegistryError(401, 401, "unauthorized"),
        TimeoutError("read timed out"),
    ],
)
def test_every_other_failure_means_the_registry_is_unavailable(failure: Exception) -> None:
    error = RegistrySchemaIds._translate(failure, "schema id 7")
    assert isinstance(error, SchemaRegistryUnavailableError)
    assert error.retriable


def test_resolver_needs_a_subject() -> None:
    settings = SchemaRegistrySettings(url=closed_port_url())
    with pytest.raises(ConfigError, match="subject"):
        RegistrySchemaIds(settings.create_client(), [])


def test_unknown_fingerprint_is_a_lookup_error_without_asking_the_registry() -> None:
    with pytest.raises(LookupError, match="no published schema"):
        unreachable_resolver().id_for(0x1234)


def test_unreachable_registry_is_unavailable_not_unknown_when_decoding() -> None:
    """A registry outage must not turn readable values into dead letters."""
    codec = ChunkCodec(schema_ids=unreachable_resolver())
    value = REGISTRY_MAGIC_BYTE + (7).to_bytes(4, "big") + b"\x00"
    with pytest.raises(SchemaRegistryUnavailableError, match="schema id 7"):
        codec.decode(value)


def test_unreachable_registry_is_unavailable_when_encoding() -> None:
    codec = ChunkCodec(schema_ids=unreachable_resolver())
    chunk = Chunk(chunk_html="<p>hi</p>", tracking_id="doc")
    with pytest.raises(SchemaRegistryUnavailableError, match=r"chunks\.realtime-value"):
        codec.encode(chunk, Framing.SCHEMA_REGISTRY)


def test_no_registry_configured_is_still_unknown_schema() -> None:
    value = REGISTRY_MAGIC_BYTE + (7).to_bytes(4, "big") + b"\x00"
    with pytest.raises(UnknownSchemaError, match="no schema registry"):
        ChunkCodec().decode(value)
