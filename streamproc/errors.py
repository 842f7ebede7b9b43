"""The exception hierarchy.

Every error streamproc raises derives from :class:`StreamprocError`. Behaviour lives on the class,
never in the message text: ``retriable`` says a later attempt may succeed, ``reason`` is the short,
bounded label written to dead-letter headers and metric labels. The consumer decides between retry,
dead letter and stop by these attributes alone.
"""

from __future__ import annotations

from typing import ClassVar


class StreamprocError(Exception):
    """Root of every error raised by streamproc."""

    retriable: ClassVar[bool] = False
    reason: ClassVar[str] = "error"


class ConfigError(StreamprocError):
    """A setting is missing, malformed, or contradicts another one."""

    reason = "config"


class ChunkValidationError(StreamprocError):
    """A chunk does not satisfy the model or a configured limit.

    Args:
        message: What is wrong, naming the field.
        field: Dotted path of the offending field, when one is known.
    """

    reason = "invalid"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class OversizeError(ChunkValidationError):
    """The encoded chunk is larger than the configured limit."""

    reason = "oversize"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"encoded chunk is {size} bytes, over the limit of {limit} bytes", field=None
        )
        self.size = size
        self.limit = limit


class DecodeError(StreamprocError):
    """Bytes could not be decoded into a chunk (garbage, truncated, or not Avro at all).

    Args:
        message: What went wrong.
        raw: The undecodable bytes, kept so the caller can park them untouched.
    """

    reason = "undecodable"

    def __init__(self, message: str, *, raw: bytes | None = None) -> None:
        super().__init__(message)
        self.raw = raw


class UnknownFramingError(DecodeError):
    """The value starts with neither the single-object marker nor the registry magic byte."""

    reason = "unknown_framing"


class UnknownSchemaError(DecodeError):
    """The writer schema (fingerprint or registry id) is not one this reader knows."""

    reason = "unknown_schema"


class IncompatibleSchemaError(DecodeError):
    """The writer schema is known but cannot be resolved against the reader schema."""

    reason = "incompatible_schema"


class HandlerError(StreamprocError):
    """A handler failed permanently: retrying would fail again."""

    reason = "handler_error"


class RetriableHandlerError(HandlerError):
    """A handler failed transiently (timeout, throttling): retry with backoff."""

    retriable = True
    reason = "handler_retriable"


class SinkUnavailableError(RetriableHandlerError):
    """A built-in sink's server could not be reached, restarted, or failed transiently.

    Retried with backoff like any retriable handler error. Configure ``sink_unavailable=stop`` to
    stop the consumer (without committing) instead of parking chunks once retries run out.
    """

    reason = "sink_unavailable"


class SchemaRegistryUnavailableError(StreamprocError):
    """The schema registry could not be reached or failed; the value itself may be fine.

    Never a reason to park a message: the consumer stops without committing it (and is restarted),
    the producer reports the chunk as not sent.
    """

    retriable = True
    reason = "schema_registry_unavailable"


class ProduceError(StreamprocError):
    """The broker rejected or failed to acknowledge a produced message."""

    reason = "produce"


class TopicError(StreamprocError):
    """Lane topics are missing or inconsistent (e.g. different partition counts)."""

    reason = "topic"


class MetricsPortInUseError(StreamprocError):
    """The metrics endpoint's port is taken by another process."""

    reason = "metrics_port_in_use"

    def __init__(self, port: int) -> None:
        super().__init__(f"metrics port {port} is already in use")
        self.port = port


class NotAuthorizedError(StreamprocError):
    """The broker refused the credentials, or the principal lacks an ACL: no retry cures it."""

    reason = "not_authorized"


class BrokerUnreachableError(StreamprocError):
    """No broker of the bootstrap list answered within the start-up check."""

    retriable = True
    reason = "broker_unreachable"


# Every reason a message can be parked in a dead-letter topic for: the ``reason`` label values of
# ``streamproc_dead_letters_total``, created at 0 in advance. Errors that are not streamproc's
# count as ``handler_error``; retriable ones are parked once their retries are spent.
DEAD_LETTER_REASONS: tuple[str, ...] = tuple(
    cls.reason
    for cls in (
        DecodeError,
        UnknownFramingError,
        UnknownSchemaError,
        IncompatibleSchemaError,
        ChunkValidationError,
        OversizeError,
        HandlerError,
        RetriableHandlerError,
        SinkUnavailableError,
    )
)


def permanent_reasons() -> frozenset[str]:
    """Reasons of streamproc's own errors that no retry can cure (``retriable`` false)."""
    found: list[type[StreamprocError]] = []
    pending: list[type[StreamprocError]] = [StreamprocError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    retriable = {cls.reason for cls in found if cls.retriable}
    return frozenset(cls.reason for cls in found if not cls.retriable) - retriable
