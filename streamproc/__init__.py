"""streamproc: a priority-aware Kafka stream processor.

The names below are the public Python API; they are stable within a major version. Everything
else (modules and names not listed in ``__all__``) is internal and may change. The names are
imported on first use, so ``import streamproc`` stays cheap for the command line.

Example:
    >>> from streamproc import Chunk, ChunkProducer, ProducerSettings  # doctest: +SKIP
    >>> with ChunkProducer(ProducerSettings(bootstrap_servers="127.0.0.1:9092")) as producer:
    ...     producer.produce(Chunk(chunk_html="<p>hi</p>", tracking_id="doc-1"))
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("streamproc")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

if TYPE_CHECKING:
    from streamproc.aio import run_in_thread
    from streamproc.chunk import Chunk, ChunkLimits, parse_chunk
    from streamproc.codec import ChunkCodec, Framing
    from streamproc.consumer import PriorityConsumer
    from streamproc.errors import (
        ChunkValidationError,
        ConfigError,
        DecodeError,
        HandlerError,
        IncompatibleSchemaError,
        OversizeError,
        ProduceError,
        RetriableHandlerError,
        SchemaRegistryUnavailableError,
        SinkUnavailableError,
        StreamprocError,
        TopicError,
        UnknownFramingError,
        UnknownSchemaError,
    )
    from streamproc.handlers import (
        AnyHandler,
        AsyncBatchHandler,
        AsyncHandler,
        BatchHandler,
        ChunkRecord,
        Handler,
        MessageContext,
    )
    from streamproc.lanes import Lane, Lanes
    from streamproc.producer import ChunkProducer, Delivery
    from streamproc.redrive import (
        DeadLetter,
        DeadLetterFilter,
        DeadLetterReader,
        DeadLetterReplayer,
    )
    from streamproc.settings import ConsumerSettings, KafkaSettings, ProducerSettings
    from streamproc.topics import TopicAdmin

# Public name -> the module that defines it.
_LOCATIONS: dict[str, str] = {
    # the chunk model and its wire format
    "Chunk": "streamproc.chunk",
    "ChunkLimits": "streamproc.chunk",
    "parse_chunk": "streamproc.chunk",
    "ChunkCodec": "streamproc.codec",
    "Framing": "streamproc.codec",
    # producing and consuming
    "ChunkProducer": "streamproc.producer",
    "Delivery": "streamproc.producer",
    "PriorityConsumer": "streamproc.consumer",
    "run_in_thread": "streamproc.aio",
    "Lane": "streamproc.lanes",
    "Lanes": "streamproc.lanes",
    "TopicAdmin": "streamproc.topics",
    # what a handler receives, and the handler shapes
    "ChunkRecord": "streamproc.handlers",
    "MessageContext": "streamproc.handlers",
    "Handler": "streamproc.handlers",
    "AsyncHandler": "streamproc.handlers",
    "BatchHandler": "streamproc.handlers",
    "AsyncBatchHandler": "streamproc.handlers",
    "AnyHandler": "streamproc.handlers",
    # settings
    "KafkaSettings": "streamproc.settings",
    "ProducerSettings": "streamproc.settings",
    "ConsumerSettings": "streamproc.settings",
    # dead letters
    "DeadLetter": "streamproc.redrive",
    "DeadLetterFilter": "streamproc.redrive",
    "DeadLetterReader": "streamproc.redrive",
    "DeadLetterReplayer": "streamproc.redrive",
    "ReplayError": "streamproc.redrive",
    # errors
    "StreamprocError": "streamproc.errors",
    "ConfigError": "streamproc.errors",
    "ChunkValidationError": "streamproc.errors",
    "OversizeError": "streamproc.errors",
    "DecodeError": "streamproc.errors",
    "UnknownFramingError": "streamproc.errors",
    "UnknownSchemaError": "streamproc.errors",
    "IncompatibleSchemaError": "streamproc.errors",
    "HandlerError": "streamproc.errors",
    "RetriableHandlerError": "streamproc.errors",
    "SinkUnavailableError": "streamproc.errors",
    "SchemaRegistryUnavailableError": "streamproc.errors",
    "ProduceError": "streamproc.errors",
    "TopicError": "streamproc.errors",
}

__all__ = [
    "AnyHandler",
    "AsyncBatchHandler",
    "AsyncHandler",
    "BatchHandler",
    "Chunk",
    "ChunkCodec",
    "ChunkLimits",
    "ChunkProducer",
    "ChunkRecord",
    "ChunkValidationError",
    "ConfigError",
    "ConsumerSettings",
    "DeadLetter",
    "DeadLetterFilter",
    "DeadLetterReader",
    "DeadLetterReplayer",
    "DecodeError",
    "Delivery",
    "Framing",
    "Handler",
    "HandlerError",
    "IncompatibleSchemaError",
    "KafkaSettings",
    "Lane",
    "Lanes",
    "MessageContext",
    "OversizeError",
    "PriorityConsumer",
    "ProduceError",
    "ProducerSettings",
    "ReplayError",
    "RetriableHandlerError",
    "SchemaRegistryUnavailableError",
    "SinkUnavailableError",
    "StreamprocError",
    "TopicAdmin",
    "TopicError",
    "UnknownFramingError",
    "UnknownSchemaError",
    "__version__",
    "parse_chunk",
    "run_in_thread",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    module = _LOCATIONS.get(name)
    if module is None:
        raise AttributeError(f"module 'streamproc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
