"""Logging: one configuration for streamproc's own lines and librdkafka's, text or JSON.

librdkafka writes its log lines (``%3|1712...|FAIL|...``) raw to stderr unless the client is given
a Python logger (confluent-kafka's ``logger`` property). Every client streamproc builds gets
:data:`LIBRDKAFKA_LOGGER` through ``KafkaSettings.connection()``, so librdkafka's lines are log
records like any other: leveled, formatted, shipped.

Secrets never reach a log line: the handler redacts every value given to :func:`redact` (the SASL
password, a registry URL's password) and any ``user:password@`` in a URL, whatever logged it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal, TextIO

LogFormat = Literal["text", "json"]

# librdkafka's lines, as ``<facility> [<client name>] <message>``.
LIBRDKAFKA_LOGGER = logging.getLogger("streamproc.librdkafka")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "***"
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+:)[^@\s]+@")

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def redact(secrets: Iterable[str | None]) -> None:
    """Never let these values appear in a log line (the handler replaces them with ``***``)."""
    with _secrets_lock:
        _secrets.update(secret for secret in secrets if secret)


def scrub(text: str) -> str:
    """``text`` with every registered secret and every URL password replaced by ``***``."""
    text = _URL_PASSWORD.sub(rf"\g<scheme>{REDACTED}@", text)
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


class RedactingFormatter(logging.Formatter):
    """A text formatter whose output never holds a secret (the message and the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message`` (+ ``exception``).

    librdkafka's records also carry ``facility`` and ``client`` (its ``FAIL``, ``client.id``).
    """

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        # confluent-kafka logs ("%s [%s] %s", facility, client name, text).
        args = record.args
        if record.name == LIBRDKAFKA_LOGGER.name and isinstance(args, tuple) and len(args) == 3:
            facility, client, text = args
            document.update(facility=facility, client=client, message=text)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return scrub(json.dumps(document, default=str))


def configure_logging(
    level: str = "INFO", log_format: LogFormat = "text", stream: TextIO | None = None
) -> None:
    """Send every log record (streamproc's and librdkafka's) to ``stream`` (stderr) as text or
    JSON lines.

    Replaces handlers set before, so a command may call it again with its own options.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else RedactingFormatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
