"""How a watch of a job's events resumes after a dropped stream, shared by the sync and asyncio clients.

``WatchJob`` sends every event after ``after_sequence`` until the job's ``finished`` event. When the stream
breaks (UNAVAILABLE, INTERNAL, UNKNOWN, ABORTED, or the server closing it before ``finished`` while the job
has not ended; a finished job's stream may close at once when ``after_sequence`` was its last event) the watch
is called again with ``after_sequence`` = the last sequence seen, so no event is lost or repeated; after
``max_reconnects`` failures in a row without an event in between the last failure is raised (the waits
between them double, up to :data:`MAX_RECONNECT_DELAY_S`). A ``timeout`` bounds the whole watch,
reconnections included (``DEADLINE_EXCEEDED``).
"""

from __future__ import annotations

import time

import grpc

from synchuman_client._proto import reconstruction_pb2
from synchuman_client.errors import SyncHumanError

#: The longest wait between two reconnections, in seconds.
MAX_RECONNECT_DELAY_S = 30.0
#: Codes after which a dropped event stream is resumed instead of reported.
RESUMABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED}
)


class Resumption:
    """Where a watch stands: the last sequence seen, failures in a row, the deadline (monotonic seconds)."""

    def __init__(
        self,
        job_id: str,
        after_sequence: int = 0,
        timeout_s: float | None = None,
        max_reconnects: int = 5,
        reconnect_delay_s: float = 0.5,
    ) -> None:
        self.job_id = job_id
        self.after_sequence = after_sequence
        self.timeout_s = timeout_s
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.max_reconnects = max_reconnects
        self.reconnect_delay_s = reconnect_delay_s
        self.failures = 0
        self.reconnects = 0

    def request(self) -> reconstruction_pb2.WatchJobRequest:
        """The next ``WatchJob`` request."""
        return reconstruction_pb2.WatchJobRequest(job_id=self.job_id, after_sequence=self.after_sequence)

    def _expired(self) -> SyncHumanError:
        return SyncHumanError(
            grpc.StatusCode.DEADLINE_EXCEEDED, f"job {self.job_id} did not end within {self.timeout_s:g} s"
        )

    def call_timeout(self) -> float | None:
        """Seconds left for the next call (None: no deadline); raises DEADLINE_EXCEEDED when none are left."""
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self._expired()
        return left

    def seen(self, event: reconstruction_pb2.WatchJobResponse) -> bool:
        """Record an event; True when it is the job's last (``finished``)."""
        self.failures = 0
        self.after_sequence = event.sequence
        return event.WhichOneof("event") == "finished"

    def retry_delay(self, failure: SyncHumanError | None) -> float:
        """After the stream ended without ``finished`` (``failure`` None: closed cleanly): the seconds to wait
        before calling again, doubling per failure in a row; raises when the failure is not resumable, when
        there were too many in a row or when the deadline passed."""
        if failure is not None and failure.code == grpc.StatusCode.DEADLINE_EXCEEDED and self.deadline:
            raise self._expired() from failure
        if failure is None:
            failure = SyncHumanError(
                grpc.StatusCode.UNAVAILABLE, f"the event stream of job {self.job_id} closed before its end"
            )
        self.failures += 1
        if failure.code not in RESUMABLE or self.failures > self.max_reconnects:
            raise failure
        self.reconnects += 1
        delay = min(self.reconnect_delay_s * 2 ** (self.failures - 1), MAX_RECONNECT_DELAY_S)
        left = self.call_timeout()
        return delay if left is None else min(delay, left)
