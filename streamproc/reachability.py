"""Is the cluster there? A start-up check that fails in seconds with the cause, not a minute later.

librdkafka never gives up on a bootstrap list: a producer queues messages and retries until
``delivery.timeout.ms``, a consumer polls nothing forever. The commands ask for the cluster's
metadata first and, when no broker answers within a few seconds, stop with one error naming the
bootstrap servers and what librdkafka saw (``Connection refused``, a name that does not resolve,
an authentication failure).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from streamproc.errors import BrokerUnreachableError
from streamproc.logs import LIBRDKAFKA_LOGGER

# How long the start-up check waits for a broker to answer.
DEFAULT_TIMEOUT_S = 5.0
# Errors no retry within the check will cure: stop at once instead of waiting out the timeout.
_FINAL_CODES = frozenset(
    {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._SSL}
)
# Less telling than the transport error that caused them: reported only when nothing else is.
_SUMMARY_CODES = frozenset({KafkaError._ALL_BROKERS_DOWN})


def check_reachable(config: dict[str, Any], timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Ask for the cluster's metadata; raise if no broker answers within ``timeout_s``.

    The check's own client logs at DEBUG only (through ``streamproc.librdkafka``): its failures
    are what the error says, once.

    Args:
        config: librdkafka configuration with the connection keys (``admin_config()``).
        timeout_s: How long to wait for an answer.

    Raises:
        BrokerUnreachableError: naming ``bootstrap.servers`` and librdkafka's reason.
    """
    errors: list[KafkaError] = []
    quiet = logging.Logger("streamproc.reachability")  # detached from the hierarchy
    quiet.addHandler(_DemoteToDebug())
    probe_config: dict[str, Any] = {
        **config,
        "logger": quiet,
        "error_cb": errors.append,
        "socket.connection.setup.timeout.ms": max(1000, int(timeout_s * 1000)),
    }
    admin = AdminClient(probe_config)
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            admin.list_topics(timeout=max(0.1, min(0.5, remaining)))
        except KafkaException as exc:
            last: KafkaError = exc.args[0]
            admin.poll(0)  # serves error_cb: the connection errors seen so far
            final = [error.code() for error in errors if error.code() in _FINAL_CODES]
            if final or remaining <= 0.5:
                servers = config.get("bootstrap.servers")
                if not final:
                    what = f"cannot reach Kafka at {servers} within {timeout_s:g}s"
                elif final[-1] == KafkaError._SSL:
                    what = f"the TLS handshake with Kafka at {servers} failed"
                else:
                    what = f"Kafka at {servers} refused the authentication"
                raise BrokerUnreachableError(f"{what}: {_cause(errors, last)}") from exc
            continue
        return


class _DemoteToDebug(logging.Handler):
    """Passes the check client's librdkafka lines on at DEBUG, whatever their level."""

    def emit(self, record: logging.LogRecord) -> None:
        if LIBRDKAFKA_LOGGER.isEnabledFor(logging.DEBUG):
            LIBRDKAFKA_LOGGER.debug(record.msg, *(record.args or ()))


def _cause(errors: list[KafkaError], last: KafkaError) -> str:
    """The most telling error seen: a final one, else a transport one, else the last."""
    final = [error for error in errors if error.code() in _FINAL_CODES]
    telling = [error for error in errors if error.code() not in _SUMMARY_CODES]
    chosen = (final or telling or errors or [last])[-1]
    return _strip_prefix(str(chosen.str()))


def _strip_prefix(text: str) -> str:
    """``127.0.0.1:1/bootstrap: Connect to ...`` -> ``Connect to ...`` (the servers are named)."""
    head, sep, tail = text.partition("/bootstrap: ")
    return tail if sep and " " not in head else text
