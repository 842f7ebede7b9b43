"""Retry backoff with full jitter: how long to wait before the next attempt.

Each wait is drawn uniformly between 0 and a ceiling that doubles with every attempt and is
capped ("full jitter", as in the AWS Architecture Blog's *Exponential Backoff And Jitter*). Many
workers failing on one dependency at the same moment then retry spread over the whole window
instead of in lockstep, and the expected wait is still half the ceiling.

Pure: the consumer's retry policy (:class:`streamproc.consumer.pipeline.Retry`) calls
:func:`full_jitter_delay` for sync and ``async def`` handlers alike, and only the sleep differs.
"""

from __future__ import annotations

import random
from collections.abc import Callable

# Seeded from the OS: workers started together draw different waits.
_RANDOM = random.Random()  # noqa: S311  # spreading retries, not security


def backoff_ceiling(attempt: int, first_s: float, max_s: float) -> float:
    """The longest wait after failed attempt ``attempt`` (1-based): ``first_s`` doubled per
    attempt, at most ``max_s``."""
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    # 2 ** 1074 overflows a float; the cap is reached long before.
    return float(min(first_s * 2.0 ** min(attempt - 1, 1000), max_s))


def full_jitter_delay(
    attempt: int,
    first_s: float,
    max_s: float,
    *,
    uniform: Callable[[], float] = _RANDOM.random,
) -> float:
    """Seconds to wait after failed attempt ``attempt``: uniform in ``[0, ceiling)``.

    Args:
        attempt: The attempt that just failed, from 1.
        first_s: Ceiling of the first wait.
        max_s: Cap of the ceiling.
        uniform: A draw in ``[0, 1)`` (tests pass a fixed one).
    """
    return backoff_ceiling(attempt, first_s, max_s) * uniform()
