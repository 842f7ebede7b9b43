"""ShutdownBudget: steps one after another within one deadline; a step past it is given up."""

from __future__ import annotations

import threading
import time

import pytest

from streamproc.consumer.shutdown import ShutdownBudget


def test_steps_that_finish_in_time_run_in_order_and_leave_it_complete() -> None:
    budget = ShutdownBudget(5.0)
    ran: list[str] = []
    assert budget.run("first", lambda: ran.append("first"))
    assert budget.run("second", lambda: ran.append("second"))
    assert ran == ["first", "second"]
    assert budget.complete
    assert budget.given_up == []


def test_a_step_past_the_deadline_is_given_up_and_every_later_step_skipped() -> None:
    budget = ShutdownBudget(0.2)
    release = threading.Event()
    later: list[str] = []
    started = time.monotonic()
    try:
        assert not budget.run("commit", lambda: release.wait(30))
        waited = time.monotonic() - started
        assert not budget.run("close", lambda: later.append("close"))
    finally:
        release.set()
    assert 0.2 <= waited < 1.0, "the caller waits for the budget, not for the step"
    assert later == [], "a step after the deadline never starts"
    assert budget.given_up == ["commit", "close"]
    assert not budget.complete


def test_the_budget_is_shared_by_the_steps() -> None:
    now = [100.0]
    budget = ShutdownBudget(10.0, clock=lambda: now[0])

    def slow_step() -> None:
        now[0] += 7.0  # the step took 7 s of the 10

    assert budget.run("lag", slow_step)
    assert budget.remaining_s == pytest.approx(3.0)
    now[0] += 3.0
    assert not budget.run("commit", lambda: None), "nothing left: skipped without starting"
    assert budget.given_up == ["commit"]


def test_a_step_that_fails_raises_in_the_caller() -> None:
    budget = ShutdownBudget(5.0)

    def fail() -> None:
        raise RuntimeError("consumer closed")

    with pytest.raises(RuntimeError, match="consumer closed"):
        budget.run("close", fail)
    assert budget.complete, "a step that finished (with an error) was not given up"
