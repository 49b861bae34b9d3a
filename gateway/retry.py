"""When and how long to wait before a failed stage call is sent again.

A stage call that failed with UNAVAILABLE, DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED (or whose answer was
corrupted; see :class:`gateway.stages.StageFailure`) is retried after an exponential back-off, at least
as long as the stage's own RetryInfo asks. A stage that is down (UNAVAILABLE) gets its retry as soon as its
health says SERVING again instead of at the end of the back-off.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from google.rpc import code_pb2

from gateway.stages import StageFailure

#: ``(timeout_s, stop)`` -> whether the stage came back before the timeout (see
#: :meth:`gateway.stages.StageClients.wait_until_back`).
WaitUntilBack = Callable[[float, threading.Event], bool]


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failed stage call is sent again: ``max_attempts`` in all, waiting
    ``initial_backoff_s * multiplier**(n-1)`` (at most ``max_backoff_s``, at least the stage's RetryInfo).
    """

    max_attempts: int = 20
    initial_backoff_s: float = 0.5
    multiplier: float = 2.0
    max_backoff_s: float = 15.0

    def delay(self, attempt: int, hint_s: float = 0.0) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        backoff = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return max(backoff, min(hint_s, self.max_backoff_s))

    def gives_up(self, failure: StageFailure, attempt: int) -> bool:
        """True when ``failure`` of attempt ``attempt`` is final (not retryable, or no attempts left)."""
        return not failure.retryable or attempt >= self.max_attempts

    def wait(
        self, failure: StageFailure, delay_s: float, stop: threading.Event, wait_until_back: WaitUntilBack
    ) -> None:
        """Wait ``delay_s`` before the next attempt, or less: when ``stop`` is set, or, after UNAVAILABLE
        (the stage is down or restarting), as soon as the stage is back after the first ``initial_backoff_s``.
        """
        if failure.status.code != code_pb2.UNAVAILABLE:
            stop.wait(delay_s)
        elif not stop.wait(min(delay_s, self.initial_backoff_s)):
            wait_until_back(delay_s - self.initial_backoff_s, stop)
