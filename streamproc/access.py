"""Denied by the broker: authentication and authorization failures, told apart from the rest.

librdkafka reports a missing ACL (``TOPIC_AUTHORIZATION_FAILED`` on a fetch,
``GROUP_AUTHORIZATION_FAILED`` on finding the coordinator) and a rejected password as ordinary,
non-fatal errors and retries them forever. No retry cures them: the consumer stops on the first
one, and the admin commands report them as what they are, naming the principal.
"""

from __future__ import annotations

from confluent_kafka import KafkaError

# Errors that mean "the broker will not let this principal do it": only an operator can help.
DENIED_CODES = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
    }
)


def is_denied(error: KafkaError) -> bool:
    """True when ``error`` is an authentication or authorization failure."""
    return error.code() in DENIED_CODES


def denial_message(error: KafkaError, principal: str | None, what: str) -> str:
    """One line saying who was refused what, and by which broker error.

    Args:
        error: The broker's error.
        principal: The SASL username, if any (never the password).
        what: What was being done, e.g. ``consuming group 'streamproc'``.
    """
    who = f"user {principal!r}" if principal else "this client"
    return f"not authorized: {who} was refused {what}: {error.str()}"
