"""Bounded shutdown steps: the commits and closes a vanished broker can hold for minutes.

confluent-kafka's ``Consumer.commit(asynchronous=False)`` and ``Consumer.close()`` take no
timeout. Without a group coordinator, librdkafka keeps a synchronous commit waiting until the
member's session times out (``session_timeout_ms``, 45 s by default), and ``close()`` then waits
again for its final commit and LeaveGroup to give up (about 40 s more, measured with the broker
stopped). A blocked call also holds the main thread inside C code, where Python runs no signal
handler: a second SIGTERM would wait with it.

So each step runs on a daemon thread while the caller waits for it (a wait signals interrupt,
so a second signal is still acted on at once), for at most what is left of one budget. The order:

1. A step starts only while budget is left; it may use all of what is left.
2. A step still running at the deadline is given up: its thread stays blocked in librdkafka
   (the process exits past it) and every later step is skipped, so at most one step is ever left
   behind and no two steps ever run at once (the rebalance callbacks a close serves run on that
   step's thread alone).
3. What was given up or skipped is kept in :attr:`ShutdownBudget.given_up`: offsets it would have
   committed are redelivered (at-least-once holds, since they were never committed), and
   clients it would have closed are left open, for the process to exit past.

A step that tries again (a commit while the group coordinator is away) bounds itself to a share of
what is left (:meth:`ShutdownBudget.share_s`), so it leaves time for the steps after it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class ShutdownBudget:
    """Runs shutdown steps one after another within ``timeout_s`` altogether.

    Args:
        timeout_s: The whole budget, counted from construction.
        clock: Monotonic seconds (tests may pass their own).
    """

    def __init__(self, timeout_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self._clock = clock
        self._deadline = clock() + timeout_s
        self._spent = False
        self.given_up: list[str] = []

    @property
    def remaining_s(self) -> float:
        return max(0.0, self._deadline - self._clock())

    def share_s(self, steps_left: int) -> float:
        """An even share of what is left for each of ``steps_left`` steps, this one included."""
        return self.remaining_s / max(1, steps_left)

    @property
    def complete(self) -> bool:
        """Every step run so far finished (none given up or skipped)."""
        return not self.given_up

    def run(self, step: str, call: Callable[[], object]) -> bool:
        """Run ``call`` within what is left of the budget.

        Args:
            step: What the step does, for the log and :attr:`given_up`.
            call: The step; its exception, if it finishes with one, is raised here.

        Returns:
            True when ``call`` finished in time; False when it was given up or skipped.
        """
        remaining = self.remaining_s
        if self._spent or remaining <= 0:
            self._spent = True
            self.given_up.append(step)
            log.warning("shutdown: skipped the %s (close_timeout_s spent)", step)
            return False
        done = threading.Event()
        failure: list[BaseException] = []

        def target() -> None:
            try:
                call()
            except BaseException as exc:  # noqa: BLE001  # handed to the waiting caller
                failure.append(exc)
            finally:
                done.set()

        threading.Thread(target=target, name=f"streamproc-shutdown: {step}", daemon=True).start()
        if not done.wait(remaining):
            self._spent = True
            self.given_up.append(step)
            log.warning(
                "shutdown: gave up the %s after %.1fs (close_timeout_s %.1fs spent; broker"
                " unreachable?)",
                step,
                remaining,
                self.timeout_s,
            )
            return False
        if failure:
            raise failure[0]
        return True
