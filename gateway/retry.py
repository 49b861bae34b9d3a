"""When a failed stage call is sent again, and after how long.

A stage call that failed with UNAVAILABLE, DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED (or whose answer was
corrupted; see :class:`gateway.stages.StageFailure`) is retried after an exponential back-off, at least
as long as the stage's own RetryInfo asks. The job waits out its back-off in the job store, not in a worker
(:mod:`gateway.job_loop`); a stage that is down (UNAVAILABLE, :func:`stage_down`) gets its retry as soon as
its health says SERVING again instead of at the end of the back-off (:mod:`gateway.stage_comeback`).
"""

from __future__ import annotations

from dataclasses import dataclass

from google.rpc import code_pb2

from gateway.stages import StageFailure


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failed stage call is sent again: ``max_attempts`` in all (counted in the job, over every
    gateway that worked on it), waiting ``initial_backoff_s * multiplier**(n-1)`` after attempt ``n`` (at
    most ``max_backoff_s``, at least the stage's RetryInfo).
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


def stage_down(failure: StageFailure) -> bool:
    """Whether the failure says the stage is down or restarting (UNAVAILABLE): worth watching its health."""
    return failure.status.code == code_pb2.UNAVAILABLE
