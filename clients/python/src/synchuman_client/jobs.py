"""Job-level helpers shared by the sync and asyncio clients: terminal states, a page of ``ListJobs``, the
error of a failed job, and the call settings (bearer token, default deadline)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from synchuman_client._proto import reconstruction_pb2
from synchuman_client.errors import SyncHumanError

#: Job states after which nothing changes any more.
TERMINAL_STATES = frozenset(
    {
        reconstruction_pb2.JOB_STATE_SUCCEEDED,
        reconstruction_pb2.JOB_STATE_FAILED,
        reconstruction_pb2.JOB_STATE_CANCELLED,
    }
)


@dataclass(frozen=True)
class JobPage:
    """One page of ``ListJobs``: jobs newest first; ``next_page_token`` is empty on the last page."""

    jobs: Sequence[reconstruction_pb2.Job]
    next_page_token: str


def list_request(
    page_size: int, page_token: str, state: reconstruction_pb2.JobState.ValueType
) -> reconstruction_pb2.ListJobsRequest:
    """A ``ListJobs`` request (page size 1 to 1000; state 0: every state)."""
    return reconstruction_pb2.ListJobsRequest(page_size=page_size, page_token=page_token, state=state)


def job_error(job: reconstruction_pb2.Job) -> SyncHumanError | None:
    """Why a job failed, with its decoded details (None unless it is FAILED)."""
    if job.state != reconstruction_pb2.JOB_STATE_FAILED:
        return None
    return SyncHumanError.from_status(job.error)


@dataclass(frozen=True)
class CallSettings:
    """Per-call settings of a client: the bearer token's metadata and the default deadline in seconds."""

    token: str | None
    timeout_s: float

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata every call sends."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def timeout(self, timeout_s: float | None) -> float:
        """A call's deadline: ``timeout_s`` or the client's default."""
        return self.timeout_s if timeout_s is None else timeout_s
