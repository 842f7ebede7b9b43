"""Retry backoff with full jitter, and the consumer's one retry policy that uses it."""

from __future__ import annotations

import asyncio
import statistics
import threading

import pytest

from streamproc import backoff
from streamproc.backoff import backoff_ceiling, full_jitter_delay
from streamproc.consumer import pipeline
from streamproc.consumer.pipeline import Retry
from streamproc.errors import HandlerError, RetriableHandlerError
from streamproc.settings import ConsumerSettings


def test_the_ceiling_doubles_per_attempt_up_to_the_cap() -> None:
    ceilings = [backoff_ceiling(attempt, 0.2, 5.0) for attempt in range(1, 8)]
    assert ceilings == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
    assert backoff_ceiling(5000, 0.2, 5.0) == 5.0  # no float overflow on absurd attempt counts
    with pytest.raises(ValueError, match="1-based"):
        backoff_ceiling(0, 0.2, 5.0)


def test_the_wait_is_the_draw_times_the_ceiling() -> None:
    assert full_jitter_delay(3, 0.2, 5.0, uniform=lambda: 0.0) == 0.0
    assert full_jitter_delay(3, 0.2, 5.0, uniform=lambda: 0.5) == pytest.approx(0.4)
    assert full_jitter_delay(9, 0.2, 5.0, uniform=lambda: 0.999) == pytest.approx(4.995)


def test_waits_spread_over_the_whole_window() -> None:
    draws = [full_jitter_delay(3, 0.2, 5.0) for _ in range(2000)]
    assert all(0.0 <= draw < 0.8 for draw in draws)
    assert min(draws) < 0.08 and max(draws) > 0.72  # the whole window, not a narrow band
    assert statistics.mean(draws) == pytest.approx(0.4, abs=0.04)  # half the ceiling


def retry(**overrides: float) -> Retry:
    settings = ConsumerSettings(max_retries=3, retry_backoff_s=0.2, retry_backoff_max_s=1.0)
    return Retry(settings.model_copy(update=overrides), threading.Event())


def test_workers_failing_together_do_not_retry_in_lockstep() -> None:
    workers = [retry() for _ in range(20)]
    first_waits = [w.delay_after(1, RetriableHandlerError("busy")) for w in workers]
    assert all(wait is not None and 0.0 <= wait < 0.2 for wait in first_waits)
    assert len(set(first_waits)) > 15


def test_the_policy_gives_up_on_permanent_errors_and_after_the_last_retry() -> None:
    policy = retry()
    assert policy.delay_after(1, HandlerError("bad")) is None
    assert policy.delay_after(4, RetriableHandlerError("busy")) is None
    wait = policy.delay_after(3, RetriableHandlerError("busy"))
    assert wait is not None and 0.0 <= wait < 0.8


def test_sync_and_async_calls_sleep_the_same_jittered_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drawn: list[float] = []

    def draw() -> float:
        drawn.append((0.25, 0.75)[len(drawn) % 2])
        return drawn[-1]

    def jittered(attempt: int, first_s: float, max_s: float) -> float:
        return backoff.full_jitter_delay(attempt, first_s, max_s, uniform=draw)

    monkeypatch.setattr(pipeline, "full_jitter_delay", jittered)
    # The Retry's own sleeps, not time.sleep or asyncio.sleep themselves: patching those would
    # make every other thread of the test process spin (a leftover thread filled memory in CI).
    slept: list[float] = []

    async def no_wait(seconds: float) -> None:
        slept.append(seconds)

    def retry_recorded() -> Retry:
        settings = ConsumerSettings(max_retries=3, retry_backoff_s=0.2, retry_backoff_max_s=1.0)
        return Retry(settings, threading.Event(), sleep=slept.append, sleep_async=no_wait)

    failures = [RetriableHandlerError("busy"), RetriableHandlerError("busy")]

    def flaky() -> None:
        if failures:
            raise failures.pop()

    assert retry_recorded().call(flaky) == 3
    sync_waits, sync_draws = slept[:], drawn[:]
    slept.clear()
    drawn.clear()
    failures += [RetriableHandlerError("busy"), RetriableHandlerError("busy")]

    async def flaky_async() -> None:
        flaky()

    assert asyncio.run(retry_recorded().call_async(flaky_async)) == 3
    assert slept == sync_waits
    assert drawn == sync_draws
    # Attempt 1 then 2: ceilings 0.2 and 0.4 times the draws.
    assert sync_draws == [0.25, 0.75]
    assert sync_waits == pytest.approx([0.2 * 0.25, 0.4 * 0.75])
